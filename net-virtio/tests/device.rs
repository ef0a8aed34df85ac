//! The device end to end: a mock virtio-net driver over real guest memory, the device, and a
//! loopback backend whose other end plays the network.

mod common;

use common::harness::*;
use common::verify;
use net_api::hdr::NEEDS_CSUM;
use net_api::loopback::LoopbackConfig;
#[allow(unused_imports)]
use net_api::Backend as _;
use net_api::{DropReason, GsoType, MacAddr, OffloadSet, QueuePair, VirtioNetHdr};
use net_virtio::test_utils::GuestFrame;
use net_virtio::{DeviceConfig, Event, IrqCause};
use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring as vr;

const OK: Option<u8> = Some(0);
const ERR: Option<u8> = Some(1);

fn lb(offloads: bool, pairs: u16) -> LoopbackConfig {
    LoopbackConfig {
        queue_pairs: pairs,
        vnet_hdr: offloads,
        offloads: if offloads {
            OffloadSet::ALL
        } else {
            OffloadSet::NONE
        },
        ..Default::default()
    }
}

fn plain_frame(len: usize, dst: MacAddr, tag: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ tag).collect();
    f[..6].copy_from_slice(&dst.0);
    f[12] = 0x88;
    f[13] = 0xb5; // local experimental ethertype: nothing parses it
    f
}

const GUEST_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0a]);

#[test]
fn frames_cross_both_ways_for_every_feature_combination() {
    for offloads in [false, true] {
        for (name, features) in combos(offloads) {
            for pairs in [1u16, 4] {
                let ctx = format!("{name} offloads={offloads} pairs={pairs}");
                let mut r = rig(
                    lb(offloads, 4),
                    DeviceConfig {
                        queue_pairs: pairs,
                        ..Default::default()
                    },
                    features,
                );
                if pairs > 1 {
                    assert_eq!(
                        r.ctrl(
                            vn::VIRTIO_NET_CTRL_MQ,
                            vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                            &pairs.to_le_bytes()
                        ),
                        OK,
                        "{ctx}"
                    );
                    assert_eq!(r.dev.active_queue_pairs(), pairs);
                }
                for p in 0..pairs {
                    // Transmit: header split at odd offsets, frames in several pieces.
                    let cuts: [&[u32]; 4] = [
                        &[],
                        &[3, 7, 1],
                        &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 100],
                        &[20, 20, 20],
                    ];
                    let mut sent = Vec::new();
                    for (i, len) in [60usize, 61, 1000, 1514].into_iter().enumerate() {
                        let f = plain_frame(len, MacAddr::BROADCAST, i as u8 + p as u8);
                        r.guest_send(p, &VirtioNetHdr::PLAIN, &f, cuts[i]);
                        sent.push((VirtioNetHdr::PLAIN, f));
                    }
                    if offloads {
                        let (hdr, f) = GuestFrame {
                            seed: u32::from(p),
                            ..GuestFrame::tso4_64k()
                        }
                        .build();
                        r.guest_send(p, &hdr, &f, &[5, 1500, 7]);
                        sent.push((hdr, f));
                    }
                    let got = r.peer_recv(p);
                    assert_eq!(
                        got.len(),
                        sent.len(),
                        "{ctx}: frames at the peer {:?} {:?}",
                        r.dev.stats().pairs[usize::from(p)].1,
                        r.peer[usize::from(p)].stats()
                    );
                    for ((gh, gf), (sh, sf)) in got.iter().zip(&sent) {
                        assert_eq!(gf, sf, "{ctx}: frame bytes");
                        assert_eq!(gh.gso_type, sh.gso_type, "{ctx}");
                        assert_eq!(gh.gso_size, sh.gso_size, "{ctx}");
                        assert_eq!(gh.flags & NEEDS_CSUM, sh.flags & NEEDS_CSUM, "{ctx}");
                    }
                    let used = r.drv.queues[usize::from(2 * p + 1)].take_used(&r.drv.mem);
                    assert_eq!(used.len(), sent.len(), "{ctx}: every chain returned");

                    // Receive.
                    r.post_rx(p, 64);
                    let mut expect = Vec::new();
                    for (i, len) in [60usize, 1514, 333].into_iter().enumerate() {
                        let f = plain_frame(len, GUEST_MAC, 0x40 + i as u8);
                        assert_eq!(r.peer_send(p, VirtioNetHdr::PLAIN, &f), 1);
                        expect.push((GsoType::None, f));
                    }
                    if offloads {
                        let (hdr, f) = GuestFrame {
                            seed: 9,
                            ..GuestFrame::tso4_64k()
                        }
                        .build();
                        assert_eq!(r.peer_send(p, hdr, &f), 1);
                        expect.push((GsoType::TcpV4, f));
                    }
                    r.backend_rx(p);
                    let got = r.guest_recv(p);
                    assert_eq!(got.len(), expect.len(), "{ctx}: frames at the guest");
                    for (g, (gso, f)) in got.iter().zip(&expect) {
                        assert_eq!(&g.frame, f, "{ctx}: received bytes");
                        assert_eq!(g.hdr.gso_type, gso.raw(), "{ctx}");
                        if r.has(vn::VIRTIO_NET_F_MRG_RXBUF) {
                            let per = 1536usize;
                            let want = (r.drv.layout().size() + f.len()).div_ceil(per);
                            assert_eq!(g.chains, want, "{ctx}: num_buffers");
                        }
                    }
                    assert_eq!(r.peer[usize::from(p)].stats().tx_drops.total(), 0, "{ctx}");
                }
            }
        }
    }
}

#[test]
fn a_backend_without_offloads_gets_software_segments() {
    let features = v1()
        | f(vn::VIRTIO_NET_F_CSUM)
        | f(vn::VIRTIO_NET_F_HOST_TSO4)
        | f(vn::VIRTIO_NET_F_HOST_TSO6)
        | f(vn::VIRTIO_NET_F_HOST_USO);
    let mut r = rig(lb(false, 1), DeviceConfig::default(), features);
    for spec in [
        GuestFrame::tso4_64k(),
        GuestFrame {
            ipv6: true,
            payload_len: 20_000,
            gso: GsoType::TcpV6,
            gso_size: 1440,
            ..Default::default()
        },
        GuestFrame {
            tcp: false,
            payload_len: 9000,
            gso: GsoType::UdpL4,
            gso_size: 1400,
            ..Default::default()
        },
        GuestFrame {
            payload_len: 700,
            ..Default::default()
        },
    ] {
        let (hdr, frame) = spec.build();
        r.guest_send(0, &hdr, &frame, &[7, 33, 1000]);
        let got = r.peer_recv(0);
        let want = if spec.gso == GsoType::None {
            1
        } else {
            spec.payload_len.div_ceil(usize::from(spec.gso_size))
        };
        assert_eq!(got.len(), want, "{spec:?}");
        let mut payload = Vec::new();
        for (h, f) in &got {
            assert!(h.is_plain(), "no header toward a plain backend");
            assert!(f.len() <= 1514 + 4);
            payload.extend(verify(f).payload);
        }
        assert_eq!(payload, spec.payload(), "{spec:?}");
    }
    let (rx, tx, _) = r.dev.stats().pairs[0];
    assert_eq!(tx.software, 4);
    assert_eq!(rx.frames, 0);
}

#[test]
fn transmit_backpressure_keeps_the_chains_until_the_backend_has_room() {
    let mut r = rig(
        LoopbackConfig {
            capacity: 4,
            ..Default::default()
        },
        DeviceConfig::default(),
        v1() | f(vr::VIRTIO_RING_F_EVENT_IDX),
    );
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|i| plain_frame(100 + i, MacAddr::BROADCAST, i as u8))
        .collect();
    for f in &frames {
        r.drv.send(1, &VirtioNetHdr::PLAIN, f, &[5]).expect("chain");
    }
    r.drv.kick(&mut r.dev, 1).expect("kick");
    let mut got = Vec::new();
    let mut rounds = 0;
    loop {
        let used = r.drv.queues[1].take_used(&r.drv.mem).len();
        let peer = r.peer_recv(0);
        assert_eq!(
            used,
            peer.len(),
            "a chain is returned exactly when its frame left"
        );
        got.extend(peer.into_iter().map(|(_, f)| f));
        if got.len() == frames.len() {
            break;
        }
        let watches: Vec<Event> = r.dev.watches().iter().map(|w| w.event).collect();
        assert!(
            watches.contains(&Event::BackendTx(0)),
            "blocked: waits for room"
        );
        r.dev
            .handle(Event::BackendTx(0), &r.drv.mem)
            .expect("resume");
        rounds += 1;
        assert!(rounds < 10);
    }
    assert_eq!(got, frames, "in order, each once");
    assert!(r.dev.stats().pairs[0].1.backend_full >= 2);
    let watches: Vec<Event> = r.dev.watches().iter().map(|w| w.event).collect();
    assert!(
        !watches.contains(&Event::BackendTx(0)),
        "not blocked any more"
    );
}

/// The ring ran dry while the backend was empty; then the guest adds buffers, still with
/// nothing to receive. The device must watch the backend again, or the next frame waits for
/// a guest kick that never comes (seen with vhost-user when the receive ring was enabled
/// before the guest filled it).
#[test]
fn buffers_added_after_a_dry_ring_rearm_the_backend_watch() {
    for (name, features) in [
        ("mergeable", v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF)),
        ("big", v1()),
    ] {
        let mut r = rig(lb(false, 1), DeviceConfig::default(), features);
        r.drv.kick(&mut r.dev, 0).expect("rx kick on an empty ring");
        let watches: Vec<Event> = r.dev.watches().iter().map(|w| w.event).collect();
        assert!(
            !watches.contains(&Event::BackendRx(0)),
            "{name}: no buffers yet"
        );
        r.post_rx(0, 4);
        let watches: Vec<Event> = r.dev.watches().iter().map(|w| w.event).collect();
        assert!(
            watches.contains(&Event::BackendRx(0)),
            "{name}: buffers held: the backend is watched again"
        );
        let frame = plain_frame(600, GUEST_MAC, 7);
        assert_eq!(r.peer_send(0, VirtioNetHdr::PLAIN, &frame), 1);
        r.backend_rx(0);
        let got = r.guest_recv(0);
        assert_eq!(
            got.len(),
            1,
            "{name}: the frame arrives on the backend's event alone"
        );
    }
}

#[test]
fn receive_waits_for_guest_buffers_and_loses_nothing() {
    let mut r = rig(
        lb(false, 1),
        DeviceConfig::default(),
        v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF),
    );
    let frames: Vec<Vec<u8>> = (0..5).map(|i| plain_frame(1400, GUEST_MAC, i)).collect();
    for f in &frames {
        assert_eq!(r.peer_send(0, VirtioNetHdr::PLAIN, f), 1);
    }
    // Two 1536-byte buffers: one frame each.
    r.post_rx(0, 2);
    r.backend_rx(0);
    let got = r.guest_recv(0);
    assert_eq!(got.len(), 2);
    let watches: Vec<Event> = r.dev.watches().iter().map(|w| w.event).collect();
    assert!(
        !watches.contains(&Event::BackendRx(0)),
        "no buffers: the backend is not polled"
    );
    assert!(r.dev.stats().pairs[0].0.no_buffers >= 1);
    r.post_rx(0, 10);
    let mut all: Vec<Vec<u8>> = got.into_iter().map(|g| g.frame).collect();
    all.extend(r.guest_recv(0).into_iter().map(|g| g.frame));
    assert_eq!(
        all, frames,
        "every frame delivered, in order, after the refill"
    );
    assert_eq!(r.peer[0].stats().tx_drops.total(), 0);
    assert!(r.irq_count(IrqCause::Queue(0)) >= 2);
}

#[test]
fn control_queue_commands_take_effect() {
    let features = everything();
    let mut r = rig(
        lb(true, 4),
        DeviceConfig {
            queue_pairs: 4,
            ..Default::default()
        },
        features,
    );
    // Mergeable buffers for a 64 KiB GSO frame.
    r.post_rx(0, 128);
    let other = MacAddr([0x52, 0x54, 0, 0, 0, 0x77]);
    let mcast = MacAddr([0x01, 0, 0x5e, 0, 0, 1]);
    let deliver = |r: &mut Rig, f: &[u8]| -> bool {
        r.peer_send(0, VirtioNetHdr::PLAIN, f);
        r.backend_rx(0);
        !r.guest_recv(0).is_empty()
    };
    // Promiscuous at start.
    assert!(deliver(&mut r, &plain_frame(60, other, 1)));
    assert_eq!(
        r.ctrl(vn::VIRTIO_NET_CTRL_RX, vn::VIRTIO_NET_CTRL_RX_PROMISC, &[0]),
        OK
    );
    assert!(!deliver(&mut r, &plain_frame(60, other, 1)), "not for us");
    assert!(deliver(&mut r, &plain_frame(60, GUEST_MAC, 1)));
    assert!(deliver(&mut r, &plain_frame(60, MacAddr::BROADCAST, 1)));
    assert!(!deliver(&mut r, &plain_frame(60, mcast, 1)));
    assert_eq!(
        r.ctrl(vn::VIRTIO_NET_CTRL_RX, vn::VIRTIO_NET_CTRL_RX_NOBCAST, &[1]),
        OK
    );
    assert!(!deliver(&mut r, &plain_frame(60, MacAddr::BROADCAST, 1)));
    // MAC table: one unicast, one multicast.
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend_from_slice(&other.0);
    table.extend_from_slice(&1u32.to_le_bytes());
    table.extend_from_slice(&mcast.0);
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_MAC,
            vn::VIRTIO_NET_CTRL_MAC_TABLE_SET,
            &table
        ),
        OK
    );
    assert!(deliver(&mut r, &plain_frame(60, other, 2)));
    assert!(deliver(&mut r, &plain_frame(60, mcast, 2)));
    // A table that claims more entries than it carries.
    let mut bad = 1000u32.to_le_bytes().to_vec();
    bad.extend_from_slice(&[0; 12]);
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_MAC,
            vn::VIRTIO_NET_CTRL_MAC_TABLE_SET,
            &bad
        ),
        ERR
    );
    // MAC_ADDR_SET: config space follows.
    let new = MacAddr([0x52, 0x54, 0, 0, 0, 0x99]);
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_MAC,
            vn::VIRTIO_NET_CTRL_MAC_ADDR_SET,
            &new.0
        ),
        OK
    );
    let mut cfg = [0u8; 6];
    r.dev.read_config(0, &mut cfg);
    assert_eq!(cfg, new.0);
    assert!(deliver(&mut r, &plain_frame(60, new, 3)));
    assert!(
        !deliver(&mut r, &plain_frame(60, GUEST_MAC, 3)),
        "the old address is gone"
    );
    // VLAN filter: tagged frames pass once their VLAN is added.
    let mut tagged = plain_frame(64, new, 4);
    tagged[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    assert!(!deliver(&mut r, &tagged));
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_VLAN,
            vn::VIRTIO_NET_CTRL_VLAN_ADD,
            &5u16.to_le_bytes()
        ),
        OK
    );
    assert!(deliver(&mut r, &tagged));
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_VLAN,
            vn::VIRTIO_NET_CTRL_VLAN_ADD,
            &4096u16.to_le_bytes()
        ),
        ERR
    );
    assert!(r.dev.stats().pairs[0].0.filtered >= 5);
    // Unknown commands and wrong sizes are refused.
    assert_eq!(r.ctrl(9, 0, &[]), ERR);
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_RX,
            vn::VIRTIO_NET_CTRL_RX_PROMISC,
            &[1, 1]
        ),
        ERR
    );
    assert_eq!(
        r.ctrl(vn::VIRTIO_NET_CTRL_RX, vn::VIRTIO_NET_CTRL_RX_PROMISC, &[1]),
        OK
    );

    // Guest offloads off: the backend is told, and now refuses GSO frames toward the guest.
    let (gso_hdr, gso_frame) = GuestFrame::tso4_64k().build();
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS,
            vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
            &0u64.to_le_bytes()
        ),
        OK
    );
    assert_eq!(r.dev.guest_offloads(), 0);
    // A checksum-partial frame: the backend may not deliver it to a guest without GUEST_CSUM.
    let (csum_hdr, csum_frame) = GuestFrame {
        payload_len: 100,
        ..Default::default()
    }
    .build();
    assert!(csum_hdr.needs_csum());
    r.peer_send(0, csum_hdr, &csum_frame);
    r.backend_rx(0);
    assert!(r.guest_recv(0).is_empty());
    assert_eq!(
        r.dev.stats().pairs[0]
            .2
            .rx_drops
            .get(DropReason::UnsupportedOffload),
        1
    );
    let on = f(vn::VIRTIO_NET_F_GUEST_CSUM) | f(vn::VIRTIO_NET_F_GUEST_TSO4);
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS,
            vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
            &on.to_le_bytes()
        ),
        OK
    );
    r.peer_send(0, gso_hdr, &gso_frame);
    r.backend_rx(0);
    let got = r.guest_recv(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].frame, gso_frame);
    let not_acked = f(vn::VIRTIO_NET_F_MQ);
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS,
            vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
            &not_acked.to_le_bytes()
        ),
        ERR
    );

    // Announce: the VMM asks, the config interrupt fires, the guest acks.
    assert!(r.dev.announce().expect("announce"));
    let mut st = [0u8; 2];
    r.dev.read_config(6, &mut st);
    assert_eq!(
        u16::from_le_bytes(st) & vn::VIRTIO_NET_S_ANNOUNCE as u16,
        vn::VIRTIO_NET_S_ANNOUNCE as u16
    );
    assert_eq!(r.irq_count(IrqCause::Config), 1);
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_ANNOUNCE,
            vn::VIRTIO_NET_CTRL_ANNOUNCE_ACK,
            &[]
        ),
        OK
    );
    assert!(!r.dev.announce_pending());
}

#[test]
fn multiqueue_detaches_the_inactive_pairs_and_reattaches_them() {
    let mut r = rig(
        lb(false, 4),
        DeviceConfig {
            queue_pairs: 4,
            ..Default::default()
        },
        everything(),
    );
    for p in 0..4 {
        r.post_rx(p, 8);
    }
    // One pair active at start: what the network sends to pair 3 reaches pair 0.
    let f3 = plain_frame(100, GUEST_MAC, 3);
    r.peer_send(3, VirtioNetHdr::PLAIN, &f3);
    r.backend_rx(0);
    r.backend_rx(3);
    assert_eq!(r.guest_recv(0).len(), 1, "steered to the active pair");
    assert!(r.guest_recv(3).is_empty());
    let active: Vec<Event> = r.dev.watches().iter().map(|w| w.event).collect();
    assert!(active.contains(&Event::BackendRx(0)) && !active.contains(&Event::BackendRx(3)));

    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_MQ,
            vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &4u16.to_le_bytes()
        ),
        OK
    );
    r.peer_send(3, VirtioNetHdr::PLAIN, &f3);
    r.backend_rx(3);
    assert_eq!(r.guest_recv(3).len(), 1, "pair 3 attached again");
    // Above the maximum, or zero: refused, nothing changes.
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_MQ,
            vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &5u16.to_le_bytes()
        ),
        ERR
    );
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_MQ,
            vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &0u16.to_le_bytes()
        ),
        ERR
    );
    assert_eq!(r.dev.active_queue_pairs(), 4);
    assert_eq!(
        r.ctrl(
            vn::VIRTIO_NET_CTRL_MQ,
            vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &2u16.to_le_bytes()
        ),
        OK
    );
    r.peer_send(3, VirtioNetHdr::PLAIN, &f3);
    r.backend_rx(3);
    r.backend_rx(0);
    assert!(
        r.guest_recv(3).is_empty(),
        "pair 3 detached: nobody reads it"
    );
    assert_eq!(r.guest_recv(0).len(), 1);
}

#[test]
fn event_idx_suppresses_interrupts_until_the_driver_asks() {
    let mut r = rig(
        lb(false, 1),
        DeviceConfig::default(),
        v1() | f(vr::VIRTIO_RING_F_EVENT_IDX),
    );
    // The driver asks to be told only after the 3rd used entry.
    r.drv.queues[1].set_used_event(&r.drv.mem, 2);
    for i in 0..2u8 {
        r.guest_send(
            0,
            &VirtioNetHdr::PLAIN,
            &plain_frame(64, MacAddr::BROADCAST, i),
            &[],
        );
    }
    assert_eq!(r.irq_count(IrqCause::Queue(1)), 0, "suppressed");
    r.guest_send(
        0,
        &VirtioNetHdr::PLAIN,
        &plain_frame(64, MacAddr::BROADCAST, 9),
        &[],
    );
    assert_eq!(r.irq_count(IrqCause::Queue(1)), 1, "used_event reached");
    assert_eq!(r.peer_recv(0).len(), 3);
}

#[test]
fn config_space_and_offered_features_follow_the_backend() {
    let r = rig(
        LoopbackConfig {
            mtu: 9000,
            ..lb(true, 2)
        },
        DeviceConfig {
            queue_pairs: 2,
            speed_mbps: Some(10_000),
            full_duplex: Some(true),
            ..Default::default()
        },
        everything(),
    );
    let mut cfg = [0u8; 20];
    r.dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[0..6], &GUEST_MAC.0);
    assert_eq!(
        u16::from_le_bytes([cfg[6], cfg[7]]),
        vn::VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(
        u16::from_le_bytes([cfg[8], cfg[9]]),
        2,
        "max_virtqueue_pairs"
    );
    assert_eq!(
        u16::from_le_bytes([cfg[10], cfg[11]]),
        9000,
        "mtu from the backend"
    );
    assert_eq!(
        u32::from_le_bytes([cfg[12], cfg[13], cfg[14], cfg[15]]),
        10_000
    );
    assert_eq!(cfg[16], 1);
    assert_eq!(&cfg[17..], &[0, 0, 0], "beyond the config space reads zero");
    let offered = r.dev.features();
    assert_eq!(
        offered & f(virtio_bindings::virtio_config::VIRTIO_F_ACCESS_PLATFORM),
        0
    );
    assert_ne!(
        offered & f(vn::VIRTIO_NET_F_GUEST_TSO4),
        0,
        "the backend delivers TSO"
    );
    let plain = rig(lb(false, 1), DeviceConfig::default(), everything());
    let offered = plain.dev.features();
    assert_eq!(
        offered & f(vn::VIRTIO_NET_F_GUEST_TSO4),
        0,
        "no GSO from a plain backend"
    );
    assert_ne!(
        offered & f(vn::VIRTIO_NET_F_HOST_TSO4),
        0,
        "software segmentation on transmit"
    );
    assert_eq!(offered & f(vn::VIRTIO_NET_F_MQ), 0, "one pair: no MQ");
}

#[test]
fn received_offloads_the_guest_did_not_take_are_done_in_software() {
    use net_api::Backend as _;
    let (host, mut net) = net_api::loopback::pair(lb(true, 1)).expect("pair");
    let irq: Irq = Box::new(|_| Ok(()));
    let mut dev = net_virtio::NetDevice::new(
        // A backend that delivers offloaded frames whatever the guest enabled (one that cannot
        // turn receive offloads off): the device must complete checksums and segment in
        // software.
        Misbehaving(
            host,
            Faults {
                ignore_rx_offloads: true,
                ..Default::default()
            },
        ),
        DeviceConfig::default(),
        irq,
    )
    .expect("device");
    let mut drv = net_virtio::mock::MockDriver::new(MEM, dev.num_queues(), QSIZE);
    // No GUEST_* offload at all; big buffers (the backend does not keep to the contract, so
    // only a buffer that holds its 64 KiB frame can take it).
    drv.start(&mut dev, v1()).expect("start");
    let mut peer = net.open_queue_pair(0).expect("peer");
    let spec = GuestFrame::tso4_64k();
    let (hdr, gso) = spec.build();
    let (chdr, csum) = GuestFrame {
        payload_len: 300,
        seed: 4,
        ..Default::default()
    }
    .build();
    for (h, fr) in [(hdr, &gso), (chdr, &csum)] {
        let data = [net_api::IoBuf::from_slice(fr)];
        assert_eq!(
            peer.send(&[net_api::TxFrame {
                hdr: h,
                data: &data
            }])
            .expect("send"),
            1
        );
    }
    // Too few buffers at first: the segments wait in the device, none is lost.
    let mut got = Vec::new();
    for round in 0..20 {
        for _ in 0..8 {
            drv.post_rx(0, &[65562]).expect("buffer");
        }
        dev.handle(Event::Kick(0), &drv.mem).expect("kick");
        dev.handle(Event::BackendRx(0), &drv.mem).expect("rx");
        got.extend(drv.received(0));
        if got.len() == 47 {
            break;
        }
        assert!(round < 19, "all segments delivered");
    }
    let mut payload = Vec::new();
    for g in &got[..46] {
        assert_eq!(g.hdr.gso_type, 0);
        assert_eq!(
            g.hdr.flags, 0,
            "a guest without GUEST_CSUM gets complete checksums"
        );
        payload.extend(verify(&g.frame).payload);
    }
    assert_eq!(payload, spec.payload());
    verify(&got[46].frame);
    assert_eq!(dev.stats().pairs[0].0.software, 2);
}

#[test]
fn a_partly_filled_mergeable_ring_still_receives_what_fits() {
    // Guest GSO makes the largest frame 64 KiB, but the guest has posted only four buffers:
    // frames that fit go through (via the device's own buffer), a 64 KiB one waits for more.
    let mut r = rig(lb(true, 1), DeviceConfig::default(), everything());
    for _ in 0..4 {
        r.drv.post_rx(0, &[1536]).expect("buffer");
    }
    r.drv.kick(&mut r.dev, 0).expect("kick");
    let small: Vec<Vec<u8>> = (0..3).map(|i| plain_frame(200, GUEST_MAC, i)).collect();
    for f in &small {
        r.peer_send(0, VirtioNetHdr::PLAIN, f);
    }
    r.backend_rx(0);
    let got: Vec<Vec<u8>> = r.guest_recv(0).into_iter().map(|g| g.frame).collect();
    assert_eq!(got, small);
    let (hdr, big) = GuestFrame::tso4_64k().build();
    r.peer_send(0, hdr, &big);
    r.backend_rx(0);
    assert!(
        r.guest_recv(0).is_empty(),
        "one buffer left: the frame waits"
    );
    assert!(r
        .dev
        .watches()
        .iter()
        .all(|w| w.event != Event::BackendRx(0)));
    r.post_rx(0, 60);
    let got = r.guest_recv(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].frame, big);
    assert_eq!(got[0].hdr.gso_type, GsoType::TcpV4.raw());
    assert_eq!(r.peer[0].stats().tx_drops.total(), 0);
}

#[test]
fn software_segments_are_sent_within_the_budget() {
    // gso_size 8: one 16 KiB chain becomes about 2000 segments. One call sends at most a
    // budget's worth and comes back through its own kick.
    let features = v1() | f(vn::VIRTIO_NET_F_CSUM) | f(vn::VIRTIO_NET_F_HOST_TSO4);
    let mut r = rig(
        LoopbackConfig {
            capacity: 100_000,
            ..lb(false, 1)
        },
        DeviceConfig::default(),
        features,
    );
    let spec = GuestFrame {
        payload_len: 16_000,
        gso: GsoType::TcpV4,
        gso_size: 8,
        ..Default::default()
    };
    let (hdr, frame) = spec.build();
    r.guest_send(0, &hdr, &frame, &[]);
    let first = r.peer_recv(0).len();
    assert!(
        first > 0 && first <= net_virtio::pump::BUDGET,
        "{first} segments in one call"
    );
    let mut total = first;
    for _ in 0..100 {
        if total == 2000 {
            break;
        }
        let kicked: Vec<Event> = r.dev.watches().iter().map(|w| w.event).collect();
        assert!(kicked.contains(&Event::Kick(1)));
        r.dev.handle(Event::Kick(1), &r.drv.mem).expect("again");
        total += r.peer_recv(0).len();
    }
    assert_eq!(total, 2000);
    assert_eq!(
        r.drv.queues[1].take_used(&r.drv.mem).len(),
        1,
        "the chain completes once, at the end"
    );
}

#[test]
fn release_buffers_returns_everything_the_device_holds() {
    let mut r = rig(
        lb(false, 1),
        DeviceConfig::default(),
        v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF),
    );
    // Buffers smaller than the largest frame: the device takes several and holds them while
    // it waits for a frame (whole buffers are left in the ring, where the state covers them).
    for _ in 0..10 {
        r.drv.post_rx(0, &[512]).expect("rx chain");
    }
    r.drv.kick(&mut r.dev, 0).expect("rx kick");
    assert_eq!(r.drv.queues[0].take_used(&r.drv.mem).len(), 0);
    r.dev.release_buffers(&r.drv.mem).expect("release");
    // The device had taken only what one frame needs; those come back empty.
    let used = r.drv.queues[0].take_used(&r.drv.mem);
    assert!(!used.is_empty());
    assert!(used.iter().all(|u| u.1 == 0));
    let q = r.dev.queue(0).expect("queue");
    assert_eq!(
        q.next_avail(),
        q.next_used(),
        "the saved state covers every buffer"
    );
}

#[test]
fn chains_queued_before_driver_ok_are_sent_at_driver_ok() {
    use virtio_bindings::virtio_config as vc;
    let (host, mut net) = net_api::loopback::pair(lb(false, 1)).expect("pair");
    let irq: Irq = Box::new(|_| Ok(()));
    let mut dev = net_virtio::NetDevice::new(host, DeviceConfig::default(), irq).expect("device");
    let mut drv = net_virtio::mock::MockDriver::new(MEM, dev.num_queues(), QSIZE);
    let features = v1() | f(vr::VIRTIO_RING_F_EVENT_IDX);
    drv.features = features;
    dev.set_status(3, &drv.mem).expect("status");
    dev.ack_features(features).expect("ack");
    dev.set_status(3 | vc::VIRTIO_CONFIG_S_FEATURES_OK as u8, &drv.mem)
        .expect("features ok");
    for i in 0..dev.num_queues() {
        let q = &drv.queues[usize::from(i)];
        dev.set_queue_size(i, q.size).expect("size");
        dev.set_queue_addresses(i, q.desc.0, q.avail.0, q.used.0)
            .expect("addresses");
        dev.set_queue_ready(i, true).expect("ready");
    }
    // Queued and kicked before DRIVER_OK: the kick is ignored, the chain is not forgotten.
    let f0 = plain_frame(80, MacAddr::BROADCAST, 1);
    drv.send(1, &VirtioNetHdr::PLAIN, &f0, &[]).expect("chain");
    drv.force_kick(&mut dev, 1).expect("early kick");
    let mut peer = net.open_queue_pair(0).expect("peer");
    dev.set_status(
        3 | (vc::VIRTIO_CONFIG_S_FEATURES_OK | vc::VIRTIO_CONFIG_S_DRIVER_OK) as u8,
        &drv.mem,
    )
    .expect("driver ok");
    let mut buf = vec![0u8; 2048];
    let got = peer
        .recv(&[net_api::IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv");
    assert_eq!(got.map(|g| g.len), Some(80));
    // And the driver's later kicks are asked for (EVENT_IDX re-armed).
    drv.send(1, &VirtioNetHdr::PLAIN, &f0, &[]).expect("chain");
    assert!(
        drv.kick(&mut dev, 1).expect("kick"),
        "the device wants the next kick"
    );
    assert!(peer
        .recv(&[net_api::IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv")
        .is_some());
    // Clearing status bits without a reset changes nothing.
    dev.set_status(3, &drv.mem).expect("status write");
    assert_ne!(dev.status() & vc::VIRTIO_CONFIG_S_DRIVER_OK as u8, 0);
    assert!(dev.set_queue_size(0, 64).is_err());
}
