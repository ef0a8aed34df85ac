//! Frames as a guest's virtio-net driver sends them, for tests, benchmarks, fuzz seeds and
//! examples (cargo feature `test-utils`).
//!
//! [`GuestFrame::build`] writes an Ethernet/IP/TCP-or-UDP frame whose transport checksum field
//! holds the pseudo-header seed, as Linux leaves it for `NEEDS_CSUM`, and the matching header.

use net_api::hdr::{GSO_ECN, NEEDS_CSUM};
use net_api::{Capabilities, GsoType, OffloadSet, VirtioNetHdr};

use crate::csum::{add_pseudo_header, Checksum};
use crate::frame::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, UDP_HLEN, VLAN_HLEN};

/// What to build.
#[derive(Debug, Clone)]
pub struct GuestFrame {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// TCP (else UDP).
    pub tcp: bool,
    /// One 802.1Q tag.
    pub vlan: bool,
    /// Transport payload bytes (a pattern derived from `seed`).
    pub payload_len: usize,
    /// Segmentation to ask for; `GsoType::None` for a checksum-only frame.
    pub gso: GsoType,
    /// `gso_size`.
    pub gso_size: u16,
    /// Set CWR and the ECN bit (TCP only).
    pub ecn: bool,
    /// TCP flags besides ACK (FIN 0x01, PSH 0x08...).
    pub tcp_flags: u8,
    /// TCP options bytes (a multiple of 4, at most 40).
    pub tcp_options: usize,
    /// Varies the payload pattern, ports and sequence number.
    pub seed: u32,
}

impl Default for GuestFrame {
    fn default() -> Self {
        GuestFrame {
            ipv6: false,
            tcp: true,
            vlan: false,
            payload_len: 1000,
            gso: GsoType::None,
            gso_size: 1448,
            ecn: false,
            tcp_flags: 0x08,
            tcp_options: 0,
            seed: 1,
        }
    }
}

impl GuestFrame {
    /// A 64 KiB TCP over IPv4 super-frame with a 1448-byte MSS, as Linux sends with TSO.
    pub fn tso4_64k() -> GuestFrame {
        GuestFrame {
            payload_len: 65535 - IPV4_HLEN - 20,
            gso: GsoType::TcpV4,
            ..GuestFrame::default()
        }
    }

    /// The payload pattern for `seed`.
    pub fn payload(&self) -> Vec<u8> {
        (0..self.payload_len)
            .map(|i| (i as u32).wrapping_mul(31).wrapping_add(self.seed) as u8)
            .collect()
    }

    /// Builds the header and the frame.
    pub fn build(&self) -> (VirtioNetHdr, Vec<u8>) {
        let payload = self.payload();
        let l4_hlen = if self.tcp {
            20 + self.tcp_options
        } else {
            UDP_HLEN
        };
        let l4_len = l4_hlen + payload.len();
        let mut f = Vec::with_capacity(ETH_HLEN + VLAN_HLEN + IPV6_HLEN + l4_len);
        f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 0x0b, 0x52, 0x54, 0, 0, 0, 0x0a]);
        if self.vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
        }
        let proto = if self.tcp { IPPROTO_TCP } else { IPPROTO_UDP };
        let l3 = f.len() + 2;
        if self.ipv6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b]);
        } else {
            let tot = (IPV4_HLEN + l4_len).min(usize::from(u16::MAX)) as u16;
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&tot.to_be_bytes());
            f.extend_from_slice(&(self.seed as u16).to_be_bytes());
            f.extend_from_slice(&[0x40, 0, 64, proto, 0, 0, 10, 0, 0, 10, 10, 0, 0, 11]);
            crate::gso::ipv4_header_checksum(&mut f[l3..l3 + IPV4_HLEN]);
        }
        let l4 = f.len();
        let sport = 40000u16.wrapping_add(self.seed as u16);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&5201u16.to_be_bytes());
        let csum_offset = if self.tcp {
            f.extend_from_slice(&self.seed.wrapping_mul(2_654_435_761).to_be_bytes());
            f.extend_from_slice(&1u32.to_be_bytes());
            let words = (l4_hlen / 4) as u8;
            let mut flags = 0x10 | self.tcp_flags;
            if self.ecn {
                flags |= 0x80;
            }
            f.extend_from_slice(&[words << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
            // NOP options, then end of list.
            f.extend(std::iter::repeat_n(1u8, self.tcp_options));
            16u16
        } else {
            f.extend_from_slice(&(l4_len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            6
        };
        f.extend_from_slice(&payload);
        // The pseudo-header seed, uncomplemented, where the checksum goes.
        let mut c = Checksum::new();
        let (src, dst) = if self.ipv6 {
            (l3 + 8..l3 + 24, l3 + 24..l3 + 40)
        } else {
            (l3 + 12..l3 + 16, l3 + 16..l3 + 20)
        };
        add_pseudo_header(&mut c, &f[src], &f[dst], proto, l4_len as u32);
        let field = l4 + usize::from(csum_offset);
        let seed = c.folded();
        f[field..field + 2].copy_from_slice(&seed);
        let mut gso_type = self.gso.raw();
        if self.ecn && self.tcp {
            gso_type |= GSO_ECN;
        }
        let hdr = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type,
            hdr_len: (l4 + l4_hlen) as u16,
            gso_size: if self.gso == GsoType::None {
                0
            } else {
                self.gso_size
            },
            csum_start: l4 as u16,
            csum_offset,
            num_buffers: 0,
        };
        (hdr, f)
    }
}

/// Capabilities of a backend shape: `vnet_hdr` with `offloads` each way (TAP-like with
/// [`OffloadSet::ALL`]), or no header at all (AF_XDP-like), 1500-byte MTU, GSO-sized frames.
pub fn backend_caps(vnet_hdr: bool, offloads: OffloadSet) -> Capabilities {
    Capabilities {
        vnet_hdr,
        tx_offloads: offloads,
        rx_offloads: offloads,
        rx_csum_verified: false,
        max_frame: crate::MAX_FRAME_LEN,
        max_queue_pairs: 1,
        mac: None,
        mtu: 1500,
    }
}
