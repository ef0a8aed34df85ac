//! The backend and queue-pair contract.
//!
//! # Ownership
//! Buffers always belong to the caller. [`QueuePair::send`] reads the frames' buffers during
//! the call and keeps nothing of them afterwards: a backend that needs the bytes later (an
//! AF_XDP UMEM, the loopback's queue) copies them. [`QueuePair::recv`] writes one frame into the
//! caller's buffers and returns its length; the buffers are the caller's again when it returns.
//! A TAP backend hands the buffers straight to `writev`/`readv`, so a VMM passing guest memory
//! moves frames without a copy of its own.
//!
//! # Frames are atomic
//! A frame is sent whole or not at all. There are no short writes: a backend whose host side
//! accepts part of a frame (it should not happen with TAP, macvtap or AF_XDP) counts the frame
//! as dropped ([`DropReason::HostError`](crate::DropReason::HostError)). A frame the backend
//! refuses (too large, an offload it does not accept) is consumed, counted as a drop by reason,
//! and `send` goes on with the next one.
//!
//! # Backpressure
//! When the host side is full, `send` stops and returns how many frames it consumed; the rest
//! are untouched and still the caller's, to be offered again, in order, once
//! [`QueuePair::tx_readiness`] fires. `recv` returns `Ok(None)` when nothing is waiting; wait
//! for [`QueuePair::rx_readiness`]. Readiness is level-triggered and only a hint: after a
//! wake-up, call until would-block. Register the TX readiness only while frames are held back,
//! since it is ready whenever there is room. Both readiness values may name the same fd with
//! different interests (TAP): register such an fd once with both.
//!
//! # Buffers
//! Frames are [`IoBuf`]s and receive buffers [`IoBufMut`]s ([`crate::iovec`]): raw
//! `(base, len)` pairs with the layout of `struct iovec`, never Rust slices, because they are
//! usually guest memory that a vCPU may write at the same time (and whose descriptors a guest
//! may make overlap). A backend copies them with the module's helpers or gives them to the
//! kernel, and validates nothing it reads from them twice. A frame has at most [`MAX_IOVECS`]
//! buffers, and `recv` gets at most as many: the kernel's `UIO_MAXIOV`, so a TAP backend can
//! hand them to one `writev`/`readv`.
//!
//! # Errors
//! `Err` means the queue could not work at all (the link is gone, the fd is broken); per-frame
//! problems are drops, visible in [`QueuePair::stats`].

use std::os::fd::BorrowedFd;

use crate::error::Result;
use crate::filter::RxFilter;
use crate::hdr::VirtioNetHdr;
use crate::iovec::{IoBuf, IoBufMut};
use crate::offload::{Capabilities, OffloadSet};
use crate::stats::QueueStats;

/// The most slices one frame (or one `recv`) may have: Linux's `UIO_MAXIOV` (1024) less one
/// for a backend's own header slice.
pub const MAX_IOVECS: usize = 1023;

/// One frame to transmit: a header and the Ethernet frame as scatter-gather buffers.
#[derive(Debug, Clone, Copy)]
pub struct TxFrame<'a> {
    /// The header, already translated to what the backend accepts
    /// ([`Capabilities::accepts`]).
    pub hdr: VirtioNetHdr,
    /// The frame, Ethernet header first, in order.
    pub data: &'a [IoBuf<'a>],
}

impl TxFrame<'_> {
    /// Total length of the frame's buffers.
    pub fn len(&self) -> usize {
        crate::iovec::total_len(self.data)
    }

    /// Whether the frame has no bytes.
    pub fn is_empty(&self) -> bool {
        self.data.iter().all(|s| s.is_empty())
    }
}

/// One received frame: the header the backend produced and the frame's length in the buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxFrame {
    /// The header; plain (possibly with `DATA_VALID`) unless offloads were enabled.
    pub hdr: VirtioNetHdr,
    /// Bytes written to the caller's slices, from the first slice on.
    pub len: usize,
}

/// The readiness event a queue pair raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Wait for the fd to become readable (`EPOLLIN`).
    Readable,
    /// Wait for the fd to become writable (`EPOLLOUT`).
    Writable,
}

/// An fd and the event on it that means "call again".
#[derive(Debug, Clone, Copy)]
pub struct Readiness<'a> {
    /// The fd to poll; owned by the queue pair.
    pub fd: BorrowedFd<'a>,
    /// The event to wait for.
    pub interest: Interest,
}

/// One receive queue and one transmit queue on the host side.
///
/// A device opens one per virtio queue pair. Methods take `&mut self`: a queue pair is driven
/// by one thread at a time, and may be moved between threads.
pub trait QueuePair: Send {
    /// The index this queue pair was opened with.
    fn index(&self) -> u16;

    /// Sends frames in order until done or until the host side is full.
    ///
    /// Returns how many frames were consumed (sent, or dropped and counted); `frames[n..]` were
    /// not touched. `Ok(0)` with a non-empty batch means would-block.
    fn send(&mut self, frames: &[TxFrame<'_>]) -> Result<usize>;

    /// Receives one frame into `bufs`.
    ///
    /// `Ok(None)` means nothing is waiting. The buffers should hold
    /// [`Capabilities::max_frame`] bytes; a larger frame than they hold is dropped and counted
    /// ([`DropReason::Truncated`](crate::DropReason::Truncated)) and the next one is tried.
    fn recv(&mut self, bufs: &[IoBufMut<'_>]) -> Result<Option<RxFrame>>;

    /// Tells the backend which offloads the reader accepts in received frames (the guest's
    /// `GUEST_*` features). Only a subset of [`Capabilities::rx_offloads`] can be enabled; the
    /// setting may apply to every queue pair of the backend.
    fn set_rx_offloads(&mut self, offloads: OffloadSet) -> Result<()>;

    /// Attaches or detaches the queue pair on the host side (a TAP's `TUNSETQUEUE`).
    ///
    /// A detached queue pair receives nothing: the host side steers its frames to the attached
    /// ones, so nothing waits in a queue that nobody reads. A device detaches the queue pairs
    /// above the guest's active count (`VIRTIO_NET_CTRL_MQ`) and attaches them again when the
    /// count rises. Queue pairs open attached. `send` on a detached queue pair is an error.
    fn set_attached(&mut self, attached: bool) -> Result<()>;

    /// Hands the guest's receive filter to the backend.
    ///
    /// Returns whether the host side applies it; with `false` (the default) the caller filters
    /// received frames itself with [`RxFilter::accepts`]. The filter may apply to every queue
    /// pair of the backend.
    fn set_rx_filter(&mut self, filter: &RxFilter) -> Result<bool> {
        let _ = filter;
        Ok(false)
    }

    /// When to call `recv` again.
    fn rx_readiness(&self) -> Readiness<'_>;

    /// When to call `send` again after it would block.
    fn tx_readiness(&self) -> Readiness<'_>;

    /// A snapshot of the counters.
    fn stats(&self) -> QueueStats;
}

impl<Q: QueuePair + ?Sized> QueuePair for Box<Q> {
    fn index(&self) -> u16 {
        (**self).index()
    }
    fn send(&mut self, frames: &[TxFrame<'_>]) -> Result<usize> {
        (**self).send(frames)
    }
    fn recv(&mut self, bufs: &[IoBufMut<'_>]) -> Result<Option<RxFrame>> {
        (**self).recv(bufs)
    }
    fn set_rx_offloads(&mut self, offloads: OffloadSet) -> Result<()> {
        (**self).set_rx_offloads(offloads)
    }
    fn set_attached(&mut self, attached: bool) -> Result<()> {
        (**self).set_attached(attached)
    }
    fn set_rx_filter(&mut self, filter: &RxFilter) -> Result<bool> {
        (**self).set_rx_filter(filter)
    }
    fn rx_readiness(&self) -> Readiness<'_> {
        (**self).rx_readiness()
    }
    fn tx_readiness(&self) -> Readiness<'_> {
        (**self).tx_readiness()
    }
    fn stats(&self) -> QueueStats {
        (**self).stats()
    }
}

/// A host-side network attachment that opens queue pairs (a TAP device, a macvtap, an XDP
/// socket set, a loopback).
pub trait Backend {
    /// The queue-pair type.
    type Queue: QueuePair;

    /// A name for logs and errors (`tap:vm0`, `loopback:a`).
    fn name(&self) -> &str;

    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Opens queue pair `index` (0-based, below [`Capabilities::max_queue_pairs`]). A queue
    /// pair can be open once; dropping it closes it and makes the index available again.
    fn open_queue_pair(&mut self, index: u16) -> Result<Self::Queue>;
}
