//! Guest memory translated once: a region table, and the rings as pointers checked once.
//!
//! This is the one module of `net-virtio` with `unsafe`. Everything a guest controls is read
//! here through raw pointers that were bounds-checked when they were made, and nothing here
//! ever makes a Rust reference to guest memory:
//!
//! - [`GuestRegions`]: the guest's memory as a table of `(guest address, length, host
//!   address)`, with a last-hit cache, so a buffer costs one bounds check instead of a search.
//!   It borrows the memory for `'m` ([`GuestRegions::from_memory`], any vm-memory
//!   `GuestMemory` whose regions have host addresses) or trusts its caller
//!   ([`GuestRegions::from_raw`], for memory a vhost-user session mapped itself). Buffers come
//!   out as `net_api` [`IoBuf`]/[`IoBufMut`]: raw iovecs, copied with volatile semantics or
//!   given to the kernel.
//! - [`RingPtrs`]: the three parts of a split virtqueue (descriptor table, available and used
//!   rings) translated once when the queue starts, each known to lie in one region. They are
//!   used only through a [`RingView`], which [`GuestRegions::ring_view`] hands out after
//!   checking that the regions the pointers were made from are still the ones in the table
//!   (same guest range, same host mapping): a table built after the memory changed refuses
//!   stale pointers, and the caller translates again.
//! - [`RingView`]: the accesses the virtio spec orders: the available index loaded with
//!   acquire, the used index stored with release, the event indexes behind full fences.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::{read_volatile, write_volatile};
use std::sync::atomic::{fence, AtomicU16, Ordering};

use net_api::{IoBuf, IoBufMut};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// Why a memory table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// A region has no host address (vm-memory's `xen` mappings, say).
    #[error("guest memory region at {gpa:#x} has no host mapping")]
    NoHostAddress {
        /// Its guest address.
        gpa: u64,
    },
    /// The memory is behind an IOMMU (`VIRTIO_F_ACCESS_PLATFORM`), which is never offered.
    #[error("guest memory behind an IOMMU is not supported (ACCESS_PLATFORM is not offered)")]
    Iommu,
    /// Regions overlap, wrap around or are empty.
    #[error("guest memory regions overlap or are empty ({gpa:#x}, {len:#x} bytes)")]
    Overlap {
        /// The guest address of the offending region.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// More regions than any VMM uses.
    #[error("{0} guest memory regions; at most {MAX_REGIONS} are supported")]
    TooMany(usize),
}

/// The most regions a table holds (vhost-user's `VHOST_MEMORY_BASELINE_NREGIONS` is 8; QEMU
/// can raise its slots to 509 with `CONFIGURE_MEM_SLOTS`).
pub const MAX_REGIONS: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    gpa: u64,
    len: u64,
    host: *mut u8,
}

/// Marks guest pages dirty for live migration.
type DirtyFn<'m> = Box<dyn Fn(u64, usize) + 'm>;

/// The guest's memory as a region table (see the module).
///
/// Not `Sync` (the last-hit cache is a `Cell`): each thread builds its own, which also keeps
/// each thread's cache its own.
pub struct GuestRegions<'m> {
    regions: Vec<Region>,
    last: Cell<usize>,
    dirty: Option<DirtyFn<'m>>,
    _mem: PhantomData<&'m [u8]>,
}

impl std::fmt::Debug for GuestRegions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for r in &self.regions {
            l.entry(&format_args!("{:#x}+{:#x}", r.gpa, r.len));
        }
        l.finish()
    }
}

impl<'m> GuestRegions<'m> {
    /// The regions of a vm-memory `GuestMemory`, borrowed for `'m`. Pages written through the
    /// table are marked dirty in the memory's bitmap when it tracks any.
    pub fn from_memory<M: GuestMemory>(mem: &'m M) -> Result<GuestRegions<'m>, MemError> {
        let phys = mem.physical_memory().ok_or(MemError::Iommu)?;
        let mut raw = Vec::with_capacity(phys.num_regions());
        for r in phys.iter() {
            let gpa = r.start_addr().raw_value();
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| MemError::NoHostAddress { gpa })?;
            raw.push((gpa, r.len(), host));
        }
        // SAFETY: each host address is the start of its region's mapping, `len` bytes long,
        // which vm-memory keeps mapped as long as `mem` lives, and `mem` is borrowed for 'm.
        let mut table = unsafe { GuestRegions::from_raw(raw) }?;
        if std::mem::size_of::<M::Bitmap>() != 0 {
            table.dirty = Some(Box::new(move |gpa, len| {
                let addr = vm_memory::GuestAddress(gpa);
                if let Some(r) = phys.find_region(addr) {
                    if let Some(off) = r.to_region_addr(addr) {
                        r.bitmap().mark_dirty(off.raw_value() as usize, len);
                    }
                }
            }));
        }
        Ok(table)
    }

    /// A table of `(guest address, length, host address)` regions.
    ///
    /// # Safety
    /// Each region's `length` bytes at its host address must be mapped readable and writable
    /// for `'m`, and no Rust reference may cover them meanwhile (they are guest memory: a vCPU
    /// or another process may change them at any time).
    pub unsafe fn from_raw(
        regions: impl IntoIterator<Item = (u64, u64, *mut u8)>,
    ) -> Result<GuestRegions<'m>, MemError> {
        let mut v: Vec<Region> = regions
            .into_iter()
            .map(|(gpa, len, host)| Region { gpa, len, host })
            .collect();
        if v.len() > MAX_REGIONS {
            return Err(MemError::TooMany(v.len()));
        }
        v.sort_by_key(|r| r.gpa);
        let mut end = 0u64;
        for (i, r) in v.iter().enumerate() {
            let last = r.gpa.checked_add(r.len);
            let host_end = (r.host as u64).checked_add(r.len);
            if r.len == 0 || last.is_none() || host_end.is_none() || (i > 0 && r.gpa < end) {
                return Err(MemError::Overlap {
                    gpa: r.gpa,
                    len: r.len,
                });
            }
            end = last.unwrap_or(u64::MAX);
        }
        Ok(GuestRegions {
            regions: v,
            last: Cell::new(0),
            dirty: None,
            _mem: PhantomData,
        })
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether the table has no region.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The region holding `gpa`: the last one found, else a binary search.
    #[inline]
    fn find(&self, gpa: u64) -> Option<&Region> {
        let i = self.last.get();
        if let Some(r) = self.regions.get(i) {
            if gpa.wrapping_sub(r.gpa) < r.len {
                return Some(r);
            }
        }
        let i = match self.regions.binary_search_by_key(&gpa, |r| r.gpa) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        let r = &self.regions[i];
        if gpa - r.gpa < r.len {
            self.last.set(i);
            Some(r)
        } else {
            None
        }
    }

    /// The host address of `len` bytes at `gpa`, when they lie in one region.
    #[inline]
    fn host(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let r = self.find(gpa)?;
        let off = gpa - r.gpa;
        if len > r.len - off {
            return None;
        }
        // SAFETY: `off + len <= r.len`, so the result stays inside the region's mapping.
        Some(unsafe { r.host.add(off as usize) })
    }

    /// A buffer over `len` bytes at `gpa`, when they lie in one region.
    #[inline]
    pub fn buf(&self, gpa: u64, len: u64) -> Option<IoBuf<'m>> {
        let p = self.host(gpa, len)?;
        // SAFETY: `host` checked the range lies in one region, mapped for 'm (`from_raw`'s
        // promise).
        Some(unsafe { IoBuf::from_raw_parts(p, len as usize) })
    }

    /// A writable buffer over `len` bytes at `gpa`, when they lie in one region.
    #[inline]
    pub fn buf_mut(&self, gpa: u64, len: u64) -> Option<IoBufMut<'m>> {
        let p = self.host(gpa, len)?;
        // SAFETY: `host` checked the range lies in one region, mapped read-write for 'm with
        // no reference covering it (`from_raw`'s promise).
        Some(unsafe { IoBufMut::from_raw_parts(p, len as usize) })
    }

    /// Whether `len` bytes at `gpa` are guest memory (possibly across regions).
    pub fn check(&self, gpa: u64, len: u64) -> bool {
        self.for_each_buf(gpa, len, |_| ())
    }

    /// Calls `f` with the buffers covering `len` bytes at `gpa` (one per region crossed);
    /// `false` (after calling `f` for what precedes) when part of it is not guest memory.
    #[inline]
    pub fn for_each_buf(&self, gpa: u64, len: u64, mut f: impl FnMut(IoBuf<'m>)) -> bool {
        if let Some(p) = self.host(gpa, len) {
            // SAFETY: `host` checked the range lies in one region, mapped for 'm
            // (`from_raw`'s promise).
            f(unsafe { IoBuf::from_raw_parts(p, len as usize) });
            return true;
        }
        let mut done = 0u64;
        while done < len {
            let Some(at) = gpa.checked_add(done) else {
                return false;
            };
            let Some(r) = self.find(at) else {
                return false;
            };
            let off = at - r.gpa;
            let n = (r.len - off).min(len - done);
            // SAFETY: `off + n <= r.len`: inside the region's mapping, valid for 'm.
            f(unsafe { IoBuf::from_raw_parts(r.host.add(off as usize), n as usize) });
            done += n;
        }
        true
    }

    /// As [`GuestRegions::for_each_buf`], writable.
    #[inline]
    pub fn for_each_buf_mut(&self, gpa: u64, len: u64, mut f: impl FnMut(IoBufMut<'m>)) -> bool {
        self.for_each_buf(gpa, len, |b| {
            // SAFETY: the same bytes, which `from_raw`'s promise makes writable for 'm with no
            // reference covering them.
            f(unsafe { IoBufMut::from_raw_parts(b.as_ptr() as *mut u8, b.len()) })
        })
    }

    /// Copies `out.len()` bytes from `gpa`; `false` when they are not all guest memory.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> bool {
        let mut done = 0;
        self.for_each_buf(gpa, out.len() as u64, |b| {
            done += b.read(0, &mut out[done..]);
        }) && done == out.len()
    }

    /// Copies `data` to `gpa` (marking the pages dirty); `false` when the range is not all guest
    /// memory (nothing is written then).
    pub fn write(&self, gpa: u64, data: &[u8]) -> bool {
        if !self.check(gpa, data.len() as u64) {
            return false;
        }
        let mut done = 0;
        self.for_each_buf_mut(gpa, data.len() as u64, |b| {
            done += b.write(0, &data[done..]);
        });
        self.mark_dirty(gpa, data.len());
        true
    }

    /// Whether writes must be reported with [`GuestRegions::mark_dirty`].
    pub fn tracks_dirty(&self) -> bool {
        self.dirty.is_some()
    }

    /// Marks `len` bytes at `gpa` dirty (a backend wrote them through an [`IoBufMut`]).
    pub fn mark_dirty(&self, gpa: u64, len: usize) {
        if let Some(d) = &self.dirty {
            d(gpa, len);
        }
    }

    /// Translates a split virtqueue of `size` entries: each part must be guest memory, in one
    /// region, and aligned as the spec says (descriptor table 16, available ring 2, used ring
    /// 4 bytes).
    pub fn ring_ptrs(&self, size: u16, desc: u64, avail: u64, used: u64) -> Option<RingPtrs> {
        let n = u64::from(size);
        if size == 0 || desc % 16 != 0 || avail % 2 != 0 || used % 4 != 0 {
            return None;
        }
        let part = |gpa: u64, len: u64| {
            let r = *self.find(gpa)?;
            let host = self.host(gpa, len)?;
            Some((r, host))
        };
        let (dr, d) = part(desc, 16 * n)?;
        let (ar, a) = part(avail, 6 + 2 * n)?;
        let (ur, u) = part(used, 6 + 8 * n)?;
        Some(RingPtrs {
            desc: d,
            avail: a,
            used: u,
            size,
            regions: [dr, ar, ur],
        })
    }

    /// A view on a queue's rings, when the regions they were translated from are still in this
    /// table (same guest range, same host mapping).
    #[inline]
    pub fn ring_view(&self, ptrs: &RingPtrs) -> Option<RingView<'_>> {
        for r in &ptrs.regions {
            if self.find(r.gpa) != Some(r) {
                return None;
            }
        }
        Some(RingView {
            ptrs: RingPtrs { ..*ptrs },
            _mem: PhantomData,
        })
    }
}

/// A split virtqueue's rings as host pointers, and the regions they came from (see the
/// module). Holds no borrow: use it through [`GuestRegions::ring_view`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPtrs {
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    size: u16,
    regions: [Region; 3],
}

// SAFETY: the pointers are only dereferenced through a `RingView`, which exists only while a
// `GuestRegions` that still maps them is borrowed; moving the plain addresses between threads
// moves no access.
unsafe impl Send for RingPtrs {}

/// One descriptor as the guest wrote it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*`.
    pub flags: u16,
    /// The next descriptor, with `VRING_DESC_F_NEXT`.
    pub next: u16,
}

impl Descriptor {
    /// Decodes the 16 bytes of a descriptor (little endian).
    pub fn from_bytes(b: &[u8; 16]) -> Descriptor {
        Descriptor {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// The rings of one queue, usable while the memory they are in is borrowed (`'r`).
///
/// Every index is reduced modulo the queue size before use, so no guest value can move an
/// access outside the rings.
pub struct RingView<'r> {
    ptrs: RingPtrs,
    _mem: PhantomData<&'r ()>,
}

impl RingView<'_> {
    /// The queue size the rings were translated for.
    pub fn size(&self) -> u16 {
        self.ptrs.size
    }

    #[inline]
    fn avail_u16(&self, off: usize) -> *const u16 {
        // SAFETY: callers pass offsets inside the available ring (6 + 2 * size bytes, checked
        // in `ring_ptrs`).
        unsafe { self.ptrs.avail.add(off).cast::<u16>() }
    }

    #[inline]
    fn used_u16(&self, off: usize) -> *mut u16 {
        // SAFETY: callers pass offsets inside the used ring (6 + 8 * size bytes, checked in
        // `ring_ptrs`).
        unsafe { self.ptrs.used.add(off).cast::<u16>() }
    }

    /// The driver's available index, loaded with acquire: the entries and descriptors it
    /// covers are read after it.
    #[inline]
    pub fn avail_idx(&self) -> u16 {
        // SAFETY: offset 2 of the available ring, 2-byte aligned (the ring is, `ring_ptrs`);
        // an `AtomicU16` has the layout of a `u16`, and all our accesses to it are atomic or
        // volatile reads (the guest writes it).
        let a = unsafe { &*(self.avail_u16(2) as *const AtomicU16) };
        u16::from_le(a.load(Ordering::Acquire))
    }

    /// The available ring's flags (`VRING_AVAIL_F_NO_INTERRUPT`).
    #[inline]
    pub fn avail_flags(&self) -> u16 {
        // SAFETY: offset 0 of the available ring, aligned.
        u16::from_le(unsafe { read_volatile(self.avail_u16(0)) })
    }

    /// Entry `i` (modulo the size) of the available ring: a descriptor head.
    #[inline]
    pub fn avail_entry(&self, i: u16) -> u16 {
        let slot = usize::from(i % self.ptrs.size);
        // SAFETY: 4 + 2 * slot < 6 + 2 * size: inside the ring, aligned.
        u16::from_le(unsafe { read_volatile(self.avail_u16(4 + 2 * slot)) })
    }

    /// The driver's `used_event` (after the available ring's entries).
    #[inline]
    pub fn used_event(&self) -> u16 {
        let off = 4 + 2 * usize::from(self.ptrs.size);
        // SAFETY: the last 2 bytes of the available ring, aligned.
        u16::from_le(unsafe { read_volatile(self.avail_u16(off)) })
    }

    /// Descriptor `i` of the table, or `None` beyond the queue size.
    #[inline]
    pub fn desc(&self, i: u16) -> Option<Descriptor> {
        if i >= self.ptrs.size {
            return None;
        }
        // SAFETY: `16 * i + 16 <= 16 * size`: inside the table. A plain (unaligned-tolerant)
        // copy of 16 bytes into our own array, as vm-memory's `read_obj` does; whatever the
        // guest writes meanwhile, we decode only our copy.
        let bytes: [u8; 16] = unsafe {
            std::ptr::read_unaligned(self.ptrs.desc.add(16 * usize::from(i)).cast::<[u8; 16]>())
        };
        Some(Descriptor::from_bytes(&bytes))
    }

    /// The used index as the device last published it.
    #[inline]
    pub fn used_idx(&self) -> u16 {
        // SAFETY: offset 2 of the used ring, aligned.
        let a = unsafe { &*(self.used_u16(2) as *const AtomicU16) };
        u16::from_le(a.load(Ordering::Relaxed))
    }

    /// Writes used element `i` (modulo the size); invisible to the driver until
    /// [`RingView::publish_used`].
    #[inline]
    pub fn set_used_elem(&self, i: u16, id: u32, len: u32) {
        let slot = usize::from(i % self.ptrs.size);
        // SAFETY: 4 + 8 * slot + 8 <= 6 + 8 * size: inside the used ring, 4-byte aligned.
        unsafe {
            let p = self.ptrs.used.add(4 + 8 * slot).cast::<u32>();
            write_volatile(p, id.to_le());
            write_volatile(p.add(1), len.to_le());
        }
    }

    /// Publishes the used index with release: the elements written before are visible to the
    /// driver first.
    #[inline]
    pub fn publish_used(&self, idx: u16) {
        // SAFETY: offset 2 of the used ring, aligned; see `avail_idx`.
        let a = unsafe { &*(self.used_u16(2) as *const AtomicU16) };
        a.store(idx.to_le(), Ordering::Release);
    }

    /// Sets the used ring's flags (`VRING_USED_F_NO_NOTIFY`).
    #[inline]
    pub fn set_used_flags(&self, flags: u16) {
        // SAFETY: offset 0 of the used ring, aligned.
        unsafe { write_volatile(self.used_u16(0), flags.to_le()) }
    }

    /// The used ring's flags.
    #[inline]
    pub fn used_flags(&self) -> u16 {
        // SAFETY: offset 0 of the used ring, aligned.
        u16::from_le(unsafe { read_volatile(self.used_u16(0)) })
    }

    /// Writes `avail_event` (after the used ring's elements).
    #[inline]
    pub fn set_avail_event(&self, idx: u16) {
        let off = 4 + 8 * usize::from(self.ptrs.size);
        // SAFETY: the last 2 bytes of the used ring, aligned.
        unsafe { write_volatile(self.used_u16(off), idx.to_le()) }
    }

    /// A full fence: our ring writes before, the driver's fields read after (the
    /// store-to-load order event indexes need).
    #[inline]
    pub fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(bytes: &mut [u8], split: usize) -> GuestRegions<'_> {
        let base = bytes.as_mut_ptr();
        let len = bytes.len();
        // SAFETY: `bytes` is ours for the table's life; two regions over it, with a hole of
        // 0x1000 guest addresses between them.
        unsafe {
            GuestRegions::from_raw([
                (0x1000, split as u64, base),
                (
                    0x1000 + split as u64 + 0x1000,
                    (len - split) as u64,
                    base.add(split),
                ),
            ])
        }
        .expect("table")
    }

    #[test]
    fn buffers_resolve_within_and_across_nothing_outside() {
        let mut mem = vec![0u8; 0x2000];
        let t = table(&mut mem, 0x800);
        assert!(t.check(0x1000, 0x800));
        assert!(!t.check(0x1000, 0x801), "runs into the hole");
        assert!(!t.check(0xfff, 1));
        assert!(t.check(0x2800, 0x1800));
        assert!(!t.check(0x2800, 0x1801));
        assert!(!t.check(u64::MAX, 2));
        assert!(t.write(0x2800, b"abc"));
        assert!(!t.write(0x27ff, b"abc"), "the first byte is in the hole");
        let mut out = [0u8; 3];
        assert!(t.read(0x2800, &mut out));
        assert_eq!(&out, b"abc");
        let mut n = 0;
        assert!(!t.for_each_buf(0x17f0, 0x20, |b| n += b.len()));
        assert_eq!(n, 0x10, "what precedes the hole was handed over");
        drop(t);
        assert_eq!(&mem[0x800..0x803], b"abc");
    }

    #[test]
    fn overlapping_or_empty_regions_are_refused() {
        let mut mem = vec![0u8; 0x100];
        let p = mem.as_mut_ptr();
        // SAFETY: `mem` outlives the tables.
        unsafe {
            assert!(GuestRegions::from_raw([(0, 0x80, p), (0x7f, 0x10, p)]).is_err());
            assert!(GuestRegions::from_raw([(0, 0, p)]).is_err());
            assert!(GuestRegions::from_raw([(u64::MAX - 1, 0x10, p)]).is_err());
            assert!(GuestRegions::from_raw([(0x80, 0x80, p), (0, 0x80, p)]).is_ok());
        }
    }

    #[test]
    fn ring_pointers_are_checked_once_and_refused_when_the_memory_changed() {
        let mut mem = vec![0u8; 0x4000];
        let t = table(&mut mem, 0x2000);
        assert!(
            t.ring_ptrs(8, 0x1008, 0x1100, 0x1200).is_none(),
            "desc align"
        );
        assert!(
            t.ring_ptrs(8, 0x1000, 0x1101, 0x1200).is_none(),
            "avail align"
        );
        assert!(
            t.ring_ptrs(8, 0x1000, 0x1100, 0x1202).is_none(),
            "used align"
        );
        assert!(
            t.ring_ptrs(8, 0x1000, 0x1100, 0x2ff8).is_none(),
            "used ring over the end of a region"
        );
        let ptrs = t.ring_ptrs(8, 0x1000, 0x1100, 0x1200).expect("rings");
        let v = t.ring_view(&ptrs).expect("view");
        v.set_used_elem(9, 7, 100);
        v.publish_used(1);
        assert_eq!(v.used_idx(), 1);
        assert_eq!(v.desc(8), None, "beyond the table");
        drop(t);
        // Slot 9 % 8 = 1: bytes 4 + 8 of the used ring.
        assert_eq!(&mem[0x200 + 12..0x200 + 20], &[7, 0, 0, 0, 100, 0, 0, 0]);
        // The same memory at another host address: the old pointers do not pass.
        let mut other = vec![0u8; 0x4000];
        let t2 = table(&mut other, 0x2000);
        assert!(t2.ring_view(&ptrs).is_none());
    }
}
