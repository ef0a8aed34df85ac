//! Descriptor chains as bounded lists of guest memory segments, and buffers over them.
//!
//! Everything here treats the guest as hostile. A chain is walked once ([`walk`]), with the
//! semantics of `virtio-queue`'s `DescriptorChain` (the reference it is tested against):
//! at most a table's size of descriptors (the queue size, or an indirect table's length), an
//! indirect table only at the top level and only a whole number of descriptors long, the byte
//! count within 32 bits. On top of that the walk bounds the chain to
//! [`MAX_CHAIN_DESCRIPTORS`] and the caller's byte limit, and checks the direction of every
//! descriptor. Segments are resolved against the region table afterwards ([`bufs`],
//! [`bufs_mut`], [`read_from`], [`write_to`]): a segment outside guest memory is an error, one
//! straddling two regions becomes two buffers.

use net_api::{IoBuf, IoBufMut};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::mem::{Descriptor, GuestRegions, RingView};

/// The most descriptors a chain may have. Linux sends at most `MAX_SKB_FRAGS + 2` (19) on
/// transmit and uses chains of that order on receive; this bound keeps a hostile chain (a
/// 32768-entry ring, a 4096-entry indirect table) from costing more than a fixed amount.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// A guest-physical range from one descriptor (zero-length descriptors are skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Start.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Why a descriptor chain is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no usable descriptor (a head index beyond the queue, an unreadable or
    /// empty table, only zero-length descriptors).
    #[error("descriptor chain is empty")]
    Empty,
    /// The chain ended on a descriptor that still says "next": a loop cut by the queue-size
    /// bound, a next index beyond the table, an indirect table inside an indirect table, an
    /// unreadable descriptor, or lengths whose sum overflows 32 bits.
    #[error("descriptor chain is broken (loop, bad next index, nested indirect table or length overflow)")]
    Broken,
    /// More descriptors than the queue size (or [`MAX_CHAIN_DESCRIPTORS`]).
    #[error("descriptor chain is longer than the queue")]
    TooLong,
    /// A device-writable descriptor where a readable one belongs, or the reverse.
    #[error("descriptor chain has a descriptor of the wrong direction")]
    WrongDirection,
    /// More bytes than the caller allows.
    #[error("descriptor chain is larger than allowed")]
    TooLarge,
    /// A descriptor's range is not (entirely) guest memory.
    #[error("descriptor points outside guest memory")]
    BadAddress,
}

/// What directions a chain may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device-readable only (transmit).
    Read,
    /// Device-writable only (receive).
    Write,
    /// Device-readable, then device-writable (control queue).
    ReadThenWrite,
}

/// A walked chain: byte and segment counts per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walked {
    /// Readable bytes (the first `readable_segs` segments).
    pub readable: u64,
    /// Readable segments.
    pub readable_segs: usize,
    /// Writable bytes (the segments after the readable ones).
    pub writable: u64,
}

/// Where the walk reads descriptors from.
#[derive(Clone, Copy)]
enum Table {
    /// The queue's own table.
    Direct,
    /// An indirect table in guest memory.
    Indirect(u64),
}

/// `virtio-queue`'s descriptor iteration, over translated rings.
struct Descriptors<'a, 'm> {
    ring: &'a RingView<'a>,
    mem: &'a GuestRegions<'m>,
    table: Table,
    table_size: u16,
    next: u16,
    ttl: u16,
    yielded: u32,
}

impl Descriptors<'_, '_> {
    #[inline]
    fn read(&self, index: u16) -> Option<Descriptor> {
        match self.table {
            Table::Direct => self.ring.desc(index),
            Table::Indirect(base) => {
                let at = base.checked_add(16 * u64::from(index))?;
                let mut b = [0u8; 16];
                self.mem
                    .read(at, &mut b)
                    .then(|| Descriptor::from_bytes(&b))
            }
        }
    }

    #[inline]
    fn next(&mut self) -> Option<Descriptor> {
        loop {
            if self.ttl == 0 || self.next >= self.table_size {
                return None;
            }
            let desc = self.read(self.next)?;
            if desc.flags & VRING_DESC_F_INDIRECT as u16 != 0 {
                // Not inside an indirect table, and a whole number of descriptors.
                if matches!(self.table, Table::Indirect(_)) || desc.len % 16 != 0 {
                    return None;
                }
                let n = u16::try_from(desc.len / 16).ok()?;
                self.table = Table::Indirect(desc.addr);
                self.table_size = n;
                self.next = 0;
                self.ttl = n;
                continue;
            }
            // A chain is at most 2^32 bytes (virtio 1.2 2.7.5.2).
            self.yielded = self.yielded.checked_add(desc.len)?;
            if desc.flags & VRING_DESC_F_NEXT as u16 != 0 {
                self.next = desc.next;
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
    }
}

/// Walks the chain at `head` into `segs` (cleared first), checking directions, the
/// descriptor count (the queue size, and [`MAX_CHAIN_DESCRIPTORS`]) and the byte count
/// against `max_bytes`. Whether the segments are guest memory is checked when they are
/// resolved.
pub fn walk(
    ring: &RingView<'_>,
    mem: &GuestRegions<'_>,
    head: u16,
    dir: Direction,
    max_bytes: u64,
    segs: &mut Vec<Seg>,
) -> Result<Walked, ChainError> {
    segs.clear();
    let size = ring.size();
    let mut it = Descriptors {
        ring,
        mem,
        table: Table::Direct,
        table_size: size,
        next: head,
        ttl: size,
        yielded: 0,
    };
    let max_descs = usize::from(size).min(MAX_CHAIN_DESCRIPTORS);
    let mut w = Walked::default();
    let mut last_has_next = false;
    let mut any = false;
    let mut seen_writable = false;
    let mut n = 0usize;
    while let Some(desc) = it.next() {
        if n >= max_descs {
            return Err(ChainError::TooLong);
        }
        n += 1;
        any = true;
        last_has_next = desc.flags & VRING_DESC_F_NEXT as u16 != 0;
        let writable = desc.flags & VRING_DESC_F_WRITE as u16 != 0;
        match (dir, writable) {
            (Direction::Read, true) | (Direction::Write, false) => {
                return Err(ChainError::WrongDirection)
            }
            (Direction::ReadThenWrite, false) if seen_writable => {
                return Err(ChainError::WrongDirection)
            }
            _ => {}
        }
        seen_writable |= writable;
        if desc.len == 0 {
            continue;
        }
        let len = u64::from(desc.len);
        if w.readable + w.writable + len > max_bytes {
            return Err(ChainError::TooLarge);
        }
        segs.push(Seg {
            addr: desc.addr,
            len: desc.len,
        });
        if writable {
            w.writable += len;
        } else {
            w.readable += len;
            w.readable_segs += 1;
        }
    }
    if last_has_next {
        return Err(ChainError::Broken);
    }
    if !any || segs.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(w)
}

/// Checks that every segment is guest memory, for buffers kept before they are used.
pub fn check(mem: &GuestRegions<'_>, segs: &[Seg]) -> Result<(), ChainError> {
    for s in segs {
        if !mem.check(s.addr, u64::from(s.len)) {
            return Err(ChainError::BadAddress);
        }
    }
    Ok(())
}

/// Calls `f` with the guest range of each segment from byte `skip` on; `f` says whether the
/// range is guest memory.
#[inline]
fn ranges(
    segs: impl IntoIterator<Item = Seg>,
    mut skip: usize,
    mut f: impl FnMut(u64, u64) -> bool,
) -> Result<(), ChainError> {
    for s in segs {
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        if !f(s.addr + skip as u64, (len - skip) as u64) {
            return Err(ChainError::BadAddress);
        }
        skip = 0;
    }
    Ok(())
}

/// Appends buffers over the segments, from byte `skip` on, to `out`.
#[inline]
pub fn bufs<'m>(
    mem: &GuestRegions<'m>,
    segs: &[Seg],
    skip: usize,
    out: &mut Vec<IoBuf<'m>>,
) -> Result<(), ChainError> {
    ranges(segs.iter().copied(), skip, |a, l| {
        mem.for_each_buf(a, l, |b| out.push(b))
    })
}

/// Appends writable buffers over the segments, from byte `skip` on, to `out`.
#[inline]
pub fn bufs_mut<'m>(
    mem: &GuestRegions<'m>,
    segs: impl IntoIterator<Item = Seg>,
    skip: usize,
    out: &mut Vec<IoBufMut<'m>>,
) -> Result<(), ChainError> {
    ranges(segs, skip, |a, l| {
        mem.for_each_buf_mut(a, l, |b| out.push(b))
    })
}

/// Copies up to `out.len()` bytes from the segments, skipping `skip` bytes first; returns how
/// many were copied.
pub fn read_from(
    mem: &GuestRegions<'_>,
    segs: &[Seg],
    mut skip: usize,
    out: &mut [u8],
) -> Result<usize, ChainError> {
    let mut done = 0;
    for s in segs {
        if done == out.len() {
            break;
        }
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - done);
        if !mem.read(s.addr + skip as u64, &mut out[done..done + n]) {
            return Err(ChainError::BadAddress);
        }
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// Copies `data` into the segments from byte `skip` on (marking the pages dirty); returns how
/// many bytes fitted.
pub fn write_to(
    mem: &GuestRegions<'_>,
    segs: impl IntoIterator<Item = Seg>,
    mut skip: usize,
    data: &[u8],
) -> Result<usize, ChainError> {
    let mut done = 0;
    for s in segs {
        if done == data.len() {
            break;
        }
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(data.len() - done);
        if !mem.write(s.addr + skip as u64, &data[done..done + n]) {
            return Err(ChainError::BadAddress);
        }
        done += n;
        skip = 0;
    }
    Ok(done)
}
