//! The receive filter a guest asks for: RX mode, MAC tables and VLAN membership.
//!
//! A virtio-net driver programs it through the control queue (`VIRTIO_NET_CTRL_RX`,
//! `_MAC`, `_VLAN`). The device hands it to the backend ([`QueuePair::set_rx_filter`]); a
//! backend that can apply it on the host side (a TAP's `TUNSETTXFILTER`, an XDP map) says so,
//! and otherwise the device applies [`RxFilter::accepts`] to every received frame.
//!
//! The rules are QEMU's (`receive_filter` in `hw/net/virtio-net.c`), which guests are
//! written against: promiscuous accepts everything; a tagged frame whose VLAN is not in the
//! table is dropped; broadcast passes unless `no_broadcast`; multicast passes with
//! `all_multicast`, or when in the multicast table (or the table overflowed), unless
//! `no_multicast`; unicast passes for the device's own MAC, with `all_unicast`, or when in the
//! unicast table (or it overflowed), unless `no_unicast`.
//!
//! [`QueuePair::set_rx_filter`]: crate::QueuePair::set_rx_filter

use crate::ether::{ETHERTYPE_VLAN, ETH_HLEN};
use crate::mac::MacAddr;

/// How many addresses each MAC table keeps; more set the table's overflow flag, which then
/// accepts every address of its kind (as QEMU does with its 64 entries).
pub const MAC_TABLE_ENTRIES: usize = 64;

/// The number of VLAN ids (12 bits).
pub const VLAN_IDS: usize = 4096;

/// A receive filter. The default accepts everything (promiscuous, as a device starts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFilter {
    /// The device's own address (config space `mac`, or `VIRTIO_NET_CTRL_MAC_ADDR_SET`).
    pub mac: Option<MacAddr>,
    /// Accept every frame.
    pub promiscuous: bool,
    /// Accept every multicast frame.
    pub all_multicast: bool,
    /// Accept every unicast frame.
    pub all_unicast: bool,
    /// Drop every multicast frame.
    pub no_multicast: bool,
    /// Drop every unicast frame.
    pub no_unicast: bool,
    /// Drop broadcast frames.
    pub no_broadcast: bool,
    unicast: Vec<MacAddr>,
    unicast_overflow: bool,
    multicast: Vec<MacAddr>,
    multicast_overflow: bool,
    /// Whether VLAN filtering is on (`VIRTIO_NET_F_CTRL_VLAN` negotiated); off, every tag passes.
    vlan_filtering: bool,
    vlans: Box<[u64; VLAN_IDS / 64]>,
}

impl Default for RxFilter {
    fn default() -> Self {
        RxFilter {
            mac: None,
            promiscuous: true,
            all_multicast: false,
            all_unicast: false,
            no_multicast: false,
            no_unicast: false,
            no_broadcast: false,
            unicast: Vec::new(),
            unicast_overflow: false,
            multicast: Vec::new(),
            multicast_overflow: false,
            vlan_filtering: false,
            vlans: Box::new([0; VLAN_IDS / 64]),
        }
    }
}

impl RxFilter {
    /// Whether every frame passes (nothing to do on the receive path).
    pub fn accepts_all(&self) -> bool {
        self.promiscuous
    }

    /// Replaces the unicast table; addresses past [`MAC_TABLE_ENTRIES`] set the overflow flag.
    /// `extra` counts entries the caller saw but did not pass (they overflow too).
    pub fn set_unicast(&mut self, macs: impl IntoIterator<Item = MacAddr>, extra: bool) {
        let (table, overflow) = Self::fill(macs);
        self.unicast = table;
        self.unicast_overflow = overflow || extra;
    }

    /// Replaces the multicast table, as [`RxFilter::set_unicast`].
    pub fn set_multicast(&mut self, macs: impl IntoIterator<Item = MacAddr>, extra: bool) {
        let (table, overflow) = Self::fill(macs);
        self.multicast = table;
        self.multicast_overflow = overflow || extra;
    }

    fn fill(macs: impl IntoIterator<Item = MacAddr>) -> (Vec<MacAddr>, bool) {
        let mut table = Vec::new();
        let mut overflow = false;
        for mac in macs {
            if table.len() == MAC_TABLE_ENTRIES {
                overflow = true;
                break;
            }
            table.push(mac);
        }
        (table, overflow)
    }

    /// The unicast table.
    pub fn unicast(&self) -> &[MacAddr] {
        &self.unicast
    }

    /// The multicast table.
    pub fn multicast(&self) -> &[MacAddr] {
        &self.multicast
    }

    /// Turns VLAN filtering on (with an empty table: no tagged frame passes until a VLAN is
    /// added, as with QEMU once `CTRL_VLAN` is negotiated) or off (every tag passes).
    pub fn set_vlan_filtering(&mut self, on: bool) {
        self.vlan_filtering = on;
        self.vlans.fill(0);
    }

    /// Whether VLAN filtering is on.
    pub fn vlan_filtering(&self) -> bool {
        self.vlan_filtering
    }

    /// Adds (`on`) or removes a VLAN id; ids of 4096 and above are refused with `false`.
    pub fn set_vlan(&mut self, vid: u16, on: bool) -> bool {
        let vid = usize::from(vid);
        if vid >= VLAN_IDS {
            return false;
        }
        let bit = 1u64 << (vid % 64);
        if on {
            self.vlans[vid / 64] |= bit;
        } else {
            self.vlans[vid / 64] &= !bit;
        }
        true
    }

    /// Whether a VLAN id is in the table.
    pub fn has_vlan(&self, vid: u16) -> bool {
        let vid = usize::from(vid);
        vid < VLAN_IDS && self.vlans[vid / 64] & (1u64 << (vid % 64)) != 0
    }

    /// Whether a received frame passes. Frames shorter than an Ethernet header do not.
    pub fn accepts(&self, frame: &[u8]) -> bool {
        if self.promiscuous {
            return true;
        }
        if frame.len() < ETH_HLEN {
            return false;
        }
        if self.vlan_filtering && u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_VLAN {
            let Some(tci) = frame.get(14..16) else {
                return false;
            };
            if !self.has_vlan(u16::from_be_bytes([tci[0], tci[1]]) & 0x0fff) {
                return false;
            }
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        let dst = MacAddr(dst);
        if dst.is_broadcast() {
            !self.no_broadcast
        } else if dst.is_multicast() {
            !self.no_multicast
                && (self.all_multicast || self.multicast_overflow || self.multicast.contains(&dst))
        } else {
            !self.no_unicast
                && (self.all_unicast
                    || self.mac == Some(dst)
                    || self.unicast_overflow
                    || self.unicast.contains(&dst))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const OTHER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);
    const MCAST: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]);

    fn frame(dst: MacAddr, vlan: Option<u16>) -> Vec<u8> {
        let mut f = dst.0.to_vec();
        f.extend_from_slice(&OTHER.0);
        if let Some(vid) = vlan {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(60, 0);
        f
    }

    fn strict() -> RxFilter {
        RxFilter {
            mac: Some(ME),
            promiscuous: false,
            ..Default::default()
        }
    }

    #[test]
    fn default_accepts_everything() {
        let f = RxFilter::default();
        assert!(f.accepts(&frame(OTHER, None)));
        assert!(f.accepts(&[0u8; 3]));
    }

    #[test]
    fn unicast_rules() {
        let mut f = strict();
        assert!(f.accepts(&frame(ME, None)));
        assert!(!f.accepts(&frame(OTHER, None)));
        f.set_unicast([OTHER], false);
        assert!(f.accepts(&frame(OTHER, None)));
        f.no_unicast = true;
        assert!(!f.accepts(&frame(ME, None)));
        f.no_unicast = false;
        f.set_unicast([], false);
        f.all_unicast = true;
        assert!(f.accepts(&frame(OTHER, None)));
        assert!(!f.accepts(&frame(ME, None)[..10]));
    }

    #[test]
    fn multicast_and_broadcast_rules() {
        let mut f = strict();
        assert!(f.accepts(&frame(MacAddr::BROADCAST, None)));
        f.no_broadcast = true;
        assert!(!f.accepts(&frame(MacAddr::BROADCAST, None)));
        assert!(!f.accepts(&frame(MCAST, None)));
        f.set_multicast([MCAST], false);
        assert!(f.accepts(&frame(MCAST, None)));
        f.no_multicast = true;
        assert!(!f.accepts(&frame(MCAST, None)));
        f.no_multicast = false;
        f.set_multicast([], false);
        f.all_multicast = true;
        assert!(f.accepts(&frame(MCAST, None)));
    }

    #[test]
    fn table_overflow_accepts_all_of_its_kind() {
        let mut f = strict();
        let many = (0..=MAC_TABLE_ENTRIES as u8).map(|i| MacAddr([0x02, 0, 0, 0, 1, i]));
        f.set_unicast(many, false);
        assert_eq!(f.unicast().len(), MAC_TABLE_ENTRIES);
        assert!(f.accepts(&frame(OTHER, None)));
        f.set_multicast([], true);
        assert!(f.accepts(&frame(MCAST, None)));
    }

    #[test]
    fn vlan_table() {
        let mut f = strict();
        assert!(f.accepts(&frame(ME, Some(5))));
        f.set_vlan_filtering(true);
        assert!(!f.accepts(&frame(ME, Some(5))));
        assert!(f.accepts(&frame(ME, None)));
        assert!(f.set_vlan(5, true));
        assert!(f.accepts(&frame(ME, Some(0x2005))), "priority bits ignored");
        assert!(!f.set_vlan(4096, true));
        assert!(f.set_vlan(5, false));
        assert!(!f.accepts(&frame(ME, Some(5))));
        assert!(!f.accepts(&frame(ME, Some(5))[..15]));
    }
}
