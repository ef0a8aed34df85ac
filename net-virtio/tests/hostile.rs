//! A hostile guest: each malformed ring or chain is survived, counted, and leaves the device
//! usable (or in NEEDS_RESET where the spec says so, from which a reset recovers). No test
//! may hang: every pump call is bounded.

mod common;

use common::harness::*;
use net_api::loopback::LoopbackConfig;
use net_api::{Backend as _, MacAddr, QueuePair as _, VirtioNetHdr};
use net_virtio::mock::{Desc, MockDriver};
use net_virtio::{DeviceConfig, DeviceError, NetDevice, PumpStats, MAX_FRAME_LEN};
use virtio_bindings::virtio_config as vc;
use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const TX: u16 = 1;
const RX: u16 = 0;

fn frame(len: usize, tag: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8) ^ tag).collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn basic(features: u64) -> Rig {
    rig(LoopbackConfig::default(), DeviceConfig::default(), features)
}

fn tx_stats(r: &Rig) -> PumpStats {
    r.dev.stats().pairs[0].1
}

fn rx_stats(r: &Rig) -> PumpStats {
    r.dev.stats().pairs[0].0
}

/// A good frame still goes both ways: the device is usable.
fn still_works(r: &mut Rig) {
    assert!(!r.dev.needs_reset());
    let f = frame(200, 0x5a);
    r.guest_send(0, &VirtioNetHdr::PLAIN, &f, &[]);
    let got = r.peer_recv(0);
    assert_eq!(got.last().map(|g| &g.1), Some(&f), "transmit still works");
    r.post_rx(0, 4);
    let mut g = frame(300, 0x11);
    g[..6].copy_from_slice(&[0xff; 6]);
    r.peer_send(0, VirtioNetHdr::PLAIN, &g);
    r.backend_rx(0);
    let got = r.guest_recv(0);
    assert_eq!(
        got.last().map(|g| &g.frame),
        Some(&g),
        "receive still works"
    );
}

/// Writes a raw chain of descriptors at table indices `ids` and publishes its head.
fn raw_chain(r: &mut Rig, q: u16, ids: &[u16], descs: &[(u64, u32, u16)]) {
    for (i, (&id, &(addr, len, flags))) in ids.iter().zip(descs).enumerate() {
        let next = ids.get(i + 1).copied().unwrap_or(0);
        r.drv.queues[usize::from(q)].write_desc(&r.drv.mem, id, addr, len, flags, next);
    }
    let mem = r.drv.mem.clone();
    r.drv.queues[usize::from(q)].publish(&mem, ids[0]);
}

fn tx_bytes(r: &mut Rig, f: &[u8]) -> u64 {
    let layout = r.drv.layout();
    let mut b = vec![0u8; layout.size()];
    layout.encode(&VirtioNetHdr::PLAIN, &mut b).expect("hdr");
    b.extend_from_slice(f);
    let a = r.drv.alloc(b.len() as u32);
    r.drv.write(a, &b);
    a
}

#[test]
fn descriptor_loop_is_cut_counted_and_completed() {
    let mut r = basic(v1());
    let a = tx_bytes(&mut r, &frame(100, 1));
    // 250 -> 251 -> 250 -> ...
    r.drv.queues[1].write_desc(&r.drv.mem, 250, a, 50, NEXT, 251);
    r.drv.queues[1].write_desc(&r.drv.mem, 251, a + 50, 62, NEXT, 250);
    let mem = r.drv.mem.clone();
    r.drv.queues[1].publish(&mem, 250);
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert_eq!(tx_stats(&r).bad_chains, 1);
    let used = r.drv.queues[1].take_used(&r.drv.mem);
    assert_eq!((used[0].0, used[0].1), (250, 0), "completed with length 0");
    assert!(r.peer_recv(0).is_empty());
    still_works(&mut r);
}

#[test]
fn chain_longer_than_the_queue_is_refused() {
    let mut r = rig(
        LoopbackConfig::default(),
        DeviceConfig {
            max_queue_size: 256,
            ..Default::default()
        },
        v1() | f(virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC),
    );
    // An indirect table of 300 one-byte descriptors in a 256-entry queue.
    let f = frame(300, 2);
    let a = tx_bytes(&mut r, &f);
    let descs: Vec<Desc> = (0..300u64)
        .map(|i| Desc {
            addr: a + i,
            len: 1,
            write: false,
        })
        .collect();
    let table = r.drv.alloc(16 * 300);
    let mem = r.drv.mem.clone();
    r.drv.queues[1]
        .add_indirect(&mem, table, &descs)
        .expect("indirect");
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert_eq!(tx_stats(&r).bad_chains, 1);
    assert!(r.peer_recv(0).is_empty());
    still_works(&mut r);
}

#[test]
fn zero_length_descriptors_are_skipped_and_an_all_empty_chain_refused() {
    let mut r = basic(v1());
    let f = frame(100, 3);
    let a = tx_bytes(&mut r, &f);
    raw_chain(
        &mut r,
        TX,
        &[240, 241, 242, 243],
        &[(a, 0, NEXT), (a, 40, NEXT), (0, 0, NEXT), (a + 40, 72, 0)],
    );
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert_eq!(
        r.peer_recv(0).into_iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![f]
    );
    raw_chain(&mut r, TX, &[244, 245], &[(a, 0, NEXT), (a, 0, 0)]);
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert_eq!(tx_stats(&r).bad_chains, 1);
    still_works(&mut r);
}

#[test]
fn header_spread_over_many_descriptors_at_odd_offsets() {
    // The DPDK CVE-2022-2132 class: the header in 1-byte pieces, odd addresses.
    for features in [v1(), v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF), 0] {
        let mut r = basic(features | f(vn::VIRTIO_NET_F_CSUM));
        let f = frame(1000, 4);
        let hdr_len = r.drv.layout().size() as u32;
        let cuts: Vec<u32> = std::iter::repeat_n(1, hdr_len as usize + 3).collect();
        r.guest_send(0, &VirtioNetHdr::PLAIN, &f, &cuts);
        assert_eq!(
            r.peer_recv(0).into_iter().map(|g| g.1).collect::<Vec<_>>(),
            vec![f]
        );
        assert_eq!(tx_stats(&r).bad_headers, 0);
    }
}

#[test]
fn write_only_descriptor_on_transmit_is_refused() {
    let mut r = basic(v1());
    let a = tx_bytes(&mut r, &frame(100, 5));
    raw_chain(
        &mut r,
        TX,
        &[250, 251],
        &[(a, 12, NEXT), (a + 12, 100, WRITE)],
    );
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert_eq!(tx_stats(&r).wrong_direction, 1);
    assert!(r.peer_recv(0).is_empty());
    still_works(&mut r);
}

#[test]
fn read_only_descriptor_on_receive_is_completed_with_zero() {
    let mut r = basic(v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF));
    let a = r.drv.alloc(2048);
    raw_chain(
        &mut r,
        RX,
        &[250, 251],
        &[(a, 1024, WRITE | NEXT), (a + 1024, 1024, 0)],
    );
    r.drv.kick(&mut r.dev, RX).expect("kick");
    assert_eq!(rx_stats(&r).wrong_direction, 1);
    let used = r.drv.queues[0].take_used(&r.drv.mem);
    assert_eq!((used[0].0, used[0].1), (250, 0));
    still_works(&mut r);
}

#[test]
fn addresses_outside_guest_memory_are_refused() {
    let mut r = basic(v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF));
    raw_chain(&mut r, TX, &[250], &[(MEM - 10, 100, 0)]);
    raw_chain(&mut r, TX, &[251], &[(u64::MAX - 5, 100, 0)]);
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert_eq!(tx_stats(&r).bad_addresses, 2);
    raw_chain(&mut r, RX, &[252], &[(MEM + 4096, 2048, WRITE)]);
    r.drv.kick(&mut r.dev, RX).expect("kick");
    assert_eq!(rx_stats(&r).bad_addresses, 1);
    still_works(&mut r);
}

#[test]
fn buffers_straddling_two_memory_regions_work() {
    let mut r = basic(v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF));
    let boundary = MEM / 2;
    let f = frame(1000, 6);
    let layout = r.drv.layout();
    let mut b = vec![0u8; layout.size()];
    layout.encode(&VirtioNetHdr::PLAIN, &mut b).expect("hdr");
    b.extend_from_slice(&f);
    let a = boundary - 501;
    r.drv.write(a, &b);
    raw_chain(&mut r, TX, &[250], &[(a, b.len() as u32, 0)]);
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert_eq!(
        r.peer_recv(0).into_iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![f.clone()]
    );
    // Receive into a buffer across the boundary.
    raw_chain(&mut r, RX, &[251], &[(boundary - 333, 1536, WRITE)]);
    r.drv.kick(&mut r.dev, RX).expect("kick");
    r.peer_send(0, VirtioNetHdr::PLAIN, &f);
    r.backend_rx(0);
    let mut got = vec![0u8; f.len()];
    r.drv
        .mem
        .read_slice(&mut got, GuestAddress(boundary - 333 + 12))
        .expect("read");
    assert_eq!(got, f);
}

#[test]
fn indirect_table_inside_an_indirect_table_is_refused() {
    let mut r = basic(v1() | f(virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC));
    let a = tx_bytes(&mut r, &frame(100, 7));
    let inner = r.drv.alloc(32);
    let outer = r.drv.alloc(32);
    let mem = r.drv.mem.clone();
    // Inner table: one plain descriptor. Outer table: a plain one, then one pointing at the
    // inner table.
    let put = |at: u64, addr: u64, len: u32, flags: u16, next: u16| {
        mem.write_obj(addr.to_le(), GuestAddress(at)).expect("w");
        mem.write_obj(len.to_le(), GuestAddress(at + 8)).expect("w");
        mem.write_obj(flags.to_le(), GuestAddress(at + 12))
            .expect("w");
        mem.write_obj(next.to_le(), GuestAddress(at + 14))
            .expect("w");
    };
    put(inner, a + 12, 100, 0, 0);
    put(outer, a, 12, NEXT, 1);
    put(outer + 16, inner, 16, INDIRECT, 0);
    raw_chain(&mut r, TX, &[250], &[(outer, 32, INDIRECT)]);
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert_eq!(tx_stats(&r).bad_chains, 1);
    assert!(r.peer_recv(0).is_empty());
    still_works(&mut r);
}

#[test]
fn ring_index_that_jumps_sets_needs_reset_and_a_reset_recovers() {
    let mut r = basic(v1() | f(vn::VIRTIO_NET_F_STATUS));
    r.drv.queues[1].set_avail_idx(&r.drv.mem, 1000);
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert!(
        r.dev.needs_reset(),
        "avail index 1000 ahead of a 256-entry ring"
    );
    assert_eq!(
        r.dev.status() & vc::VIRTIO_CONFIG_S_NEEDS_RESET as u8,
        vc::VIRTIO_CONFIG_S_NEEDS_RESET as u8
    );
    assert_eq!(
        r.irq_count(net_virtio::IrqCause::Config),
        1,
        "the driver is told"
    );
    assert!(r
        .dev
        .watches()
        .iter()
        .all(|w| matches!(w.event, net_virtio::Event::Kick(_))));
    // The driver resets and starts again.
    let features = r.drv.features;
    let mut drv = MockDriver::new(MEM, r.dev.num_queues(), QSIZE);
    drv.start(&mut r.dev, features).expect("restart");
    r.drv = drv;
    still_works(&mut r);
    assert_eq!(r.dev.stats().needs_reset, 1);
}

#[test]
fn the_same_head_published_again_cannot_overflow_the_used_ring() {
    let mut r = basic(v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF));
    let a = r.drv.alloc(1536);
    r.drv.queues[0].write_desc(&r.drv.mem, 250, a, 1536, WRITE, 0);
    let mem = r.drv.mem.clone();
    for _ in 0..QSIZE {
        r.drv.queues[0].publish(&mem, 250);
    }
    r.drv.kick(&mut r.dev, RX).expect("kick");
    for i in 0..600u32 {
        r.peer_send(0, VirtioNetHdr::PLAIN, &frame(100, i as u8));
    }
    r.backend_rx(0);
    for _ in 0..4 {
        r.backend_rx(0);
    }
    // One used entry per published entry at most, never more.
    let used = r.drv.queues[0].used_idx(&r.drv.mem);
    assert_eq!(used, QSIZE, "each available entry used once");
    assert!(!r.dev.needs_reset());
}

#[test]
fn header_length_comes_only_from_the_acked_features() {
    // The QEMU CVE-2023-6693 class: VERSION_1, MRG_RXBUF and HASH_REPORT combinations.
    for (features, want) in [
        (0, 10usize),
        (f(vn::VIRTIO_NET_F_MRG_RXBUF), 12),
        (v1(), 12),
        (v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF), 12),
        // HASH_REPORT is never offered: acking it changes nothing.
        (v1() | f(vn::VIRTIO_NET_F_HASH_REPORT), 12),
    ] {
        let mut r = basic(features);
        assert_eq!(r.drv.features & f(vn::VIRTIO_NET_F_HASH_REPORT), 0);
        assert_eq!(r.drv.layout().size(), want);
        // Receive into one buffer filled with a marker: the frame starts right after the
        // header, the header is exactly `want` bytes.
        let a = r.drv.alloc(2048);
        r.drv.write(a, &[0xcc; 2048]);
        raw_chain(&mut r, RX, &[250], &[(a, 2048, WRITE)]);
        r.drv.kick(&mut r.dev, RX).expect("kick");
        let f = frame(100, 8);
        r.peer_send(0, VirtioNetHdr::PLAIN, &f);
        r.backend_rx(0);
        let used = r.drv.queues[0].take_used(&r.drv.mem);
        assert_eq!(used[0].1 as usize, want + f.len());
        let mut got = vec![0u8; want + f.len() + 1];
        r.drv
            .mem
            .read_slice(&mut got, GuestAddress(a))
            .expect("read");
        assert_eq!(&got[want..want + f.len()], &f[..]);
        assert_eq!(got[want + f.len()], 0xcc, "nothing written past the frame");
    }
}

#[test]
fn oversized_transmit_frames_are_dropped_before_any_allocation() {
    let mut r = basic(v1());
    // 65562 + 1 bytes in total.
    let big = 12 + MAX_FRAME_LEN as u32 + 1;
    let a = r.drv.alloc(big);
    raw_chain(&mut r, TX, &[250], &[(a, big, 0)]);
    // Lengths whose u32 sum overflows.
    raw_chain(
        &mut r,
        TX,
        &[251, 252],
        &[(0x100_0000, u32::MAX - 8, NEXT), (0x100_0000, 100, 0)],
    );
    r.drv.kick(&mut r.dev, TX).expect("kick");
    assert_eq!(tx_stats(&r).too_large, 2);
    assert!(r.peer_recv(0).is_empty());
    still_works(&mut r);
}

#[test]
fn receive_buffers_below_the_minimum_are_returned_empty_without_livelock() {
    let mut r = basic(v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF));
    for _ in 0..200 {
        r.drv.post_rx(RX, &[4]).expect("tiny buffer");
    }
    r.drv.kick(&mut r.dev, RX).expect("kick");
    let used = r.drv.queues[0].take_used(&r.drv.mem);
    assert_eq!(used.len(), 200);
    assert!(used.iter().all(|u| u.1 == 0));
    assert_eq!(rx_stats(&r).short_buffers, 200);
    still_works(&mut r);
}

#[test]
fn queue_setup_is_checked_and_frozen_after_driver_ok() {
    let (host, _peer) = net_api::loopback::pair(LoopbackConfig {
        queue_pairs: 2,
        ..Default::default()
    })
    .expect("pair");
    let irq: Irq = Box::new(|_| Ok(()));
    let mut dev = NetDevice::new(
        host,
        DeviceConfig {
            queue_pairs: 2,
            ..Default::default()
        },
        irq,
    )
    .expect("device");
    assert!(matches!(
        dev.set_queue_size(0, 0),
        Err(DeviceError::InvalidQueueSize { .. })
    ));
    assert!(matches!(
        dev.set_queue_size(0, 100),
        Err(DeviceError::InvalidQueueSize { .. })
    ));
    assert!(matches!(
        dev.set_queue_size(0, 512),
        Err(DeviceError::InvalidQueueSize { .. })
    ));
    assert!(matches!(
        dev.set_queue_size(9, 64),
        Err(DeviceError::NoSuchQueue { .. })
    ));
    assert!(matches!(
        dev.set_queue_addresses(0, 0x1001, 0, 0),
        Err(DeviceError::InvalidQueueAddress { .. })
    ));
    // Features acked, dependency missing (HOST_TSO4 without CSUM): FEATURES_OK does not stick.
    let mem = net_virtio::mock::guest_memory(MEM);
    dev.set_status(3, &mem).expect("ack");
    dev.ack_features(v1() | f(vn::VIRTIO_NET_F_HOST_TSO4))
        .expect("ack");
    assert!(dev
        .set_status(3 | vc::VIRTIO_CONFIG_S_FEATURES_OK as u8, &mem)
        .is_err());
    assert_eq!(dev.status() & vc::VIRTIO_CONFIG_S_FEATURES_OK as u8, 0);

    let mut r = rig(
        LoopbackConfig {
            queue_pairs: 2,
            ..Default::default()
        },
        DeviceConfig {
            queue_pairs: 2,
            ..Default::default()
        },
        everything(),
    );
    assert!(matches!(
        r.dev.set_queue_size(0, 64),
        Err(DeviceError::Running { .. })
    ));
    assert!(matches!(
        r.dev.set_queue_addresses(1, 0, 0x1000, 0x2000),
        Err(DeviceError::Running { .. })
    ));
    assert!(matches!(
        r.dev.set_queue_ready(0, false),
        Err(DeviceError::Running { .. })
    ));
    assert!(matches!(
        r.dev.ack_features(0),
        Err(DeviceError::FeaturesLocked)
    ));
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_MQ,
            vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &3u16.to_le_bytes()
        ),
        Some(1)
    );
    still_works(&mut r);
}

#[test]
fn rings_outside_guest_memory_at_driver_ok_need_reset() {
    let (host, _peer) = net_api::loopback::pair(LoopbackConfig::default()).expect("pair");
    let irq: Irq = Box::new(|_| Ok(()));
    let mut dev = NetDevice::new(host, DeviceConfig::default(), irq).expect("device");
    let mem = net_virtio::mock::guest_memory(MEM);
    dev.set_status(3, &mem).expect("status");
    dev.ack_features(v1()).expect("ack");
    dev.set_status(3 | 8, &mem).expect("features ok");
    for q in 0..3 {
        dev.set_queue_addresses(q, MEM + 0x1000, MEM + 0x4000, MEM + 0x8000)
            .expect("addresses");
        dev.set_queue_ready(q, true).expect("ready");
    }
    assert!(matches!(
        dev.set_status(3 | 8 | 4, &mem),
        Err(DeviceError::QueueNotUsable { index: 0 })
    ));
    assert!(dev.needs_reset());
}

#[test]
fn control_chain_without_room_for_the_ack_is_refused() {
    let mut r = basic(everything());
    let c = r.ctrl_index();
    let a = r.drv.alloc(3);
    r.drv.write(a, &[0, 0, 1]);
    raw_chain(&mut r, c, &[250], &[(a, 3, 0)]);
    r.drv.kick(&mut r.dev, c).expect("kick");
    assert_eq!(r.dev.stats().ctrl.bad_chains, 1);
    // A command after its ack byte (readable after writable) is refused too.
    let b = r.drv.alloc(4);
    raw_chain(
        &mut r,
        c,
        &[251, 252],
        &[(b, 1, WRITE | NEXT), (b + 1, 3, 0)],
    );
    r.drv.kick(&mut r.dev, c).expect("kick");
    assert_eq!(r.dev.stats().ctrl.bad_chains, 2);
    // An ack buffer running past the end of guest memory: refused, and the command (promisc
    // off) is not applied.
    let cmd = r.drv.alloc(3);
    r.drv.write(cmd, &[0, 0, 0]);
    raw_chain(
        &mut r,
        c,
        &[253, 254],
        &[(cmd, 3, NEXT), (MEM - 16, 64, WRITE)],
    );
    r.drv.kick(&mut r.dev, c).expect("kick");
    assert_eq!(r.dev.stats().ctrl.bad_chains, 3);
    assert!(r.dev.rx_filter().promiscuous, "not applied");
    assert_eq!(
        r.ctrl(vn::VIRTIO_NET_CTRL_RX, vn::VIRTIO_NET_CTRL_RX_PROMISC, &[1]),
        Some(0)
    );
}

#[test]
fn mac_address_set_refuses_a_multicast_address() {
    let mut r = basic(everything());
    let m = MacAddr([0x01, 0, 0x5e, 0, 0, 1]);
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_MAC,
            vn::VIRTIO_NET_CTRL_MAC_ADDR_SET,
            &m.0
        ),
        Some(1)
    );
}

#[test]
fn a_frame_larger_than_every_buffer_the_ring_can_hold_is_dropped_not_spun_on() {
    let (host, mut net) = net_api::loopback::pair(LoopbackConfig {
        vnet_hdr: true,
        offloads: net_api::OffloadSet::ALL,
        ..Default::default()
    })
    .expect("pair");
    let irq: Irq = Box::new(|_| Ok(()));
    let mut dev = NetDevice::new(host, DeviceConfig::default(), irq).expect("device");
    // An 8-entry ring of 100-byte buffers, with guest GSO (frames up to 64 KiB).
    let mut drv = MockDriver::new(MEM, dev.num_queues(), 8);
    drv.start(&mut dev, everything()).expect("start");
    let mut peer = net.open_queue_pair(0).expect("peer");
    for _ in 0..8 {
        drv.post_rx(RX, &[100]).expect("buffer");
    }
    drv.force_kick(&mut dev, RX).expect("kick");
    let (hdr, big) = net_virtio::test_utils::GuestFrame::tso4_64k().build();
    let small = frame(60, 9);
    for (h, f) in [(hdr, &big), (VirtioNetHdr::PLAIN, &small)] {
        let data = [net_api::IoBuf::from_slice(f)];
        peer.send(&[net_api::TxFrame {
            hdr: h,
            data: &data,
        }])
        .expect("send");
    }
    // The hostile part: the same head published again and again.
    let mem = drv.mem.clone();
    let head = 0;
    for _ in 0..20 {
        drv.queues[0].publish(&mem, head);
        dev.handle(net_virtio::Event::BackendRx(0), &drv.mem)
            .expect("rx");
        dev.handle(net_virtio::Event::Kick(0), &drv.mem)
            .expect("kick");
    }
    let rx = dev.stats().pairs[0].0;
    assert_eq!(
        rx.too_large, 1,
        "the 64 KiB frame could never fit: dropped once"
    );
    assert!(rx.frames >= 1, "the small frame got through");
}

#[test]
fn a_failing_backend_loses_no_guest_chain() {
    // A backend whose `send` fails on demand.
    let faults = Faults::default();
    let fail = faults.fail_send.clone();
    let (host, mut net) = net_api::loopback::pair(LoopbackConfig::default()).expect("pair");
    let irq: Irq = Box::new(|_| Ok(()));
    let mut dev =
        NetDevice::new(Misbehaving(host, faults), DeviceConfig::default(), irq).expect("device");
    let mut drv = MockDriver::new(MEM, dev.num_queues(), QSIZE);
    drv.start(&mut dev, v1()).expect("start");
    let mut peer = net.open_queue_pair(0).expect("peer");
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100, i)).collect();
    for f in &frames {
        drv.send(TX, &VirtioNetHdr::PLAIN, f, &[]).expect("chain");
    }
    fail.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        drv.force_kick(&mut dev, TX).is_err(),
        "the backend error reaches the VMM"
    );
    assert!(drv.queues[1].take_used(&drv.mem).is_empty());
    fail.store(false, std::sync::atomic::Ordering::Relaxed);
    drv.force_kick(&mut dev, TX).expect("kick");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some(g) = peer
        .recv(&[net_api::IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv")
    {
        got.push(buf[..g.len].to_vec());
    }
    assert_eq!(got, frames, "each frame once, in order");
    assert_eq!(drv.queues[1].take_used(&drv.mem).len(), 3);
}
