//! The decoded virtio-net header.
//!
//! This is the header in host terms, independent of the layout the guest negotiated (the
//! 10-byte legacy header, the 12-byte one with `num_buffers`, or the little-endian virtio 1.0
//! one). `net-virtio` owns the byte codec; backends receive and return this struct.

use virtio_bindings::virtio_net as vn;

/// `flags`: the frame carries a partial checksum to complete (`csum_start`/`csum_offset`).
pub const NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// `flags`: the checksums of the frame were verified (receive direction only).
pub const DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
/// `flags`: RSC coalescing information is present (receive direction only, never offered).
pub const RSC_INFO: u8 = vn::VIRTIO_NET_HDR_F_RSC_INFO as u8;
/// `gso_type` bit: the TCP frame has ECN (CWR) set.
pub const GSO_ECN: u8 = vn::VIRTIO_NET_HDR_GSO_ECN as u8;

/// The segmentation a frame asks for (`gso_type` without the ECN bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GsoType {
    /// Not a GSO frame.
    None,
    /// TCP over IPv4 (TSO4).
    TcpV4,
    /// UDP fragmentation offload (UFO): one UDP datagram split into IP fragments.
    Udp,
    /// TCP over IPv6 (TSO6).
    TcpV6,
    /// UDP segmentation offload (USO): one UDP datagram per `gso_size` bytes of payload.
    UdpL4,
}

impl GsoType {
    /// The raw `gso_type` value (ECN bit clear).
    pub const fn raw(self) -> u8 {
        (match self {
            GsoType::None => vn::VIRTIO_NET_HDR_GSO_NONE,
            GsoType::TcpV4 => vn::VIRTIO_NET_HDR_GSO_TCPV4,
            GsoType::Udp => vn::VIRTIO_NET_HDR_GSO_UDP,
            GsoType::TcpV6 => vn::VIRTIO_NET_HDR_GSO_TCPV6,
            GsoType::UdpL4 => vn::VIRTIO_NET_HDR_GSO_UDP_L4,
        }) as u8
    }

    /// Parses the low bits of `gso_type` (ECN masked off); `None` for an unknown value.
    pub const fn from_raw(raw: u8) -> Option<GsoType> {
        match (raw & !GSO_ECN) as u32 {
            vn::VIRTIO_NET_HDR_GSO_NONE => Some(GsoType::None),
            vn::VIRTIO_NET_HDR_GSO_TCPV4 => Some(GsoType::TcpV4),
            vn::VIRTIO_NET_HDR_GSO_UDP => Some(GsoType::Udp),
            vn::VIRTIO_NET_HDR_GSO_TCPV6 => Some(GsoType::TcpV6),
            vn::VIRTIO_NET_HDR_GSO_UDP_L4 => Some(GsoType::UdpL4),
            _ => None,
        }
    }

    /// Whether this is a TCP segmentation type.
    pub const fn is_tcp(self) -> bool {
        matches!(self, GsoType::TcpV4 | GsoType::TcpV6)
    }
}

/// A virtio-net header, decoded.
///
/// Fields keep their wire names and meanings (virtio 1.2, 5.1.6). `num_buffers` is meaningful
/// only on receive with mergeable buffers; elsewhere it is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VirtioNetHdr {
    /// [`NEEDS_CSUM`], [`DATA_VALID`], [`RSC_INFO`].
    pub flags: u8,
    /// A [`GsoType`] value, possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers to replicate in each segment (a hint; may be 0).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Offset of the first byte to checksum.
    pub csum_start: u16,
    /// Offset, from `csum_start`, of the 16-bit checksum field.
    pub csum_offset: u16,
    /// Number of descriptor chains a mergeable receive frame spans.
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// A header that asks for nothing: no checksum work, no segmentation.
    pub const PLAIN: VirtioNetHdr = VirtioNetHdr {
        flags: 0,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
        num_buffers: 0,
    };

    /// The segmentation type, or `None` (the Rust one) when `gso_type` holds unknown bits.
    pub fn gso(&self) -> Option<GsoType> {
        GsoType::from_raw(self.gso_type)
    }

    /// Whether the ECN bit of `gso_type` is set.
    pub fn ecn(&self) -> bool {
        self.gso_type & GSO_ECN != 0
    }

    /// Whether the frame carries a partial checksum.
    pub fn needs_csum(&self) -> bool {
        self.flags & NEEDS_CSUM != 0
    }

    /// Whether the frame asks for segmentation.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GsoType::None.raw()
    }

    /// Whether the header asks for no offload work (no partial checksum, no GSO).
    pub fn is_plain(&self) -> bool {
        !self.needs_csum() && self.gso_type == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_types_round_trip_and_reject_unknown_bits() {
        for t in [
            GsoType::None,
            GsoType::TcpV4,
            GsoType::Udp,
            GsoType::TcpV6,
            GsoType::UdpL4,
        ] {
            assert_eq!(GsoType::from_raw(t.raw()), Some(t));
            assert_eq!(GsoType::from_raw(t.raw() | GSO_ECN), Some(t));
        }
        for raw in [2u8, 6, 7, 0x40, 0x7f] {
            assert_eq!(GsoType::from_raw(raw), None, "gso_type {raw:#x}");
        }
    }

    #[test]
    fn flags_helpers() {
        let mut h = VirtioNetHdr::PLAIN;
        assert!(h.is_plain() && !h.is_gso() && !h.ecn());
        h.flags = NEEDS_CSUM;
        h.gso_type = GsoType::TcpV4.raw() | GSO_ECN;
        assert!(h.needs_csum() && h.is_gso() && h.ecn() && !h.is_plain());
        assert_eq!(h.gso(), Some(GsoType::TcpV4));
        h.gso_type = GSO_ECN;
        assert!(!h.is_gso(), "ECN alone is not a GSO request");
    }
}
