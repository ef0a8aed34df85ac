//! The one piece of frame parsing the contract needs: the network-layer ethertype behind up
//! to two VLAN tags, to tell IPv4 from IPv6 (UDP segmentation is a separate offload for each).

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// One VLAN tag.
pub const VLAN_HLEN: usize = 4;
/// The most VLAN tags looked through (802.1ad outer, 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// An 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// An 802.1ad (QinQ) outer tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// The ethertype after at most [`MAX_VLAN_TAGS`] tags, and the offset of the header it names;
/// a third tag is reported as the ethertype (so: not IP). `None` when the frame ends first.
pub fn ethertype(frame: &[u8]) -> Option<(u16, usize)> {
    let mut off = ETH_HLEN - 2;
    for tags in 0..=MAX_VLAN_TAGS {
        let et = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
        if (et == ETHERTYPE_VLAN || et == ETHERTYPE_QINQ) && tags < MAX_VLAN_TAGS {
            off += VLAN_HLEN;
            continue;
        }
        return Some((et, off + 2));
    }
    None
}

/// Whether the frame is IPv6 as far as its ethertype says (false when too short to tell).
pub fn is_ipv6(frame: &[u8]) -> bool {
    matches!(ethertype(frame), Some((ETHERTYPE_IPV6, _)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_through_two_tags_and_no_more() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd]);
        assert_eq!(ethertype(&f), Some((ETHERTYPE_IPV6, 14)));
        let mut one = vec![0u8; 12];
        one.extend_from_slice(&[0x81, 0x00, 0, 1, 0x08, 0x00]);
        assert_eq!(ethertype(&one), Some((ETHERTYPE_IPV4, 18)));
        let mut two = vec![0u8; 12];
        two.extend_from_slice(&[0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2, 0x86, 0xdd]);
        assert!(is_ipv6(&two));
        let mut three = vec![0u8; 12];
        three.extend_from_slice(&[0x88, 0xa8, 0, 1, 0x81, 0, 0, 2, 0x81, 0, 0, 3, 0x86, 0xdd]);
        assert_eq!(ethertype(&three), Some((ETHERTYPE_VLAN, 22)));
        assert!(!is_ipv6(&three));
        assert_eq!(ethertype(&[0u8; 13]), None);
    }
}
