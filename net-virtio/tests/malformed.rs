//! Every malformed header or frame is a typed error, never a panic.

use net_api::hdr::{DATA_VALID, GSO_ECN, NEEDS_CSUM};
use net_api::{GsoType, OffloadSet, VirtioNetHdr};
use net_virtio::csum::CsumOutOfFrame;
use net_virtio::test_utils::{backend_caps, GuestFrame};
use net_virtio::{
    FrameError, HdrLayout, RxTranslator, SoftFrame, TxTranslator, HEAD_LEN, MAX_FRAME_LEN,
    MAX_SEGMENT_HEADERS,
};
use proptest::prelude::*;

fn headerless() -> TxTranslator {
    TxTranslator::new(&backend_caps(false, OffloadSet::NONE))
}

/// Runs a frame through route and the software path; returns the first error.
fn tx_error(hdr: &VirtioNetHdr, frame: &[u8]) -> FrameError {
    let tx = headerless();
    let head = &frame[..frame.len().min(HEAD_LEN)];
    if let Err(e) = tx.route(hdr, frame.len(), head) {
        let mut copy = frame.to_vec();
        assert_eq!(
            tx.software(hdr, &mut copy).err(),
            Some(e),
            "both paths agree"
        );
        return e;
    }
    let mut copy = frame.to_vec();
    tx.software(hdr, &mut copy).expect_err("malformed")
}

fn tso4() -> (VirtioNetHdr, Vec<u8>) {
    GuestFrame {
        payload_len: 5000,
        gso: GsoType::TcpV4,
        ..GuestFrame::default()
    }
    .build()
}

#[test]
fn gso_size_zero() {
    let (mut h, f) = tso4();
    h.gso_size = 0;
    assert_eq!(
        tx_error(&h, &f),
        FrameError::GsoSizeZero {
            gso: GsoType::TcpV4
        }
    );
}

#[test]
fn hdr_len_beyond_frame() {
    let (mut h, f) = tso4();
    h.hdr_len = (f.len() + 1) as u16;
    assert!(matches!(
        tx_error(&h, &f),
        FrameError::HdrLenBeyondFrame { .. }
    ));
}

#[test]
fn csum_outside_frame() {
    let (mut h, f) = tso4();
    h.gso_type = 0;
    h.csum_start = (f.len() - 1) as u16;
    h.csum_offset = 0;
    assert!(matches!(
        tx_error(&h, &f),
        FrameError::CsumOutOfFrame(CsumOutOfFrame { .. })
    ));
    h.csum_start = 0xffff;
    h.csum_offset = 0xffff;
    assert!(matches!(tx_error(&h, &f), FrameError::CsumOutOfFrame(_)));
}

#[test]
fn unknown_gso_type_bits() {
    let (mut h, f) = tso4();
    for raw in [2u8, 6, 0x40, 0x7f] {
        h.gso_type = raw;
        assert_eq!(
            tx_error(&h, &f),
            FrameError::UnknownGsoType { gso_type: raw }
        );
    }
}

#[test]
fn unknown_flag_bits() {
    let (mut h, f) = tso4();
    h.flags = NEEDS_CSUM | 0x10;
    assert_eq!(tx_error(&h, &f), FrameError::UnknownFlags { flags: 0x11 });
}

#[test]
fn ecn_without_tso() {
    let (mut h, f) = tso4();
    h.gso_type = GSO_ECN;
    assert_eq!(
        tx_error(&h, &f),
        FrameError::EcnWithoutTso { gso: GsoType::None }
    );
    let (mut h, f) = GuestFrame {
        tcp: false,
        payload_len: 3000,
        gso: GsoType::UdpL4,
        ..GuestFrame::default()
    }
    .build();
    h.gso_type |= GSO_ECN;
    assert_eq!(
        tx_error(&h, &f),
        FrameError::EcnWithoutTso {
            gso: GsoType::UdpL4
        }
    );
}

#[test]
fn frame_shorter_than_its_headers() {
    let (mut h, f) = tso4();
    // hdr_len is only a hint, and the checksum fields are checked on their own: clear them so
    // the frame's own headers are what is short.
    h.hdr_len = 0;
    h.flags = 0;
    // Cut inside Ethernet, IPv4, and TCP.
    for cut in [10usize, 20, 40, 50] {
        let e = tx_error(&h, &f[..cut]);
        assert!(
            matches!(e, FrameError::Truncated { .. }),
            "cut at {cut}: {e:?}"
        );
    }
    // A TCP data offset pointing past the end.
    let mut g = f[..60].to_vec();
    g[14 + 20 + 12] = 0xf0;
    assert!(matches!(
        tx_error(&h, &g),
        FrameError::Truncated { what: "TCP", .. }
    ));
}

#[test]
fn ipv4_options_are_refused_for_segmentation() {
    let (h, mut f) = tso4();
    f[14] = 0x46;
    assert_eq!(tx_error(&h, &f), FrameError::Ipv4Options { ihl_bytes: 24 });
    f[14] = 0x44;
    assert_eq!(
        tx_error(&h, &f),
        FrameError::Ipv4HeaderTooShort { ihl_bytes: 16 }
    );
}

#[test]
fn ipv6_extension_headers_are_refused_for_segmentation() {
    let (h, mut f) = GuestFrame {
        ipv6: true,
        payload_len: 5000,
        gso: GsoType::TcpV6,
        ..GuestFrame::default()
    }
    .build();
    f[14 + 6] = 0; // hop-by-hop options
    assert_eq!(
        tx_error(&h, &f),
        FrameError::Ipv6ExtensionHeader { next_header: 0 }
    );
}

#[test]
fn gso_type_must_match_the_frame() {
    let (mut h, f) = tso4();
    h.gso_type = GsoType::TcpV6.raw();
    assert!(matches!(
        tx_error(&h, &f),
        FrameError::GsoMismatch { ip: 4, .. }
    ));
    h.gso_type = GsoType::UdpL4.raw();
    assert!(matches!(
        tx_error(&h, &f),
        FrameError::GsoMismatch { proto: 6, .. }
    ));
    let mut arp = f.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    h.gso_type = GsoType::TcpV4.raw();
    assert!(matches!(
        tx_error(&h, &arp),
        FrameError::NotIp {
            ethertype: 0x0806,
            ..
        }
    ));
    let mut v = f.clone();
    v[14] = 0x65;
    assert!(matches!(
        tx_error(&h, &v),
        FrameError::IpVersion {
            expected: 4,
            version: 6
        }
    ));
}

#[test]
fn ip_packet_longer_than_its_length_field() {
    // 65550 bytes is the largest frame, but without a VLAN tag its IPv4 packet would be
    // 65536 bytes: one more than the total-length field holds.
    let (h, f) = GuestFrame {
        payload_len: 65550 - 54,
        gso: GsoType::TcpV4,
        gso_size: u16::MAX,
        ..GuestFrame::default()
    }
    .build();
    assert_eq!(f.len(), MAX_FRAME_LEN);
    assert_eq!(
        tx_error(&h, &f),
        FrameError::IpTooLong {
            len: 65536,
            max: 65535
        }
    );
    // One byte less fits, and its single segment says 65535.
    let (h, f) = GuestFrame {
        payload_len: 65549 - 54,
        gso: GsoType::TcpV4,
        gso_size: u16::MAX,
        ..GuestFrame::default()
    }
    .build();
    let mut copy = f.clone();
    let Ok(SoftFrame::Segments(seg)) = headerless().software(&h, &mut copy) else {
        panic!("a valid GSO frame is segmented");
    };
    let (_, first) = seg.segment_to_vec(0, &copy);
    assert_eq!(first[16..18], 65535u16.to_be_bytes());
}

#[test]
fn fragments_are_not_segmented() {
    let (h, mut f) = tso4();
    f[14 + 6] = 0x20; // MF
    assert_eq!(tx_error(&h, &f), FrameError::Ipv4Fragment);
}

#[test]
fn ufo_fragment_below_eight_bytes() {
    let (mut h, f) = GuestFrame {
        tcp: false,
        payload_len: 100,
        gso: GsoType::Udp,
        ..GuestFrame::default()
    }
    .build();
    h.gso_size = 7;
    assert_eq!(
        tx_error(&h, &f),
        FrameError::UfoFragmentTooSmall { gso_size: 7 }
    );
}

#[test]
fn oversized_and_runt_frames() {
    let h = VirtioNetHdr::PLAIN;
    let big = vec![0u8; MAX_FRAME_LEN + 1];
    assert!(matches!(tx_error(&h, &big), FrameError::TooLarge { .. }));
    assert!(matches!(
        tx_error(&h, &[0u8; 13]),
        FrameError::Truncated {
            what: "Ethernet",
            ..
        }
    ));
}

#[test]
fn receive_path_checks_the_same_way() {
    let rx = RxTranslator::new(OffloadSet::NONE);
    let (mut h, f) = tso4();
    h.gso_size = 0;
    assert_eq!(
        rx.route(&h, f.len(), &f),
        Err(FrameError::GsoSizeZero {
            gso: GsoType::TcpV4
        })
    );
    h.gso_type = 0x42;
    assert!(rx.software(&h, &mut f.clone()).is_err());
}

#[test]
fn rx_flags_follow_guest_features() {
    let frame = GuestFrame::default().build().1;
    let valid = VirtioNetHdr {
        flags: DATA_VALID,
        ..VirtioNetHdr::PLAIN
    };
    // Without GUEST_CSUM, flags must be zero.
    let plain = RxTranslator::new(OffloadSet::NONE);
    assert_eq!(
        plain.route(&valid, frame.len(), &frame),
        Ok(net_virtio::RxRoute::Deliver(VirtioNetHdr::PLAIN))
    );
    let csum = RxTranslator::new(OffloadSet::CSUM);
    assert_eq!(
        csum.route(&valid, frame.len(), &frame),
        Ok(net_virtio::RxRoute::Deliver(valid))
    );
    // A partial checksum is not a verified one: DATA_VALID is dropped beside NEEDS_CSUM.
    let both = VirtioNetHdr {
        flags: NEEDS_CSUM | DATA_VALID,
        csum_start: 34,
        csum_offset: 16,
        ..VirtioNetHdr::PLAIN
    };
    assert_eq!(
        csum.route(&both, frame.len(), &frame),
        Ok(net_virtio::RxRoute::Deliver(VirtioNetHdr {
            flags: NEEDS_CSUM,
            ..both
        }))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary header bytes over arbitrary frames, and over valid frames with one byte
    /// flipped: decode, route and the software path return, never panic, and every segment
    /// stays within its bounds.
    #[test]
    fn arbitrary_input_never_panics(
        wire in proptest::collection::vec(any::<u8>(), 12),
        body in proptest::collection::vec(any::<u8>(), 0..400),
        flip in any::<(u16, u8)>(),
        use_valid in any::<bool>(),
    ) {
        let mut hdr = HdrLayout::V1.decode(&wire).expect("12 bytes");
        let mut frame = body;
        if use_valid {
            let (h, f) = GuestFrame { payload_len: 3000, gso: GsoType::TcpV4, gso_size: 536,
                ..GuestFrame::default() }.build();
            hdr = VirtioNetHdr { flags: hdr.flags & 3, ..h };
            frame = f;
            let at = usize::from(flip.0) % frame.len();
            frame[at] ^= flip.1;
        }
        for tx in [headerless(), TxTranslator::new(&backend_caps(true, OffloadSet::CSUM))]
        {
            let _ = tx.route(&hdr, frame.len(), &frame[..frame.len().min(HEAD_LEN)]);
            let mut copy = frame.clone();
            if let Ok(SoftFrame::Segments(seg)) = tx.software(&hdr, &mut copy) {
                let mut headers = [0u8; MAX_SEGMENT_HEADERS];
                for k in 0..seg.count() {
                    let s = seg.segment(k, &copy, &mut headers);
                    prop_assert!(s.header_len <= MAX_SEGMENT_HEADERS);
                    prop_assert!(s.payload.end <= copy.len());
                }
            }
        }
        let rx = RxTranslator::new(OffloadSet::NONE);
        let _ = rx.route(&hdr, frame.len(), &frame);
        let _ = rx.software(&hdr, &mut frame);
    }
}
