//! The control queue's commands (virtio 1.2 section 5.1.6.5), decoded from a guest chain.
//!
//! A command is `class: u8, command: u8`, command-specific data (device-readable), then one
//! device-writable `ack` byte. Decoding reads through [`CommandReader`] with every length
//! checked against what the chain holds: a MAC table of 2^32 entries is refused without a
//! loop or an allocation, and entries past [`MAC_TABLE_ENTRIES`] are skipped (the table's
//! overflow flag is set, as QEMU does). Which commands are allowed depends on the acked
//! features; [`Command::decode`] returns [`Refused`] for anything else, and the device answers
//! `VIRTIO_NET_ERR`.

use net_api::filter::MAC_TABLE_ENTRIES;
use net_api::MacAddr;
use virtio_bindings::virtio_net as vn;

use crate::features::bit;

/// One RX mode switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    /// `VIRTIO_NET_CTRL_RX_PROMISC`.
    Promiscuous,
    /// `VIRTIO_NET_CTRL_RX_ALLMULTI`.
    AllMulticast,
    /// `VIRTIO_NET_CTRL_RX_ALLUNI` (`CTRL_RX_EXTRA`).
    AllUnicast,
    /// `VIRTIO_NET_CTRL_RX_NOMULTI` (`CTRL_RX_EXTRA`).
    NoMulticast,
    /// `VIRTIO_NET_CTRL_RX_NOUNI` (`CTRL_RX_EXTRA`).
    NoUnicast,
    /// `VIRTIO_NET_CTRL_RX_NOBCAST` (`CTRL_RX_EXTRA`).
    NoBroadcast,
}

/// A MAC table as sent by `VIRTIO_NET_CTRL_MAC_TABLE_SET`: at most [`MAC_TABLE_ENTRIES`]
/// addresses kept, `overflow` when the guest sent more.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MacTable {
    /// The addresses kept.
    pub macs: Vec<MacAddr>,
    /// More addresses were sent than kept.
    pub overflow: bool,
}

/// A decoded control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Switch an RX mode on or off.
    Rx(RxMode, bool),
    /// Replace the unicast and multicast tables.
    MacTable {
        /// The unicast table.
        unicast: MacTable,
        /// The multicast table.
        multicast: MacTable,
    },
    /// Set the device's address.
    MacAddr(MacAddr),
    /// Add a VLAN id to the filter.
    VlanAdd(u16),
    /// Remove a VLAN id from the filter.
    VlanDel(u16),
    /// The guest announced itself (`VIRTIO_NET_CTRL_ANNOUNCE_ACK`).
    AnnounceAck,
    /// Use this many queue pairs (`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`).
    QueuePairs(u16),
    /// Set the receive offloads (`VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`), as feature bits.
    GuestOffloads(u64),
}

/// Why a command was refused (answered `VIRTIO_NET_ERR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The class/command pair is unknown, or its feature was not negotiated.
    #[error("unknown or not negotiated control command {class}/{command}")]
    Unknown {
        /// The class byte.
        class: u8,
        /// The command byte.
        command: u8,
    },
    /// The data is shorter or longer than the command's.
    #[error("control command data has the wrong size")]
    BadLength,
    /// A value out of range (VLAN id, queue pairs, offload bits).
    #[error("control command value out of range")]
    OutOfRange,
    /// The chain could not be read.
    #[error("control command chain is unreadable")]
    Unreadable,
}

/// Reads a command's bytes, in order, from wherever they are.
pub trait CommandReader {
    /// Bytes left.
    fn remaining(&self) -> u64;
    /// Fills `out`; fails when fewer bytes are left or they cannot be read.
    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), Refused>;
    /// Skips `n` bytes; fails when fewer are left.
    fn skip(&mut self, n: u64) -> Result<(), Refused>;
}

/// A [`CommandReader`] over a byte slice (tests, fuzzing).
impl CommandReader for &[u8] {
    fn remaining(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), Refused> {
        if out.len() > self.len() {
            return Err(Refused::BadLength);
        }
        let (a, b) = self.split_at(out.len());
        out.copy_from_slice(a);
        *self = b;
        Ok(())
    }
    fn skip(&mut self, n: u64) -> Result<(), Refused> {
        if n > self.len() as u64 {
            return Err(Refused::BadLength);
        }
        *self = &self[n as usize..];
        Ok(())
    }
}

/// The `GUEST_*` feature bits `CTRL_GUEST_OFFLOADS` may switch.
pub const GUEST_OFFLOAD_BITS: u64 = bit(vn::VIRTIO_NET_F_GUEST_CSUM)
    | bit(vn::VIRTIO_NET_F_GUEST_TSO4)
    | bit(vn::VIRTIO_NET_F_GUEST_TSO6)
    | bit(vn::VIRTIO_NET_F_GUEST_ECN)
    | bit(vn::VIRTIO_NET_F_GUEST_UFO)
    | bit(vn::VIRTIO_NET_F_GUEST_USO4)
    | bit(vn::VIRTIO_NET_F_GUEST_USO6);

fn read_u8(r: &mut impl CommandReader) -> Result<u8, Refused> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_le16(r: &mut impl CommandReader) -> Result<u16, Refused> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_le_bytes(b))
}

fn read_table(r: &mut impl CommandReader) -> Result<MacTable, Refused> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    let entries = u64::from(u32::from_le_bytes(b));
    // Check the claimed size against the chain before touching any entry.
    if entries * 6 > r.remaining() {
        return Err(Refused::BadLength);
    }
    let keep = entries.min(MAC_TABLE_ENTRIES as u64);
    let mut macs = Vec::with_capacity(keep as usize);
    for _ in 0..keep {
        let mut m = [0u8; 6];
        r.read_exact(&mut m)?;
        macs.push(MacAddr(m));
    }
    r.skip((entries - keep) * 6)?;
    Ok(MacTable {
        macs,
        overflow: entries > keep,
    })
}

impl Command {
    /// Decodes the readable part of a control chain for a device with these acked features
    /// and at most `max_pairs` queue pairs. The data must be exactly the command's size.
    pub fn decode(
        r: &mut impl CommandReader,
        acked: u64,
        max_pairs: u16,
    ) -> Result<Command, Refused> {
        let has = |f: u32| acked & bit(f) != 0;
        let class = read_u8(r)?;
        let command = read_u8(r)?;
        let unknown = Refused::Unknown { class, command };
        let (c, cmd) = (u32::from(class), u32::from(command));
        let out = match c {
            vn::VIRTIO_NET_CTRL_RX if has(vn::VIRTIO_NET_F_CTRL_RX) => {
                let mode = match cmd {
                    vn::VIRTIO_NET_CTRL_RX_PROMISC => RxMode::Promiscuous,
                    vn::VIRTIO_NET_CTRL_RX_ALLMULTI => RxMode::AllMulticast,
                    _ if !has(vn::VIRTIO_NET_F_CTRL_RX_EXTRA) => return Err(unknown),
                    vn::VIRTIO_NET_CTRL_RX_ALLUNI => RxMode::AllUnicast,
                    vn::VIRTIO_NET_CTRL_RX_NOMULTI => RxMode::NoMulticast,
                    vn::VIRTIO_NET_CTRL_RX_NOUNI => RxMode::NoUnicast,
                    vn::VIRTIO_NET_CTRL_RX_NOBCAST => RxMode::NoBroadcast,
                    _ => return Err(unknown),
                };
                Command::Rx(mode, read_u8(r)? != 0)
            }
            vn::VIRTIO_NET_CTRL_MAC => match cmd {
                vn::VIRTIO_NET_CTRL_MAC_TABLE_SET if has(vn::VIRTIO_NET_F_CTRL_RX) => {
                    let unicast = read_table(r)?;
                    let multicast = read_table(r)?;
                    Command::MacTable { unicast, multicast }
                }
                vn::VIRTIO_NET_CTRL_MAC_ADDR_SET if has(vn::VIRTIO_NET_F_CTRL_MAC_ADDR) => {
                    let mut m = [0u8; 6];
                    r.read_exact(&mut m)?;
                    Command::MacAddr(MacAddr(m))
                }
                _ => return Err(unknown),
            },
            vn::VIRTIO_NET_CTRL_VLAN if has(vn::VIRTIO_NET_F_CTRL_VLAN) => {
                let vid = read_le16(r)?;
                if vid >= 4096 {
                    return Err(Refused::OutOfRange);
                }
                match cmd {
                    vn::VIRTIO_NET_CTRL_VLAN_ADD => Command::VlanAdd(vid),
                    vn::VIRTIO_NET_CTRL_VLAN_DEL => Command::VlanDel(vid),
                    _ => return Err(unknown),
                }
            }
            vn::VIRTIO_NET_CTRL_ANNOUNCE
                if has(vn::VIRTIO_NET_F_GUEST_ANNOUNCE)
                    && cmd == vn::VIRTIO_NET_CTRL_ANNOUNCE_ACK =>
            {
                Command::AnnounceAck
            }
            vn::VIRTIO_NET_CTRL_MQ
                if has(vn::VIRTIO_NET_F_MQ) && cmd == vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET =>
            {
                let n = read_le16(r)?;
                if n == 0 || n > max_pairs {
                    return Err(Refused::OutOfRange);
                }
                Command::QueuePairs(n)
            }
            vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS
                if has(vn::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)
                    && cmd == vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET =>
            {
                let mut b = [0u8; 8];
                r.read_exact(&mut b)?;
                let offloads = u64::from_le_bytes(b);
                // Only GUEST_* bits the guest negotiated (virtio 1.2 5.1.6.5.6.1).
                if offloads & !(acked & GUEST_OFFLOAD_BITS) != 0 {
                    return Err(Refused::OutOfRange);
                }
                Command::GuestOffloads(offloads)
            }
            _ => return Err(unknown),
        };
        if r.remaining() != 0 {
            return Err(Refused::BadLength);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = u64::MAX;

    fn decode(bytes: &[u8]) -> Result<Command, Refused> {
        let mut r = bytes;
        Command::decode(&mut r, ALL, 4)
    }

    #[test]
    fn rx_modes() {
        assert_eq!(
            decode(&[0, 0, 1]),
            Ok(Command::Rx(RxMode::Promiscuous, true))
        );
        assert_eq!(
            decode(&[0, 5, 0]),
            Ok(Command::Rx(RxMode::NoBroadcast, false))
        );
        assert_eq!(
            decode(&[0, 6, 0]),
            Err(Refused::Unknown {
                class: 0,
                command: 6
            })
        );
        assert_eq!(decode(&[0, 0]), Err(Refused::BadLength));
        assert_eq!(decode(&[0, 0, 1, 1]), Err(Refused::BadLength));
        let no_extra = bit(vn::VIRTIO_NET_F_CTRL_RX);
        let mut r: &[u8] = &[0, 2, 1];
        assert!(matches!(
            Command::decode(&mut r, no_extra, 1),
            Err(Refused::Unknown { .. })
        ));
        let mut r: &[u8] = &[0, 1, 1];
        assert_eq!(
            Command::decode(&mut r, no_extra, 1),
            Ok(Command::Rx(RxMode::AllMulticast, true))
        );
    }

    #[test]
    fn mac_table_bounds_and_overflow() {
        let mut b = vec![1, 0];
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode(&b),
            Ok(Command::MacTable {
                unicast: MacTable {
                    macs: vec![MacAddr([2, 0, 0, 0, 0, 1])],
                    overflow: false
                },
                multicast: MacTable::default(),
            })
        );
        // 2^32-1 entries claimed with 6 bytes behind: refused at once.
        let mut b = vec![1, 0];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 10]);
        assert_eq!(decode(&b), Err(Refused::BadLength));
        // More than the table keeps: skipped, overflow set.
        let n = MAC_TABLE_ENTRIES as u32 + 3;
        let mut b = vec![1, 0];
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
        b.extend(std::iter::repeat_n(0x01, n as usize * 6));
        match decode(&b) {
            Ok(Command::MacTable { multicast, .. }) => {
                assert_eq!(multicast.macs.len(), MAC_TABLE_ENTRIES);
                assert!(multicast.overflow);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn vlan_mq_offloads_announce() {
        assert_eq!(decode(&[2, 0, 5, 0]), Ok(Command::VlanAdd(5)));
        assert_eq!(decode(&[2, 1, 0xff, 0x0f]), Ok(Command::VlanDel(4095)));
        assert_eq!(decode(&[2, 0, 0, 0x10]), Err(Refused::OutOfRange));
        assert_eq!(decode(&[4, 0, 4, 0]), Ok(Command::QueuePairs(4)));
        assert_eq!(decode(&[4, 0, 5, 0]), Err(Refused::OutOfRange));
        assert_eq!(decode(&[4, 0, 0, 0]), Err(Refused::OutOfRange));
        assert_eq!(decode(&[3, 0]), Ok(Command::AnnounceAck));
        let csum = bit(vn::VIRTIO_NET_F_GUEST_CSUM);
        let mut b = vec![5, 0];
        b.extend_from_slice(&csum.to_le_bytes());
        assert_eq!(decode(&b), Ok(Command::GuestOffloads(csum)));
        let mut b = vec![5, 0];
        b.extend_from_slice(&bit(vn::VIRTIO_NET_F_MQ).to_le_bytes());
        assert_eq!(decode(&b), Err(Refused::OutOfRange));
        assert!(matches!(decode(&[9, 9]), Err(Refused::Unknown { .. })));
        assert_eq!(decode(&[]), Err(Refused::BadLength));
    }
}
