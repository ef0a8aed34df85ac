//! The fuzz harnesses, as plain functions so that the seed corpus also runs under
//! `cargo test` (see `tests/corpus.rs`) without libFuzzer.

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
