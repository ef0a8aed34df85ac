//! Header codec: round trips for every layout.

use net_api::VirtioNetHdr;
use net_virtio::HdrLayout;
use proptest::prelude::*;

fn any_hdr() -> impl Strategy<Value = VirtioNetHdr> {
    any::<(u8, u8, u16, u16, u16, u16, u16)>().prop_map(|(f, g, hl, gs, cs, co, nb)| VirtioNetHdr {
        flags: f,
        gso_type: g,
        hdr_len: hl,
        gso_size: gs,
        csum_start: cs,
        csum_offset: co,
        num_buffers: nb,
    })
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips(hdr in any_hdr()) {
        for layout in [HdrLayout::Legacy, HdrLayout::LegacyMrg, HdrLayout::V1, HdrLayout::V1Hash] {
            let mut buf = [0u8; 20];
            let n = layout.encode(&hdr, &mut buf).expect("20 bytes hold any layout");
            prop_assert_eq!(n, layout.size());
            let back = layout.decode(&buf[..n]).expect("decodes");
            let want = if layout.has_num_buffers() { hdr } else { VirtioNetHdr { num_buffers: 0, ..hdr } };
            prop_assert_eq!(back, want);
        }
    }

    #[test]
    fn decode_then_encode_round_trips(bytes in proptest::collection::vec(any::<u8>(), 12)) {
        for layout in [HdrLayout::Legacy, HdrLayout::LegacyMrg, HdrLayout::V1] {
            let hdr = layout.decode(&bytes).expect("12 bytes");
            let mut out = [0u8; 12];
            let n = layout.encode(&hdr, &mut out).expect("12 bytes");
            prop_assert_eq!(&out[..n], &bytes[..n]);
        }
    }
}
