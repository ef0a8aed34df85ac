//! The vhost-user-net backend: any `net-api` backend served to a vhost-user frontend (QEMU,
//! Cloud Hypervisor, DPDK's virtio_user) with `net-virtio`'s pumps on the guest memory the
//! frontend shares.
//!
//! Built on rust-vmm's `vhost-user-backend`: it owns the message handling, the memory table
//! and the vrings; [`NetBackend`] says what the device offers and moves frames when a vring is
//! kicked or the backend's fd is ready. Each queue pair has a worker thread of its own, whose
//! epoll also watches that pair's backend readiness fds: the receive fd only while the guest
//! has given buffers, the transmit fd only while the backend is full, so the level-triggered
//! epoll never spins. A ring the frontend stopped or disabled is never touched, whatever fd
//! fires.
//!
//! The control queue stays with the frontend (QEMU handles it for vhost-user-net); this
//! backend offers the data queues only.
//!
//! `GET_VRING_BASE` (the frontend stopping a queue, before a migration or a reconnect) first
//! gives back every buffer the pumps hold, with length 0, so the base it reports covers them.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use log::{info, warn};
use net_api::{Backend, Capabilities, QueuePair};
use net_virtio::codec::HdrLayout;
use net_virtio::features::{bit, guest_offloads, offload_features, rx_plan};
use net_virtio::pump::{PumpError, PumpOutcome, RxConfig, RxPump, TxPump};
use net_virtio::translate::{RxTranslator, TxTranslator};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config as vc;
use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring as vr;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// Guest memory as the frontend shares it.
pub type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// How the backend is served.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Queue pairs (at most the backend's).
    pub queue_pairs: u16,
    /// The largest vring size.
    pub queue_size: u16,
    /// Offer `VIRTIO_NET_F_MRG_RXBUF`.
    pub mergeable_rx: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            queue_pairs: 1,
            queue_size: 256,
            mergeable_rx: true,
        }
    }
}

struct Pair<Q> {
    queue: Q,
    rx: Option<RxPump>,
    tx: Option<TxPump>,
    /// Frames the pumps of earlier negotiations moved: (from the guest, to the guest).
    moved: (u64, u64),
    /// Whether the backend's fds are in the worker's epoll now.
    rx_watched: bool,
    tx_watched: bool,
    /// Our own handle (a dup) on this pair's worker's epoll.
    epoll: Option<nix::sys::epoll::Epoll>,
    /// The pair's vrings (receive, transmit) as last seen in `handle_event`, to give buffers
    /// back in `stop_vring`.
    vrings: Vec<VringRwLock<Mem>>,
}

impl<Q: QueuePair> Pair<Q> {
    fn frames(&self) -> (u64, u64) {
        (
            self.moved.0 + self.tx.as_ref().map_or(0, |x| x.stats().frames),
            self.moved.1 + self.rx.as_ref().map_or(0, |x| x.stats().frames),
        )
    }

    /// Drops the pumps (their counts are kept) and takes the fds out of the epoll.
    fn stop(&mut self, name: &str) {
        self.moved = self.frames();
        self.rx = None;
        self.tx = None;
        self.watch(name, false, false);
        self.watch(name, true, false);
    }

    /// Puts the receive (`tx` false) or transmit readiness fd in the worker's epoll, or takes
    /// it out.
    fn watch(&mut self, name: &str, tx: bool, on: bool) {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        let Some(ep) = self.epoll.as_ref() else {
            return;
        };
        let watched = if tx {
            &mut self.tx_watched
        } else {
            &mut self.rx_watched
        };
        if *watched == on {
            return;
        }
        let r = if tx {
            self.queue.tx_readiness()
        } else {
            self.queue.rx_readiness()
        };
        let events = match r.interest {
            net_api::Interest::Readable => EpollFlags::EPOLLIN,
            net_api::Interest::Writable => EpollFlags::EPOLLOUT,
        };
        let data = if tx { TX_READY } else { RX_READY };
        let res = if on {
            ep.add(r.fd, EpollEvent::new(events, data))
        } else {
            ep.delete(r.fd)
        };
        match res {
            Ok(()) => *watched = on,
            Err(e) => warn!("{name}: epoll_ctl: {e}"),
        }
    }
}

/// The epoll data of a pair's backend receive and transmit readiness, above the two vring
/// kicks (0 and 1) and the daemon's own event (`num_queues`); see [`NetBackend::handle_event`].
/// (The daemon passes events on as `u16`.)
const RX_READY: u64 = 0xfff0;
const TX_READY: u64 = RX_READY + 1;
/// Queue pairs: each worker's vrings are a bit mask in a `u64` (`queues_per_thread`), so 64
/// vrings at most.
const MAX_PAIRS: u16 = 32;

/// The vhost-user-net device over backend `B`, for `VhostUserDaemon<Arc<NetBackend<B>>>`.
///
/// Each queue pair has its own worker thread (`queues_per_thread`) and its own lock, so pairs
/// move frames in parallel; the protocol thread takes a pair's lock to configure or stop it.
pub struct NetBackend<B: Backend> {
    name: String,
    caps: Capabilities,
    cfg: ServeConfig,
    pairs: Vec<Mutex<Pair<B::Queue>>>,
    offered: u64,
    acked: AtomicU64,
    mem: RwLock<Option<Mem>>,
    _backend: B,
}

impl<B: Backend> std::fmt::Debug for NetBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBackend")
            .field("backend", &self.name)
            .field(
                "acked",
                &format_args!("{:#x}", self.acked.load(Ordering::Relaxed)),
            )
            .finish_non_exhaustive()
    }
}

/// A failure to set the backend up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration does not fit the backend.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] net_api::Error),
}

impl<B: Backend> NetBackend<B> {
    /// Opens `cfg.queue_pairs` queue pairs of `backend`.
    pub fn new(mut backend: B, cfg: ServeConfig) -> Result<Self, ServeError> {
        let caps = backend.capabilities();
        if cfg.queue_pairs == 0 || cfg.queue_pairs > caps.max_queue_pairs.min(MAX_PAIRS) {
            return Err(ServeError::Config(format!(
                "{} queue pairs asked for; {} has 1 to {}",
                cfg.queue_pairs,
                backend.name(),
                caps.max_queue_pairs
            )));
        }
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size > 32768 {
            return Err(ServeError::Config(format!(
                "queue size {}: use a power of two up to 32768",
                cfg.queue_size
            )));
        }
        let mut pairs = Vec::new();
        for i in 0..cfg.queue_pairs {
            pairs.push(Mutex::new(Pair {
                queue: backend.open_queue_pair(i)?,
                rx: None,
                tx: None,
                moved: (0, 0),
                rx_watched: false,
                tx_watched: false,
                epoll: None,
                vrings: Vec::new(),
            }));
        }
        let mut offered = bit(vc::VIRTIO_F_VERSION_1)
            | bit(vr::VIRTIO_RING_F_EVENT_IDX)
            | bit(vr::VIRTIO_RING_F_INDIRECT_DESC)
            | bit(vn::VIRTIO_NET_F_MTU)
            | offload_features(&caps)
            | PROTOCOL_FEATURES;
        if caps.mac.is_some() {
            offered |= bit(vn::VIRTIO_NET_F_MAC);
        }
        if cfg.mergeable_rx {
            offered |= bit(vn::VIRTIO_NET_F_MRG_RXBUF);
        }
        if cfg.queue_pairs > 1 {
            offered |= bit(vn::VIRTIO_NET_F_MQ);
        }
        Ok(NetBackend {
            name: backend.name().to_string(),
            caps,
            cfg,
            pairs,
            offered,
            acked: AtomicU64::new(0),
            mem: RwLock::new(None),
            _backend: backend,
        })
    }

    /// The vrings the device has (two per queue pair).
    pub fn vrings(&self) -> usize {
        self.num_queues()
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frames moved since the backend was made, over every queue pair: (guest to backend,
    /// backend to guest).
    pub fn frames(&self) -> (u64, u64) {
        self.pairs.iter().fold((0, 0), |(t, r), p| {
            let (pt, pr) = lock(p).frames();
            (t + pt, r + pr)
        })
    }

    /// Tells the backend the epoll fds of the daemon's workers (from
    /// `VhostUserDaemon::get_epoll_handlers`, one per queue pair), so each pair watches its
    /// backend readiness fds in its own worker's epoll.
    pub fn set_epolls(&self, epolls: &[RawFd]) -> std::io::Result<()> {
        if epolls.len() != self.pairs.len() {
            return Err(std::io::Error::other(format!(
                "{} worker epolls for {} queue pairs",
                epolls.len(),
                self.pairs.len()
            )));
        }
        for (p, &fd) in self.pairs.iter().zip(epolls) {
            // SAFETY: `fd` is a worker's epoll fd, open for as long as the daemon the caller
            // holds; it is borrowed only to duplicate it once.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            lock(p).epoll = Some(nix::sys::epoll::Epoll(borrowed.try_clone_to_owned()?));
        }
        Ok(())
    }

    fn num_queues(&self) -> usize {
        2 * self.pairs.len()
    }

    fn memory(&self) -> Option<Mem> {
        self.mem.read().map_or(None, |m| m.clone())
    }

    fn configure_pumps(&self, acked: u64) {
        let layout = HdrLayout::from_features(acked);
        let wanted = guest_offloads(acked);
        let (enable, max_frame) = rx_plan(&self.caps, wanted, self.caps.mtu);
        let mergeable = acked & bit(vn::VIRTIO_NET_F_MRG_RXBUF) != 0;
        let tx = TxTranslator::new(&self.caps);
        for p in &self.pairs {
            let mut p = lock(p);
            if self.caps.vnet_hdr {
                if let Err(e) = p.queue.set_rx_offloads(enable) {
                    warn!(
                        "{}: could not enable receive offloads {enable}: {e}",
                        self.name
                    );
                }
            }
            p.stop(&self.name);
            p.tx = Some(TxPump::new(layout, tx));
            p.rx = Some(RxPump::new(RxConfig {
                layout,
                mergeable,
                max_frame,
                translator: RxTranslator::new(wanted),
            }));
        }
    }

    fn after(&self, vring: &VringRwLock<Mem>, res: Result<PumpOutcome, PumpError>) -> bool {
        match res {
            Ok(out) => {
                if out.notify {
                    if let Err(e) = vring.signal_used_queue() {
                        warn!("{}: signalling the frontend: {e}", self.name);
                    }
                }
                out.more
            }
            Err(PumpError::Ring(e)) => {
                warn!("{}: a ring is unusable: {e}", self.name);
                false
            }
            Err(PumpError::Backend(e)) => {
                warn!("{}: backend: {e}", self.name);
                false
            }
        }
    }

    fn run_tx(&self, pair: &mut Pair<B::Queue>, vring: &VringRwLock<Mem>) {
        let Some(mem) = self.memory().map(|m| m.memory()) else {
            return;
        };
        // Until the pump has nothing left: the kick that brought us here is consumed, and
        // notifications stay off while it has work, so nobody else would call again.
        loop {
            let Some(pump) = pair.tx.as_mut() else {
                return;
            };
            let res = {
                let mut state = vring.get_mut();
                // A backend fd can be ready after the frontend stopped or disabled the ring.
                live(&state).then(|| pump.process(state.get_queue_mut(), &*mem, &mut pair.queue))
            };
            let Some(res) = res else {
                pair.watch(&self.name, true, false);
                return;
            };
            let blocked = pump.is_blocked();
            let more = self.after(vring, res);
            pair.watch(&self.name, true, blocked);
            if !more {
                break;
            }
        }
    }

    fn run_rx(&self, pair: &mut Pair<B::Queue>, vring: &VringRwLock<Mem>) {
        let Some(mem) = self.memory().map(|m| m.memory()) else {
            return;
        };
        loop {
            let Some(pump) = pair.rx.as_mut() else {
                return;
            };
            let res = {
                let mut state = vring.get_mut();
                // A backend fd can be ready after the frontend stopped or disabled the ring.
                live(&state)
                    .then(|| pump.process(state.get_queue_mut(), &*mem, &mut pair.queue, None))
            };
            let Some(res) = res else {
                pair.watch(&self.name, false, false);
                return;
            };
            let waiting = pump.is_waiting();
            let more = self.after(vring, res);
            pair.watch(&self.name, false, !waiting);
            if !more {
                break;
            }
        }
    }
}

/// Whether the pumps may use the ring: the frontend set it up and enabled it.
fn live(state: &vhost_user_backend::VringState<Mem>) -> bool {
    state.is_enabled() && state.get_queue().ready()
}

/// A pair's lock, even if a worker panicked holding it (the pair's state is a pump and a
/// queue, both usable after a panic in the middle of a batch).
fn lock<Q>(p: &Mutex<Pair<Q>>) -> std::sync::MutexGuard<'_, Pair<Q>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B: Backend + Send + Sync> VhostUserBackend for NetBackend<B>
where
    B::Queue: Send,
{
    type Bitmap = ();
    type Vring = VringRwLock<Mem>;

    fn num_queues(&self) -> usize {
        NetBackend::num_queues(self)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.cfg.queue_size)
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn acked_features(&self, features: u64) {
        let acked = features & self.offered;
        self.acked.store(acked, Ordering::Relaxed);
        info!(
            "{}: features acked {acked:#x}, header {} bytes",
            self.name,
            HdrLayout::from_features(acked).size()
        );
        self.configure_pumps(acked);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // No CONFIG: QEMU's vhost-user-net keeps the config space itself and refuses a
        // backend that offers it. RESET_DEVICE: a reset stops the pumps and disables the
        // rings (the server also uses it when a frontend goes away).
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&self) {
        for p in &self.pairs {
            let mut p = lock(p);
            p.stop(&self.name);
            p.vrings.clear();
        }
        self.acked.store(0, Ordering::Relaxed);
        if let Ok(mut m) = self.mem.write() {
            *m = None;
        }
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The vrings carry it (`Queue::set_event_idx`); the pumps read it from there.
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker per queue pair: pair p's receive and transmit vrings, 2p and 2p + 1.
        (0..self.pairs.len()).map(|p| 0b11u64 << (2 * p)).collect()
    }

    fn exit_event(
        &self,
        _thread_index: usize,
    ) -> Option<(
        vmm_sys_util::event::EventConsumer,
        vmm_sys_util::event::EventNotifier,
    )> {
        // So the workers stop when the daemon is dropped (it joins them).
        vmm_sys_util::event::new_event_consumer_and_notifier(
            vmm_sys_util::event::EventFlag::NONBLOCK | vmm_sys_util::event::EventFlag::CLOEXEC,
        )
        .map_err(|e| warn!("{}: exit event: {e}", self.name))
        .ok()
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut cfg = [0u8; 12];
        if let Some(mac) = self.caps.mac {
            cfg[0..6].copy_from_slice(&mac.0);
        }
        cfg[6..8].copy_from_slice(&(vn::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        cfg[8..10].copy_from_slice(&(self.pairs.len() as u16).to_le_bytes());
        cfg[10..12].copy_from_slice(&self.caps.mtu.to_le_bytes());
        let (off, len) = (offset as usize, size as usize);
        (0..len.min(4096))
            .map(|i| {
                off.checked_add(i)
                    .and_then(|j| cfg.get(j))
                    .copied()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn update_memory(&self, mem: Mem) -> std::io::Result<()> {
        *self
            .mem
            .write()
            .map_err(|_| std::io::Error::other("memory lock poisoned"))? = Some(mem);
        Ok(())
    }

    fn stop_vring(&self, queue_index: u32) -> std::io::Result<()> {
        // The buffers the pumps hold go back (length 0) before the frontend reads the base.
        let q = queue_index as usize;
        let Some(pair) = self.pairs.get(q / 2) else {
            return Ok(());
        };
        let tx = q % 2 == 1;
        let mut pair = lock(pair);
        pair.watch(&self.name, tx, false);
        let (Some(mem), Some(vring)) = (
            self.memory().map(|m| m.memory()),
            pair.vrings.get(q % 2).cloned(),
        ) else {
            return Ok(());
        };
        let res = {
            let mut state = vring.get_mut();
            if tx {
                pair.tx
                    .as_mut()
                    .map(|t| t.release(state.get_queue_mut(), &*mem))
            } else {
                pair.rx
                    .as_mut()
                    .map(|r| r.release(state.get_queue_mut(), &*mem))
            }
        };
        if let Some(res) = res {
            self.after(&vring, res);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock<Mem>],
        thread_id: usize,
    ) -> std::io::Result<()> {
        // This worker serves pair `thread_id`: its vrings are `vrings[0]` (receive) and
        // `vrings[1]` (transmit), kicked as events 0 and 1; its backend fds are RX_READY and
        // TX_READY.
        let Some(pair) = self.pairs.get(thread_id) else {
            return Ok(());
        };
        let tx = match u64::from(device_event) {
            0 | RX_READY => false,
            1 | TX_READY => true,
            _ => return Ok(()),
        };
        let Some(vring) = vrings.get(usize::from(tx)) else {
            return Ok(());
        };
        let mut pair = lock(pair);
        if pair.vrings.len() != vrings.len() {
            pair.vrings = vrings.to_vec();
        }
        if tx {
            self.run_tx(&mut pair, vring);
        } else {
            self.run_rx(&mut pair, vring);
        }
        Ok(())
    }
}

/// A backend ready for `VhostUserDaemon`.
pub type Shared<B> = Arc<NetBackend<B>>;
