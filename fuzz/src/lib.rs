//! The fuzz harnesses, as plain functions so that the seed corpus also runs under
//! `cargo test` (see `tests/corpus.rs`) without libFuzzer.

pub mod device;

use net_api::OffloadSet;
use net_virtio::test_utils::backend_caps;
use net_virtio::{HdrLayout, RxTranslator, SoftFrame, TxTranslator, HEAD_LEN, MAX_SEGMENT_HEADERS};

/// Largest input the harness looks at: one virtio-net buffer (header and a 64 KiB frame).
pub const MAX_INPUT: usize = 65562 + 20;

/// Input layout: byte 0 picks the header layout and the guest's receive offloads, then the
/// header in that layout, then the frame.
///
/// Decodes the header, routes the frame for three backend shapes, runs the software path and
/// builds every segment, then the receive path. Checks that segments stay inside their
/// buffers and that nothing but the one frame-sized copy is allocated.
pub fn header_translate(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let layout = match sel & 3 {
        0 => HdrLayout::Legacy,
        1 => HdrLayout::LegacyMrg,
        2 => HdrLayout::V1,
        _ => HdrLayout::V1Hash,
    };
    let Ok(hdr) = layout.decode(rest) else {
        return;
    };
    let frame = &rest[layout.size()..];
    if frame.len() > MAX_INPUT {
        return;
    }
    let head = &frame[..frame.len().min(HEAD_LEN)];
    let mut copy = Vec::with_capacity(frame.len());
    for backend in [
        backend_caps(true, OffloadSet::ALL),
        backend_caps(true, OffloadSet::CSUM),
        backend_caps(false, OffloadSet::NONE),
    ] {
        let tx = TxTranslator::new(&backend);
        let routed = tx.route(&hdr, frame.len(), head);
        copy.clear();
        copy.extend_from_slice(frame);
        let soft = tx.software(&hdr, &mut copy);
        // Both paths agree on whether the frame is valid.
        assert_eq!(
            routed.is_ok(),
            soft.is_ok(),
            "route {routed:?} vs software {soft:?}"
        );
        if let Ok(SoftFrame::Segments(seg)) = soft {
            let mut headers = [0u8; MAX_SEGMENT_HEADERS];
            let mut total = 0usize;
            for k in 0..seg.count() {
                let s = seg.segment(k, &copy, &mut headers);
                assert!(s.header_len <= MAX_SEGMENT_HEADERS);
                assert!(s.payload.start <= s.payload.end && s.payload.end <= copy.len());
                total += s.payload.len();
            }
            assert!(total <= copy.len(), "segments cover the frame at most once");
        }
    }
    let rx = RxTranslator::new(OffloadSet::from_bits_truncate(sel >> 2));
    let routed = rx.route(&hdr, frame.len(), head);
    copy.clear();
    copy.extend_from_slice(frame);
    let soft = rx.software(&hdr, &mut copy);
    assert_eq!(routed.is_ok(), soft.is_ok());
}

/// Seed inputs: valid frames of every GSO type and header layout.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use net_api::GsoType;
    use net_virtio::test_utils::GuestFrame;
    let specs = [
        (
            "tso4",
            GuestFrame {
                payload_len: 4000,
                gso: GsoType::TcpV4,
                ..GuestFrame::default()
            },
        ),
        (
            "tso6-vlan-ecn",
            GuestFrame {
                ipv6: true,
                vlan: true,
                ecn: true,
                payload_len: 3000,
                gso: GsoType::TcpV6,
                gso_size: 1000,
                ..GuestFrame::default()
            },
        ),
        (
            "uso4",
            GuestFrame {
                tcp: false,
                payload_len: 3000,
                gso: GsoType::UdpL4,
                gso_size: 1000,
                ..GuestFrame::default()
            },
        ),
        (
            "ufo6",
            GuestFrame {
                ipv6: true,
                tcp: false,
                payload_len: 3000,
                gso: GsoType::Udp,
                gso_size: 1000,
                ..GuestFrame::default()
            },
        ),
        (
            "csum-tcp",
            GuestFrame {
                payload_len: 200,
                ..GuestFrame::default()
            },
        ),
        (
            "tso4-options",
            GuestFrame {
                tcp_options: 12,
                payload_len: 2000,
                gso: GsoType::TcpV4,
                gso_size: 536,
                ..GuestFrame::default()
            },
        ),
    ];
    let mut out = Vec::new();
    for (name, spec) in specs {
        let (hdr, frame) = spec.build();
        for (sel, layout) in [(0u8, HdrLayout::Legacy), (2, HdrLayout::V1)] {
            let mut input = vec![sel];
            let mut wire = [0u8; 20];
            let n = layout
                .encode(&hdr, &mut wire)
                .expect("20 bytes hold any header");
            input.extend_from_slice(&wire[..n]);
            input.extend_from_slice(&frame);
            out.push((format!("seed-{name}-{sel}"), input));
        }
    }
    out
}

/// A hostile guest against the real device: arbitrary descriptor tables, ring indices and
/// guest memory fed to `net_virtio::NetDevice` (TX pump, RX pump, control queue) over the
/// loopback backend, through `net_virtio::mock::MockDriver`.
///
/// # Input
///
/// Missing bytes end the input (a missing header byte reads as 0).
///
/// - byte 0, setup: bits 0-1 queue size (4, 8, 32, 256); bit 2 two queue pairs (the device
///   offers `MQ`); bit 3 the loopback speaks virtio-net headers, with the offloads of bits 4-5
///   (`CSUM`, `CSUM|TSO4|TSO6`, all, none); bit 6 the loopback holds 2 frames per queue
///   (backpressure) instead of 256; bit 7 the device does not offer `MRG_RXBUF`.
/// - bytes 1-2 (LE), the features the driver acks, one bit per group ([`device::fsel`]):
///   `VERSION_1`, `MRG_RXBUF`, `EVENT_IDX`, `INDIRECT_DESC`, `CSUM`, `HOST_TSO4|6`,
///   `HOST_USO|UFO`, `HOST_ECN`, `CTRL_VQ`, `CTRL_RX|RX_EXTRA`, `CTRL_VLAN`, `MQ`,
///   `CTRL_GUEST_OFFLOADS`, every `GUEST_*` offload, `CTRL_MAC_ADDR|GUEST_ANNOUNCE`,
///   `STATUS|MAC|MTU`. They are masked to the offer and any feature whose dependency is
///   missing is dropped, so the driver always gets to `DRIVER_OK`.
/// - then up to [`device::MAX_OPS`] operations: an opcode byte (modulo [`device::OPS`]) and
///   its arguments, see [`device::op`]: write a descriptor into a queue's table or anywhere
///   (indirect tables), write raw bytes, write a template (a frame of 8 kinds with its header
///   in the negotiated layout, or one of 10 control commands), publish a head, set the
///   available index (a step forward, or any value), set `used_event`, kick a queue (any
///   transport index, one beyond), a backend RX/TX event, the peer sends frames or drains
///   its queues, reset (with or without restart, with fresh or stale rings), send a template
///   as a chain of 1-5 descriptors (split header, indirect, wrong direction), queue a
///   control command chain (split, long or read-only ack, on another queue), post receive
///   buffers, announce or switch the link.
///
/// Guest memory is 8 MiB in two 4 MiB regions; the rings are at 1 MiB.. (the mock's layout).
/// An address is a selector byte and a u16 offset: from `HEAP` (3 MiB, selectors 0-2), from
/// 32 KiB below the region boundary (3, so buffers straddle it), from a queue's descriptor
/// table (4, selector >> 3 picks the queue: buffers over the rings), from 32 KiB below the
/// end (5, buffers past it), from 0 (7); selector 6 takes a raw u64 instead. A length is a
/// mode byte: `m >> 2` (mode 0), a u16 (1), a u32 (2), or `16 * (m >> 2)` (3, tables).
///
/// # Checks
///
/// No panic, and no error from `handle` (the loopback never fails). After every device call:
/// nothing completes while the device is stopped or in `NEEDS_RESET`, nor on a queue without
/// a role; every TX used entry has an id below the queue size and length 0; control used
/// entries have an id below the queue size and a length of at most 1; on TX and control
/// queues the used index never advances by more than the entries the driver made available
/// since the reset (nor by more than a queue and one in one call). Before each control kick
/// a reference walk of the pending chains (virtio-queue's iteration and the device's chain
/// rules) predicts the used entries exactly, in order (length 1 for a well-formed chain whose
/// ack buffer is guest memory, 0 otherwise), and every ack byte written is 0 or 1; a ring
/// whose available index runs more than a queue ahead must put the device in `NEEDS_RESET`
/// with nothing completed. (The prediction is skipped, and the count check for that queue
/// until the next reset, when an ack would land on the rings or on a descriptor, or a
/// descriptor lies in the used ring: the device then reads what it wrote during the kick. RX
/// entries are not read back: the device writes frames wherever the guest says, the used
/// ring included.) At the end, whatever happened: reset and restart on fresh rings succeed,
/// and a well-formed frame goes from the guest to the peer and one from the peer to the
/// guest.
pub fn virtio_device(data: &[u8]) {
    device::run(data);
}

/// Seed inputs for [`virtio_device`]: frames with a split header, software GSO, control
/// commands (MAC table, multiqueue), a descriptor loop, an available index jump and reset,
/// indirect chains (and a nested one), receive, backpressure, buffers across the region
/// boundary and outside memory, an ack over the used ring.
pub fn device_seeds() -> Vec<(String, Vec<u8>)> {
    device::seeds()
}

/// Our split ring and chain walker against `virtio-queue` on a hostile driver's queue built
/// from the bytes (`net_virtio::reference::HostileRing`): the same verdict for every chain,
/// the same bytes read and written through our guest buffers as through vm-memory, the same
/// used ring. Under AddressSanitizer this also checks every raw access of `net_virtio::mem`
/// and `net_api::iovec`.
pub fn ring_differential(data: &[u8]) {
    let ring = net_virtio::reference::HostileRing::from_bytes(data);
    if let Err(e) = ring.compare() {
        panic!("{e}\nlayout {:?}", ring.layout);
    }
}

/// Seeds for [`ring_differential`]: plain rings of each size, a loop, a runaway index,
/// indirect tables.
pub fn ring_seeds() -> Vec<(String, Vec<u8>)> {
    let plain = |size_sel: u8, n: u8| {
        // size, rings in place, base 0, read, 65562 bytes, then descriptors.
        let mut v = vec![size_sel, 4, 4, 4, 1, 0, 1];
        for i in 0..(1u16 << size_sel) {
            v.extend_from_slice(&[6, 0, i as u8, 0, 0, 3, 64, 0, 0, 1, 1, 0]);
        }
        v.extend_from_slice(&[1; 64]);
        v.extend_from_slice(&[2, n]);
        for i in 0..n {
            v.extend_from_slice(&[1, i]);
        }
        v
    };
    let mut looped = plain(3, 1);
    // Descriptor 0: NEXT, next 0.
    looped[7 + 8] = 1;
    let mut indirect = plain(2, 2);
    // Descriptor 0: INDIRECT (flags byte 0x10) pointing at a plausible table.
    indirect[7 + 8] = 0x10;
    indirect.insert(7 + 12, 0);
    vec![
        ("seed-plain-8".into(), plain(3, 8)),
        ("seed-plain-256".into(), plain(8, 200)),
        ("seed-loop".into(), looped),
        ("seed-runaway".into(), {
            let mut v = plain(3, 0);
            let n = v.len();
            v[n - 2] = 1;
            v
        }),
        ("seed-indirect".into(), indirect),
        ("seed-empty".into(), Vec::new()),
    ]
}

/// A hostile frontend's vhost-user messages through the daemon's parser and session state
/// machine (`net_vhostuser::harness`): whatever the bytes, nothing panics, every fd is taken
/// or closed, and a refusal ends the session as the daemon would.
pub fn vhost_user_messages(data: &[u8]) {
    let _ = net_vhostuser::harness::drive(data);
}

/// Seeds for [`vhost_user_messages`]: QEMU's start sequence for one queue pair, the same with
/// the ring enables before the features (QEMU 7.2), and one with a truncated memory file.
pub fn vhost_user_seeds() -> Vec<(String, Vec<u8>)> {
    fn msg(req: u32, flags: u32, fdsel: u8, body: &[u8]) -> Vec<u8> {
        let mut v = req.to_le_bytes().to_vec();
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.push(fdsel);
        v.extend_from_slice(body);
        v
    }
    fn words(w: &[u64]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn state(index: u32, num: u32) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&num.to_le_bytes());
        b
    }
    // fd selectors: count in the low 3 bits, kind = (sel >> 3 ^ i) % 4: 0 eventfd, 1 memfd
    // of (sel >> 3 ^ i) / 4 % 8 pages.
    let eventfd = 1; // one fd of kind 0
    let memfd_4_pages = 1 | ((1 + 4 * 4) << 3); // kind 1, 4 pages
    let memfd_short = 1 | ((1 + 4) << 3); // kind 1, 1 page
    let table = |size: u64| {
        let mut b = 1u32.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&words(&[0, size, 0x7f00_0000_0000, 0]));
        b
    };
    let v = 1u32; // version
    let ring = |i: u32| {
        let mut s = Vec::new();
        s.extend(msg(8, v, 0, &state(i, 64)));
        let mut addr = i.to_le_bytes().to_vec();
        addr.extend_from_slice(&0u32.to_le_bytes());
        let base = 0x7f00_0000_0000u64 + u64::from(i) * 0x1000;
        addr.extend_from_slice(&words(&[base, base + 0x800, base + 0x400, 0]));
        s.extend(msg(9, v, 0, &addr));
        s.extend(msg(10, v, 0, &state(i, 0)));
        s.extend(msg(13, v, eventfd, &u64::from(i).to_le_bytes()));
        s.extend(msg(12, v, eventfd, &u64::from(i).to_le_bytes()));
        s.extend(msg(18, v | 8, 0, &state(i, 1)));
        s
    };
    let features = (1u64 << 32) | (1 << 30) | (1 << 15);
    let start = |early_enable: bool, mem: u8, size: u64| {
        let mut s = Vec::new();
        s.extend(msg(3, v, 0, &[]));
        s.extend(msg(1, v, 0, &[]));
        s.extend(msg(15, v, 0, &[]));
        s.extend(msg(16, v, 0, &words(&[1 << 3 | 1])));
        if early_enable {
            s.extend(msg(18, v | 8, 0, &state(0, 1)));
            s.extend(msg(18, v | 8, 0, &state(1, 1)));
        }
        s.extend(msg(2, v, 0, &words(&[features])));
        s.extend(msg(5, v | 8, mem, &table(size)));
        s.extend(ring(0));
        s.extend(ring(1));
        s.extend(msg(11, v, 0, &state(0, 0)));
        s.extend(msg(11, v, 0, &state(1, 0)));
        s.extend(msg(34, v, 0, &[]));
        s
    };
    vec![
        ("seed-start".into(), start(false, memfd_4_pages, 4 * 4096)),
        (
            "seed-qemu72-order".into(),
            start(true, memfd_4_pages, 4 * 4096),
        ),
        (
            "seed-short-file".into(),
            start(false, memfd_short, 4 * 4096),
        ),
    ]
}
