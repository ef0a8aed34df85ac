//! Our split ring and chain walker against the reference, `virtio-queue`, on hostile rings:
//! loops, next indexes beyond the table, nested and misshapen indirect tables, addresses
//! across and outside memory, lengths that overflow, heads beyond the queue, an available index
//! that runs ahead. Both must give every chain the same verdict, read and write the same bytes
//! and leave the same used ring (`net_virtio::reference`). The `ring_differential` fuzz target
//! runs the same comparison under AddressSanitizer.

use net_virtio::chain::{ChainError, Direction};
use net_virtio::reference::{drain, Drained, HostileRing, Impl, Layout};
use proptest::prelude::*;

fn check(data: &[u8]) {
    let ring = HostileRing::from_bytes(data);
    if let Err(e) = ring.compare() {
        panic!("{e}\nlayout {:?}", ring.layout);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn hostile_rings_get_the_reference_verdicts(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&data);
    }
}

/// The input of `HostileRing::from_bytes` for a queue of 8 entries with its rings in the
/// usual places, descriptors as given (`(flags, next)`, each a 64-byte buffer in the buffer
/// area), no indirect table, and `avail` (the count byte, then heads).
fn ring_bytes(descs: &[(u8, u8)], avail: &[u8]) -> Vec<u8> {
    // size 8, desc/avail/used in their areas, base 0, read, at most 65562 bytes.
    let mut v = vec![3, 4, 4, 4, 1, 0, 1];
    for (i, &(flags, next)) in descs.iter().enumerate() {
        // address: the buffer area + 256 i; length: 64; flags (1: NEXT), the right direction;
        // next (an index below 8).
        v.extend_from_slice(&[6, 0, i as u8, 0, 0, 3, 64, 0, flags, 1, 1, next]);
    }
    v.extend_from_slice(&[1; 64]);
    v.extend_from_slice(avail);
    v
}

#[test]
fn a_plain_ring_is_read_the_same_and_not_skipped() {
    let descs: Vec<(u8, u8)> = (0..8).map(|_| (0, 0)).collect();
    // 8 chains available (count 8), heads 0..8.
    let mut avail = vec![2, 8];
    for i in 0..8u8 {
        avail.extend_from_slice(&[1, i]);
    }
    let ring = HostileRing::from_bytes(&ring_bytes(&descs, &avail));
    let ours = drain(&ring.mem, &ring.layout, Impl::Ours, 100);
    let Drained::Chains(v) = &ours else {
        panic!("the layout is usable: {ours:?}");
    };
    assert_eq!(v.len(), 8, "{v:?}");
    assert!(v.iter().all(|(_, r)| r.is_ok()), "{v:?}");
    ring.compare().expect("same as the reference");
}

#[test]
fn a_loop_and_a_runaway_index_are_seen_alike() {
    // Descriptor 0 chains to itself (NEXT, next 0), the rest are plain.
    let mut descs: Vec<(u8, u8)> = (0..8).map(|_| (0, 0)).collect();
    descs[0] = (1, 0);
    // The available index 9 ahead on a queue of 8.
    let ring = HostileRing::from_bytes(&ring_bytes(&descs, &[1]));
    let ours = drain(&ring.mem, &ring.layout, Impl::Ours, 100);
    assert_eq!(ours, Drained::RanAhead(Vec::new()));
    ring.compare().expect("same as the reference");
    // One chain available: head 0, the loop.
    let ring = HostileRing::from_bytes(&ring_bytes(&descs, &[2, 1, 1, 0]));
    let got = drain(&ring.mem, &ring.layout, Impl::Ours, 100);
    assert_eq!(got, Drained::Chains(vec![(0, Err(ChainError::Broken))]));
    ring.compare().expect("same as the reference");
}

#[test]
fn misaligned_rings_are_not_compared() {
    let l = Layout {
        size: 8,
        desc: 0x1001,
        avail: 0x2000,
        used: 0x3000,
        base: 0,
        dir: Direction::Read,
        max_bytes: 1500,
    };
    let mem = net_virtio::mock::guest_memory(1 << 20);
    assert_eq!(drain(&mem, &l, Impl::Ours, 10), Drained::BadRings);
    assert_eq!(drain(&mem, &l, Impl::Reference, 10), Drained::BadRings);
}
