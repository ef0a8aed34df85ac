//! Reading the Ethernet, IP and transport headers of a frame to segment.
//!
//! Only what segmentation needs is parsed: up to two VLAN tags (802.1Q, 802.1ad), IPv4
//! without options and not fragmented, IPv6 without extension headers, TCP or UDP. Anything
//! else is a [`FrameError`], never a panic.

use net_api::GsoType;

use crate::error::FrameError;

pub use net_api::ether::{ethertype, is_ipv6, ETH_HLEN, MAX_VLAN_TAGS, VLAN_HLEN};
use net_api::ether::{ETHERTYPE_IPV4, ETHERTYPE_IPV6};

/// IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// The fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// The IPv6 fragment extension header (used by UFO over IPv6).
pub const IPV6_FRAG_HLEN: usize = 8;
/// UDP header.
pub const UDP_HLEN: usize = 8;
/// The longest TCP header (data offset 15).
pub const TCP_MAX_HLEN: usize = 60;

/// IP protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// The IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;

/// Where the layers of a frame start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    /// Offset of the IP header (after Ethernet and VLAN tags).
    pub l3: usize,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Offset of the TCP or UDP header.
    pub l4: usize,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub proto: u8,
    /// Offset of the transport payload.
    pub payload: usize,
}

impl Layers {
    /// IP version number.
    pub fn ip_version(&self) -> u8 {
        if self.ipv6 {
            6
        } else {
            4
        }
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn need(frame: &[u8], what: &'static str, end: usize) -> Result<(), FrameError> {
    if frame.len() < end {
        return Err(FrameError::Truncated {
            what,
            need: end,
            len: frame.len(),
        });
    }
    Ok(())
}

/// Checks that a frame of `len` bytes with these layers fits the IP length fields: the IPv4
/// total length, or the IPv6 payload length, is 16 bits.
pub fn check_ip_length(layers: &Layers, len: usize) -> Result<(), FrameError> {
    let ip_len = if layers.ipv6 {
        len.saturating_sub(layers.l3 + IPV6_HLEN)
    } else {
        len.saturating_sub(layers.l3)
    };
    let max = usize::from(u16::MAX);
    if ip_len > max {
        return Err(FrameError::IpTooLong { len: ip_len, max });
    }
    Ok(())
}

/// Parses the headers of a frame that asks for `gso`, and checks they match it.
pub fn parse_for_gso(frame: &[u8], gso: GsoType) -> Result<Layers, FrameError> {
    need(frame, "Ethernet", ETH_HLEN)?;
    let (et, l3) = ethertype(frame).ok_or(FrameError::Truncated {
        what: "VLAN",
        need: ETH_HLEN + VLAN_HLEN,
        len: frame.len(),
    })?;
    let (ipv6, l4, proto) = match et {
        ETHERTYPE_IPV4 => {
            need(frame, "IPv4", l3 + IPV4_HLEN)?;
            let version = frame[l3] >> 4;
            if version != 4 {
                return Err(FrameError::IpVersion {
                    expected: 4,
                    version,
                });
            }
            let ihl_bytes = usize::from(frame[l3] & 0x0f) * 4;
            if ihl_bytes < IPV4_HLEN {
                return Err(FrameError::Ipv4HeaderTooShort { ihl_bytes });
            }
            if ihl_bytes > IPV4_HLEN {
                return Err(FrameError::Ipv4Options { ihl_bytes });
            }
            let frag = be16(frame, l3 + 6);
            if frag & 0x3fff != 0 {
                return Err(FrameError::Ipv4Fragment);
            }
            (false, l3 + IPV4_HLEN, frame[l3 + 9])
        }
        ETHERTYPE_IPV6 => {
            need(frame, "IPv6", l3 + IPV6_HLEN)?;
            let version = frame[l3] >> 4;
            if version != 6 {
                return Err(FrameError::IpVersion {
                    expected: 6,
                    version,
                });
            }
            let next_header = frame[l3 + 6];
            if next_header != IPPROTO_TCP && next_header != IPPROTO_UDP {
                return Err(FrameError::Ipv6ExtensionHeader { next_header });
            }
            (true, l3 + IPV6_HLEN, next_header)
        }
        ethertype => return Err(FrameError::NotIp { gso, ethertype }),
    };
    let ip = if ipv6 { 6 } else { 4 };
    let matches = match gso {
        GsoType::TcpV4 => !ipv6 && proto == IPPROTO_TCP,
        GsoType::TcpV6 => ipv6 && proto == IPPROTO_TCP,
        GsoType::Udp | GsoType::UdpL4 => proto == IPPROTO_UDP,
        GsoType::None => proto == IPPROTO_TCP || proto == IPPROTO_UDP,
    };
    if !matches {
        return Err(FrameError::GsoMismatch { gso, ip, proto });
    }
    let payload = if proto == IPPROTO_TCP {
        need(frame, "TCP", l4 + 20)?;
        let words = frame[l4 + 12] >> 4;
        if words < 5 {
            return Err(FrameError::TcpHeaderTooShort { words });
        }
        let end = l4 + usize::from(words) * 4;
        need(frame, "TCP", end)?;
        end
    } else {
        need(frame, "UDP", l4 + UDP_HLEN)?;
        l4 + UDP_HLEN
    };
    Ok(Layers {
        l3,
        ipv6,
        l4,
        proto,
        payload,
    })
}
