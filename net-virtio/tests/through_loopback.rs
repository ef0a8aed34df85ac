//! Guest frames through the whole translation path and a backend, for backends of three
//! shapes: one that takes every offload (like TAP), one that completes checksums only, and one
//! with no header at all (like AF_XDP). The receiving guest accepts no offload, so whatever the
//! backend delivers is completed or segmented again on receive. Every frame the guest gets is
//! verified with etherparse, and the payloads reassemble to what was sent.

mod common;

use net_api::{IoBuf, IoBufMut};

use common::{reassemble, verify};
use net_api::loopback::{pair, LoopbackConfig};
use net_api::{Backend, GsoType, OffloadSet, QueuePair, TxFrame, VirtioNetHdr};
use net_virtio::test_utils::GuestFrame;
use net_virtio::{RxRoute, RxTranslator, SoftFrame, TxRoute, TxTranslator, HEAD_LEN};

fn specs() -> Vec<GuestFrame> {
    vec![
        GuestFrame::tso4_64k(),
        GuestFrame {
            ipv6: true,
            vlan: true,
            ecn: true,
            payload_len: 30_000,
            gso: GsoType::TcpV6,
            gso_size: 1440,
            seed: 2,
            ..GuestFrame::default()
        },
        GuestFrame {
            tcp: false,
            payload_len: 9000,
            gso: GsoType::UdpL4,
            gso_size: 1400,
            seed: 3,
            ..GuestFrame::default()
        },
        GuestFrame {
            tcp: false,
            payload_len: 6000,
            gso: GsoType::Udp,
            gso_size: 1480,
            seed: 4,
            ..GuestFrame::default()
        },
        GuestFrame {
            payload_len: 1200,
            seed: 5,
            ..GuestFrame::default()
        },
    ]
}

/// Sends one guest frame through the translator; returns how many frames went to the backend.
fn transmit(q: &mut impl QueuePair, tx: &TxTranslator, hdr: &VirtioNetHdr, frame: &[u8]) -> usize {
    match tx
        .route(hdr, frame.len(), &frame[..frame.len().min(HEAD_LEN)])
        .expect("valid frame")
    {
        TxRoute::Direct(h) => {
            let data = [IoBuf::from_slice(frame)];
            assert_eq!(
                q.send(&[TxFrame {
                    hdr: h,
                    data: &data
                }])
                .expect("send"),
                1
            );
            1
        }
        TxRoute::Software => {
            let mut copy = frame.to_vec();
            let out = tx.software(hdr, &mut copy).expect("software path");
            let frames = out.to_frames(&copy);
            for (h, bytes) in &frames {
                let data = [IoBuf::from_slice(bytes)];
                assert_eq!(
                    q.send(&[TxFrame {
                        hdr: *h,
                        data: &data
                    }])
                    .expect("send"),
                    1
                );
            }
            frames.len()
        }
    }
}

/// Receives everything waiting and returns the frames the guest gets.
fn receive(q: &mut impl QueuePair, rx: &RxTranslator) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_600];
    while let Some(got) = q.recv(&[IoBufMut::from_mut_slice(&mut buf)]).expect("recv") {
        let frame = &mut buf[..got.len];
        match rx
            .route(&got.hdr, frame.len(), &frame[..frame.len().min(HEAD_LEN)])
            .expect("backend frames are valid")
        {
            RxRoute::Deliver(h) => {
                assert!(h.is_plain(), "a guest without offloads gets plain frames");
                out.push(frame.to_vec());
            }
            RxRoute::Software => {
                let soft = rx.software(&got.hdr, frame).expect("software receive");
                if let SoftFrame::Segments(seg) = &soft {
                    assert!(rx.segment_hdr(seg).is_plain(), "no GUEST_CSUM: plain");
                }
                for (h, bytes) in soft.to_frames(frame) {
                    assert!(h.is_plain());
                    out.push(bytes);
                }
            }
        }
    }
    out
}

fn run(cfg: LoopbackConfig, expect_direct_gso: bool) {
    let (mut a, mut b) = pair(LoopbackConfig {
        capacity: 4096,
        ..cfg
    })
    .expect("pair");
    let caps = a.capabilities();
    let (mut qa, mut qb) = (
        a.open_queue_pair(0).expect("a"),
        b.open_queue_pair(0).expect("b"),
    );
    qb.set_rx_offloads(b.capabilities().rx_offloads)
        .expect("the host side takes what it can");
    let tx = TxTranslator::new(&caps);
    let rx = RxTranslator::new(OffloadSet::NONE);
    for spec in specs() {
        let (hdr, frame) = spec.build();
        let sent = transmit(&mut qa, &tx, &hdr, &frame);
        if spec.gso != GsoType::None {
            assert_eq!(
                sent == 1,
                expect_direct_gso,
                "{:?}: {sent} frame(s)",
                spec.gso
            );
        }
        let got = receive(&mut qb, &rx);
        let checked: Vec<_> = got.iter().map(|f| verify(f)).collect();
        let payload = if checked[0].fragment.is_some() {
            let datagram = reassemble(&checked);
            datagram[8..].to_vec()
        } else {
            checked.iter().flat_map(|c| c.payload.clone()).collect()
        };
        assert_eq!(payload, spec.payload(), "{:?} arrives intact", spec.gso);
        assert_eq!(qa.stats().tx_drops.total(), 0);
        assert_eq!(qb.stats().rx_drops.total(), 0);
    }
}

#[test]
fn tap_like_backend_takes_gso_frames_as_they_are() {
    run(
        LoopbackConfig {
            vnet_hdr: true,
            offloads: OffloadSet::ALL,
            ..LoopbackConfig::default()
        },
        true,
    );
}

#[test]
fn csum_only_backend_gets_partial_checksum_segments() {
    run(
        LoopbackConfig {
            vnet_hdr: true,
            offloads: OffloadSet::CSUM,
            ..LoopbackConfig::default()
        },
        false,
    );
}

#[test]
fn headerless_backend_gets_complete_segments() {
    run(LoopbackConfig::default(), false);
}
