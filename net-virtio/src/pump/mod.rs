//! The transmit and receive pumps: virtqueue chains in, backend frames out, and back.
//!
//! A pump owns no queue and no backend: each call gets the `virtio_queue::Queue`, the guest
//! memory and the backend queue pair, so a VMM's device ([`crate::device::NetDevice`]) and the
//! vhost-user daemon (whose rings `vhost-user-backend` keeps) drive the same code.
//!
//! # Transmit
//! Chains are popped in batches of [`TX_BATCH`]. The header is copied out (it is small and the
//! device must not read it twice); the frame goes to the backend as `IoSlice`s of guest memory,
//! without a copy, when the backend takes it as it is. A frame that needs the software
//! fallback is copied once into the pump's own buffer, completed or segmented there, and sent
//! from it. When the backend would block, the chains it did not take are given back to the
//! ring (`next_avail` moves back), a half-sent segmented frame is kept, and the pump reports
//! [`PumpOutcome::blocked`]: call again when the backend's TX readiness fires.
//!
//! # Receive
//! The pump takes guest buffers off the ring before it asks the backend for a frame, and only
//! asks when the buffers it holds can take the largest frame the backend may deliver: with
//! `MRG_RXBUF`, several chains, whose count goes into `num_buffers`; without it, one chain
//! (a frame too large for it is the backend's `Truncated` drop). With too few buffers the
//! frame stays in the backend until the guest refills ([`PumpOutcome::blocked`], counted in
//! [`PumpStats::no_buffers`]). The backend writes into guest memory directly; the header is
//! written afterwards into the first buffer's first bytes.
//!
//! # Hostile guests
//! Every chain is walked once with bounds ([`crate::guest`]); a bad chain is completed with
//! length 0 and counted, and the pump goes on. A ring whose available index runs more than a
//! queue ahead is a [`PumpError::Ring`]: the device must be reset (`NEEDS_RESET`). No call
//! does more than a fixed budget of work ([`PumpOutcome::more`] says to call again).

mod rx;
mod tx;

pub use rx::{RxConfig, RxPump};
pub use tx::TxPump;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use crate::guest::ChainError;

/// Chains per backend `send` call.
pub const TX_BATCH: usize = 64;
/// Chains (transmit) or frames (receive) one call handles at most.
pub const BUDGET: usize = 256;
/// The largest header layout (v1 with hash report).
pub(super) const MAX_HDR: usize = 20;
/// Segments of a software-segmented frame per `send` call.
pub(super) const SEG_BATCH: usize = 32;

/// Why a pump stopped working.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The ring itself is unusable (an available index more than a queue ahead, a used ring
    /// outside guest memory): the device needs a reset.
    #[error("virtqueue is unusable, the device needs a reset: {0}")]
    Ring(#[from] virtio_queue::Error),
    /// The backend failed as a whole.
    #[error(transparent)]
    Backend(#[from] net_api::Error),
}

/// What a pump call did and what the caller should wait for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpOutcome {
    /// Chains returned to the guest.
    pub completed: u32,
    /// Whether the guest must be interrupted (event index or flags say so).
    pub notify: bool,
    /// Transmit: the backend is full (wait for its TX readiness). Receive: the guest has not
    /// given enough buffers (wait for its kick; do not poll the backend's RX readiness).
    pub blocked: bool,
    /// The budget ran out with work left: call again.
    pub more: bool,
}

/// Counters of one pump. Bad chains are completed with length 0 and counted once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpStats {
    /// Frames handed to the backend (transmit) or to the guest (receive).
    pub frames: u64,
    /// Bytes of those frames, without headers.
    pub bytes: u64,
    /// Frames that went through the software checksum/segmentation path.
    pub software: u64,
    /// Chains with a broken, looping, too long or empty descriptor list.
    pub bad_chains: u64,
    /// Chains with a descriptor of the wrong direction (write-only on transmit, read-only on
    /// receive).
    pub wrong_direction: u64,
    /// Chains pointing outside guest memory.
    pub bad_addresses: u64,
    /// Transmit: headers that contradict their frame, or chains shorter than a header.
    pub bad_headers: u64,
    /// Transmit: frames above [`MAX_FRAME_LEN`].
    pub too_large: u64,
    /// Receive: buffers below the minimum (completed with length 0).
    pub short_buffers: u64,
    /// Receive: frames the software receive filter dropped.
    pub filtered: u64,
    /// Receive: frames from the backend that could not be delivered (malformed header).
    pub rx_errors: u64,
    /// Transmit: times the backend was full.
    pub backend_full: u64,
    /// Receive: times a frame waited in the backend because guest buffers were missing.
    pub no_buffers: u64,
    /// Interrupts asked for.
    pub notifications: u64,
}

impl PumpStats {
    pub(super) fn chain_error(&mut self, e: ChainError) {
        match e {
            ChainError::WrongDirection => self.wrong_direction += 1,
            ChainError::BadAddress => self.bad_addresses += 1,
            ChainError::TooLarge => self.too_large += 1,
            ChainError::Empty | ChainError::Broken | ChainError::TooLong => self.bad_chains += 1,
        }
    }
}

/// Copies bytes from guest slices, skipping `skip` first; returns how many were copied.
pub(super) fn copy_volatile_from<B: vm_memory::bitmap::BitmapSlice>(
    slices: &[vm_memory::VolatileSlice<'_, B>],
    mut skip: usize,
    out: &mut [u8],
) -> usize {
    let mut done = 0;
    for s in slices {
        if done == out.len() {
            break;
        }
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        if let Ok(rest) = s.offset(skip) {
            done += rest.copy_to(&mut out[done..]);
        }
        skip = 0;
    }
    done
}

/// Copies from guest slices into `out`; returns how many bytes were copied.
pub(super) fn copy_volatile<B: vm_memory::bitmap::BitmapSlice>(
    slices: &[vm_memory::VolatileSlice<'_, B>],
    out: &mut [u8],
) -> usize {
    copy_volatile_from(slices, 0, out)
}

/// Where the bytes of `slices[start..]` after the first `n` begin: the slice index and the
/// offset in it.
pub(super) fn skip_volatile<B: vm_memory::bitmap::BitmapSlice>(
    slices: &[vm_memory::VolatileSlice<'_, B>],
    start: usize,
    mut n: usize,
) -> (usize, usize) {
    let mut i = start;
    while i < slices.len() && n >= slices[i].len() {
        n -= slices[i].len();
        i += 1;
    }
    (i, n)
}

/// Returns a chain with `len` bytes written, unless its head index cannot be in the used ring
/// (beyond the queue: the chain was empty and nothing can be returned).
pub(super) fn complete<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    head: u16,
    len: u32,
    done: &mut u32,
) -> Result<(), PumpError> {
    if head < queue.size() {
        queue.add_used(mem, head, len)?;
        *done += 1;
    }
    Ok(())
}

/// Pops the next chain, reporting an available index that ran ahead (instead of hiding it as
/// `pop_descriptor_chain` does).
pub(super) fn pop<'m, M: GuestMemory>(
    queue: &mut Queue,
    mem: &'m M,
) -> Result<Option<virtio_queue::DescriptorChain<&'m M>>, PumpError> {
    Ok(queue.iter(mem)?.next())
}

/// Finishes a call: whether to interrupt the guest.
pub(super) fn finish<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    mut out: PumpOutcome,
    stats: &mut PumpStats,
) -> Result<PumpOutcome, PumpError> {
    if out.completed > 0 && queue.needs_notification(mem)? {
        out.notify = true;
        stats.notifications += 1;
    }
    Ok(out)
}
