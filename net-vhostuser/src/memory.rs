//! The guest memory a frontend shares (`SET_MEM_TABLE`), mapped into the daemon.
//!
//! Each region's fd is mapped shared, read-write, once per table; the mappings live as long
//! as the [`FrontendMemory`] (workers hold it in an `Arc`, so a new table replaces the old
//! one only when no worker uses it any more). Every fd must be a regular file (a memfd, a
//! file on tmpfs or hugetlbfs) long enough for its region; anything else is refused before a
//! byte is mapped. The frontend's own addresses, in which it gives ring addresses
//! (`SET_VRING_ADDR`), translate to guest addresses through the same table
//! ([`FrontendMemory::user_to_guest`]).
//!
//! A frontend can shrink a memory file after handing it over (QEMU seals its memfds against
//! that; DPDK's `--no-huge` memfd carries only `F_SEAL_SEAL`, hugetlbfs files carry no seals,
//! and a hostile frontend need not seal anything): the next access to a page past the new end
//! raises SIGBUS. [`contain_sigbus`] installs a handler that looks the faulting address up in
//! a table of the mappings made here: when it is one of them, the whole mapping is replaced
//! with zero pages (`mmap` over it, `MAP_FIXED`, the one system call the handler makes), so
//! the access completes, and the mapping is marked faulted; the worker that touched it sees
//! [`FrontendMemory::faulted`] after its pass and ends the session, whose state is thrown
//! away whole. Nothing else in the process is touched: the handler writes no lock, no
//! allocation, only its own atomics. A SIGBUS anywhere else goes to the previous handler (or
//! the default action: the process dies, as a bug should).
//!
//! The one module of this crate that maps memory (`unsafe`, with a `SAFETY` comment each).

#![allow(unsafe_code)]

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use net_virtio::GuestRegions;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::stat::{fstat, SFlag};

use crate::wire::MemRegion;

/// Why a memory table is refused.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A region's fd is not a regular file.
    #[error("region {index}: the fd is not a regular file (mode {mode:#o}); share memory as a memfd or a file")]
    NotAFile {
        /// The region.
        index: usize,
        /// `st_mode`.
        mode: u32,
    },
    /// A region reaches past the end of its file (the first access would be SIGBUS).
    #[error("region {index}: {size} bytes at offset {offset} of a {len}-byte file")]
    PastEnd {
        /// The region.
        index: usize,
        /// Its size.
        size: u64,
        /// Its offset.
        offset: u64,
        /// The file's length.
        len: u64,
    },
    /// Regions overlap in guest or frontend addresses.
    #[error("regions overlap: {0}")]
    Overlap(String),
    /// More mappings at once than the SIGBUS table holds.
    #[error("more than {SLOTS} guest memory mappings at once")]
    TooManyMappings,
    /// `fstat` or `mmap` failed.
    #[error("region {index}: {op}: {errno}")]
    Sys {
        /// The region.
        index: usize,
        /// The call.
        op: &'static str,
        /// Why.
        errno: nix::Error,
    },
}

struct Mapping {
    region: MemRegion,
    base: NonNull<std::ffi::c_void>,
    len: usize,
    /// Where the region's first byte is (the mapping starts at a page boundary).
    host: *mut u8,
    /// Its entry in the SIGBUS table.
    slot: usize,
}

/// Mappings the SIGBUS handler knows at most.
pub const SLOTS: usize = 256;

/// One mapping the SIGBUS handler may repair: `len` 0 means free (or being set up).
struct Slot {
    claimed: AtomicBool,
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    claimed: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// Faults the handler contained, ever: [`FrontendMemory::faulted`] looks at its own slots
/// only once this is not zero, so the datapath pays one load per pass.
static CONTAINED: AtomicUsize = AtomicUsize::new(0);

/// The SIGBUS action before ours, for faults that are not in our mappings.
static PREVIOUS: OnceLock<nix::libc::sigaction> = OnceLock::new();

fn claim(start: usize, len: usize) -> Option<usize> {
    let i = TABLE.iter().position(|s| {
        s.claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })?;
    let s = &TABLE[i];
    s.faulted.store(false, Ordering::Relaxed);
    s.start.store(start, Ordering::Relaxed);
    s.len.store(len, Ordering::Release);
    Some(i)
}

fn release(i: usize) {
    let s = &TABLE[i];
    s.len.store(0, Ordering::Release);
    s.start.store(0, Ordering::Relaxed);
    s.claimed.store(false, Ordering::Release);
}

extern "C" fn on_sigbus(
    sig: nix::libc::c_int,
    info: *mut nix::libc::siginfo_t,
    ctx: *mut std::ffi::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &TABLE {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Relaxed);
        if len == 0 || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: `start..start + len` is a mapping of ours (registered while it exists);
        // replacing it with private zero pages at the same address keeps every pointer into
        // it valid. mmap is a plain system call, safe in a signal handler.
        let r = unsafe {
            nix::libc::mmap(
                start as *mut std::ffi::c_void,
                len,
                nix::libc::PROT_READ | nix::libc::PROT_WRITE,
                nix::libc::MAP_PRIVATE
                    | nix::libc::MAP_ANONYMOUS
                    | nix::libc::MAP_FIXED
                    | nix::libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if r != nix::libc::MAP_FAILED {
            s.faulted.store(true, Ordering::Release);
            CONTAINED.fetch_add(1, Ordering::Release);
            return;
        }
        break;
    }
    // Not ours: what was there before takes it (the fault repeats when we return).
    match PREVIOUS.get() {
        Some(prev)
            if prev.sa_sigaction != nix::libc::SIG_DFL
                && prev.sa_sigaction != nix::libc::SIG_IGN =>
        {
            if prev.sa_flags & nix::libc::SA_SIGINFO != 0 {
                // SAFETY: a handler installed with SA_SIGINFO has this signature.
                let f: extern "C" fn(
                    nix::libc::c_int,
                    *mut nix::libc::siginfo_t,
                    *mut std::ffi::c_void,
                ) = unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a handler installed without SA_SIGINFO has this signature.
                let f: extern "C" fn(nix::libc::c_int) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // SAFETY: back to the default action; the repeated fault ends the process.
            unsafe {
                let mut dfl: nix::libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = nix::libc::SIG_DFL;
                nix::libc::sigaction(nix::libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Installs the SIGBUS handler that contains a frontend's shrunk memory (see the module);
/// once per process, later calls do nothing. The server calls it; a VMM that maps frontend
/// memory through this module itself calls it too, or keeps SIGBUS fatal.
pub fn contain_sigbus() -> std::io::Result<()> {
    static DONE: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid value; ours points at a handler of the
        // SA_SIGINFO signature that only touches atomics and makes one mmap call.
        unsafe {
            let mut act: nix::libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = nix::libc::SA_SIGINFO | nix::libc::SA_ONSTACK;
            let mut old: nix::libc::sigaction = std::mem::zeroed();
            if nix::libc::sigaction(nix::libc::SIGBUS, &act, &mut old) != 0 {
                return Err(nix::errno::Errno::last() as i32);
            }
            let _ = PREVIOUS.set(old);
        }
        Ok(())
    });
    r.map_err(std::io::Error::from_raw_os_error)
}

/// A frontend's memory table, mapped (see the module).
pub struct FrontendMemory {
    maps: Vec<Mapping>,
}

// SAFETY: the mappings are plain shared memory owned by this value; the pointers are only
// handed out through `regions`, whose users treat the bytes as guest memory (volatile copies,
// atomics), from any thread.
unsafe impl Send for FrontendMemory {}
// SAFETY: as above: `&FrontendMemory` gives out nothing but the table.
unsafe impl Sync for FrontendMemory {}

impl std::fmt::Debug for FrontendMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for m in &self.maps {
            l.entry(&format_args!(
                "{:#x}+{:#x}@{:#x}",
                m.region.guest_addr, m.region.size, m.region.user_addr
            ));
        }
        l.finish()
    }
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}

impl FrontendMemory {
    /// Checks and maps a memory table.
    pub fn map(regions: Vec<(MemRegion, OwnedFd)>) -> Result<FrontendMemory, MemoryError> {
        let page = page_size();
        let mut out = FrontendMemory {
            maps: Vec::with_capacity(regions.len()),
        };
        for (i, (r, fd)) in regions.iter().enumerate() {
            let sys = |op, errno| MemoryError::Sys {
                index: i,
                op,
                errno,
            };
            let st = fstat(fd.as_fd()).map_err(|e| sys("fstat", e))?;
            if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
                return Err(MemoryError::NotAFile {
                    index: i,
                    mode: st.st_mode,
                });
            }
            let len = st.st_size as u64;
            if r.mmap_offset
                .checked_add(r.size)
                .is_none_or(|end| end > len)
            {
                return Err(MemoryError::PastEnd {
                    index: i,
                    size: r.size,
                    offset: r.mmap_offset,
                    len,
                });
            }
            for m in &out.maps {
                let o = m.region;
                let overlap = |a: u64, b: u64| a < b + o.size && b < a + r.size;
                if overlap(r.guest_addr, o.guest_addr) || overlap(r.user_addr, o.user_addr) {
                    return Err(MemoryError::Overlap(format!("{r:?} and {o:?}")));
                }
            }
            let skew = r.mmap_offset % page;
            let map_len = usize::try_from(r.size + skew)
                .ok()
                .and_then(NonZeroUsize::new)
                .ok_or(MemoryError::Sys {
                    index: i,
                    op: "mmap",
                    errno: nix::Error::EINVAL,
                })?;
            let offset =
                i64::try_from(r.mmap_offset - skew).map_err(|_| sys("mmap", nix::Error::EINVAL))?;
            // SAFETY: a new shared mapping of the file chosen by the kernel (no fixed address),
            // so no memory of ours is replaced; we own it until `Drop` unmaps it.
            let base = unsafe {
                mmap(
                    None,
                    map_len,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE,
                    fd,
                    offset,
                )
            }
            .map_err(|e| sys("mmap", e))?;
            let Some(slot) = claim(base.as_ptr() as usize, map_len.get()) else {
                // SAFETY: the mapping just made, referenced nowhere.
                let _ = unsafe { munmap(base, map_len.get()) };
                return Err(MemoryError::TooManyMappings);
            };
            out.maps.push(Mapping {
                region: *r,
                base,
                len: map_len.get(),
                // SAFETY: `skew < page <= map_len`: inside the mapping.
                host: unsafe { base.as_ptr().cast::<u8>().add(skew as usize) },
                slot,
            });
        }
        Ok(out)
    }

    /// The regions as a table for the datapath, borrowing the mappings.
    pub fn regions(&self) -> GuestRegions<'_> {
        let raw = self
            .maps
            .iter()
            .map(|m| (m.region.guest_addr, m.region.size, m.host));
        // SAFETY: each region's `size` bytes at `host` are mapped shared read-write until
        // `self` is dropped, which the borrow prevents; no Rust reference ever covers them.
        match unsafe { GuestRegions::from_raw(raw) } {
            Ok(t) => t,
            // Overlaps were refused in `map`.
            Err(_) => {
                // SAFETY: an empty table refers to no memory.
                unsafe { GuestRegions::from_raw(std::iter::empty()) }
                    .unwrap_or_else(|_| unreachable!("an empty table is valid"))
            }
        }
    }

    /// The guest address of `len` bytes the frontend sees at `user_addr`, when they lie in one
    /// region.
    pub fn user_to_guest(&self, user_addr: u64, len: u64) -> Option<u64> {
        self.maps.iter().find_map(|m| {
            let off = user_addr.checked_sub(m.region.user_addr)?;
            (off < m.region.size && len <= m.region.size - off).then(|| m.region.guest_addr + off)
        })
    }

    /// The regions, as the frontend described them.
    pub fn table(&self) -> impl Iterator<Item = &MemRegion> {
        self.maps.iter().map(|m| &m.region)
    }

    /// Whether an access faulted because the frontend shrank a memory file: the mapping now
    /// holds zero pages, and the session must end.
    pub fn faulted(&self) -> bool {
        CONTAINED.load(Ordering::Acquire) != 0
            && self
                .maps
                .iter()
                .any(|m| TABLE[m.slot].faulted.load(Ordering::Acquire))
    }
}

impl Drop for FrontendMemory {
    fn drop(&mut self) {
        for m in &self.maps {
            // The handler forgets it before it goes.
            release(m.slot);
            // SAFETY: `base`/`len` are a mapping `map` made and nothing else unmapped; no
            // `GuestRegions` borrowing `self` outlives it.
            if let Err(e) = unsafe { munmap(m.base, m.len) } {
                log::warn!("unmapping guest memory at {:p}: {e}", m.base);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn memfd(len: u64) -> OwnedFd {
        let fd =
            nix::sys::memfd::memfd_create(c"volt-net-test", nix::sys::memfd::MFdFlags::empty())
                .expect("memfd");
        nix::unistd::ftruncate(&fd, len as i64).expect("ftruncate");
        fd
    }

    #[test]
    fn maps_translates_and_refuses_what_would_fault() {
        let r = |guest_addr, size, user_addr, mmap_offset| MemRegion {
            guest_addr,
            size,
            user_addr,
            mmap_offset,
        };
        let mem = FrontendMemory::map(vec![
            (r(0, 0x2000, 0x7000_0000, 0), memfd(0x2000)),
            (r(0x10_0000, 0x1000, 0x8000_0000, 0x1000), memfd(0x2000)),
        ])
        .expect("map");
        assert_eq!(mem.user_to_guest(0x7000_0010, 16), Some(0x10));
        assert_eq!(mem.user_to_guest(0x8000_0ff0, 16), Some(0x10_0ff0));
        assert_eq!(mem.user_to_guest(0x8000_0ff0, 17), None, "past the region");
        assert_eq!(mem.user_to_guest(0x6fff_ffff, 1), None);
        let t = mem.regions();
        assert!(t.write(0x10_0000, b"abc"));
        let mut b = [0u8; 3];
        assert!(t.read(0x10_0000, &mut b));
        assert_eq!(&b, b"abc");
        drop(t);
        drop(mem);

        assert!(matches!(
            FrontendMemory::map(vec![(r(0, 0x2000, 0, 0x1000), memfd(0x2000))]),
            Err(MemoryError::PastEnd { .. })
        ));
        let file = tempfile_fd();
        assert!(matches!(
            FrontendMemory::map(vec![(r(0, 0x1000, 0, 0), file)]),
            Err(MemoryError::PastEnd { .. })
        ));
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert!(matches!(
            FrontendMemory::map(vec![(r(0, 0x1000, 0, 0), OwnedFd::from(a))]),
            Err(MemoryError::NotAFile { .. })
        ));
        assert!(matches!(
            FrontendMemory::map(vec![
                (r(0, 0x2000, 0x1000_0000, 0), memfd(0x2000)),
                (r(0x1000, 0x1000, 0x2000_0000, 0), memfd(0x1000)),
            ]),
            Err(MemoryError::Overlap(_))
        ));
    }

    #[test]
    fn a_file_shrunk_under_the_mapping_faults_once_and_reads_zeros() {
        contain_sigbus().expect("handler");
        let fd = memfd(0x4000);
        let dup = fd.try_clone().expect("dup");
        let r = MemRegion {
            guest_addr: 0,
            size: 0x4000,
            user_addr: 0,
            mmap_offset: 0,
        };
        let mem = FrontendMemory::map(vec![(r, fd)]).expect("map");
        let t = mem.regions();
        assert!(t.write(0x3000, b"xyz"));
        assert!(!mem.faulted());
        nix::unistd::ftruncate(&dup, 0x1000).expect("shrink");
        // This access would be SIGBUS: it reads the zero page the handler put there.
        let mut b = [1u8; 3];
        assert!(t.read(0x3000, &mut b));
        assert_eq!(b, [0, 0, 0]);
        assert!(mem.faulted());
        drop(t);
        drop(mem);
        // The slot is free again: a new mapping starts clean.
        let m2 = FrontendMemory::map(vec![(r, memfd(0x4000))]).expect("map");
        assert!(!m2.faulted());
    }

    /// A regular file of 10 bytes.
    fn tempfile_fd() -> OwnedFd {
        let fd = memfd(0);
        let mut f = std::fs::File::from(fd);
        f.write_all(b"0123456789").expect("write");
        OwnedFd::from(f)
    }
}
