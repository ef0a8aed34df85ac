//! A backend whose host-side link can go away and come back, for a daemon that outlives it.
//!
//! [`Relink`] wraps a backend. Its queue pairs ([`RelinkQueue`]) pass every call through to
//! the backend's own queue pair while the link is there. When the link is gone (a queue
//! pair's call failed with [`Error::Disconnected`], as a deleted TAP's does, or the
//! supervisor saw it in the link events and called [`Handle::lose`], as for a macvtap whose
//! lower link went), each queue pair drops its queue at its next call: receive finds nothing,
//! frames sent are consumed and counted as [`DropReason::LinkDown`] (a NIC without carrier
//! does the same), and the readiness fds go quiet, so no loop spins on a dead fd. The
//! supervisor opens the backend again and hands it over ([`Handle::restore`]); each queue
//! pair opens its queue on its next call, with the offloads, filter and attachment it had.
//!
//! The readiness fds are epoll fds of the queue pair's own, holding the current queue's fd
//! and a wake eventfd the supervisor writes when the backend changes: they stay the same fds
//! while queues come and go, so a caller's epoll registration stays right, and a caller
//! asleep on them wakes up to notice the change.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{info, warn};
use net_api::{
    Backend, Capabilities, DropReason, Error, Interest, IoBufMut, OffloadSet, QueuePair,
    QueueStats, Readiness, Result, RxFilter, RxFrame, TxFrame,
};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// See the module.
pub struct Relink<B: Backend> {
    shared: Arc<Shared<B>>,
    name: String,
    caps: Capabilities,
}

struct Shared<B: Backend> {
    name: String,
    /// The backend while its link is there.
    current: Mutex<Option<B>>,
    /// Changes (under `current`'s lock) whenever `current` does.
    generation: AtomicU64,
    /// Per queue pair: written when `current` changes.
    wakes: Vec<EventFd>,
    /// Per queue pair: open now.
    open: Vec<AtomicBool>,
    /// Written by a queue pair that found the link gone.
    lost: EventFd,
    /// The latest generation a queue pair found gone: a report about a backend already
    /// replaced is stale (the supervisor acted on the link events first) and must not take
    /// the new one away.
    lost_generation: AtomicU64,
}

impl<B: Backend + Send> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, Option<B>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, current: &mut MutexGuard<'_, Option<B>>, to: Option<B>) -> Option<B> {
        let old = std::mem::replace(&mut **current, to);
        self.generation.fetch_add(1, Ordering::AcqRel);
        for w in &self.wakes {
            let _ = w.write(1);
        }
        old
    }
}

fn eventfd() -> std::io::Result<EventFd> {
    Ok(EventFd::from_flags(
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?)
}

impl<B: Backend + Send> Relink<B> {
    /// Wraps `backend`; the [`Handle`] is the supervisor's.
    pub fn new(backend: B) -> std::io::Result<(Relink<B>, Handle<B>)> {
        let caps = backend.capabilities();
        let name = backend.name().to_string();
        let n = usize::from(caps.max_queue_pairs);
        let shared = Arc::new(Shared {
            name: name.clone(),
            current: Mutex::new(Some(backend)),
            generation: AtomicU64::new(0),
            wakes: (0..n).map(|_| eventfd()).collect::<std::io::Result<_>>()?,
            open: (0..n).map(|_| AtomicBool::new(false)).collect(),
            lost: eventfd()?,
            lost_generation: AtomicU64::new(u64::MAX),
        });
        let handle = Handle {
            shared: Arc::clone(&shared),
        };
        Ok((Relink { shared, name, caps }, handle))
    }
}

impl<B: Backend + Send> Backend for Relink<B> {
    type Queue = RelinkQueue<B>;

    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }

    fn open_queue_pair(&mut self, index: u16) -> Result<RelinkQueue<B>> {
        let open = net_api::error::claim_queue(&self.shared.open, &self.name, index)?;
        let io = |e: nix::Error| Error::Io {
            op: "setting up a queue pair's readiness",
            target: format!("{} queue {index}", self.name),
            source: e.into(),
        };
        let wake = self.shared.wakes[usize::from(index)].as_fd();
        let ep = || -> std::result::Result<Epoll, nix::Error> {
            let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
            ep.add(wake, EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
            Ok(ep)
        };
        let (rx_ep, tx_ep) = match ep().and_then(|rx| Ok((rx, ep()?))) {
            Ok(eps) => eps,
            Err(e) => {
                open.store(false, Ordering::Release);
                return Err(io(e));
            }
        };
        let mut q = RelinkQueue {
            index,
            shared: Arc::clone(&self.shared),
            inner: None,
            watched: [None; 2],
            generation: u64::MAX,
            rx_ep,
            tx_ep,
            offloads: None,
            filter: None,
            filter_applied: false,
            attached: true,
            gone_reported: false,
            base: QueueStats::default(),
        };
        // The generation first: a change after it is followed at the next call. The first
        // open's errors are the caller's to see.
        q.generation = self.shared.generation.load(Ordering::Acquire);
        q.open_inner(true)?;
        Ok(q)
    }
}

/// The supervisor's side of a [`Relink`]: takes the backend away and hands a new one over.
pub struct Handle<B: Backend> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend + Send> Handle<B> {
    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The link is gone: queue pairs stop using the backend at their next call (they are
    /// woken). Returns the backend, for the caller to drop.
    pub fn lose(&self) -> Option<B> {
        let mut cur = self.shared.lock();
        if cur.is_none() {
            return None;
        }
        self.shared.changed(&mut cur, None)
    }

    /// The link is back: queue pairs open their queues on `backend` at their next call.
    pub fn restore(&self, backend: B) {
        let mut cur = self.shared.lock();
        let _ = self.shared.changed(&mut cur, Some(backend));
    }

    /// Whether there is a backend now.
    pub fn is_up(&self) -> bool {
        self.shared.lock().is_some()
    }

    /// Runs `f` on the backend, if there is one.
    pub fn with<R>(&self, f: impl FnOnce(&mut B) -> R) -> Option<R> {
        self.shared.lock().as_mut().map(f)
    }

    /// Readable when a queue pair found the link gone.
    pub fn lost_fd(&self) -> BorrowedFd<'_> {
        self.shared.lost.as_fd()
    }

    /// Whether a queue pair found the current backend's link gone since the last call
    /// (reports about a backend replaced since are stale, and ignored).
    pub fn take_lost(&self) -> bool {
        if self.shared.lost.read().is_err() {
            return false;
        }
        let cur = self.shared.lock();
        cur.is_some()
            && self.shared.lost_generation.load(Ordering::Acquire)
                == self.shared.generation.load(Ordering::Acquire)
    }
}

/// A queue pair of a [`Relink`] (see the module).
pub struct RelinkQueue<B: Backend> {
    index: u16,
    shared: Arc<Shared<B>>,
    inner: Option<B::Queue>,
    /// The inner queue's fds in `rx_ep` and `tx_ep`.
    watched: [Option<RawFd>; 2],
    generation: u64,
    rx_ep: Epoll,
    tx_ep: Epoll,
    offloads: Option<OffloadSet>,
    filter: Option<RxFilter>,
    filter_applied: bool,
    attached: bool,
    /// The loss was logged (once per loss).
    gone_reported: bool,
    /// Counters of the queues dropped, and of frames dropped without one.
    base: QueueStats,
}

fn flags(i: Interest) -> EpollFlags {
    match i {
        Interest::Readable => EpollFlags::EPOLLIN,
        Interest::Writable => EpollFlags::EPOLLOUT,
    }
}

impl<B: Backend + Send> RelinkQueue<B> {
    /// Follows the supervisor: a new backend (or none) since the last call.
    #[inline]
    fn sync(&mut self) {
        if self.shared.generation.load(Ordering::Acquire) == self.generation {
            return;
        }
        {
            // A change bumps the generation and writes the wake under the lock: under it, the
            // wake read here covers every change up to the generation taken, and a change
            // after it bumps the generation again. (Reading the wake outside the lock lost
            // the race with a change in flight: the wake stayed readable with the generation
            // already taken, and the caller's loop spun on the readiness fd.)
            let _current = self.shared.lock();
            let _ = self.shared.wakes[usize::from(self.index)].read();
            self.generation = self.shared.generation.load(Ordering::Acquire);
        }
        self.drop_inner();
        if let Err(e) = self.open_inner(false) {
            warn!(
                "{}: queue pair {}: opening it again: {e}",
                self.shared.name, self.index
            );
        }
    }

    /// Opens the queue on the current backend and gives it this queue pair's settings.
    fn open_inner(&mut self, first: bool) -> Result<()> {
        let mut q = {
            let mut cur = self.shared.lock();
            let Some(b) = cur.as_mut() else {
                return Ok(());
            };
            b.open_queue_pair(self.index)?
        };
        let settle = |r: Result<()>, what: &str| {
            if let Err(e) = r {
                warn!(
                    "{}: queue pair {}: {what}: {e}",
                    self.shared.name, self.index
                );
            }
        };
        if let Some(o) = self.offloads {
            settle(q.set_rx_offloads(o), "receive offloads");
        }
        if let Some(f) = &self.filter {
            match q.set_rx_filter(f) {
                Ok(applied) => self.filter_applied = applied,
                Err(e) => settle(Err(e), "receive filter"),
            }
        }
        if !self.attached {
            settle(q.set_attached(false), "detaching");
        }
        let (rx, tx) = (q.rx_readiness(), q.tx_readiness());
        let (rfd, rflags, tfd, tflags) = (
            rx.fd.as_raw_fd(),
            flags(rx.interest),
            tx.fd.as_raw_fd(),
            flags(tx.interest),
        );
        let target = || format!("{} queue {}", self.shared.name, self.index);
        for (ep, fd, f, slot) in [(&self.rx_ep, rfd, rflags, 0), (&self.tx_ep, tfd, tflags, 1)] {
            // SAFETY: the fd belongs to `q`, alive for this call; it leaves the epoll before
            // `q` is dropped (`drop_inner`).
            let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
            ep.add(bfd, EpollEvent::new(f, 1)).map_err(|e| Error::Io {
                op: "watching a queue's fd",
                target: target(),
                source: e.into(),
            })?;
            self.watched[slot] = Some(fd);
        }
        if !first {
            info!(
                "{}: queue pair {}: the link is back, frames flow again",
                self.shared.name, self.index
            );
        }
        self.gone_reported = false;
        self.inner = Some(q);
        Ok(())
    }
}

impl<B: Backend> RelinkQueue<B> {
    fn drop_inner(&mut self) {
        for (ep, slot) in [(&self.rx_ep, 0), (&self.tx_ep, 1)] {
            if let Some(fd) = self.watched[slot].take() {
                // SAFETY: the fd is the inner queue's, still open (dropped below).
                let _ = ep.delete(unsafe { BorrowedFd::borrow_raw(fd) });
            }
        }
        if let Some(q) = self.inner.take() {
            self.base.absorb(&q.stats());
        }
    }
}

impl<B: Backend + Send> RelinkQueue<B> {
    /// The queue reported its device gone: drop it, tell the supervisor.
    fn gone(&mut self, e: &Error) {
        if !self.gone_reported {
            warn!(
                "{}: queue pair {}: {e}; frames are dropped until the link is back",
                self.shared.name, self.index
            );
            self.gone_reported = true;
        }
        self.drop_inner();
        self.shared
            .lost_generation
            .store(self.generation, Ordering::Release);
        let _ = self.shared.lost.write(1);
    }
}

impl<B: Backend> Drop for RelinkQueue<B> {
    fn drop(&mut self) {
        self.drop_inner();
        if let Some(o) = self.shared.open.get(usize::from(self.index)) {
            o.store(false, Ordering::Release);
        }
    }
}

impl<B: Backend + Send> QueuePair for RelinkQueue<B> {
    fn index(&self) -> u16 {
        self.index
    }

    fn send(&mut self, frames: &[TxFrame<'_>]) -> Result<usize> {
        self.sync();
        if let Some(q) = self.inner.as_mut() {
            match q.send(frames) {
                Err(e @ Error::Disconnected { .. }) => self.gone(&e),
                r => return r,
            }
        }
        for _ in frames {
            self.base.tx_drops.add(DropReason::LinkDown);
        }
        Ok(frames.len())
    }

    fn recv(&mut self, bufs: &[IoBufMut<'_>]) -> Result<Option<RxFrame>> {
        self.sync();
        if let Some(q) = self.inner.as_mut() {
            match q.recv(bufs) {
                Err(e @ Error::Disconnected { .. }) => self.gone(&e),
                r => return r,
            }
        }
        Ok(None)
    }

    fn set_rx_offloads(&mut self, offloads: OffloadSet) -> Result<()> {
        self.sync();
        self.offloads = Some(offloads);
        match self.inner.as_mut() {
            Some(q) => q.set_rx_offloads(offloads),
            None => Ok(()),
        }
    }

    fn set_attached(&mut self, attached: bool) -> Result<()> {
        self.sync();
        self.attached = attached;
        match self.inner.as_mut() {
            Some(q) => q.set_attached(attached),
            None => Ok(()),
        }
    }

    fn set_rx_filter(&mut self, filter: &RxFilter) -> Result<bool> {
        self.sync();
        self.filter = Some(filter.clone());
        if let Some(q) = self.inner.as_mut() {
            self.filter_applied = q.set_rx_filter(filter)?;
        }
        Ok(self.filter_applied)
    }

    fn rx_readiness(&self) -> Readiness<'_> {
        Readiness {
            fd: self.rx_ep.0.as_fd(),
            interest: Interest::Readable,
        }
    }

    fn tx_readiness(&self) -> Readiness<'_> {
        Readiness {
            fd: self.tx_ep.0.as_fd(),
            interest: Interest::Readable,
        }
    }

    fn stats(&self) -> QueueStats {
        let mut s = self.base;
        if let Some(q) = &self.inner {
            s.absorb(&q.stats());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::collections::VecDeque;

    /// A backend of frames in memory, which can be "deleted" (its queues then answer
    /// `Disconnected`, as a deleted TAP's do).
    struct Fake {
        link: Arc<Link>,
    }

    #[derive(Default)]
    struct Link {
        dead: AtomicBool,
        rx: Mutex<VecDeque<Vec<u8>>>,
        sent: Mutex<Vec<Vec<u8>>>,
        ready: Option<EventFd>,
        offloads: Mutex<Option<OffloadSet>>,
        /// Run once when a call finds the link dead.
        on_dead: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    fn fake() -> (Fake, Arc<Link>) {
        let link = Arc::new(Link {
            ready: Some(eventfd().expect("eventfd")),
            ..Link::default()
        });
        (
            Fake {
                link: Arc::clone(&link),
            },
            link,
        )
    }

    struct FakeQueue(Arc<Link>);

    impl Backend for Fake {
        type Queue = FakeQueue;
        fn name(&self) -> &str {
            "fake"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                vnet_hdr: false,
                tx_offloads: OffloadSet::NONE,
                rx_offloads: OffloadSet::NONE,
                rx_csum_verified: false,
                max_frame: 1514,
                max_queue_pairs: 1,
                mac: None,
                mtu: 1500,
            }
        }
        fn open_queue_pair(&mut self, _: u16) -> Result<FakeQueue> {
            Ok(FakeQueue(Arc::clone(&self.link)))
        }
    }

    impl FakeQueue {
        fn check(&self) -> Result<()> {
            if self.0.dead.load(Ordering::Acquire) {
                if let Some(hook) = self.0.on_dead.lock().expect("lock").take() {
                    hook();
                }
                return Err(Error::Disconnected {
                    target: "fake".into(),
                    why: "deleted".into(),
                });
            }
            Ok(())
        }
    }

    impl QueuePair for FakeQueue {
        fn index(&self) -> u16 {
            0
        }
        fn send(&mut self, frames: &[TxFrame<'_>]) -> Result<usize> {
            self.check()?;
            let mut sent = self.0.sent.lock().expect("lock");
            for f in frames {
                let mut b = vec![0u8; f.data[0].len()];
                f.data[0].read(0, &mut b);
                sent.push(b);
            }
            Ok(frames.len())
        }
        fn recv(&mut self, bufs: &[IoBufMut<'_>]) -> Result<Option<RxFrame>> {
            self.check()?;
            let Some(f) = self.0.rx.lock().expect("lock").pop_front() else {
                return Ok(None);
            };
            bufs[0].write(0, &f);
            Ok(Some(RxFrame {
                hdr: Default::default(),
                len: f.len(),
            }))
        }
        fn set_rx_offloads(&mut self, o: OffloadSet) -> Result<()> {
            *self.0.offloads.lock().expect("lock") = Some(o);
            Ok(())
        }
        fn set_attached(&mut self, _: bool) -> Result<()> {
            Ok(())
        }
        fn rx_readiness(&self) -> Readiness<'_> {
            Readiness {
                fd: self.0.ready.as_ref().expect("fd").as_fd(),
                interest: Interest::Readable,
            }
        }
        fn tx_readiness(&self) -> Readiness<'_> {
            self.rx_readiness()
        }
        fn stats(&self) -> QueueStats {
            QueueStats::default()
        }
    }

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
    }

    fn send(q: &mut RelinkQueue<Fake>, byte: u8) -> Result<usize> {
        let data = [net_api::IoBuf::from_slice(std::slice::from_ref(&byte))];
        q.send(&[TxFrame {
            hdr: Default::default(),
            data: &data,
        }])
    }

    #[test]
    fn a_link_that_goes_drops_frames_quietly_and_the_next_one_carries_them() {
        let (backend, first) = fake();
        let (mut relink, handle) = Relink::new(backend).expect("relink");
        let mut q = relink.open_queue_pair(0).expect("queue");
        assert!(matches!(
            relink.open_queue_pair(0),
            Err(Error::QueueInUse { .. })
        ));
        q.set_rx_offloads(OffloadSet::CSUM).expect("offloads");
        assert_eq!(send(&mut q, 1).expect("send"), 1);
        assert_eq!(*first.sent.lock().expect("lock"), vec![vec![1]]);
        // The inner fd's readiness shows through the queue pair's own fd.
        first.ready.as_ref().expect("fd").write(1).expect("ready");
        assert!(readable(q.rx_readiness().fd));
        let _ = first.ready.as_ref().expect("fd").read();
        assert!(!readable(q.rx_readiness().fd));

        // The device is deleted: the first call finds out, the supervisor is told, frames
        // are consumed and counted, receive finds nothing, and the fds are quiet.
        first.dead.store(true, Ordering::Release);
        first
            .ready
            .as_ref()
            .expect("fd")
            .write(1)
            .expect("EPOLLERR, say");
        assert_eq!(send(&mut q, 2).expect("consumed"), 1);
        assert!(handle.take_lost(), "the supervisor hears of it");
        let mut buf = [0u8; 64];
        assert!(q
            .recv(&[IoBufMut::from_mut_slice(&mut buf)])
            .expect("nothing")
            .is_none());
        assert!(!readable(q.rx_readiness().fd), "no spinning on a dead fd");
        assert_eq!(q.stats().tx_drops.get(DropReason::LinkDown), 1);

        // The supervisor takes the old backend away and brings a new one: the queue pair is
        // woken, opens its queue again with the same offloads, and frames flow.
        assert!(
            handle.lose().is_some(),
            "the old backend, for the caller to drop"
        );
        assert!(handle.lose().is_none(), "gone already");
        let (backend, second) = fake();
        handle.restore(backend);
        assert!(readable(q.rx_readiness().fd), "woken by the change");
        second.rx.lock().expect("lock").push_back(vec![7, 7]);
        let got = q
            .recv(&[IoBufMut::from_mut_slice(&mut buf)])
            .expect("recv")
            .expect("a frame");
        assert_eq!(&buf[..got.len], &[7, 7]);
        assert!(!readable(q.rx_readiness().fd), "the wake-up was taken");
        assert_eq!(
            *second.offloads.lock().expect("lock"),
            Some(OffloadSet::CSUM)
        );
        assert_eq!(send(&mut q, 3).expect("send"), 1);
        assert_eq!(*second.sent.lock().expect("lock"), vec![vec![3]]);

        // A queue pair that finds the old device gone while the supervisor replaces it (on
        // the link events) reports something stale: the new backend stays.
        let (backend, third) = fake();
        let supervisor = Handle {
            shared: Arc::clone(&handle.shared),
        };
        *second.on_dead.lock().expect("lock") = Some(Box::new(move || {
            drop(supervisor.lose());
            supervisor.restore(backend);
        }));
        second.dead.store(true, Ordering::Release);
        assert_eq!(send(&mut q, 5).expect("consumed"), 1);
        assert!(!handle.take_lost(), "a stale report takes nothing away");
        assert!(handle.is_up());
        assert_eq!(send(&mut q, 6).expect("send"), 1);
        assert_eq!(*third.sent.lock().expect("lock"), vec![vec![6]]);

        // Lost by the supervisor's decision (link events) while the queue saw nothing.
        let _ = handle.lose();
        assert!(!handle.is_up());
        assert_eq!(send(&mut q, 4).expect("consumed"), 1);
        assert_eq!(third.sent.lock().expect("lock").len(), 1, "not sent");
        assert_eq!(q.stats().tx_drops.get(DropReason::LinkDown), 3);
        drop(q);
        assert!(relink.open_queue_pair(0).is_ok(), "free again once dropped");
    }

    /// Changes racing the queue pair's calls never leave its readiness fd readable once
    /// the changes stop and the queue pair has taken them (a wake read outside the lock
    /// could be left behind: a caller's loop then spins).
    #[test]
    fn no_wake_is_left_behind_by_changes_racing_the_calls() {
        let (backend, _) = fake();
        let (mut relink, handle) = Relink::new(backend).expect("relink");
        let mut q = relink.open_queue_pair(0).expect("queue");
        let stop = Arc::new(AtomicBool::new(false));
        let flips = Arc::new(AtomicU64::new(0));
        let flipper = {
            let (stop, flips) = (Arc::clone(&stop), Arc::clone(&flips));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let _ = handle.lose();
                    handle.restore(fake().0);
                    flips.fetch_add(1, Ordering::AcqRel);
                }
            })
        };
        let mut buf = [0u8; 64];
        let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while flips.load(Ordering::Acquire) < 5_000 && std::time::Instant::now() < end {
            let _ = q.recv(&[IoBufMut::from_mut_slice(&mut buf)]);
        }
        stop.store(true, Ordering::Release);
        flipper.join().expect("flipper");
        let flips = flips.load(Ordering::Acquire);
        assert!(flips > 0);
        let _ = q.recv(&[IoBufMut::from_mut_slice(&mut buf)]);
        assert!(
            !readable(q.rx_readiness().fd),
            "a wake-up was left behind after {flips} changes"
        );
    }
}
