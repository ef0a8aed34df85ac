//! The transmit and receive pumps: virtqueue chains in, backend frames out, and back.
//!
//! A pump owns no queue and no backend: each call gets the [`SplitQueue`], the guest memory as a
//! region table and the backend queue pair. The queue-pair engine ([`crate::engine`]) drives
//! them, in a VMM's device ([`crate::device::NetDevice`]) and in the vhost-user daemon alike.
//!
//! # Transmit
//! Chains are popped in batches of [`TX_BATCH`]. The header is copied out (it is small and the
//! device must not read it twice); the frame goes to the backend as `IoBuf`s of guest memory,
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
//! Every chain is walked once with bounds ([`crate::chain`]); a bad chain is completed with
//! length 0 and counted, and the pump goes on. A ring whose available index runs more than a
//! queue ahead is a [`PumpError::Ring`]: the device must be reset (`NEEDS_RESET`). No call
//! does more than the budget it is given ([`PumpOutcome::more`] says to call again).
//!
//! # Bursts
//! The available index is read once per burst, used elements are published with one release
//! store and the notification is decided once per call ([`crate::queue::Ring`]); no call
//! allocates per frame: the buffers of a batch live in vectors the pump keeps.

mod rx;
mod tx;

pub use rx::{RxConfig, RxPump};
pub use tx::TxPump;

use crate::chain::ChainError;
use crate::queue::{Ring, RingError};

/// Chains per backend `send` call.
pub const TX_BATCH: usize = 64;
/// Chains (transmit) or frames (receive) one call handles at most by default.
pub const BUDGET: usize = 256;
/// The largest header layout (v1 with hash report).
pub(super) const MAX_HDR: usize = 20;
/// Segments of a software-segmented frame per `send` call.
pub(super) const SEG_BATCH: usize = 32;

/// Why a pump stopped working.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The ring itself is unusable (an available index more than a queue ahead, a ring
    /// outside guest memory): the device needs a reset.
    #[error("virtqueue is unusable, the device needs a reset: {0}")]
    Ring(#[from] RingError),
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
    /// Transmit: frames above [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN).
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

    /// Chains refused for any reason.
    pub fn refused(&self) -> u64 {
        self.bad_chains
            + self.wrong_direction
            + self.bad_addresses
            + self.bad_headers
            + self.too_large
            + self.short_buffers
    }
}

/// Finishes a call: publishes the used index and decides whether to interrupt the guest.
pub(super) fn finish(
    ring: &mut Ring<'_, '_>,
    mut out: PumpOutcome,
    stats: &mut PumpStats,
) -> PumpOutcome {
    if ring.needs_notification() {
        out.notify = true;
        stats.notifications += 1;
    }
    out
}

/// An empty vector of another lifetime, keeping the allocation: the pumps keep their batch
/// vectors (of guest buffers, which borrow one pass's memory) across calls this way. In-place
/// collection reuses the buffer because the element layouts are the same.
pub(super) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| -> U { unreachable!("the vector is empty") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use net_api::IoBuf;

    #[test]
    fn recycling_keeps_the_allocation() {
        let bytes = [0u8; 4];
        let mut v: Vec<IoBuf<'_>> = Vec::with_capacity(100);
        v.push(IoBuf::from_slice(&bytes));
        let p = v.as_ptr() as usize;
        let w: Vec<IoBuf<'static>> = recycle(v);
        assert!(w.is_empty());
        assert_eq!((w.as_ptr() as usize, w.capacity()), (p, 100));
    }
}
