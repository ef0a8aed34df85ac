//! Descriptor chains as bounded lists of guest memory segments, and slices of them.
//!
//! Everything here treats the guest as hostile: a chain is walked once, into at most
//! [`MAX_CHAIN_DESCRIPTORS`] segments, with the direction of every descriptor checked and the
//! byte count bounded by the caller; every address is resolved through `GuestMemory`, so a
//! segment outside guest memory is an error and one straddling two regions becomes two slices.
//!
//! This is the one module with `unsafe`: turning a `VolatileSlice` of guest memory into an
//! `IoSlice` for a backend's `writev`/`readv`. See [`io_slice`].

use std::io::{IoSlice, IoSliceMut};
use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::bitmap::{Bitmap, BitmapSlice, BS};
use vm_memory::volatile_memory::{PtrGuard, PtrGuardMut};
use vm_memory::{Address, GuestAddress, GuestMemory, Permissions, VolatileSlice};

/// The most descriptors a chain may have. Linux sends at most `MAX_SKB_FRAGS + 2` (19) on
/// transmit and uses chains of that order on receive; this bound keeps a hostile chain (a
/// 32768-entry ring, a 4096-entry indirect table) from costing more than a fixed amount.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// A guest-physical range from one descriptor (zero-length descriptors are skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Start.
    pub addr: GuestAddress,
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

/// A walked chain: segments and byte counts per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walked {
    /// Readable bytes (the first `readable_segs` segments).
    pub readable: u64,
    /// Readable segments.
    pub readable_segs: usize,
    /// Writable bytes (the segments after the readable ones).
    pub writable: u64,
}

/// Walks a chain into `segs` (cleared first), checking directions, the descriptor count
/// against `max_descs` (the queue size: virtio 1.2 2.7.5.2, also bounded by
/// [`MAX_CHAIN_DESCRIPTORS`]) and the byte count against `max_bytes`. Whether the segments are
/// guest memory is checked when they are resolved ([`for_each_slice`], [`check`]).
pub fn walk<D>(
    chain: DescriptorChain<D>,
    dir: Direction,
    max_descs: usize,
    max_bytes: u64,
    segs: &mut Vec<Seg>,
) -> Result<Walked, ChainError>
where
    D: Deref,
    D::Target: GuestMemory,
{
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
            addr: desc.addr(),
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

/// Checks that every segment is guest memory, for buffers kept before they are used.
pub fn check<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Seg],
    access: Permissions,
) -> Result<(), ChainError> {
    for &seg in segs {
        if !mem.check_range(seg.addr, seg.len as usize, access) {
            return Err(ChainError::BadAddress);
        }
    }
    Ok(())
}

/// The slice type of a guest memory.
pub type GuestSlice<'a, M> = VolatileSlice<'a, BS<'a, <M as GuestMemory>::Bitmap>>;

/// Calls `f` on the slices covering `seg` from byte `skip` on (a segment straddling two
/// regions gives two slices). Errors if any part is not guest memory.
pub fn for_each_slice<'a, M, F>(
    mem: &'a M,
    seg: Seg,
    skip: usize,
    access: Permissions,
    mut f: F,
) -> Result<(), ChainError>
where
    M: GuestMemory + ?Sized,
    F: FnMut(GuestSlice<'a, M>),
{
    let len = seg.len as usize;
    if skip >= len {
        return Ok(());
    }
    let addr = seg
        .addr
        .checked_add(skip as u64)
        .ok_or(ChainError::BadAddress)?;
    let iter = mem
        .get_slices(addr, len - skip, access)
        .map_err(|_| ChainError::BadAddress)?;
    for s in iter {
        f(s.map_err(|_| ChainError::BadAddress)?);
    }
    Ok(())
}

/// Copies up to `out.len()` bytes from the segments, skipping `skip` bytes first; returns how
/// many were copied.
pub fn read_from<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Seg],
    mut skip: usize,
    out: &mut [u8],
) -> Result<usize, ChainError> {
    let mut done = 0;
    for &seg in segs {
        if done == out.len() {
            break;
        }
        let len = seg.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        for_each_slice(mem, seg, skip, Permissions::Read, |s| {
            if done < out.len() {
                done += s.copy_to(&mut out[done..]);
            }
        })?;
        skip = 0;
    }
    Ok(done)
}

/// Copies `data` into the segments from byte `skip` on (marking the pages dirty); returns how
/// many bytes fitted.
pub fn write_to<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: impl IntoIterator<Item = Seg>,
    mut skip: usize,
    data: &[u8],
) -> Result<usize, ChainError> {
    let mut done = 0;
    for seg in segs {
        if done == data.len() {
            break;
        }
        let len = seg.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        for_each_slice(mem, seg, skip, Permissions::Write, |s| {
            if done < data.len() {
                let n = s.len().min(data.len() - done);
                // A subslice of a slice we hold cannot fail.
                if let Ok(sub) = s.subslice(0, n) {
                    sub.copy_from(&data[done..done + n]);
                    done += n;
                }
            }
        })?;
        skip = 0;
    }
    Ok(done)
}

/// Marks the first `len` bytes of the slices dirty (a backend wrote them behind the bitmap's
/// back, through an `IoSliceMut`).
pub fn mark_dirty<B: BitmapSlice>(slices: &[VolatileSlice<'_, B>], mut len: usize) {
    for s in slices {
        if len == 0 {
            break;
        }
        let n = s.len().min(len);
        s.bitmap().mark_dirty(0, n);
        len -= n;
    }
}

/// Whether a bitmap type tracks anything (`()` does not); lets callers skip the bookkeeping.
pub fn tracks_dirty<B: Bitmap>() -> bool {
    std::mem::size_of::<B>() != 0
}

/// An `IoSlice` over guest memory, for a backend's `writev` or its copy. `guards` keeps the
/// mapping guard (a transient mapping under `vm-memory`'s `xen` feature); it must live as
/// long as the slice is used.
///
/// The guest may write these bytes while the backend reads them: per the `net-api` contract a
/// backend only copies them or hands them to the kernel, and the device reads what it parses
/// through `VolatileSlice` copies of its own, never through these slices.
pub fn io_slice<'a, B: BitmapSlice>(
    s: &VolatileSlice<'a, B>,
    guards: &mut Vec<PtrGuard>,
) -> IoSlice<'a> {
    let guard = s.ptr_guard();
    let ptr = guard.as_ptr();
    guards.push(guard);
    // SAFETY: `ptr` and `s.len()` describe mapped guest memory that stays mapped for 'a:
    // `vm-memory` unmaps a region only when its `GuestMemory` is dropped, which the borrow 'a
    // prevents, and a transient mapping is kept by the guard the caller holds while the slice
    // is in use. The bytes may change under the reader (a guest vCPU), which the contract
    // above confines to copies and system calls.
    IoSlice::new(unsafe { std::slice::from_raw_parts(ptr, s.len()) })
}

/// An `IoSliceMut` over guest memory, for a backend's `readv` or its copy; as [`io_slice`].
/// The caller marks what was written dirty ([`mark_dirty`]).
pub fn io_slice_mut<'a, B: BitmapSlice>(
    s: &VolatileSlice<'a, B>,
    guards: &mut Vec<PtrGuardMut>,
) -> IoSliceMut<'a> {
    let guard = s.ptr_guard_mut();
    let ptr = guard.as_ptr();
    guards.push(guard);
    // SAFETY: as in `io_slice`. A guest can make descriptors overlap; the backend writes
    // through these slices one at a time (a copy or `readv`), so overlap garbles only the
    // guest's own buffer.
    IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(ptr, s.len()) })
}
