//! Software segmentation and checksum completion, checked with an independent parser.

mod common;

use common::{reassemble, verify, Checked};
use net_api::GsoType;
use net_virtio::csum::complete_partial;
use net_virtio::test_utils::GuestFrame;
use net_virtio::Segmenter;
use proptest::prelude::*;

/// Segments a guest frame and returns (headers of segments, verified segments).
fn segment(spec: &GuestFrame, partial: bool) -> (Vec<net_api::VirtioNetHdr>, Vec<Checked>) {
    let (hdr, mut frame) = spec.build();
    let seg = Segmenter::new(&hdr, &mut frame, partial).expect("a valid GSO frame");
    let mut hdrs = Vec::new();
    let mut out = Vec::new();
    for k in 0..seg.count() {
        let (h, mut bytes) = seg.segment_to_vec(k, &frame);
        if h.needs_csum() {
            complete_partial(
                &mut bytes,
                usize::from(h.csum_start),
                usize::from(h.csum_offset),
            )
            .expect("partial checksum inside the segment");
        }
        hdrs.push(h);
        out.push(verify(&bytes));
    }
    (hdrs, out)
}

fn check_tcp(spec: &GuestFrame, partial: bool) {
    let (hdr, _) = spec.build();
    let (hdrs, segs) = segment(spec, partial);
    let mss = usize::from(spec.gso_size);
    assert_eq!(segs.len(), spec.payload_len.div_ceil(mss).max(1));
    let first = segs[0].tcp.clone().expect("TCP");
    let mut joined = Vec::new();
    for (k, s) in segs.iter().enumerate() {
        let t = s.tcp.as_ref().expect("TCP");
        let last = k + 1 == segs.len();
        assert!(s.payload.len() <= mss);
        if !last {
            assert_eq!(s.payload.len(), mss, "only the last segment is short");
        }
        assert_eq!(
            t.sequence_number,
            first.sequence_number.wrapping_add((k * mss) as u32)
        );
        assert_eq!(
            t.fin,
            last && spec.tcp_flags & 0x01 != 0,
            "FIN on the last only"
        );
        assert_eq!(
            t.psh,
            last && spec.tcp_flags & 0x08 != 0,
            "PSH on the last only"
        );
        assert_eq!(t.cwr, k == 0 && spec.ecn, "CWR on the first only");
        assert!(t.ack);
        if !spec.ipv6 {
            assert_eq!(s.ipv4_id, segs[0].ipv4_id.wrapping_add(k as u16), "IPv4 id");
        }
        assert_eq!(hdrs[k].needs_csum(), partial);
        assert!(!hdrs[k].is_gso());
        joined.extend_from_slice(&s.payload);
    }
    assert_eq!(joined, spec.payload(), "segments reassemble to the payload");
    assert_eq!(usize::from(hdr.gso_size), mss);
}

#[test]
fn tso4_64k_super_frame() {
    check_tcp(&GuestFrame::tso4_64k(), false);
}

#[test]
fn tso6_with_vlan_options_ecn_and_fin() {
    let spec = GuestFrame {
        ipv6: true,
        vlan: true,
        tcp_options: 12,
        ecn: true,
        tcp_flags: 0x09,
        payload_len: 20_000,
        gso: GsoType::TcpV6,
        gso_size: 1428,
        ..GuestFrame::default()
    };
    check_tcp(&spec, false);
    check_tcp(&spec, true);
}

#[test]
fn payload_shorter_than_mss_gives_one_segment() {
    let spec = GuestFrame {
        payload_len: 100,
        gso: GsoType::TcpV4,
        gso_size: 1448,
        ..GuestFrame::default()
    };
    check_tcp(&spec, false);
}

fn check_uso(spec: &GuestFrame) {
    let (hdrs, segs) = segment(spec, false);
    let mss = usize::from(spec.gso_size);
    assert_eq!(segs.len(), spec.payload_len.div_ceil(mss).max(1));
    let mut joined = Vec::new();
    for (k, s) in segs.iter().enumerate() {
        assert!(s.udp.is_some() && s.fragment.is_none());
        assert!(hdrs[k].is_plain());
        if !spec.ipv6 {
            assert_eq!(s.ipv4_id, segs[0].ipv4_id.wrapping_add(k as u16));
        }
        joined.extend_from_slice(&s.payload);
    }
    assert_eq!(joined, spec.payload());
}

#[test]
fn uso_v4_and_v6() {
    for ipv6 in [false, true] {
        check_uso(&GuestFrame {
            ipv6,
            tcp: false,
            payload_len: 30_001,
            gso: GsoType::UdpL4,
            gso_size: 1200,
            ..GuestFrame::default()
        });
    }
}

fn check_ufo(spec: &GuestFrame) {
    let (hdr, mut frame) = spec.build();
    let seg = Segmenter::new(&hdr, &mut frame, true).expect("valid UFO frame");
    let frags: Vec<Checked> = (0..seg.count())
        .map(|k| {
            let (h, bytes) = seg.segment_to_vec(k, &frame);
            assert!(h.is_plain(), "fragments never carry partial checksums");
            verify(&bytes)
        })
        .collect();
    if frags.len() == 1 {
        // Fits one fragment: an ordinary datagram with its checksum completed.
        assert_eq!(frags[0].payload, spec.payload());
        return;
    }
    let unit = usize::from(spec.gso_size) & !7;
    for f in &frags {
        let (_, off, ident) = f.fragment.expect("fragment");
        assert_eq!(off % unit, 0);
        assert_eq!(
            ident,
            frags[0].fragment.expect("fragment").2,
            "one identification"
        );
        assert_eq!(f.ipv4_id, frags[0].ipv4_id, "fragments share the IPv4 id");
    }
    // The reassembled datagram is a valid UDP datagram carrying the payload.
    let datagram = reassemble(&frags);
    let mut whole = frame[..seg.layers().l4].to_vec();
    whole.extend_from_slice(&datagram);
    let (et_off, l3) = (seg.layers().l3 - 2, seg.layers().l3);
    let _ = et_off;
    if spec.ipv6 {
        let len = (datagram.len() as u16).to_be_bytes();
        whole[l3 + 4..l3 + 6].copy_from_slice(&len);
    } else {
        let len = ((datagram.len() + 20) as u16).to_be_bytes();
        whole[l3 + 2..l3 + 4].copy_from_slice(&len);
        net_virtio::gso::ipv4_header_checksum(&mut whole[l3..l3 + 20]);
    }
    let v = verify(&whole);
    assert_eq!(v.payload, spec.payload());
}

#[test]
fn ufo_v4_and_v6() {
    for ipv6 in [false, true] {
        for gso_size in [1480u16, 1234, 8] {
            check_ufo(&GuestFrame {
                ipv6,
                tcp: false,
                payload_len: 4000,
                gso: GsoType::Udp,
                gso_size,
                ..GuestFrame::default()
            });
        }
    }
}

#[test]
fn checksum_completion_matches_etherparse() {
    for (ipv6, tcp) in [(false, true), (false, false), (true, true), (true, false)] {
        let spec = GuestFrame {
            ipv6,
            tcp,
            payload_len: 777,
            ..GuestFrame::default()
        };
        let (hdr, mut frame) = spec.build();
        complete_partial(
            &mut frame,
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_offset),
        )
        .expect("in frame");
        let v = verify(&frame);
        assert_eq!(v.payload, spec.payload());
    }
}

fn any_spec() -> impl Strategy<Value = GuestFrame> {
    (
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        0usize..20_000,
        1u16..3000,
        any::<bool>(),
        0usize..=10,
        any::<u32>(),
    )
        .prop_map(
            |(ipv6, l4, vlan, payload_len, gso_size, ecn, opt_words, seed)| {
                let (tcp, gso) = match l4 {
                    0 => (true, if ipv6 { GsoType::TcpV6 } else { GsoType::TcpV4 }),
                    1 => (false, GsoType::UdpL4),
                    _ => (false, GsoType::Udp),
                };
                GuestFrame {
                    ipv6,
                    tcp,
                    vlan,
                    payload_len,
                    gso,
                    gso_size: if gso == GsoType::Udp {
                        gso_size.max(8)
                    } else {
                        gso_size
                    },
                    ecn: ecn && tcp,
                    tcp_flags: (seed as u8) & 0x09,
                    tcp_options: opt_words * 4,
                    seed,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Segmenting then reassembling gives the original payload, and every segment's lengths
    /// and checksums verify with etherparse.
    #[test]
    fn segments_reassemble_and_verify(spec in any_spec(), partial in any::<bool>()) {
        match spec.gso {
            GsoType::TcpV4 | GsoType::TcpV6 => check_tcp(&spec, partial),
            GsoType::UdpL4 => check_uso(&spec),
            _ => check_ufo(&spec),
        }
    }
}

#[test]
fn csum_only_backend_keeps_the_checksum_location() {
    let tx = net_virtio::TxTranslator::new(&net_virtio::test_utils::backend_caps(
        true,
        net_api::OffloadSet::CSUM,
    ));
    let (hdr, frame) = GuestFrame {
        payload_len: 500,
        ..GuestFrame::default()
    }
    .build();
    let mut copy = frame.clone();
    let net_virtio::SoftFrame::Whole(h) = tx.software(&hdr, &mut copy).expect("valid") else {
        panic!("a frame without GSO stays whole");
    };
    assert_eq!(
        (h.flags, h.csum_start, h.csum_offset),
        (hdr.flags, hdr.csum_start, hdr.csum_offset)
    );
    assert_eq!(copy, frame, "left for the backend to complete");
    complete_partial(
        &mut copy,
        usize::from(h.csum_start),
        usize::from(h.csum_offset),
    )
    .expect("in frame");
    assert_eq!(verify(&copy).payload, spec_payload(500));
}

fn spec_payload(n: usize) -> Vec<u8> {
    GuestFrame {
        payload_len: n,
        ..GuestFrame::default()
    }
    .payload()
}

#[test]
fn ipv6_fragment_identifications_differ_between_datagrams() {
    let spec = GuestFrame {
        ipv6: true,
        tcp: false,
        payload_len: 3000,
        gso: GsoType::Udp,
        gso_size: 1448,
        ..GuestFrame::default()
    };
    let ident = || {
        let (hdr, mut frame) = spec.build();
        let seg = Segmenter::new(&hdr, &mut frame, false).expect("valid");
        let (_, bytes) = seg.segment_to_vec(0, &frame);
        verify(&bytes).fragment.expect("a fragment").2
    };
    assert_ne!(
        ident(),
        ident(),
        "the same datagram twice gets two identifications"
    );
}

#[test]
fn rx_fragments_are_delivered_without_data_valid() {
    let rx = net_virtio::RxTranslator::new(net_api::OffloadSet::CSUM);
    let (hdr, mut frame) = GuestFrame {
        tcp: false,
        payload_len: 4000,
        gso: GsoType::Udp,
        gso_size: 1480,
        ..GuestFrame::default()
    }
    .build();
    let net_virtio::SoftFrame::Segments(seg) = rx.software(&hdr, &mut frame).expect("valid") else {
        panic!("UFO is segmented for a guest without GUEST_UFO");
    };
    assert!(seg.fragments());
    assert!(rx.segment_hdr(&seg).is_plain());
    let (hdr, mut frame) = GuestFrame::tso4_64k().build();
    let net_virtio::SoftFrame::Segments(seg) = rx.software(&hdr, &mut frame).expect("valid") else {
        panic!("TSO is segmented for a guest without GUEST_TSO4");
    };
    assert_eq!(rx.segment_hdr(&seg).flags, net_api::hdr::DATA_VALID);
}
