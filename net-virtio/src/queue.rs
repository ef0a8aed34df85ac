//! A split virtqueue: what the driver configured, where the device is in it, and access to its
//! rings in bursts.
//!
//! [`SplitQueue`] holds a queue's configuration (size, ring addresses, ready, `EVENT_IDX`) and
//! position (`next_avail`, `next_used`), as the transport or the vhost-user frontend sets them.
//! Work goes through a [`Ring`] ([`SplitQueue::ring`]), valid for one pass over guest memory:
//! the rings are translated once into pointers ([`crate::mem::RingPtrs`]) and re-translated only
//! when the memory table changed under them. A `Ring`
//!
//! - reads the available index once per burst (acquire) and the heads it covers, refusing an
//!   index more than a queue ahead ([`RingError::AvailRanAhead`]: the device needs a reset);
//! - walks descriptor chains with every bound checked ([`crate::chain`]);
//! - keeps a shadow used index: elements are written as chains complete, the index is
//!   published once per burst ([`PUBLISH_BURST`] chains, or the end of the pass) with a
//!   release store ([`Ring::publish`]);
//! - decides on notifications once per burst: `EVENT_IDX` (`used_event`, checked over every
//!   chain completed since the last decision) or `VRING_AVAIL_F_NO_INTERRUPT`, and suppresses
//!   the driver's kicks while the device works (`avail_event`, or `VRING_USED_F_NO_NOTIFY`).
//!
//! `virtio-queue`'s `Queue` does the same one guest-memory access at a time; it stays the
//! reference this implementation is tested against (`tests/differential.rs`, the
//! `ring_differential` fuzz target).

use std::num::Wrapping;

use virtio_bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};

use crate::chain::{self, ChainError, Direction, Seg, Walked};
use crate::mem::{GuestRegions, RingPtrs, RingView};

/// Used elements published per release store at most: the driver works on a burst while the
/// device fills the next (a whole ring before the first store would stop it waiting).
pub const PUBLISH_BURST: u16 = 32;

/// Why a queue's rings cannot be used: the driver broke the queue, the device needs a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Not ready, or no size.
    #[error("the queue is not ready")]
    NotReady,
    /// A ring is outside guest memory, across two memory regions, or misaligned.
    #[error(
        "a ring of the queue is outside guest memory, misaligned, or spans two memory regions"
    )]
    BadRings,
    /// The available index is more than a queue ahead of the device.
    #[error("the available index {avail} is more than {size} ahead of {next}")]
    AvailRanAhead {
        /// The driver's index.
        avail: u16,
        /// Where the device is.
        next: u16,
        /// The queue size.
        size: u16,
    },
}

/// Why a queue setting was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not a power of two, zero, or above the maximum.
    #[error("queue size {size}: use a power of two from 1 to {max}")]
    Size {
        /// The size asked for.
        size: u16,
        /// The maximum.
        max: u16,
    },
    /// A ring address that breaks the spec's alignment.
    #[error("{what} at {addr:#x} is misaligned (it must be aligned to {align} bytes)")]
    Alignment {
        /// Which ring.
        what: &'static str,
        /// The address.
        addr: u64,
        /// The alignment required.
        align: u64,
    },
}

/// A split virtqueue's configuration and position (see the module).
#[derive(Debug, Clone)]
pub struct SplitQueue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// Chains completed since the last notification decision.
    num_added: Wrapping<u16>,
    /// The available index last read (heads below it may be taken without reading it again).
    avail_seen: Wrapping<u16>,
    ptrs: Option<RingPtrs>,
}

impl SplitQueue {
    /// A queue of at most `max_size` entries (its size until the driver sets another).
    pub fn new(max_size: u16) -> SplitQueue {
        SplitQueue {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
            event_idx: false,
            next_avail: Wrapping(0),
            next_used: Wrapping(0),
            num_added: Wrapping(0),
            avail_seen: Wrapping(0),
            ptrs: None,
        }
    }

    /// Back to the state after [`SplitQueue::new`].
    pub fn reset(&mut self) {
        *self = SplitQueue::new(self.max_size);
    }

    /// The largest size.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Sets the size: a power of two up to the maximum.
    pub fn set_size(&mut self, size: u16) -> Result<(), ConfigError> {
        if size == 0 || !size.is_power_of_two() || size > self.max_size {
            return Err(ConfigError::Size {
                size,
                max: self.max_size,
            });
        }
        self.size = size;
        self.ptrs = None;
        Ok(())
    }

    /// Sets the three ring addresses (descriptor table aligned to 16, available ring to 2,
    /// used ring to 4).
    pub fn set_addresses(&mut self, desc: u64, avail: u64, used: u64) -> Result<(), ConfigError> {
        for (what, addr, align) in [
            ("descriptor table", desc, 16),
            ("available ring", avail, 2),
            ("used ring", used, 4),
        ] {
            if addr % align != 0 {
                return Err(ConfigError::Alignment { what, addr, align });
            }
        }
        (self.desc, self.avail, self.used) = (desc, avail, used);
        self.ptrs = None;
        Ok(())
    }

    /// The ring addresses: descriptor table, available ring, used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// Marks the queue ready (or not).
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Whether the driver marked the queue ready.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Whether `VIRTIO_RING_F_EVENT_IDX` is in force.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Turns `VIRTIO_RING_F_EVENT_IDX` on or off.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// The next available entry the device will take.
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// The next used entry the device will write.
    pub fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Sets where the device starts taking chains (vhost-user's `SET_VRING_BASE`, a restore).
    pub fn set_next_avail(&mut self, idx: u16) {
        self.next_avail = Wrapping(idx);
        self.avail_seen = Wrapping(idx);
    }

    /// Sets where the device starts writing used elements.
    pub fn set_next_used(&mut self, idx: u16) {
        self.next_used = Wrapping(idx);
        self.num_added = Wrapping(0);
    }

    /// Whether the rings are ready and lie in `mem` (aligned, each in one region).
    pub fn is_valid(&self, mem: &GuestRegions<'_>) -> bool {
        self.ready
            && mem
                .ring_ptrs(self.size, self.desc, self.avail, self.used)
                .is_some()
    }

    /// Access to the rings in `mem` for one pass (translating them if the memory changed).
    pub fn ring<'q, 'm>(
        &'q mut self,
        mem: &'q GuestRegions<'m>,
    ) -> Result<Ring<'q, 'm>, RingError> {
        if !self.ready || self.size == 0 {
            return Err(RingError::NotReady);
        }
        let view = match self.ptrs.as_ref().and_then(|p| mem.ring_view(p)) {
            Some(v) => v,
            None => {
                let p = mem
                    .ring_ptrs(self.size, self.desc, self.avail, self.used)
                    .ok_or(RingError::BadRings)?;
                self.ptrs = Some(p);
                mem.ring_view(&p).ok_or(RingError::BadRings)?
            }
        };
        Ok(Ring {
            published: self.next_used,
            q: self,
            view,
            mem,
        })
    }
}

/// A queue's rings during one pass (see the module). Publishes what it completed when dropped.
pub struct Ring<'q, 'm> {
    q: &'q mut SplitQueue,
    view: RingView<'q>,
    mem: &'q GuestRegions<'m>,
    published: Wrapping<u16>,
}

impl Drop for Ring<'_, '_> {
    fn drop(&mut self) {
        self.publish();
    }
}

impl<'q, 'm> Ring<'q, 'm> {
    /// The queue size.
    pub fn size(&self) -> u16 {
        self.q.size
    }

    /// The guest memory of this pass.
    pub fn memory(&self) -> &'q GuestRegions<'m> {
        self.mem
    }

    /// The queue's position and settings.
    pub fn queue(&self) -> &SplitQueue {
        self.q
    }

    /// Reads the available index; `Err` when it ran more than a queue ahead. Returns how many
    /// chains wait.
    pub fn refresh(&mut self) -> Result<u16, RingError> {
        let avail = Wrapping(self.view.avail_idx());
        let pending = (avail - self.q.next_avail).0;
        if pending > self.q.size {
            return Err(RingError::AvailRanAhead {
                avail: avail.0,
                next: self.q.next_avail.0,
                size: self.q.size,
            });
        }
        self.q.avail_seen = avail;
        Ok(pending)
    }

    /// The next chain's head index, or `None` when the ring is empty. The available index is
    /// read again only when the heads seen last time are used up.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<u16>, RingError> {
        if self.q.next_avail == self.q.avail_seen && self.refresh()? == 0 {
            return Ok(None);
        }
        let head = self.view.avail_entry(self.q.next_avail.0);
        self.q.next_avail += Wrapping(1);
        Ok(Some(head))
    }

    /// Gives the last `n` chains taken back to the ring (they will be taken again, in order).
    pub fn rewind(&mut self, n: u16) {
        self.q.next_avail -= Wrapping(n);
    }

    /// Descriptor `i` of the queue's own table (`None` beyond the queue).
    #[inline]
    pub fn desc(&self, i: u16) -> Option<crate::mem::Descriptor> {
        self.view.desc(i)
    }

    /// Walks the chain at `head` into `segs`; see [`chain::walk`].
    #[inline]
    pub fn walk(
        &self,
        head: u16,
        dir: Direction,
        max_bytes: u64,
        segs: &mut Vec<Seg>,
    ) -> Result<Walked, ChainError> {
        chain::walk(&self.view, self.mem, head, dir, max_bytes, segs)
    }

    /// Returns a chain to the driver with `len` bytes written. Nothing is visible to the
    /// driver before [`Ring::publish`] (or the end of the pass). A head beyond the queue
    /// cannot be in the used ring and is ignored; returns whether it was added.
    #[inline]
    pub fn add_used(&mut self, head: u16, len: u32) -> bool {
        if head >= self.q.size {
            return false;
        }
        self.view
            .set_used_elem(self.q.next_used.0, u32::from(head), len);
        self.q.next_used += Wrapping(1);
        self.q.num_added += Wrapping(1);
        if (self.q.next_used - self.published).0 >= PUBLISH_BURST {
            self.publish();
        }
        true
    }

    /// Publishes the used index (one release store) if chains completed since the last time.
    #[inline]
    pub fn publish(&mut self) {
        if self.published != self.q.next_used {
            self.view.publish_used(self.q.next_used.0);
            self.published = self.q.next_used;
        }
    }

    /// Publishes, then decides whether the driver wants an interrupt for what completed since
    /// the last decision: `used_event` with `EVENT_IDX`, else the available ring's
    /// `VRING_AVAIL_F_NO_INTERRUPT`.
    pub fn needs_notification(&mut self) -> bool {
        self.publish();
        if self.q.num_added.0 == 0 {
            return false;
        }
        // Our used-ring writes before the driver's fields we read next.
        self.view.full_fence();
        let added = std::mem::replace(&mut self.q.num_added, Wrapping(0));
        if self.q.event_idx {
            let used = self.q.next_used;
            let old = used - added;
            let event = Wrapping(self.view.used_event());
            // vring_need_event: used_event in [old, used).
            (used - event - Wrapping(1)) < (used - old)
        } else {
            self.view.avail_flags() & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
        }
    }

    /// Asks the driver not to kick while the device works (without `EVENT_IDX`: the used
    /// ring's `NO_NOTIFY` flag; with it, `avail_event` is simply left behind).
    pub fn disable_notification(&mut self) {
        if !self.q.event_idx {
            let flags = self.view.used_flags();
            if flags & VRING_USED_F_NO_NOTIFY as u16 == 0 {
                self.view
                    .set_used_flags(flags | VRING_USED_F_NO_NOTIFY as u16);
            }
        }
    }

    /// Asks the driver to kick for the next chain, then looks once more: returns `true` when
    /// chains arrived meanwhile (the caller should go on, with notifications disabled again).
    pub fn enable_notification(&mut self) -> Result<bool, RingError> {
        if self.q.event_idx {
            self.view.set_avail_event(self.q.next_avail.0);
        } else {
            let flags = self.view.used_flags();
            self.view
                .set_used_flags(flags & !(VRING_USED_F_NO_NOTIFY as u16));
        }
        // Our write before the driver's index we read next (the driver does the mirror).
        self.view.full_fence();
        Ok(self.refresh()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{guest_memory, MockQueue};
    use vm_memory::GuestAddress;

    #[test]
    fn settings_are_checked() {
        let mut q = SplitQueue::new(256);
        assert!(q.set_size(0).is_err());
        assert!(q.set_size(3).is_err());
        assert!(q.set_size(512).is_err());
        assert!(q.set_size(128).is_ok());
        assert!(q.set_addresses(8, 0, 0).is_err());
        assert!(q.set_addresses(0, 1, 0).is_err());
        assert!(q.set_addresses(0, 2, 2).is_err());
        assert!(q.set_addresses(0x1000, 0x2000, 0x3000).is_ok());
        q.reset();
        assert_eq!((q.size(), q.addresses()), (256, (0, 0, 0)));
    }

    #[test]
    fn heads_come_in_order_and_a_runaway_index_is_refused() {
        let mem = guest_memory(1 << 20);
        let mut mq = MockQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = SplitQueue::new(8);
        q.set_addresses(mq.desc.0, mq.avail.0, mq.used.0)
            .expect("addresses");
        q.set_ready(true);
        let regions = GuestRegions::from_memory(&mem).expect("regions");
        for head in [3, 5, 7] {
            mq.publish(&mem, head);
        }
        let mut r = q.ring(&regions).expect("ring");
        assert_eq!(r.pop(), Ok(Some(3)));
        assert_eq!(r.pop(), Ok(Some(5)));
        r.rewind(1);
        assert_eq!(r.pop(), Ok(Some(5)));
        assert_eq!(r.pop(), Ok(Some(7)));
        assert_eq!(r.pop(), Ok(None));
        assert!(r.add_used(7, 10));
        assert!(!r.add_used(8, 10), "a head beyond the queue");
        drop(r);
        assert_eq!(mq.used_idx(&mem), 1);
        mq.set_avail_idx(&mem, 3 + 9);
        let mut r = q.ring(&regions).expect("ring");
        assert!(matches!(r.pop(), Err(RingError::AvailRanAhead { .. })));
    }
}
