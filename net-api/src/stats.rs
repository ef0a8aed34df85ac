//! Per-queue counters.

use std::fmt;

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The virtio-net header was malformed or contradicted the frame.
    MalformedHeader,
    /// The frame asked for an offload the receiver did not accept or enable.
    UnsupportedOffload,
    /// The frame was larger than the backend's maximum frame.
    TooLarge,
    /// The receive buffers were smaller than the frame.
    Truncated,
    /// The frame was shorter than an Ethernet header.
    Runt,
    /// A receive filter (MAC, VLAN, RX mode) rejected the frame.
    Filtered,
    /// The host side refused the frame (a write error that concerns this frame only).
    HostError,
    /// The host side's link was gone (deleted, not yet back): the frame had nowhere to go.
    LinkDown,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 8] = [
        DropReason::MalformedHeader,
        DropReason::UnsupportedOffload,
        DropReason::TooLarge,
        DropReason::Truncated,
        DropReason::Runt,
        DropReason::Filtered,
        DropReason::HostError,
        DropReason::LinkDown,
    ];

    /// A short name for logs and tables.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::MalformedHeader => "malformed-header",
            DropReason::UnsupportedOffload => "unsupported-offload",
            DropReason::TooLarge => "too-large",
            DropReason::Truncated => "truncated",
            DropReason::Runt => "runt",
            DropReason::Filtered => "filtered",
            DropReason::HostError => "host-error",
            DropReason::LinkDown => "link-down",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Drop counters, one per [`DropReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops([u64; DropReason::ALL.len()]);

impl Drops {
    /// Counts one drop.
    pub fn add(&mut self, reason: DropReason) {
        self.0[reason.index()] = self.0[reason.index()].wrapping_add(1);
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }

    /// Adds every counter of `other`.
    pub fn absorb(&mut self, other: &Drops) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.wrapping_add(b);
        }
    }

    /// The non-zero counters.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|r| (r, self.get(r)))
            .filter(|(_, n)| *n != 0)
    }
}

/// Counters of one queue pair. Bytes count frames without the virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Frames delivered by `recv`.
    pub rx_packets: u64,
    /// Bytes delivered by `recv`.
    pub rx_bytes: u64,
    /// Frames accepted by `send` and handed to the host side.
    pub tx_packets: u64,
    /// Bytes accepted by `send`.
    pub tx_bytes: u64,
    /// `send` calls that stopped early because the host side was full.
    pub tx_would_block: u64,
    /// Frames dropped on receive.
    pub rx_drops: Drops,
    /// Frames dropped on transmit (consumed by `send` but not sent).
    pub tx_drops: Drops,
}

impl QueueStats {
    /// Counts one received frame of `len` bytes.
    pub fn count_rx(&mut self, len: usize) {
        self.rx_packets = self.rx_packets.wrapping_add(1);
        self.rx_bytes = self.rx_bytes.wrapping_add(len as u64);
    }

    /// Counts one sent frame of `len` bytes.
    pub fn count_tx(&mut self, len: usize) {
        self.tx_packets = self.tx_packets.wrapping_add(1);
        self.tx_bytes = self.tx_bytes.wrapping_add(len as u64);
    }

    /// Adds every counter of `other` (a queue that was replaced, say).
    pub fn absorb(&mut self, other: &QueueStats) {
        self.rx_packets = self.rx_packets.wrapping_add(other.rx_packets);
        self.rx_bytes = self.rx_bytes.wrapping_add(other.rx_bytes);
        self.tx_packets = self.tx_packets.wrapping_add(other.tx_packets);
        self.tx_bytes = self.tx_bytes.wrapping_add(other.tx_bytes);
        self.tx_would_block = self.tx_would_block.wrapping_add(other.tx_would_block);
        self.rx_drops.absorb(&other.rx_drops);
        self.tx_drops.absorb(&other.tx_drops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_by_reason() {
        let mut d = Drops::default();
        d.add(DropReason::Runt);
        d.add(DropReason::Runt);
        d.add(DropReason::TooLarge);
        assert_eq!(d.get(DropReason::Runt), 2);
        assert_eq!(d.total(), 3);
        let v: Vec<_> = d.iter().collect();
        assert_eq!(v, vec![(DropReason::TooLarge, 1), (DropReason::Runt, 2)]);
    }
}
