//! Header translation costs, each next to a plain `copy_from_slice` of the same bytes in the
//! same run (the floor a copying datapath pays anyway).
//!
//! ```text
//! cargo bench -p volt-net-bench --bench translate
//! ```
//! Criterion prints the time per frame and the throughput in bytes per second.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use net_api::{GsoType, OffloadSet};
use net_virtio::csum::complete_partial;
use net_virtio::test_utils::{backend_caps, GuestFrame};
use net_virtio::{HdrLayout, SoftFrame, TxTranslator, HEAD_LEN, MAX_SEGMENT_HEADERS};

/// Per-frame cost of every TX at 1514 B: decode the 12-byte header and route the frame.
/// "direct" is a TAP-like backend that takes the frame as it is; "software" is a headerless
/// backend (AF_XDP-like), which adds the device's copy of the frame and the checksum
/// completion. The floor copies the same 1514 bytes.
fn decode_and_route(c: &mut Criterion) {
    let (hdr, frame) = GuestFrame {
        payload_len: 1460,
        ..GuestFrame::default()
    }
    .build();
    let mut wire = [0u8; 12];
    HdrLayout::V1
        .encode(&hdr, &mut wire)
        .expect("12 bytes hold a V1 header");
    let tap = TxTranslator::new(&backend_caps(true, OffloadSet::ALL));
    let headerless = TxTranslator::new(&backend_caps(false, OffloadSet::NONE));
    let mut g = c.benchmark_group("decode_route_1514");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("volt-net-direct", |b| {
        b.iter(|| {
            let h = HdrLayout::V1.decode(black_box(&wire)).expect("decodes");
            tap.route(&h, frame.len(), &frame[..HEAD_LEN])
                .expect("valid")
        })
    });
    let mut work = vec![0u8; frame.len()];
    g.bench_function("volt-net-software", |b| {
        b.iter(|| {
            let h = HdrLayout::V1.decode(black_box(&wire)).expect("decodes");
            headerless
                .route(&h, frame.len(), &frame[..HEAD_LEN])
                .expect("valid");
            work.copy_from_slice(black_box(&frame));
            headerless.software(&h, &mut work).expect("valid")
        })
    });
    g.bench_function("memcpy-floor", |b| {
        b.iter(|| work.copy_from_slice(black_box(&frame)))
    });
    g.finish();
}

/// Complete a partial checksum over 1500 B and 64 KiB, against a copy of the same bytes.
fn checksum(c: &mut Criterion) {
    for payload_len in [1460usize, 65_495] {
        let (hdr, frame) = GuestFrame {
            payload_len,
            ..GuestFrame::default()
        }
        .build();
        let mut g = c.benchmark_group(format!("checksum_{}", frame.len()));
        g.throughput(Throughput::Bytes(frame.len() as u64));
        let mut work = frame.clone();
        g.bench_function("volt-net", |b| {
            b.iter(|| {
                complete_partial(
                    black_box(&mut work),
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
                .expect("in frame")
            })
        });
        let mut dst = vec![0u8; frame.len()];
        g.bench_function("memcpy-floor", |b| {
            b.iter(|| dst.copy_from_slice(black_box(&frame)))
        });
        g.finish();
    }
}

/// Segment a 64 KiB TSO4 super-frame into 1448-byte segments: write every segment's headers
/// and checksums and gather it into an output buffer, as a copying backend (AF_XDP) would.
/// The "partial" case leaves checksums to a backend that has CSUM but not TSO. The floor is
/// copying the 64 KiB once.
fn gso_64k(c: &mut Criterion) {
    let (hdr, frame) = GuestFrame::tso4_64k().build();
    assert_eq!(hdr.gso(), Some(GsoType::TcpV4));
    let mut g = c.benchmark_group("gso_tso4_64k");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    for (name, tx) in [
        (
            "volt-net-full-csum",
            TxTranslator::new(&backend_caps(false, OffloadSet::NONE)),
        ),
        (
            "volt-net-partial-csum",
            TxTranslator::new(&backend_caps(true, OffloadSet::CSUM)),
        ),
    ] {
        let mut out = vec![0u8; 2048];
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || frame.clone(),
                |work| {
                    let SoftFrame::Segments(seg) = tx.software(&hdr, work).expect("valid") else {
                        unreachable!("a GSO frame is segmented")
                    };
                    let mut headers = [0u8; MAX_SEGMENT_HEADERS];
                    for k in 0..seg.count() {
                        let s = seg.segment(k, work, &mut headers);
                        out[..s.header_len].copy_from_slice(&headers[..s.header_len]);
                        out[s.header_len..s.len()].copy_from_slice(&work[s.payload]);
                        black_box(&out);
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    let mut dst = vec![0u8; frame.len()];
    g.bench_function("memcpy-floor", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&frame)))
    });
    g.finish();
}

criterion_group!(benches, decode_and_route, checksum, gso_64k);
criterion_main!(benches);
