//! A 64 KiB TCP super-frame from a guest, through header translation and a loopback backend,
//! for three shapes of backend. Prints what each path did.
//!
//! ```text
//! cargo run -p net-virtio --example gso_through_loopback
//! ```

use net_api::{IoBuf, IoBufMut};

use net_api::loopback::{pair, LoopbackConfig};
use net_api::{Backend, OffloadSet, QueuePair, TxFrame};
use net_virtio::test_utils::GuestFrame;
use net_virtio::{HdrLayout, RxRoute, RxTranslator, TxRoute, TxTranslator, HEAD_LEN};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The guest acked VERSION_1: its header is the 12-byte little-endian one.
    let layout = HdrLayout::from_features(1 << VIRTIO_F_VERSION_1);
    let (guest_hdr, frame) = GuestFrame::tso4_64k().build();
    let mut wire = [0u8; 12];
    layout.encode(&guest_hdr, &mut wire)?;
    let hdr = layout.decode(&wire)?;
    println!(
        "guest frame: {} bytes, gso_type {:#x}, gso_size {}, csum_start {}, csum_offset {}",
        frame.len(),
        hdr.gso_type,
        hdr.gso_size,
        hdr.csum_start,
        hdr.csum_offset
    );
    let shapes = [
        ("TAP-like (vnet_hdr, all offloads)", true, OffloadSet::ALL),
        ("checksum-only (vnet_hdr, csum)", true, OffloadSet::CSUM),
        ("AF_XDP-like (no vnet_hdr)", false, OffloadSet::NONE),
    ];
    for (name, vnet_hdr, offloads) in shapes {
        let (mut a, mut b) = pair(LoopbackConfig {
            vnet_hdr,
            offloads,
            capacity: 128,
            ..LoopbackConfig::default()
        })?;
        let caps = a.capabilities();
        let (mut qa, mut qb) = (a.open_queue_pair(0)?, b.open_queue_pair(0)?);
        qb.set_rx_offloads(b.capabilities().rx_offloads)?;
        let tx = TxTranslator::new(&caps);
        let route = tx.route(&hdr, frame.len(), &frame[..HEAD_LEN])?;
        let sent = match route {
            TxRoute::Direct(h) => {
                qa.send(&[TxFrame {
                    hdr: h,
                    data: &[IoBuf::from_slice(&frame)],
                }])?;
                println!("{name}: passed through untouched, 1 frame");
                1
            }
            TxRoute::Software => {
                let mut copy = frame.clone();
                let frames = tx.software(&hdr, &mut copy)?.to_frames(&copy);
                for (h, bytes) in &frames {
                    qa.send(&[TxFrame {
                        hdr: *h,
                        data: &[IoBuf::from_slice(bytes)],
                    }])?;
                }
                let partial = frames.iter().filter(|(h, _)| h.needs_csum()).count();
                println!(
                    "{name}: segmented in software into {} frames of at most {} bytes \
                     ({partial} left with a partial checksum for the backend)",
                    frames.len(),
                    frames.iter().map(|(_, f)| f.len()).max().unwrap_or(0)
                );
                frames.len()
            }
        };
        // A guest that negotiated no receive offloads on the other side.
        let rx = RxTranslator::new(OffloadSet::NONE);
        let (mut delivered, mut bytes) = (0usize, 0usize);
        let mut buf = vec![0u8; caps.max_frame];
        while let Some(got) = qb.recv(&[IoBufMut::from_mut_slice(&mut buf)])? {
            let f = &mut buf[..got.len];
            let head = f.len().min(HEAD_LEN);
            match rx.route(&got.hdr, f.len(), &f[..head])? {
                RxRoute::Deliver(_) => {
                    delivered += 1;
                    bytes += f.len();
                }
                RxRoute::Software => {
                    for (_, seg) in rx.software(&got.hdr, f)?.to_frames(f) {
                        delivered += 1;
                        bytes += seg.len();
                    }
                }
            }
        }
        let s = qa.stats();
        println!(
            "  backend counters: {} frames / {} bytes sent, {} dropped; \
             receiving guest got {delivered} complete frames, {bytes} bytes",
            s.tx_packets,
            s.tx_bytes,
            s.tx_drops.total()
        );
        assert_eq!(s.tx_packets as usize, sent);
    }
    Ok(())
}
