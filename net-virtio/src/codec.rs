//! The virtio-net header on the wire: three layouts, one decoded form.
//!
//! | layout | when | length | byte order |
//! |---|---|---|---|
//! | [`HdrLayout::Legacy`] | legacy device, no `MRG_RXBUF` | 10 | guest-native |
//! | [`HdrLayout::LegacyMrg`] | legacy device with `MRG_RXBUF` | 12 | guest-native |
//! | [`HdrLayout::V1`] | `VIRTIO_F_VERSION_1` | 12 | little endian |
//! | [`HdrLayout::V1Hash`] | `VERSION_1` with `HASH_REPORT` | 20 | little endian |
//!
//! The layout comes only from the acked features, never from what a guest writes, so a
//! header length cannot be talked up or down by the guest. Guest-native byte order is the
//! host's: volt-net runs guests of the host's architecture.

use std::mem::size_of;

use net_api::VirtioNetHdr;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    virtio_net_hdr, virtio_net_hdr_mrg_rxbuf, virtio_net_hdr_v1, virtio_net_hdr_v1_hash,
    VIRTIO_NET_F_HASH_REPORT, VIRTIO_NET_F_MRG_RXBUF,
};

/// A buffer too short for the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("virtio-net header needs {need} bytes but the buffer has {have}")]
pub struct ShortHeader {
    /// The layout's length.
    pub need: usize,
    /// The buffer's length.
    pub have: usize,
}

/// How the header is laid out in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HdrLayout {
    /// 10 bytes, guest-native byte order, no `num_buffers`.
    Legacy,
    /// 12 bytes, guest-native byte order, with `num_buffers`.
    LegacyMrg,
    /// 12 bytes, little endian, with `num_buffers`.
    V1,
    /// 20 bytes, little endian, with `num_buffers` and the hash report fields.
    V1Hash,
}

const fn has(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

impl HdrLayout {
    /// The layout the acked features imply.
    pub const fn from_features(acked: u64) -> HdrLayout {
        if has(acked, VIRTIO_F_VERSION_1) {
            if has(acked, VIRTIO_NET_F_HASH_REPORT) {
                HdrLayout::V1Hash
            } else {
                HdrLayout::V1
            }
        } else if has(acked, VIRTIO_NET_F_MRG_RXBUF) {
            HdrLayout::LegacyMrg
        } else {
            HdrLayout::Legacy
        }
    }

    /// The header's length in bytes.
    pub const fn size(self) -> usize {
        match self {
            HdrLayout::Legacy => size_of::<virtio_net_hdr>(),
            HdrLayout::LegacyMrg => size_of::<virtio_net_hdr_mrg_rxbuf>(),
            HdrLayout::V1 => size_of::<virtio_net_hdr_v1>(),
            HdrLayout::V1Hash => size_of::<virtio_net_hdr_v1_hash>(),
        }
    }

    /// Whether the layout has a `num_buffers` field.
    pub const fn has_num_buffers(self) -> bool {
        !matches!(self, HdrLayout::Legacy)
    }

    const fn little_endian(self) -> bool {
        matches!(self, HdrLayout::V1 | HdrLayout::V1Hash)
    }

    fn read_u16(self, b: [u8; 2]) -> u16 {
        if self.little_endian() {
            u16::from_le_bytes(b)
        } else {
            u16::from_ne_bytes(b)
        }
    }

    fn write_u16(self, v: u16) -> [u8; 2] {
        if self.little_endian() {
            v.to_le_bytes()
        } else {
            v.to_ne_bytes()
        }
    }

    /// Decodes a header from the first [`size`](Self::size) bytes of `buf`.
    ///
    /// Any bit pattern decodes; whether it makes sense for a frame is
    /// [`crate::translate`]'s question. `num_buffers` is 0 for [`HdrLayout::Legacy`]; the hash
    /// report fields are not kept.
    pub fn decode(self, buf: &[u8]) -> Result<VirtioNetHdr, ShortHeader> {
        let b = buf.get(..self.size()).ok_or(ShortHeader {
            need: self.size(),
            have: buf.len(),
        })?;
        let w = |i: usize| self.read_u16([b[i], b[i + 1]]);
        Ok(VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: w(2),
            gso_size: w(4),
            csum_start: w(6),
            csum_offset: w(8),
            num_buffers: if self.has_num_buffers() { w(10) } else { 0 },
        })
    }

    /// Encodes `hdr` into the first [`size`](Self::size) bytes of `buf` and returns that length.
    /// Hash report fields are written as zero (no hash reported).
    pub fn encode(self, hdr: &VirtioNetHdr, buf: &mut [u8]) -> Result<usize, ShortHeader> {
        let have = buf.len();
        let b = buf.get_mut(..self.size()).ok_or(ShortHeader {
            need: self.size(),
            have,
        })?;
        b.fill(0);
        b[0] = hdr.flags;
        b[1] = hdr.gso_type;
        for (i, v) in [hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset]
            .into_iter()
            .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&self.write_u16(v));
        }
        if self.has_num_buffers() {
            b[10..12].copy_from_slice(&self.write_u16(hdr.num_buffers));
        }
        Ok(self.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM;

    const SAMPLE: VirtioNetHdr = VirtioNetHdr {
        flags: 1,
        gso_type: 0x81,
        hdr_len: 0x0136,
        gso_size: 0x05a8,
        csum_start: 0x0022,
        csum_offset: 0x0010,
        num_buffers: 0x0003,
    };

    #[test]
    fn layout_follows_features_only() {
        let v1 = 1u64 << VIRTIO_F_VERSION_1;
        let mrg = 1u64 << VIRTIO_NET_F_MRG_RXBUF;
        let hash = 1u64 << VIRTIO_NET_F_HASH_REPORT;
        let csum = 1u64 << VIRTIO_NET_F_CSUM;
        assert_eq!(HdrLayout::from_features(csum), HdrLayout::Legacy);
        assert_eq!(HdrLayout::from_features(mrg), HdrLayout::LegacyMrg);
        // HASH_REPORT without VERSION_1 does not change a legacy header.
        assert_eq!(HdrLayout::from_features(mrg | hash), HdrLayout::LegacyMrg);
        assert_eq!(HdrLayout::from_features(v1), HdrLayout::V1);
        assert_eq!(HdrLayout::from_features(v1 | mrg), HdrLayout::V1);
        assert_eq!(HdrLayout::from_features(v1 | hash), HdrLayout::V1Hash);
        let lens: Vec<_> = [
            HdrLayout::Legacy,
            HdrLayout::LegacyMrg,
            HdrLayout::V1,
            HdrLayout::V1Hash,
        ]
        .iter()
        .map(|l| l.size())
        .collect();
        assert_eq!(lens, [10, 12, 12, 20]);
    }

    #[test]
    fn v1_is_little_endian_bytes() {
        let mut buf = [0xaa; 20];
        assert_eq!(HdrLayout::V1.encode(&SAMPLE, &mut buf), Ok(12));
        assert_eq!(
            buf[..12],
            [0x01, 0x81, 0x36, 0x01, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x03, 0x00]
        );
        assert_eq!(buf[12], 0xaa, "nothing written past the header");
        assert_eq!(HdrLayout::V1.decode(&buf), Ok(SAMPLE));
    }

    #[test]
    fn legacy_is_ten_native_bytes_without_num_buffers() {
        let mut buf = [0u8; 10];
        assert_eq!(HdrLayout::Legacy.encode(&SAMPLE, &mut buf), Ok(10));
        assert_eq!(buf[2..4], 0x0136u16.to_ne_bytes());
        let back = HdrLayout::Legacy.decode(&buf).expect("10 bytes suffice");
        assert_eq!(
            back,
            VirtioNetHdr {
                num_buffers: 0,
                ..SAMPLE
            }
        );
    }

    #[test]
    fn hash_layout_zeroes_the_hash_fields() {
        let mut buf = [0xffu8; 20];
        HdrLayout::V1Hash
            .encode(&SAMPLE, &mut buf)
            .expect("20 bytes");
        assert_eq!(buf[12..20], [0; 8]);
        assert_eq!(HdrLayout::V1Hash.decode(&buf), Ok(SAMPLE));
    }

    #[test]
    fn short_buffers_are_errors() {
        assert_eq!(
            HdrLayout::V1.decode(&[0; 11]),
            Err(ShortHeader { need: 12, have: 11 })
        );
        assert_eq!(
            HdrLayout::V1Hash.encode(&SAMPLE, &mut [0; 12]),
            Err(ShortHeader { need: 20, have: 12 })
        );
    }
}
