//! One queue pair's worker thread in a session: the engine, the two rings, their kick and
//! call fds, and an epoll loop of its own.
//!
//! The session thread owns the protocol and tells the worker what changed through a channel
//! and an eventfd ([`Ctl`]); everything the datapath touches (rings, positions, pumps, the
//! backend's queue pair, the guest memory table) belongs to the worker alone, so there is no
//! lock on the datapath. The loop:
//!
//! - waits on the wake eventfd, the rings' kick eventfds and the backend's readiness fds
//!   (only those the engine wants: the receive fd while guest buffers are held, the transmit
//!   fd while the backend is full; one registration when both are the same fd);
//! - runs the engine for the sides that fired, within a budget; when work is left it comes
//!   back without sleeping (after looking at its fds again), so neither direction starves;
//! - interrupts the frontend through a ring's call eventfd, written non-blocking: a counter
//!   the frontend lets fill up is its fault, reported, never a hang.
//!
//! A kick fd that reaches end of file or gives a short read, a call fd that cannot be
//! written, and a backend that fails are reported to the session ([`Report`]), which ends;
//! a ring the guest broke is stopped with a log line (the frontend restarts it).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use net_api::{Interest, QueuePair};
use net_virtio::engine::{EngineError, PairConfig, PairEngine, Side, Work};
use net_virtio::pump::BUDGET;
use net_virtio::SplitQueue;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::FrontendMemory;

/// What the session tells a worker.
pub(crate) enum Ctl {
    /// A new memory table (`None`: unmapped).
    Memory(Option<Arc<FrontendMemory>>),
    /// The negotiated features, as the engine's configuration, `EVENT_IDX`, and whether the
    /// backend takes receive offloads (it speaks virtio-net headers).
    Config(PairConfig, bool, bool),
    /// A ring starts: its queue (size, guest addresses, base) and kick fd.
    Start {
        side: Side,
        queue: SplitQueue,
        kick: OwnedFd,
    },
    /// A ring stops (`GET_VRING_BASE`): buffers held are given back, the reply says where the
    /// device stopped (`None`: it was not started).
    Stop {
        side: Side,
        reply: SyncSender<Option<u16>>,
    },
    /// A ring's call fd (`None`: no interrupts).
    Call { side: Side, fd: Option<OwnedFd> },
    /// A ring enabled or disabled (`SET_VRING_ENABLE`).
    Enable { side: Side, on: bool },
    /// The session ends.
    Exit,
}

/// What a worker tells the session: a fault that ends it.
#[derive(Debug)]
pub(crate) struct Report {
    /// The queue pair.
    pub pair: u16,
    /// What happened.
    pub why: String,
}

/// While frames flow, the worker's fds are looked at every this many passes.
const EPOLL_EVERY: u32 = 8;

const WAKE: u64 = 0;
const KICK: [u64; 2] = [1, 2];
const BACKEND_RX: u64 = 3;
const BACKEND_TX: u64 = 4;
const BACKEND_BOTH: u64 = 5;

fn slot(side: Side) -> usize {
    match side {
        Side::Rx => 0,
        Side::Tx => 1,
    }
}

#[derive(Default)]
struct Ring {
    queue: Option<SplitQueue>,
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    enabled: bool,
}

impl Ring {
    fn runnable(&self) -> bool {
        self.queue.is_some() && self.enabled
    }
}

/// The epoll registrations of the backend's fds: `(fd, events, token)`.
#[derive(Default)]
struct BackendWatch(Vec<(RawFd, EpollFlags, u64)>);

fn flags(i: Interest) -> EpollFlags {
    match i {
        Interest::Readable => EpollFlags::EPOLLIN,
        Interest::Writable => EpollFlags::EPOLLOUT,
    }
}

/// A worker: see the module.
pub(crate) struct Worker<Q> {
    pair: u16,
    name: String,
    engine: PairEngine<Q>,
    rings: [Ring; 2],
    cfg: Option<(PairConfig, bool)>,
    memory: Option<Arc<FrontendMemory>>,
    epoll: Epoll,
    wake: Arc<EventFd>,
    ctl: Receiver<Ctl>,
    report: Sender<Report>,
    session_wake: Arc<EventFd>,
    watch: BackendWatch,
    /// A fault was reported: the worker only waits for `Exit` now.
    failed: bool,
    /// How long to keep polling the rings after the last frame moved (0: never poll).
    busy_poll: Duration,
    polling: bool,
    /// Frames moved since `last_work` was read.
    recent: bool,
    last_work: Instant,
}

impl<Q: QueuePair> Worker<Q> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pair: u16,
        name: String,
        engine: PairEngine<Q>,
        wake: Arc<EventFd>,
        ctl: Receiver<Ctl>,
        report: Sender<Report>,
        session_wake: Arc<EventFd>,
        busy_poll: Duration,
    ) -> std::io::Result<Worker<Q>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // SAFETY: the eventfd lives in `wake`, which the worker keeps as long as the epoll.
        let fd = unsafe { BorrowedFd::borrow_raw(wake.as_raw_fd()) };
        epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        Ok(Worker {
            pair,
            name,
            engine,
            rings: Default::default(),
            cfg: None,
            memory: None,
            epoll,
            wake,
            ctl,
            report,
            session_wake,
            watch: BackendWatch::default(),
            failed: false,
            busy_poll,
            polling: false,
            recent: false,
            last_work: Instant::now(),
        })
    }

    /// Runs until `Exit`; returns the engine (with the backend's queue pair).
    pub(crate) fn run(mut self) -> PairEngine<Q> {
        loop {
            // A new memory table restarts the inner loop with a table borrowing it.
            let memory = self.memory.clone();
            let regions = memory.as_ref().map(|m| m.regions());
            match self.serve(regions.as_ref()) {
                Next::Exit => break,
                Next::NewMemory => continue,
            }
        }
        self.unwatch_backend();
        let (rx, tx, be) = self.engine.stats();
        debug!(
            "{}: queue pair {} done: receive {rx:?}, transmit {tx:?}, backend {be:?}",
            self.name, self.pair
        );
        self.engine
    }

    /// Does not run: the session hears `why` as this queue pair's fault; returns the engine.
    pub(crate) fn refuse(mut self, why: String) -> PairEngine<Q> {
        self.fault(why);
        self.engine
    }

    fn fault(&mut self, why: String) {
        if self.failed {
            return;
        }
        self.failed = true;
        warn!("{}: queue pair {}: {why}", self.name, self.pair);
        let _ = self.report.send(Report {
            pair: self.pair,
            why,
        });
        let _ = self.session_wake.write(1);
        self.unwatch_backend();
        for r in &mut self.rings {
            if let Some(k) = r.kick.as_ref() {
                let _ = self.epoll.delete(k.as_fd());
            }
        }
    }

    /// The event loop while the memory table is `regions`.
    fn serve(&mut self, regions: Option<&net_virtio::GuestRegions<'_>>) -> Next {
        let mut events = [EpollEvent::empty(); 8];
        // After a new table: the rings get a pass, and messages that came after the table
        // (already signalled on the wake fd, which was read) are taken now.
        let mut pending = Work::BOTH;
        if let Some(next) = self.control(regions, &mut pending) {
            return next;
        }
        // While frames flow, the fds are looked at every few passes only (a system call per
        // burst would cost as much as the burst); idle or blocked, at every pass.
        let mut skip_epoll = 0u32;
        loop {
            let busy = (pending.any() || self.polling) && !self.failed;
            let n = if busy && skip_epoll > 0 {
                skip_epoll -= 1;
                0
            } else {
                let timeout = if busy {
                    EpollTimeout::ZERO
                } else {
                    EpollTimeout::NONE
                };
                match self.epoll.wait(&mut events, timeout) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        self.fault(format!("epoll_wait: {e}"));
                        0
                    }
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    WAKE => {
                        let _ = self.wake.read();
                        match self.control(regions, &mut pending) {
                            Some(next) => return next,
                            None => continue,
                        }
                    }
                    t if KICK.contains(&t) => {
                        let side = if t == KICK[0] { Side::Rx } else { Side::Tx };
                        if self.read_kick(side) {
                            match side {
                                Side::Rx => pending.rx = true,
                                Side::Tx => pending.tx = true,
                            }
                        }
                    }
                    BACKEND_RX => pending.rx = true,
                    BACKEND_TX => pending.tx = true,
                    BACKEND_BOTH => {
                        let e = ev.events();
                        let rx = flags(self.engine.backend().rx_readiness().interest);
                        let tx = flags(self.engine.backend().tx_readiness().interest);
                        let err = e.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP);
                        pending.rx |= err || e.intersects(rx);
                        pending.tx |= err || e.intersects(tx);
                    }
                    _ => {}
                }
            }
            if self.failed {
                pending = Work::default();
                continue;
            }
            if self.polling {
                let p = self.engine.poll_work();
                pending.rx |= p.rx;
                pending.tx |= p.tx;
            }
            let work = Work {
                rx: pending.rx && self.rings[0].runnable(),
                tx: pending.tx && self.rings[1].runnable(),
            };
            pending = Work::default();
            let mut moved = false;
            if let (true, Some(mem)) = (work.any(), regions) {
                let (more, m) = self.work(mem, work);
                pending = more;
                moved = m;
            }
            if moved {
                skip_epoll = EPOLL_EVERY - 1;
            }
            self.poll_or_sleep(&mut pending, moved);
            self.update_backend_watch();
        }
    }

    /// Applies the session's messages; `Some` leaves the inner loop.
    fn control(
        &mut self,
        regions: Option<&net_virtio::GuestRegions<'_>>,
        pending: &mut Work,
    ) -> Option<Next> {
        while let Ok(msg) = self.ctl.try_recv() {
            match msg {
                Ctl::Exit => return Some(Next::Exit),
                Ctl::Memory(m) => {
                    self.memory = m;
                    // Rebuild the table; the rings translate again on their next pass.
                    *pending = Work::BOTH;
                    return Some(Next::NewMemory);
                }
                Ctl::Config(cfg, event_idx, program) => {
                    if program {
                        if let Err(e) = self
                            .engine
                            .backend_mut()
                            .set_rx_offloads(cfg.backend_rx_offloads)
                        {
                            warn!(
                                "{}: could not enable receive offloads {}: {e}",
                                self.name, cfg.backend_rx_offloads
                            );
                        }
                    }
                    for side in [Side::Rx, Side::Tx] {
                        let r = &mut self.rings[slot(side)];
                        if let Some(q) = r.queue.as_mut() {
                            if let Some(mem) = regions {
                                if let Err(e) = self.engine.release(side, q, mem) {
                                    debug!(
                                        "{}: releasing before a new configuration: {e}",
                                        self.name
                                    );
                                }
                            }
                            q.set_event_idx(event_idx);
                            self.engine.start_side(side, &cfg);
                        }
                    }
                    self.cfg = Some((cfg, event_idx));
                    *pending = Work::BOTH;
                }
                Ctl::Start {
                    side,
                    mut queue,
                    kick,
                } => {
                    self.stop_ring(side, regions);
                    if let Some((cfg, event_idx)) = self.cfg {
                        queue.set_event_idx(event_idx);
                        self.engine.start_side(side, &cfg);
                    }
                    let token = KICK[slot(side)];
                    if let Err(e) = self
                        .epoll
                        .add(kick.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
                    {
                        self.fault(format!("watching the {side:?} kick fd: {e}"));
                    }
                    let r = &mut self.rings[slot(side)];
                    r.queue = Some(queue);
                    r.kick = Some(kick);
                    // What the ring already holds is processed now.
                    match side {
                        Side::Rx => pending.rx = true,
                        Side::Tx => pending.tx = true,
                    }
                }
                Ctl::Stop { side, reply } => {
                    let base = self.stop_ring(side, regions);
                    let _ = reply.send(base);
                }
                Ctl::Call { side, fd } => self.rings[slot(side)].call = fd,
                Ctl::Enable { side, on } => {
                    self.rings[slot(side)].enabled = on;
                    if on {
                        *pending = Work::BOTH;
                    }
                }
            }
        }
        None
    }

    /// Busy polling: keeps looking at the rings (without asking the driver to kick) while
    /// frames moved within the last `busy_poll`; then re-arms the driver's notifications (one
    /// more pass) and lets the loop sleep.
    fn poll_or_sleep(&mut self, pending: &mut Work, moved: bool) {
        if moved {
            // The clock is read at the first quiet pass after frames moved, not per burst.
            self.recent = true;
            if self.polling {
                return;
            }
        }
        if self.recent && !moved {
            self.recent = false;
            self.last_work = Instant::now();
        }
        let live = self.rings.iter().any(|r| r.runnable());
        let poll = !self.busy_poll.is_zero()
            && live
            && !self.failed
            && (moved || self.last_work.elapsed() < self.busy_poll);
        if poll != self.polling {
            self.polling = poll;
            self.engine.set_polling(poll);
            if !poll {
                // Re-arm: the pumps enable notifications as they find the rings dry.
                *pending = Work::BOTH;
            }
        }
    }

    /// Stops a ring: buffers held go back, the pump goes, the kick fd is forgotten. Returns
    /// where the device stopped (its next available index), if the ring was started.
    fn stop_ring(
        &mut self,
        side: Side,
        regions: Option<&net_virtio::GuestRegions<'_>>,
    ) -> Option<u16> {
        let r = &mut self.rings[slot(side)];
        let mut q = r.queue.take()?;
        if let Some(k) = r.kick.take() {
            let _ = self.epoll.delete(k.as_fd());
        }
        if let Some(mem) = regions {
            match self.engine.release(side, &mut q, mem) {
                Ok(true) => {
                    let call = self.rings[slot(side)].call.as_ref().map(|c| c.as_raw_fd());
                    if let Some(fd) = call {
                        let _ = signal(fd);
                    }
                }
                Ok(false) => {}
                Err(e) => debug!("{}: releasing the {side:?} ring: {e}", self.name),
            }
        }
        self.engine.stop_side(side);
        Some(q.next_avail())
    }

    /// Reads a kick eventfd; `false` when there was nothing to read.
    fn read_kick(&mut self, side: Side) -> bool {
        let Some(fd) = self.rings[slot(side)].kick.as_ref().map(|k| k.as_raw_fd()) else {
            return false;
        };
        let mut buf = [0u8; 8];
        // SAFETY: reads into our 8-byte buffer from an fd we own.
        let n = unsafe { nix::libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            8 => true,
            0 => {
                self.fault(format!("the {side:?} kick fd reached end of file"));
                false
            }
            n if n > 0 => {
                self.fault(format!(
                    "the {side:?} kick fd gave {n} bytes, not an eventfd's 8"
                ));
                false
            }
            _ => match Errno::last() {
                Errno::EAGAIN | Errno::EINTR => false,
                e => {
                    self.fault(format!("reading the {side:?} kick fd: {e}"));
                    false
                }
            },
        }
    }

    /// Runs the engine on the sides named; returns what is left, and whether anything moved.
    fn work(&mut self, mem: &net_virtio::GuestRegions<'_>, work: Work) -> (Work, bool) {
        if self.rings.iter().any(|r| r.queue.is_none()) {
            // One ring only: run it against a placeholder for the other, never touched.
            return self.work_one(mem, work);
        }
        let [rx, tx] = &mut self.rings;
        let res = match (rx.queue.as_mut(), tx.queue.as_mut()) {
            (Some(rxq), Some(txq)) => self.engine.run(rxq, txq, mem, work, None, BUDGET),
            _ => return (Work::default(), false),
        };
        self.after(res)
    }

    fn work_one(&mut self, mem: &net_virtio::GuestRegions<'_>, work: Work) -> (Work, bool) {
        let mut idle = SplitQueue::new(1);
        let [rx, tx] = &mut self.rings;
        let work = Work {
            rx: work.rx && rx.queue.is_some(),
            tx: work.tx && tx.queue.is_some(),
        };
        let res = match (rx.queue.as_mut(), tx.queue.as_mut()) {
            (Some(rxq), None) => self.engine.run(rxq, &mut idle, mem, work, None, BUDGET),
            (None, Some(txq)) => self.engine.run(&mut idle, txq, mem, work, None, BUDGET),
            _ => return (Work::default(), false),
        };
        self.after(res)
    }

    fn after(&mut self, res: Result<net_virtio::RunOutcome, EngineError>) -> (Work, bool) {
        if self.memory.as_ref().is_some_and(|m| m.faulted()) {
            // What the pass read after the fault was zero pages: nothing of it counts.
            self.fault(
                "the frontend shrank a memory file under the datapath (SIGBUS contained, the session ends)"
                    .into(),
            );
            return (Work::default(), false);
        }
        match res {
            Ok(out) => {
                for (side, notify) in [(Side::Rx, out.notify_rx), (Side::Tx, out.notify_tx)] {
                    if !notify {
                        continue;
                    }
                    if let Some(fd) = self.rings[slot(side)].call.as_ref().map(|c| c.as_raw_fd()) {
                        if let Err(e) = signal(fd) {
                            self.fault(format!("writing the {side:?} call fd: {e}"));
                        }
                    }
                }
                (out.more(), out.completed > 0)
            }
            Err(EngineError::Ring { side, error }) => {
                warn!(
                    "{}: queue pair {}: the guest broke its {side:?} ring ({error}); it is stopped until the frontend restarts it",
                    self.name, self.pair
                );
                let r = &mut self.rings[slot(side)];
                if let Some(k) = r.kick.take() {
                    let _ = self.epoll.delete(k.as_fd());
                }
                r.queue = None;
                self.engine.stop_side(side);
                (Work::default(), false)
            }
            Err(EngineError::Backend(e)) => {
                self.fault(format!("backend: {e}"));
                (Work::default(), false)
            }
        }
    }

    /// Watches the backend fds the engine wants, and only those.
    fn update_backend_watch(&mut self) {
        if self.failed {
            return;
        }
        let (want_rx, want_tx) = self.engine.wants();
        let want_rx = want_rx && self.rings[0].runnable();
        let want_tx = want_tx && self.rings[1].runnable();
        let b = self.engine.backend();
        let (rx, tx) = (b.rx_readiness(), b.tx_readiness());
        let (rfd, tfd) = (rx.fd.as_raw_fd(), tx.fd.as_raw_fd());
        let mut desired: Vec<(RawFd, EpollFlags, u64)> = Vec::with_capacity(2);
        if rfd == tfd {
            let mut f = EpollFlags::empty();
            if want_rx {
                f |= flags(rx.interest);
            }
            if want_tx {
                f |= flags(tx.interest);
            }
            if !f.is_empty() {
                desired.push((rfd, f, BACKEND_BOTH));
            }
        } else {
            if want_rx {
                desired.push((rfd, flags(rx.interest), BACKEND_RX));
            }
            if want_tx {
                desired.push((tfd, flags(tx.interest), BACKEND_TX));
            }
        }
        if desired == self.watch.0 {
            return;
        }
        let old = std::mem::take(&mut self.watch.0);
        for &(fd, _, _) in &old {
            if !desired.iter().any(|d| d.0 == fd) {
                // SAFETY: the fd belongs to the engine's backend, alive for this call.
                let _ = self.epoll.delete(unsafe { BorrowedFd::borrow_raw(fd) });
            }
        }
        for &(fd, f, token) in &desired {
            // SAFETY: as above.
            let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
            let res = if old.iter().any(|o| o.0 == fd) {
                let mut ev = EpollEvent::new(f, token);
                self.epoll.modify(bfd, &mut ev)
            } else {
                self.epoll.add(bfd, EpollEvent::new(f, token))
            };
            if let Err(e) = res {
                self.fault(format!("watching the backend fd {fd}: {e}"));
                return;
            }
        }
        self.watch.0 = desired;
    }

    fn unwatch_backend(&mut self) {
        for (fd, _, _) in std::mem::take(&mut self.watch.0) {
            // SAFETY: the fd belongs to the engine's backend, alive for this call.
            let _ = self.epoll.delete(unsafe { BorrowedFd::borrow_raw(fd) });
        }
    }
}

enum Next {
    Exit,
    NewMemory,
}

/// Interrupts the frontend: adds 1 to a call eventfd, without blocking (the fd was made
/// non-blocking when it was handed over).
fn signal(fd: RawFd) -> Result<(), Errno> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes our 8 bytes to an fd the ring owns.
    let n = unsafe { nix::libc::write(fd, one.as_ptr().cast(), one.len()) };
    if n == 8 {
        Ok(())
    } else if n >= 0 {
        Err(Errno::EIO)
    } else {
        Err(Errno::last())
    }
}
