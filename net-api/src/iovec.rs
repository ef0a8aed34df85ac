//! Buffers that may be guest memory: a pointer and a length, never a Rust slice.
//!
//! A frame a device hands to a backend usually lives in guest memory, which a vCPU may write at
//! any moment and whose descriptors a guest may make overlap. A `&[u8]` over such bytes would
//! promise the compiler that nothing changes them while the reference lives, and a `&mut [u8]`
//! that nothing else can see them: both are broken by a hostile guest, so both are undefined
//! behaviour however they are commented. [`IoBuf`] (readable) and [`IoBufMut`] (writable) are
//! what Firecracker's `IoVecBuffer` and vm-memory's `VolatileSlice` are: raw `(base, len)`
//! pairs, built with an `unsafe` constructor whose caller promises the bytes stay mapped, read
//! and written only by copies with volatile semantics ([`IoBuf::read`], [`IoBufMut::write`],
//! [`read_bufs`], [`write_bufs`]) or by the kernel: both types have the layout of
//! `struct iovec`, so a slice of them goes to `writev`/`readv` as it is ([`IoBuf::as_iovecs`]).
//!
//! Buffers of the caller's own (a frame built in a `Vec`, a receive buffer on the stack) are
//! made safely with [`IoBuf::from_slice`] and [`IoBufMut::from_mut_slice`].
//!
//! This is the one module of `net-api` with `unsafe`.
//!
//! ```
//! use net_api::iovec::{read_bufs, write_bufs, IoBuf, IoBufMut};
//!
//! let mut a = [0u8; 3];
//! let mut b = [0u8; 5];
//! let bufs = [IoBufMut::from_mut_slice(&mut a), IoBufMut::from_mut_slice(&mut b)];
//! assert_eq!(write_bufs(&bufs, 1, b"hello, world"), 7);
//! let mut out = [0u8; 8];
//! let read: Vec<IoBuf<'_>> = bufs.iter().map(|b| b.as_buf()).collect();
//! assert_eq!(read_bufs(&read, 0, &mut out), 8);
//! assert_eq!(&out, b"\0hello, ");
//! ```

#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ptr::{read_volatile, write_volatile};

/// Bytes someone else may be changing: readable for `'a`, copied out only through
/// [`IoBuf::read`] and [`read_bufs`], or handed to the kernel as an `iovec`.
///
/// The layout is `struct iovec` (`iov_base`, `iov_len`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoBuf<'a> {
    base: *const u8,
    len: usize,
    _borrow: PhantomData<&'a [u8]>,
}

/// Bytes someone else may be reading or changing: writable for `'a`, filled only through
/// [`IoBufMut::write`] and [`write_bufs`], or by the kernel (`readv`).
///
/// The layout is `struct iovec` (`iov_base`, `iov_len`). Copies of an `IoBufMut` may overlap
/// (a guest can make its descriptors overlap): writes through them garble only those bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoBufMut<'a> {
    base: *mut u8,
    len: usize,
    _borrow: PhantomData<&'a mut [u8]>,
}

// SAFETY: an `IoBuf` names memory that stays mapped for `'a` in the whole process, and every
// access through it is a copy that tolerates concurrent writers (guest memory always has
// one: a vCPU). Another thread of ours copying the same bytes is no different.
unsafe impl Send for IoBuf<'_> {}
// SAFETY: as for `Send`: `&IoBuf` only allows copies out.
unsafe impl Sync for IoBuf<'_> {}
// SAFETY: as for `IoBuf`: writes are copies into memory others may read or write at any
// time, whichever thread does them.
unsafe impl Send for IoBufMut<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for IoBufMut<'_> {}

impl std::fmt::Debug for IoBuf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf({:p}, {})", self.base, self.len)
    }
}

impl std::fmt::Debug for IoBufMut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBufMut({:p}, {})", self.base, self.len)
    }
}

/// Copies `n` bytes between buffers that cannot overlap (one of them is ours): up to 8 bytes
/// as [`copy_bytes`] does, up to 64 inline in 8-byte words (a frame header, a small frame:
/// a call to `memcpy` costs more than the copy), more with `memcpy`.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes, and the two ranges must
/// not overlap.
#[inline]
unsafe fn copy_disjoint(dst: *mut u8, src: *const u8, n: usize) {
    if n <= 8 {
        // SAFETY: the caller's promise.
        unsafe { copy_bytes(dst, src, n) };
    } else if n <= 64 {
        let mut i = 0;
        // SAFETY: every access is within the `n` bytes the caller vouched for; unaligned
        // word accesses are allowed by `read_unaligned`/`write_unaligned`.
        unsafe {
            while i + 8 <= n {
                let w = std::ptr::read_unaligned(src.add(i).cast::<u64>());
                std::ptr::write_unaligned(dst.add(i).cast::<u64>(), w);
                i += 8;
            }
            if i < n {
                // The last word, overlapping what was copied: the same bytes again.
                let w = std::ptr::read_unaligned(src.add(n - 8).cast::<u64>());
                std::ptr::write_unaligned(dst.add(n - 8).cast::<u64>(), w);
            }
        }
    } else {
        // SAFETY: the caller's promise.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
    }
}

/// Copies `n` bytes from `src` to `dst` as vm-memory's `VolatileSlice` does: up to 8 bytes as
/// one volatile access of the widest alignment both share (so a guest sees a whole field
/// change or none of it), more with `ptr::copy` (a memmove: guest buffers may overlap).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes.
unsafe fn copy_bytes(dst: *mut u8, src: *const u8, n: usize) {
    if n > 8 {
        // SAFETY: the caller's promise; `copy` tolerates overlap.
        unsafe { std::ptr::copy(src, dst, n) };
        return;
    }
    let align = (dst as usize | src as usize | 8).trailing_zeros();
    let (mut d, mut s, mut left) = (dst, src, n);
    for width in [8usize, 4, 2, 1] {
        if (1usize << align) < width {
            continue;
        }
        while left >= width {
            // SAFETY: `s`/`d` stay within the `n` bytes the caller vouched for, and are aligned
            // to `width` (both start aligned to `1 << align` >= width, and advance by `width`).
            unsafe {
                match width {
                    8 => write_volatile(d.cast::<u64>(), read_volatile(s.cast::<u64>())),
                    4 => write_volatile(d.cast::<u32>(), read_volatile(s.cast::<u32>())),
                    2 => write_volatile(d.cast::<u16>(), read_volatile(s.cast::<u16>())),
                    _ => write_volatile(d, read_volatile(s)),
                }
                d = d.add(width);
                s = s.add(width);
            }
            left -= width;
        }
    }
}

impl<'a> IoBuf<'a> {
    /// A buffer over bytes of the caller's own.
    pub fn from_slice(bytes: &'a [u8]) -> IoBuf<'a> {
        IoBuf {
            base: bytes.as_ptr(),
            len: bytes.len(),
            _borrow: PhantomData,
        }
    }

    /// A buffer over `len` bytes at `base`, such as guest memory.
    ///
    /// # Safety
    /// The `len` bytes at `base` must stay mapped and readable for `'a` (when `len` is 0,
    /// `base` is never read). They may change at any time: nothing here assumes otherwise.
    pub unsafe fn from_raw_parts(base: *const u8, len: usize) -> IoBuf<'a> {
        IoBuf {
            base,
            len,
            _borrow: PhantomData,
        }
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start address (for logs and `iovec`s; never dereference it yourself).
    pub fn as_ptr(&self) -> *const u8 {
        self.base
    }

    /// The bytes from `offset` on (empty past the end).
    pub fn offset(&self, offset: usize) -> IoBuf<'a> {
        let off = offset.min(self.len);
        IoBuf {
            // SAFETY: `off <= len`, so the pointer stays within (or one past) the buffer.
            base: unsafe { self.base.add(off) },
            len: self.len - off,
            _borrow: PhantomData,
        }
    }

    /// The first `len` bytes (all of them when the buffer is shorter).
    pub fn truncate(&self, len: usize) -> IoBuf<'a> {
        IoBuf {
            len: self.len.min(len),
            ..*self
        }
    }

    /// Copies bytes from `offset` on into `out`; returns how many (fewer when the buffer ends
    /// first).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> usize {
        let src = self.offset(offset);
        let n = src.len.min(out.len());
        if n > 0 {
            // SAFETY: `src` covers `n` readable bytes (the constructor's promise), `out` is
            // ours for `n` bytes (a `&mut`: no guest buffer overlaps it).
            unsafe { copy_disjoint(out.as_mut_ptr(), src.base, n) };
        }
        n
    }

    /// The buffers as `struct iovec`s, for `writev` (the pointer is valid as long as `bufs`).
    pub fn as_iovecs(bufs: &[IoBuf<'_>]) -> *const IoBuf<'static> {
        bufs.as_ptr().cast()
    }
}

impl<'a> IoBufMut<'a> {
    /// A buffer over bytes of the caller's own.
    pub fn from_mut_slice(bytes: &'a mut [u8]) -> IoBufMut<'a> {
        IoBufMut {
            base: bytes.as_mut_ptr(),
            len: bytes.len(),
            _borrow: PhantomData,
        }
    }

    /// A buffer over `len` bytes at `base`, such as guest memory.
    ///
    /// # Safety
    /// The `len` bytes at `base` must stay mapped, readable and writable for `'a`, and no Rust
    /// reference may cover them meanwhile. Others (a guest) may read and write them at any
    /// time.
    pub unsafe fn from_raw_parts(base: *mut u8, len: usize) -> IoBufMut<'a> {
        IoBufMut {
            base,
            len,
            _borrow: PhantomData,
        }
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start address (for logs and `iovec`s; never dereference it yourself).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.base
    }

    /// The same bytes, for reading.
    pub fn as_buf(&self) -> IoBuf<'a> {
        IoBuf {
            base: self.base,
            len: self.len,
            _borrow: PhantomData,
        }
    }

    /// The bytes from `offset` on (empty past the end).
    pub fn offset(&self, offset: usize) -> IoBufMut<'a> {
        let off = offset.min(self.len);
        IoBufMut {
            // SAFETY: `off <= len`, so the pointer stays within (or one past) the buffer.
            base: unsafe { self.base.add(off) },
            len: self.len - off,
            _borrow: PhantomData,
        }
    }

    /// The first `len` bytes (all of them when the buffer is shorter).
    pub fn truncate(&self, len: usize) -> IoBufMut<'a> {
        IoBufMut {
            len: self.len.min(len),
            ..*self
        }
    }

    /// Copies `data` into the buffer from `offset` on; returns how many bytes fitted.
    pub fn write(&self, offset: usize, data: &[u8]) -> usize {
        let dst = self.offset(offset);
        let n = dst.len.min(data.len());
        if n > 0 {
            // SAFETY: `dst` covers `n` writable bytes (the constructor's promise) that no
            // reference covers, so `data` (a reference) cannot overlap them.
            unsafe { copy_disjoint(dst.base, data.as_ptr(), n) };
        }
        n
    }

    /// Copies from `src` (which may be guest memory too, even the same bytes) into the buffer
    /// from `offset` on; returns how many bytes were copied.
    pub fn copy_from(&self, offset: usize, src: &IoBuf<'_>) -> usize {
        let dst = self.offset(offset);
        let n = dst.len.min(src.len);
        if n > 0 {
            // SAFETY: both sides cover `n` bytes by their constructors' promises; the copy is
            // a memmove, so overlapping buffers are fine.
            unsafe { copy_bytes(dst.base, src.base, n) };
        }
        n
    }

    /// The buffers as `struct iovec`s, for `readv` (the pointer is valid as long as `bufs`).
    pub fn as_iovecs(bufs: &[IoBufMut<'_>]) -> *const IoBufMut<'static> {
        bufs.as_ptr().cast()
    }
}

/// Total length of the buffers (saturating).
pub fn total_len(bufs: &[IoBuf<'_>]) -> usize {
    bufs.iter().fold(0usize, |n, b| n.saturating_add(b.len))
}

/// Total length of the buffers (saturating).
pub fn total_len_mut(bufs: &[IoBufMut<'_>]) -> usize {
    bufs.iter().fold(0usize, |n, b| n.saturating_add(b.len))
}

/// Copies up to `out.len()` bytes from the buffers, after skipping `skip`; returns how many.
pub fn read_bufs(bufs: &[IoBuf<'_>], mut skip: usize, out: &mut [u8]) -> usize {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            break;
        }
        if skip >= b.len {
            skip -= b.len;
            continue;
        }
        done += b.read(skip, &mut out[done..]);
        skip = 0;
    }
    done
}

/// Copies `data` into the buffers, after skipping `skip` bytes of them; returns how many
/// bytes fitted.
pub fn write_bufs(bufs: &[IoBufMut<'_>], mut skip: usize, data: &[u8]) -> usize {
    let mut done = 0;
    for b in bufs {
        if done == data.len() {
            break;
        }
        if skip >= b.len {
            skip -= b.len;
            continue;
        }
        done += b.write(skip, &data[done..]);
        skip = 0;
    }
    done
}

/// Copies the bytes of `src` into `dst` (both possibly guest memory), until either ends;
/// returns how many bytes were copied.
pub fn copy_bufs(dst: &[IoBufMut<'_>], src: &[IoBuf<'_>]) -> usize {
    let (mut di, mut doff, mut done) = (0, 0, 0);
    for s in src {
        let mut soff = 0;
        while soff < s.len {
            let Some(d) = dst.get(di) else {
                return done;
            };
            let n = d.copy_from(doff, &s.offset(soff));
            soff += n;
            doff += n;
            done += n;
            if doff >= d.len {
                di += 1;
                doff = 0;
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_struct_iovec() {
        // iov_base then iov_len, as Linux and every libc define it.
        assert_eq!(
            std::mem::size_of::<IoBuf<'_>>(),
            2 * std::mem::size_of::<usize>()
        );
        assert_eq!(
            std::mem::align_of::<IoBuf<'_>>(),
            std::mem::align_of::<usize>()
        );
        assert_eq!(
            std::mem::size_of::<IoBufMut<'_>>(),
            2 * std::mem::size_of::<usize>()
        );
        let bytes = [1u8, 2, 3];
        let b = IoBuf::from_slice(&bytes);
        assert_eq!((b.as_ptr(), b.len()), (bytes.as_ptr(), 3));
    }

    #[test]
    fn copies_of_every_length_and_alignment_are_exact() {
        let src: Vec<u8> = (0..100u8).collect();
        for start in 0..9 {
            for len in 0..80 {
                for dst_start in 0..9 {
                    let mut dst = [0xeeu8; 100];
                    let b = IoBufMut::from_mut_slice(&mut dst[dst_start..]);
                    let n = b.write(0, &src[start..start + len]);
                    assert_eq!(n, len);
                    assert_eq!(&dst[dst_start..dst_start + len], &src[start..start + len]);
                    assert!(dst[..dst_start].iter().all(|&x| x == 0xee));
                    assert!(dst[dst_start + len..].iter().all(|&x| x == 0xee));
                }
            }
        }
    }

    #[test]
    fn reads_and_writes_stop_at_the_end() {
        let mut a = [0u8; 4];
        let b = IoBufMut::from_mut_slice(&mut a);
        assert_eq!(b.write(2, b"xyz"), 2);
        assert_eq!(b.write(4, b"xyz"), 0);
        assert_eq!(b.write(100, b"xyz"), 0);
        let mut out = [0u8; 8];
        assert_eq!(b.as_buf().read(1, &mut out), 3);
        assert_eq!(&out[..3], b"\0xy");
        assert_eq!(b.as_buf().read(9, &mut out), 0);
        assert_eq!(b.offset(9).len(), 0);
        assert_eq!(b.truncate(2).len(), 2);
        assert_eq!(b.truncate(9).len(), 4);
    }

    #[test]
    fn scatter_gather_across_buffers() {
        let (mut x, mut y, mut z) = ([0u8; 2], [0u8; 0], [0u8; 5]);
        let bufs = [
            IoBufMut::from_mut_slice(&mut x),
            IoBufMut::from_mut_slice(&mut y),
            IoBufMut::from_mut_slice(&mut z),
        ];
        assert_eq!(total_len_mut(&bufs), 7);
        assert_eq!(write_bufs(&bufs, 1, b"abcdefgh"), 6);
        let read: Vec<IoBuf<'_>> = bufs.iter().map(|b| b.as_buf()).collect();
        let mut out = [0u8; 3];
        assert_eq!(read_bufs(&read, 2, &mut out), 3);
        assert_eq!(&out, b"bcd");
        let mut all = [0u8; 16];
        assert_eq!(read_bufs(&read, 0, &mut all), 7);
        assert_eq!(&all[..7], b"\0abcdef");
        let mut dst = [0u8; 4];
        let d = [IoBufMut::from_mut_slice(&mut dst)];
        assert_eq!(copy_bufs(&d, &read), 4);
        assert_eq!(&dst, b"\0abc");
    }

    #[test]
    fn overlapping_buffers_are_a_memmove() {
        let mut bytes: Vec<u8> = (0..32u8).collect();
        let whole = IoBufMut::from_mut_slice(&mut bytes);
        let (dst, src) = (whole.offset(4), whole.as_buf());
        assert_eq!(dst.copy_from(0, &src.truncate(20)), 20);
        let want: Vec<u8> = (0..4u8).chain(0..20).chain(24..32).collect();
        assert_eq!(bytes, want);
    }
}
