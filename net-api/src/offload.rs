//! Offloads and backend capabilities.

use std::fmt;

use crate::hdr::{GsoType, VirtioNetHdr};
use crate::mac::MacAddr;

/// A set of checksum/segmentation offloads.
///
/// On transmit it says which kinds of frame a backend accepts as they are (a partial checksum,
/// a TCP super-frame...); on receive, which kinds it may deliver once the reader enabled them.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OffloadSet(u8);

impl OffloadSet {
    /// No offload.
    pub const NONE: OffloadSet = OffloadSet(0);
    /// Partial checksums (`NEEDS_CSUM`).
    pub const CSUM: OffloadSet = OffloadSet(1 << 0);
    /// TCP segmentation over IPv4.
    pub const TSO4: OffloadSet = OffloadSet(1 << 1);
    /// TCP segmentation over IPv6.
    pub const TSO6: OffloadSet = OffloadSet(1 << 2);
    /// TCP segmentation of frames with ECN (CWR) set.
    pub const TSO_ECN: OffloadSet = OffloadSet(1 << 3);
    /// UDP fragmentation offload.
    pub const UFO: OffloadSet = OffloadSet(1 << 4);
    /// UDP segmentation over IPv4.
    pub const USO4: OffloadSet = OffloadSet(1 << 5);
    /// UDP segmentation over IPv6.
    pub const USO6: OffloadSet = OffloadSet(1 << 6);
    /// Every offload this type knows.
    pub const ALL: OffloadSet = OffloadSet(0x7f);

    const NAMES: [(OffloadSet, &'static str); 7] = [
        (Self::CSUM, "csum"),
        (Self::TSO4, "tso4"),
        (Self::TSO6, "tso6"),
        (Self::TSO_ECN, "tso-ecn"),
        (Self::UFO, "ufo"),
        (Self::USO4, "uso4"),
        (Self::USO6, "uso6"),
    ];

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Builds a set from raw bits, dropping unknown ones.
    pub const fn from_bits_truncate(bits: u8) -> OffloadSet {
        OffloadSet(bits & Self::ALL.0)
    }

    /// Whether every offload of `other` is in `self`.
    pub const fn contains(self, other: OffloadSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The offloads in either set.
    pub const fn union(self, other: OffloadSet) -> OffloadSet {
        OffloadSet(self.0 | other.0)
    }

    /// The offloads in both sets.
    pub const fn intersection(self, other: OffloadSet) -> OffloadSet {
        OffloadSet(self.0 & other.0)
    }

    /// The offloads of `self` not in `other`.
    pub const fn difference(self, other: OffloadSet) -> OffloadSet {
        OffloadSet(self.0 & !other.0)
    }

    /// The offloads a frame with this header needs from whoever takes it as it is.
    ///
    /// `ipv6` says whether the frame's network layer is IPv6; it only matters for UDP
    /// segmentation, where IPv4 and IPv6 are separate offloads. Returns `None` when the header
    /// names an unknown segmentation type.
    pub fn required_by(hdr: &VirtioNetHdr, ipv6: bool) -> Option<OffloadSet> {
        let mut need = OffloadSet::NONE;
        if hdr.needs_csum() {
            need = need.union(Self::CSUM);
        }
        let gso = match hdr.gso()? {
            GsoType::None => OffloadSet::NONE,
            GsoType::TcpV4 => Self::TSO4,
            GsoType::TcpV6 => Self::TSO6,
            GsoType::Udp => Self::UFO,
            GsoType::UdpL4 if ipv6 => Self::USO6,
            GsoType::UdpL4 => Self::USO4,
        };
        need = need.union(gso);
        if hdr.ecn() && hdr.gso().is_some_and(GsoType::is_tcp) {
            need = need.union(Self::TSO_ECN);
        }
        Some(need)
    }
}

impl std::ops::BitOr for OffloadSet {
    type Output = OffloadSet;
    fn bitor(self, rhs: OffloadSet) -> OffloadSet {
        self.union(rhs)
    }
}

impl std::ops::BitOrAssign for OffloadSet {
    fn bitor_assign(&mut self, rhs: OffloadSet) {
        *self = self.union(rhs);
    }
}

impl std::ops::BitAnd for OffloadSet {
    type Output = OffloadSet;
    fn bitand(self, rhs: OffloadSet) -> OffloadSet {
        self.intersection(rhs)
    }
}

impl fmt::Display for OffloadSet {
    /// `csum,tso4,...`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for OffloadSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OffloadSet({self})")
    }
}

/// What a backend can do, reported before any queue is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend reads and writes virtio-net headers itself (TAP and macvtap with
    /// `IFF_VNET_HDR`). When false, every [`TxFrame`](crate::TxFrame) must carry a plain header
    /// and received frames come with a plain header (or `DATA_VALID`), so the device completes
    /// checksums and segments in software.
    pub vnet_hdr: bool,
    /// The offloads `send` accepts as they are.
    pub tx_offloads: OffloadSet,
    /// The offloads `recv` can deliver, once enabled with
    /// [`QueuePair::set_rx_offloads`](crate::QueuePair::set_rx_offloads).
    pub rx_offloads: OffloadSet,
    /// Received frames whose checksums the backend verified carry `DATA_VALID`.
    pub rx_csum_verified: bool,
    /// The largest frame, Ethernet header included and virtio-net header excluded, that `send`
    /// accepts and `recv` may deliver.
    pub max_frame: usize,
    /// How many queue pairs can be open at once.
    pub max_queue_pairs: u16,
    /// The MAC address the backend's link has, if it has one of its own.
    pub mac: Option<MacAddr>,
    /// The MTU of the backend's link (the IP packet size, without Ethernet header).
    pub mtu: u16,
}

impl Capabilities {
    /// Whether a frame with this header can be handed to `send` unchanged.
    pub fn accepts(&self, hdr: &VirtioNetHdr, ipv6: bool) -> bool {
        match OffloadSet::required_by(hdr, ipv6) {
            Some(need) if need.is_empty() => true,
            Some(need) => self.vnet_hdr && self.tx_offloads.contains(need),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hdr::{GSO_ECN, NEEDS_CSUM};

    #[test]
    fn set_operations_and_display() {
        let s = OffloadSet::CSUM | OffloadSet::TSO4;
        assert!(s.contains(OffloadSet::CSUM));
        assert!(!s.contains(OffloadSet::TSO6));
        assert_eq!(s.difference(OffloadSet::CSUM), OffloadSet::TSO4);
        assert_eq!(s.to_string(), "csum,tso4");
        assert_eq!(OffloadSet::NONE.to_string(), "none");
        assert_eq!(OffloadSet::from_bits_truncate(0xff), OffloadSet::ALL);
    }

    #[test]
    fn required_offloads_follow_the_header() {
        let mut h = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: GsoType::TcpV4.raw() | GSO_ECN,
            ..VirtioNetHdr::PLAIN
        };
        assert_eq!(
            OffloadSet::required_by(&h, false),
            Some(OffloadSet::CSUM | OffloadSet::TSO4 | OffloadSet::TSO_ECN)
        );
        h.gso_type = GsoType::UdpL4.raw();
        assert_eq!(
            OffloadSet::required_by(&h, true),
            Some(OffloadSet::CSUM | OffloadSet::USO6)
        );
        h.gso_type = 2;
        assert_eq!(OffloadSet::required_by(&h, false), None);
    }

    #[test]
    fn a_backend_without_headers_takes_only_plain_frames() {
        let caps = Capabilities {
            vnet_hdr: false,
            tx_offloads: OffloadSet::ALL,
            rx_offloads: OffloadSet::NONE,
            rx_csum_verified: false,
            max_frame: 1514,
            max_queue_pairs: 1,
            mac: None,
            mtu: 1500,
        };
        assert!(caps.accepts(&VirtioNetHdr::PLAIN, false));
        let csum = VirtioNetHdr {
            flags: NEEDS_CSUM,
            ..VirtioNetHdr::PLAIN
        };
        assert!(!caps.accepts(&csum, false));
    }
}
