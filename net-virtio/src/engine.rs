//! The queue-pair engine: one virtio-net queue pair over one backend queue pair, the same code
//! inside a VMM ([`crate::NetDevice`]) and inside the vhost-user daemon (one engine per pair,
//! one session per frontend).
//!
//! An engine owns the backend's queue pair and the two pumps; the rings ([`SplitQueue`]) stay
//! with their owner (the device's transport, the daemon's worker) and are lent for each
//! [`PairEngine::run`], with the guest memory of that pass. It decides
//!
//! - **the work**: [`PairEngine::run`] moves frames for the sides the caller names (a kick or
//!   backend readiness on that side), alternating slices of [`SLICE`] chains or frames between
//!   transmit and receive until both are done or the budget is spent, so a guest flooding its
//!   transmit queue cannot starve its own receive queue, and reports what is left
//!   ([`RunOutcome::more_tx`], [`RunOutcome::more_rx`]): the caller comes back after the
//!   other fds of its loop had a turn;
//! - **the interrupts**: one decision per side and pass ([`RunOutcome::notify_tx`],
//!   [`RunOutcome::notify_rx`]), from `EVENT_IDX` or the driver's flags;
//! - **what to watch** ([`PairEngine::wants`]): the backend's receive fd only while the pump
//!   holds guest buffers to receive into, its transmit fd only while the backend is full, so a
//!   level-triggered loop never spins.
//!
//! Configuration follows the guest's features: [`PairConfig::new`] computes the header layout,
//! the translators and the largest frame once, [`PairEngine::start`] builds the pumps,
//! [`PairEngine::stop`] drops them (a reset, a vhost-user `GET_VRING_BASE`).

use net_api::{Capabilities, OffloadSet, QueuePair, QueueStats, RxFilter};
use virtio_bindings::virtio_net as vn;

use crate::codec::HdrLayout;
use crate::features::{bit, guest_offloads, rx_plan};
use crate::mem::GuestRegions;
use crate::pump::{PumpError, PumpStats, RxConfig, RxPump, TxPump};
use crate::queue::{RingError, SplitQueue};
use crate::translate::{RxTranslator, TxTranslator};

/// Chains (transmit) or frames (receive) per turn of a side in [`PairEngine::run`].
pub const SLICE: usize = 64;

/// Which side of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The receive queue (device to driver).
    Rx,
    /// The transmit queue (driver to device).
    Tx,
}

/// The sides to work on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Run the receive side.
    pub rx: bool,
    /// Run the transmit side.
    pub tx: bool,
}

impl Work {
    /// Both sides.
    pub const BOTH: Work = Work { rx: true, tx: true };
    /// The receive side.
    pub const RX: Work = Work {
        rx: true,
        tx: false,
    };
    /// The transmit side.
    pub const TX: Work = Work {
        rx: false,
        tx: true,
    };

    /// Whether any side is named.
    pub fn any(&self) -> bool {
        self.rx || self.tx
    }
}

/// What a pass did, and what the caller does next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// Interrupt the driver for the receive queue.
    pub notify_rx: bool,
    /// Interrupt the driver for the transmit queue.
    pub notify_tx: bool,
    /// The budget ended with receive work left: run the receive side again soon.
    pub more_rx: bool,
    /// The budget ended with transmit work left: run the transmit side again soon.
    pub more_tx: bool,
    /// Chains returned to the driver on both sides.
    pub completed: u32,
}

impl RunOutcome {
    /// Work left on either side, as a [`Work`].
    pub fn more(&self) -> Work {
        Work {
            rx: self.more_rx,
            tx: self.more_tx,
        }
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The driver broke a ring: the device needs a reset (a vhost-user session ends).
    #[error("{side:?} queue: {error}")]
    Ring {
        /// Which side.
        side: Side,
        /// What is wrong with it.
        error: RingError,
    },
    /// The backend failed as a whole.
    #[error(transparent)]
    Backend(#[from] net_api::Error),
}

impl EngineError {
    fn from_pump(side: Side, e: PumpError) -> EngineError {
        match e {
            PumpError::Ring(error) => EngineError::Ring { side, error },
            PumpError::Backend(e) => EngineError::Backend(e),
        }
    }
}

/// What the guest's features make of a queue pair (computed once per negotiation).
#[derive(Debug, Clone, Copy)]
pub struct PairConfig {
    /// The header layout.
    pub layout: HdrLayout,
    /// `VIRTIO_NET_F_MRG_RXBUF`.
    pub mergeable: bool,
    /// Transmit: what the backend takes as it is, the rest in software.
    pub tx: TxTranslator,
    /// Receive: what the guest accepts, the rest in software.
    pub rx: RxTranslator,
    /// The receive offloads to program into the backend.
    pub backend_rx_offloads: OffloadSet,
    /// The largest frame the backend may deliver with those offloads.
    pub max_frame: usize,
}

impl PairConfig {
    /// The configuration for a backend with `caps` and `mtu`, the driver having acked
    /// `acked`, with the receive offloads `guest_rx` (`GUEST_*` feature bits: the acked ones,
    /// or what `CTRL_GUEST_OFFLOADS` set).
    pub fn new(caps: &Capabilities, mtu: u16, acked: u64, guest_rx: u64) -> PairConfig {
        let wanted = guest_offloads(guest_rx);
        let (enable, max_frame) = rx_plan(caps, wanted, mtu);
        PairConfig {
            layout: HdrLayout::from_features(acked),
            mergeable: acked & bit(vn::VIRTIO_NET_F_MRG_RXBUF) != 0,
            tx: TxTranslator::new(caps),
            rx: RxTranslator::new(wanted),
            backend_rx_offloads: enable,
            max_frame,
        }
    }
}

/// One queue pair's engine (see the module).
#[derive(Debug)]
pub struct PairEngine<Q> {
    backend: Q,
    rx: Option<RxPump>,
    tx: Option<TxPump>,
    attached: bool,
    polling: bool,
    /// Counters of pumps dropped by earlier stops: (rx, tx).
    earlier: (PumpStats, PumpStats),
}

fn add(a: &mut PumpStats, b: PumpStats) {
    a.frames += b.frames;
    a.bytes += b.bytes;
    a.software += b.software;
    a.bad_chains += b.bad_chains;
    a.wrong_direction += b.wrong_direction;
    a.bad_addresses += b.bad_addresses;
    a.bad_headers += b.bad_headers;
    a.too_large += b.too_large;
    a.short_buffers += b.short_buffers;
    a.filtered += b.filtered;
    a.rx_errors += b.rx_errors;
    a.backend_full += b.backend_full;
    a.no_buffers += b.no_buffers;
    a.notifications += b.notifications;
}

impl<Q: QueuePair> PairEngine<Q> {
    /// An engine over a backend queue pair (attached or not, as the backend opened it: say
    /// which with `attached`). No pumps until [`PairEngine::start`].
    pub fn new(backend: Q, attached: bool) -> PairEngine<Q> {
        PairEngine {
            backend,
            rx: None,
            tx: None,
            attached,
            polling: false,
            earlier: Default::default(),
        }
    }

    /// Busy polling: while on, a ring that runs dry (transmit) or a receive queue short of
    /// buffers does not ask the driver to kick, and the caller runs the engine again soon
    /// ([`PairEngine::poll_work`] says which sides are worth it). Turning it off, then one
    /// more [`PairEngine::run`], re-arms the driver's notifications before the caller sleeps.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
        if let Some(p) = self.tx.as_mut() {
            p.set_polling(on);
        }
        if let Some(p) = self.rx.as_mut() {
            p.set_polling(on);
        }
    }

    /// The sides a busy poll looks at without a system call: transmit (its ring), and
    /// receive while it waits for guest buffers (its ring; the backend's fd is watched
    /// otherwise).
    pub fn poll_work(&self) -> Work {
        Work {
            tx: self.tx.is_some(),
            rx: self.rx.as_ref().is_some_and(|r| r.is_waiting()),
        }
    }

    /// The backend's queue pair.
    pub fn backend(&self) -> &Q {
        &self.backend
    }

    /// The backend's queue pair, to configure it (filters, offloads).
    pub fn backend_mut(&mut self) -> &mut Q {
        &mut self.backend
    }

    /// Gives the backend's queue pair back.
    pub fn into_backend(self) -> Q {
        self.backend
    }

    /// Whether the backend's queue pair is attached.
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// Attaches or detaches the backend's queue pair (`TUNSETQUEUE`); nothing happens when it
    /// is in that state already.
    pub fn set_attached(&mut self, attached: bool) -> Result<(), net_api::Error> {
        if self.attached != attached {
            self.backend.set_attached(attached)?;
            self.attached = attached;
        }
        Ok(())
    }

    /// Builds the pumps for a negotiation (both sides start afresh: nothing held).
    pub fn start(&mut self, cfg: &PairConfig) {
        self.start_side(Side::Tx, cfg);
        self.start_side(Side::Rx, cfg);
    }

    /// Builds the pump of one side only (a vhost-user ring that starts after the other).
    pub fn start_side(&mut self, side: Side, cfg: &PairConfig) {
        self.stop_side(side);
        match side {
            Side::Tx => {
                let mut p = TxPump::new(cfg.layout, cfg.tx);
                p.set_polling(self.polling);
                self.tx = Some(p);
            }
            Side::Rx => {
                let mut p = RxPump::new(RxConfig {
                    layout: cfg.layout,
                    mergeable: cfg.mergeable,
                    max_frame: cfg.max_frame,
                    translator: cfg.rx,
                });
                p.set_polling(self.polling);
                self.rx = Some(p);
            }
        }
    }

    /// Changes the receive offloads (`CTRL_GUEST_OFFLOADS`).
    pub fn reconfigure_rx(&mut self, cfg: &PairConfig) {
        if let Some(rx) = self.rx.as_mut() {
            rx.reconfigure(cfg.rx, cfg.max_frame);
        }
    }

    /// Drops both pumps (what they held is forgotten: call [`PairEngine::release`] first to
    /// give buffers back). Counters are kept.
    pub fn stop(&mut self) {
        self.stop_side(Side::Rx);
        self.stop_side(Side::Tx);
    }

    /// Drops one side's pump.
    pub fn stop_side(&mut self, side: Side) {
        match side {
            Side::Rx => {
                if let Some(p) = self.rx.take() {
                    add(&mut self.earlier.0, p.stats());
                }
            }
            Side::Tx => {
                if let Some(p) = self.tx.take() {
                    add(&mut self.earlier.1, p.stats());
                }
            }
        }
    }

    /// Whether a side has a pump.
    pub fn started(&self, side: Side) -> bool {
        match side {
            Side::Rx => self.rx.is_some(),
            Side::Tx => self.tx.is_some(),
        }
    }

    /// Which backend fds to watch now: (receive, transmit).
    pub fn wants(&self) -> (bool, bool) {
        (
            self.rx.as_ref().is_some_and(|r| !r.is_waiting()),
            self.tx.as_ref().is_some_and(|t| t.is_blocked()),
        )
    }

    /// Moves frames on the named sides (see the module) within `budget` chains or frames.
    /// `filter` is applied to received frames unless `None`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        rx_queue: &mut SplitQueue,
        tx_queue: &mut SplitQueue,
        mem: &GuestRegions<'_>,
        work: Work,
        filter: Option<&RxFilter>,
        budget: usize,
    ) -> Result<RunOutcome, EngineError> {
        let mut out = RunOutcome::default();
        let mut left = budget.max(1);
        let mut todo = work;
        todo.rx &= self.rx.is_some();
        todo.tx &= self.tx.is_some();
        while todo.any() && left > 0 {
            // Both sides: alternate slices. One side: the whole budget in one burst.
            let share = if todo.rx && todo.tx {
                SLICE.min(left.div_ceil(2))
            } else {
                left
            };
            if todo.tx {
                if let Some(tx) = self.tx.as_mut() {
                    let o = tx
                        .process(tx_queue, mem, &mut self.backend, share)
                        .map_err(|e| EngineError::from_pump(Side::Tx, e))?;
                    out.notify_tx |= o.notify;
                    out.completed += o.completed;
                    todo.tx = o.more;
                    left = left.saturating_sub(share);
                }
            }
            if todo.rx {
                if let Some(rx) = self.rx.as_mut() {
                    let o = rx
                        .process(rx_queue, mem, &mut self.backend, filter, share)
                        .map_err(|e| EngineError::from_pump(Side::Rx, e))?;
                    out.notify_rx |= o.notify;
                    out.completed += o.completed;
                    todo.rx = o.more;
                    left = left.saturating_sub(share);
                }
            }
        }
        out.more_rx = todo.rx;
        out.more_tx = todo.tx;
        Ok(out)
    }

    /// Gives back every guest buffer a side's pump holds (receive buffers with length 0; a
    /// half-sent transmit frame, dropped and counted), so the queue's position describes them
    /// all: before a snapshot, or vhost-user's `GET_VRING_BASE`. Returns whether to interrupt.
    pub fn release(
        &mut self,
        side: Side,
        queue: &mut SplitQueue,
        mem: &GuestRegions<'_>,
    ) -> Result<bool, EngineError> {
        let out = match side {
            Side::Rx => match self.rx.as_mut() {
                Some(p) => p.release(queue, mem),
                None => return Ok(false),
            },
            Side::Tx => match self.tx.as_mut() {
                Some(p) => p.release(queue, mem),
                None => return Ok(false),
            },
        };
        out.map(|o| o.notify)
            .map_err(|e| EngineError::from_pump(side, e))
    }

    /// The counters: receive pump, transmit pump (both since the engine was made), backend.
    pub fn stats(&self) -> (PumpStats, PumpStats, QueueStats) {
        let mut rx = self.earlier.0;
        let mut tx = self.earlier.1;
        if let Some(p) = &self.rx {
            add(&mut rx, p.stats());
        }
        if let Some(p) = &self.tx {
            add(&mut tx, p.stats());
        }
        (rx, tx, self.backend.stats())
    }
}
