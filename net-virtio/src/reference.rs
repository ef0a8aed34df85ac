//! The reference the split ring is tested against: `virtio-queue`'s `Queue` and
//! `DescriptorChain` over vm-memory, one guest-memory access at a time (cargo feature
//! `test-utils`).
//!
//! [`drain`] takes every chain a driver made available, walks it and completes it, with either
//! implementation ([`Impl::Reference`] or [`Impl::Ours`]), and reports what happened to each
//! chain and what ended in the used ring. The differential tests and the `ring_differential`
//! fuzz target run hostile rings through both and compare: the same heads, the same verdicts
//! (segments or the error class), the same used elements.
//!
//! One difference is by design: our rings must each lie in one memory region (they become
//! pointers), where `virtio-queue` reads them across regions; [`drain`] reports that as
//! [`Drained::BadRings`] and the comparison skips such layouts.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::chain::{self, ChainError, Direction, Seg, Walked, MAX_CHAIN_DESCRIPTORS};
use crate::mem::GuestRegions;
use crate::queue::{RingError, SplitQueue};

/// Which implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// `virtio-queue`.
    Reference,
    /// [`SplitQueue`] with [`crate::chain::walk`].
    Ours,
}

/// How a queue is laid out and where the device starts.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// The device's `next_avail` and `next_used`.
    pub base: u16,
    /// The chains' direction.
    pub dir: Direction,
    /// The byte limit of a chain.
    pub max_bytes: u64,
}

/// What happened to one chain: its head, and its segments with counts, or why it was refused.
pub type Verdict = (u16, Result<(Walked, Vec<Seg>), ChainError>);

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// Every available chain was taken and completed (with its byte count, or 0 when
    /// refused).
    Chains(Vec<Verdict>),
    /// The available index ran more than a queue ahead (after the verdicts so far).
    RanAhead(Vec<Verdict>),
    /// The rings could not be used (ours: not each in one region).
    BadRings,
}

/// The reference walk: `virtio-queue`'s descriptor iteration with the same bounds and checks
/// as [`crate::chain::walk`].
fn reference_walk<M: GuestMemory>(
    chain: virtio_queue::DescriptorChain<&M>,
    dir: Direction,
    max_descs: usize,
    max_bytes: u64,
    segs: &mut Vec<Seg>,
) -> Result<Walked, ChainError> {
    segs.clear();
    let mut w = Walked::default();
    let mut last_has_next = false;
    let mut any = false;
    let mut seen_writable = false;
    for (n, desc) in chain.enumerate() {
        if n >= max_descs.min(MAX_CHAIN_DESCRIPTORS) {
            return Err(ChainError::TooLong);
        }
        any = true;
        last_has_next = desc.has_next();
        let writable = desc.is_write_only();
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
        if desc.len() == 0 {
            continue;
        }
        let len = u64::from(desc.len());
        if w.readable + w.writable + len > max_bytes {
            return Err(ChainError::TooLarge);
        }
        segs.push(Seg {
            addr: desc.addr().raw_value(),
            len: desc.len(),
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

/// Whether every segment is guest memory, through vm-memory.
fn reference_check(mem: &GuestMemoryMmap, segs: &[Seg]) -> Result<(), ChainError> {
    for s in segs {
        if !mem.check_range(GuestAddress(s.addr), s.len as usize, Permissions::ReadWrite) {
            return Err(ChainError::BadAddress);
        }
    }
    Ok(())
}

/// The byte count a chain is completed with: its bytes when accepted, 0 when refused.
fn used_len(v: &Result<(Walked, Vec<Seg>), ChainError>) -> u32 {
    match v {
        Ok((w, _)) => (w.readable + w.writable).min(u64::from(u32::MAX)) as u32,
        Err(_) => 0,
    }
}

/// Takes every available chain (at most `limit`), walks and checks it, and completes it.
pub fn drain(mem: &GuestMemoryMmap, l: &Layout, which: Impl, limit: usize) -> Drained {
    // Misaligned rings are refused by both when they are set (virtio-queue keeps the old
    // address instead): not a layout to compare.
    if l.desc % 16 != 0 || l.avail % 2 != 0 || l.used % 4 != 0 {
        return Drained::BadRings;
    }
    match which {
        Impl::Reference => drain_reference(mem, l, limit),
        Impl::Ours => drain_ours(mem, l, limit),
    }
}

fn drain_reference(mem: &GuestMemoryMmap, l: &Layout, limit: usize) -> Drained {
    let Ok(mut q) = Queue::new(l.size) else {
        return Drained::BadRings;
    };
    q.set_desc_table_address(Some(l.desc as u32), Some((l.desc >> 32) as u32));
    q.set_avail_ring_address(Some(l.avail as u32), Some((l.avail >> 32) as u32));
    q.set_used_ring_address(Some(l.used as u32), Some((l.used >> 32) as u32));
    q.set_next_avail(l.base);
    q.set_next_used(l.base);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return Drained::BadRings;
    }
    let mut out = Vec::new();
    let mut segs = Vec::new();
    while out.len() < limit {
        let chain = match q.iter(mem) {
            Ok(mut it) => it.next(),
            Err(_) => return Drained::RanAhead(out),
        };
        let Some(chain) = chain else {
            break;
        };
        let head = chain.head_index();
        let v = reference_walk(chain, l.dir, usize::from(l.size), l.max_bytes, &mut segs)
            .and_then(|w| reference_check(mem, &segs).map(|()| (w, segs.clone())));
        if head < l.size {
            let _ = q.add_used(mem, head, used_len(&v));
        }
        out.push((head, v));
    }
    Drained::Chains(out)
}

fn drain_ours(mem: &GuestMemoryMmap, l: &Layout, limit: usize) -> Drained {
    let Ok(regions) = GuestRegions::from_memory(mem) else {
        return Drained::BadRings;
    };
    let mut q = SplitQueue::new(l.size);
    if q.set_addresses(l.desc, l.avail, l.used).is_err() {
        return Drained::BadRings;
    }
    q.set_next_avail(l.base);
    q.set_next_used(l.base);
    q.set_ready(true);
    let Ok(mut ring) = q.ring(&regions) else {
        return Drained::BadRings;
    };
    let mut out = Vec::new();
    let mut segs = Vec::new();
    while out.len() < limit {
        let head = match ring.pop() {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(RingError::AvailRanAhead { .. }) => return Drained::RanAhead(out),
            Err(_) => return Drained::BadRings,
        };
        let v = ring
            .walk(head, l.dir, l.max_bytes, &mut segs)
            .and_then(|w| chain::check(&regions, &segs).map(|()| (w, segs.clone())));
        ring.add_used(head, used_len(&v));
        out.push((head, v));
    }
    Drained::Chains(out)
}

/// Where the hostile rings of [`HostileRing`] live: rings and indirect tables below
/// [`BUFFERS`], buffers anywhere (mostly above it).
const RING_AREA: u64 = 0x1000;
/// The used ring's own area: nothing else is placed there, so both implementations see the
/// same descriptors whatever they write into the used ring and when.
const USED_AREA: u64 = 0x6_0000;
/// Indirect tables.
const INDIRECT_AREA: u64 = 0x7_0000;
/// Buffers whose bytes are compared (read) and written: nothing of the rings is here.
pub const BUFFERS: u64 = 0x8_0000;
/// The test memory: two adjacent regions of half this each.
pub const MEM_SIZE: u64 = 0x10_0000;

/// A hostile driver's queue, built from arbitrary bytes (the differential tests and the
/// `ring_differential` fuzz target share it).
#[derive(Debug)]
pub struct HostileRing {
    /// The layout and the device's position.
    pub layout: Layout,
    /// Memory as the driver left it (each implementation runs on a copy).
    pub mem: GuestMemoryMmap,
}

/// Reads bytes, then zeros when they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

impl HostileRing {
    /// Builds a queue from `data`: its size, where each ring is (usually valid, sometimes
    /// across the boundary of the two memory regions, outside memory or misaligned), every
    /// descriptor (addresses inside, across and outside memory, any length, any flags, any
    /// next index), up to four indirect tables, the available entries (heads beyond the queue
    /// too) and the available index (sometimes more than a queue ahead).
    pub fn from_bytes(data: &[u8]) -> HostileRing {
        use vm_memory::Bytes as _;
        let mut b = Bytes(data);
        let size = 1u16 << (b.u8() % 9);
        let n = u64::from(size);
        let half = MEM_SIZE / 2;
        let place = |sel: u8, normal: u64, len: u64| match sel % 32 {
            // Across the boundary of the two regions.
            0 => half - len / 2,
            // Outside memory.
            1 => MEM_SIZE - len / 2,
            2 => MEM_SIZE + 0x1000,
            // Misaligned.
            3 => normal + 1,
            _ => normal,
        };
        let desc = place(b.u8(), RING_AREA, 16 * n);
        let avail = place(b.u8(), RING_AREA + 0x1_0000, 6 + 2 * n);
        let used = place(b.u8(), USED_AREA, 6 + 8 * n);
        let base = if b.u8() % 4 == 0 { b.u16() } else { 0 };
        let dir = match b.u8() % 3 {
            0 => Direction::Read,
            1 => Direction::Write,
            _ => Direction::ReadThenWrite,
        };
        let max_bytes = match b.u8() % 4 {
            0 => 1500,
            1 => 65562,
            _ => u64::from(u32::MAX),
        };
        let mem = crate::mock::guest_memory(MEM_SIZE);
        let addr = |b: &mut Bytes<'_>| -> u64 {
            match b.u8() % 8 {
                0 => half - 8,
                1 => MEM_SIZE - 4,
                2 => MEM_SIZE + u64::from(b.u16()),
                3 => u64::MAX - 8,
                4 => RING_AREA + u64::from(b.u16()),
                5 => INDIRECT_AREA + 16 * u64::from(b.u8() % 64),
                _ => BUFFERS + u64::from(b.u32() % (MEM_SIZE as u32 - BUFFERS as u32)),
            }
        };
        let write_desc = |b: &mut Bytes<'_>, at: u64, table: u16| {
            let a = addr(b);
            let len = match b.u8() % 6 {
                0 => 0,
                1 => u32::MAX,
                2 => 16 * u32::from(b.u8() % 20),
                _ => u32::from(b.u16()),
            };
            // NEXT a quarter of the time, INDIRECT an eighth; WRITE mostly as the direction
            // wants it.
            let f = b.u8();
            let mut flags = 0u16;
            if f & 3 == 1 {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            if f & 0x70 == 0x10 {
                flags |= VRING_DESC_F_INDIRECT as u16;
            }
            // A tenth of the descriptors have the wrong direction.
            let wrong = b.u8() % 10 == 0;
            let writable = match dir {
                Direction::Read => wrong,
                Direction::Write => !wrong,
                Direction::ReadThenWrite => f & 0x80 != 0,
            };
            if writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = if b.u8() % 4 == 0 {
                b.u16()
            } else {
                u16::from(b.u8()) % table.max(1)
            };
            // Half the indirect descriptors point at a plausible table.
            let (a, len) = if flags & VRING_DESC_F_INDIRECT as u16 != 0 && b.u8() % 2 == 0 {
                (
                    INDIRECT_AREA + 16 * u64::from(b.u8() % 48),
                    16 * (1 + u32::from(b.u8() % 16)),
                )
            } else {
                (a, len)
            };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&a.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = mem.write_slice(&d, GuestAddress(at));
        };
        for i in 0..n {
            write_desc(&mut b, desc.wrapping_add(16 * i), size);
        }
        for i in 0..64u64 {
            if b.u8() % 2 == 0 {
                write_desc(&mut b, INDIRECT_AREA + 16 * i, 16);
            }
        }
        let avail_n = match b.u8() % 8 {
            0 => b.u16(),
            1 => size.wrapping_add(1),
            _ => u16::from(b.u8()) % (size + 1),
        };
        for i in 0..avail_n.min(size) {
            let head = if b.u8() % 8 == 0 {
                b.u16()
            } else {
                u16::from(b.u8()) % size
            };
            let slot = u64::from(base.wrapping_add(i) % size);
            let _ = mem.write_obj(head.to_le(), GuestAddress(avail.wrapping_add(4 + 2 * slot)));
        }
        let _ = mem.write_obj(
            base.wrapping_add(avail_n).to_le(),
            GuestAddress(avail.wrapping_add(2)),
        );
        HostileRing {
            layout: Layout {
                size,
                desc,
                avail,
                used,
                base,
                dir,
                max_bytes,
            },
            mem,
        }
    }

    /// A copy of the memory, for one implementation.
    fn copy(&self) -> GuestMemoryMmap {
        use vm_memory::Bytes as _;
        let mem = crate::mock::guest_memory(MEM_SIZE);
        let mut buf = vec![0u8; MEM_SIZE as usize / 2];
        for start in [0, MEM_SIZE / 2] {
            let _ = self.mem.read_slice(&mut buf, GuestAddress(start));
            let _ = mem.write_slice(&buf, GuestAddress(start));
        }
        mem
    }

    /// Runs both implementations and compares what they did: the same verdict for every
    /// chain (head, segments and counts, or the error), the same bytes read through our
    /// buffers as through vm-memory, the same bytes written, the same used ring. `Err`
    /// describes the first difference.
    pub fn compare(&self) -> Result<(), String> {
        let (mref, mours) = (self.copy(), self.copy());
        let a = drain(&mref, &self.layout, Impl::Reference, 4096);
        let b = drain(&mours, &self.layout, Impl::Ours, 4096);
        let chains = match (&a, &b) {
            // Our rings must each be in one region: such layouts are not compared.
            (_, Drained::BadRings) => return Ok(()),
            (Drained::Chains(x), Drained::Chains(y))
            | (Drained::RanAhead(x), Drained::RanAhead(y))
                if x == y =>
            {
                x
            }
            _ => {
                return Err(format!(
                    "verdicts differ:\n reference {a:?}\n ours      {b:?}"
                ))
            }
        };
        // The bytes of each accepted chain: read through our buffers and through vm-memory,
        // then a pattern written both ways into its writable buffers.
        let Ok(regions) = GuestRegions::from_memory(&mours) else {
            return Err("no region table".into());
        };
        for (head, v) in chains {
            let Ok((w, segs)) = v else {
                continue;
            };
            let in_buffers = |s: &&Seg| s.addr >= BUFFERS;
            let readable: Vec<Seg> = segs[..w.readable_segs]
                .iter()
                .filter(in_buffers)
                .copied()
                .collect();
            let writable: Vec<Seg> = segs[w.readable_segs..]
                .iter()
                .filter(in_buffers)
                .copied()
                .collect();
            let total: usize = readable
                .iter()
                .map(|s| s.len as usize)
                .sum::<usize>()
                .min(8192);
            let mut ours = vec![0u8; total];
            let mut bufs = Vec::new();
            chain::bufs(&regions, &readable, 0, &mut bufs)
                .map_err(|e| format!("chain {head}: {e}"))?;
            let got = net_api::iovec::read_bufs(&bufs, 0, &mut ours);
            let mut theirs = vec![0u8; total];
            let mut done = 0;
            for s in &readable {
                if done == total {
                    break;
                }
                let k = (s.len as usize).min(total - done);
                vm_memory::Bytes::read_slice(
                    &mref,
                    &mut theirs[done..done + k],
                    GuestAddress(s.addr),
                )
                .map_err(|e| format!("chain {head}: reference read: {e}"))?;
                done += k;
            }
            if got != total || ours != theirs {
                return Err(format!("chain {head}: the bytes read differ"));
            }
            let pattern: Vec<u8> = (0..8192u32).map(|i| (i as u8) ^ (*head as u8)).collect();
            let wtotal: usize = writable
                .iter()
                .map(|s| s.len as usize)
                .sum::<usize>()
                .min(8192);
            let mut wbufs = Vec::new();
            chain::bufs_mut(&regions, writable.iter().copied(), 0, &mut wbufs)
                .map_err(|e| format!("chain {head}: {e}"))?;
            net_api::iovec::write_bufs(&wbufs, 0, &pattern[..wtotal]);
            let mut done = 0;
            for s in &writable {
                if done == wtotal {
                    break;
                }
                let k = (s.len as usize).min(wtotal - done);
                vm_memory::Bytes::write_slice(
                    &mref,
                    &pattern[done..done + k],
                    GuestAddress(s.addr),
                )
                .map_err(|e| format!("chain {head}: reference write: {e}"))?;
                done += k;
            }
        }
        drop(regions);
        let (mut x, mut y) = (
            vec![0u8; MEM_SIZE as usize / 2],
            vec![0u8; MEM_SIZE as usize / 2],
        );
        for start in [0, MEM_SIZE / 2] {
            let _ = vm_memory::Bytes::read_slice(&mref, &mut x, GuestAddress(start));
            let _ = vm_memory::Bytes::read_slice(&mours, &mut y, GuestAddress(start));
            if x == y {
                continue;
            }
            if let Some(at) = x.iter().zip(&y).position(|(p, q)| p != q) {
                return Err(format!(
                    "memory differs at {:#x} (used ring at {:#x})",
                    start + at as u64,
                    self.layout.used
                ));
            }
        }
        Ok(())
    }
}
