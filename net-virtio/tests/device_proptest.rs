//! Random traffic over random guest buffer layouts arrives byte-exact, in order, both ways.

mod common;

use common::harness::*;
use net_api::loopback::LoopbackConfig;
use net_api::VirtioNetHdr;
use net_virtio::DeviceConfig;
use proptest::prelude::*;
use virtio_bindings::virtio_net as vn;

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

#[derive(Debug, Clone)]
struct Case {
    combo: usize,
    frames: Vec<(usize, Vec<u32>)>,
    rx_layouts: Vec<Vec<u32>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..5usize,
        prop::collection::vec(
            (14usize..1515, prop::collection::vec(1u32..300, 0..5)),
            1..24,
        ),
        prop::collection::vec(prop::collection::vec(1u32..1200, 1..4), 1..16),
    )
        .prop_map(|(combo, frames, rx_layouts)| Case {
            combo,
            frames,
            rx_layouts,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_traffic_over_random_buffer_layouts_is_byte_exact(c in case()) {
        let (name, features) = combos(false)[c.combo];
        let mut r = rig(LoopbackConfig::default(), DeviceConfig::default(), features);
        let frames: Vec<Vec<u8>> = c.frames.iter().enumerate().map(|(i, (len, _))| frame(*len, i as u8)).collect();

        // Transmit, each frame cut as drawn.
        for (f, (_, cuts)) in frames.iter().zip(&c.frames) {
            r.drv.send(1, &VirtioNetHdr::PLAIN, f, cuts).expect("tx chain");
        }
        r.drv.kick(&mut r.dev, 1).expect("kick");
        let got: Vec<Vec<u8>> = r.peer_recv(0).into_iter().map(|g| g.1).collect();
        prop_assert_eq!(&got, &frames, "{}: transmit", name);

        // Receive into buffers laid out as drawn (cycled until everything arrived).
        for f in &frames {
            prop_assert_eq!(r.peer_send(0, VirtioNetHdr::PLAIN, f), 1);
        }
        let hdr = r.drv.layout().size() as u32;
        let mergeable = r.has(vn::VIRTIO_NET_F_MRG_RXBUF);
        let mut got = Vec::new();
        let mut layouts = c.rx_layouts.iter().cycle();
        for _ in 0..400 {
            if got.len() == frames.len() {
                break;
            }
            let mut sizes = layouts.next().expect("cycle").clone();
            // Without MRG_RXBUF a buffer must hold the largest frame; with it, the header.
            let need = if mergeable { hdr } else { hdr + 1518 };
            let total: u32 = sizes.iter().sum();
            if total < need {
                sizes.push(need - total);
            }
            r.drv.post_rx(0, &sizes).expect("rx chain");
            r.drv.kick(&mut r.dev, 0).expect("kick");
            r.backend_rx(0);
            got.extend(r.guest_recv(0).into_iter().map(|g| g.frame));
        }
        prop_assert_eq!(&got, &frames, "{}: receive", name);
        prop_assert_eq!(r.dev.stats().pairs[0].0.short_buffers, 0);
    }
}
