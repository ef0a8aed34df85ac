//! The vhost-user-net backend: any `net-api` backend served to a vhost-user frontend (QEMU,
//! Cloud Hypervisor, DPDK's virtio_user) with `net-virtio`'s pumps on the guest memory the
//! frontend shares.
//!
//! Built on rust-vmm's `vhost-user-backend`: it owns the socket, the message handling, the
//! memory table and the vrings; [`NetBackend`] says what the device offers and moves frames
//! when a vring is kicked or the backend's fd is ready. All queue pairs run on one worker
//! thread, whose epoll also watches the backend's readiness fds: the receive fd only while the
//! guest has given buffers, the transmit fd only while the backend is full, so the
//! level-triggered epoll never spins.
//!
//! The control queue stays with the frontend (QEMU handles it for vhost-user-net); this
//! backend offers the data queues only.
//!
//! `GET_VRING_BASE` (the frontend stopping a queue, before a migration or a reconnect) first
//! gives back every buffer the pumps hold, with length 0, so the base it reports covers them.

use std::os::fd::RawFd;
use std::sync::{Arc, RwLock};

use log::{info, warn};
use net_api::{Backend, Capabilities, QueuePair};
use net_virtio::codec::HdrLayout;
use net_virtio::features::{bit, guest_offloads, offload_features, rx_plan};
use net_virtio::pump::{PumpError, PumpOutcome, RxConfig, RxPump, TxPump};
use net_virtio::translate::{RxTranslator, TxTranslator};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_config as vc;
use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring as vr;
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
    /// Whether the backend's fds are in the worker's epoll now.
    rx_watched: bool,
    tx_watched: bool,
}

/// The vhost-user-net device over backend `B` (wrap it in `Arc<RwLock<_>>` for
/// `VhostUserDaemon`).
pub struct NetBackend<B: Backend> {
    name: String,
    caps: Capabilities,
    cfg: ServeConfig,
    pairs: Vec<Pair<B::Queue>>,
    offered: u64,
    acked: u64,
    event_idx: bool,
    mem: Option<Mem>,
    /// Our own handle (a dup) on the worker's epoll.
    epoll: Option<nix::sys::epoll::Epoll>,
    /// The vrings, as last seen in `handle_event` (to give buffers back in `stop_vring`).
    vrings: Vec<VringRwLock<Mem>>,
    _backend: B,
}

impl<B: Backend> std::fmt::Debug for NetBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBackend")
            .field("backend", &self.name)
            .field("acked", &format_args!("{:#x}", self.acked))
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
        if cfg.queue_pairs == 0 || cfg.queue_pairs > caps.max_queue_pairs {
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
            pairs.push(Pair {
                queue: backend.open_queue_pair(i)?,
                rx: None,
                tx: None,
                rx_watched: false,
                tx_watched: false,
            });
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
            acked: 0,
            event_idx: false,
            mem: None,
            epoll: None,
            vrings: Vec::new(),
            _backend: backend,
        })
    }

    /// Frames moved so far, over every queue pair: (guest to backend, backend to guest).
    pub fn frames(&self) -> (u64, u64) {
        self.pairs.iter().fold((0, 0), |(t, r), p| {
            (
                t + p.tx.as_ref().map_or(0, |x| x.stats().frames),
                r + p.rx.as_ref().map_or(0, |x| x.stats().frames),
            )
        })
    }

    /// Tells the backend the worker's epoll fd (from `VhostUserDaemon::get_epoll_handlers`),
    /// so it can watch its own readiness fds there.
    pub fn set_epoll(&mut self, epoll: RawFd) -> std::io::Result<()> {
        // SAFETY: `epoll` is the worker's epoll fd, open for as long as the daemon the caller
        // holds; it is borrowed only to duplicate it once.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(epoll) };
        self.epoll = Some(nix::sys::epoll::Epoll(borrowed.try_clone_to_owned()?));
        Ok(())
    }

    fn num_queues(&self) -> usize {
        2 * self.pairs.len()
    }

    /// The epoll data of pair `p`'s receive (`tx` false) or transmit readiness.
    fn fd_event(&self, p: usize, tx: bool) -> u64 {
        (self.num_queues() + 1 + 2 * p + usize::from(tx)) as u64
    }

    fn watch(&mut self, p: usize, tx: bool, on: bool) {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        let Some(ep) = self.epoll.as_ref() else {
            return;
        };
        let data = self.fd_event(p, tx);
        let pair = &mut self.pairs[p];
        let watched = if tx {
            &mut pair.tx_watched
        } else {
            &mut pair.rx_watched
        };
        if *watched == on {
            return;
        }
        let r = if tx {
            pair.queue.tx_readiness()
        } else {
            pair.queue.rx_readiness()
        };
        let events = match r.interest {
            net_api::Interest::Readable => EpollFlags::EPOLLIN,
            net_api::Interest::Writable => EpollFlags::EPOLLOUT,
        };
        let res = if on {
            ep.add(r.fd, EpollEvent::new(events, data))
        } else {
            ep.delete(r.fd)
        };
        match res {
            Ok(()) => *watched = on,
            Err(e) => warn!("{}: epoll_ctl for queue pair {p}: {e}", self.name),
        }
    }

    fn layout(&self) -> HdrLayout {
        HdrLayout::from_features(self.acked)
    }

    fn configure_pumps(&mut self) {
        let layout = self.layout();
        let wanted = guest_offloads(self.acked);
        let (enable, max_frame) = rx_plan(&self.caps, wanted, self.caps.mtu);
        let mergeable = self.acked & bit(vn::VIRTIO_NET_F_MRG_RXBUF) != 0;
        let tx = TxTranslator::new(&self.caps);
        for p in &mut self.pairs {
            if self.caps.vnet_hdr {
                if let Err(e) = p.queue.set_rx_offloads(enable) {
                    warn!(
                        "{}: could not enable receive offloads {enable}: {e}",
                        self.name
                    );
                }
            }
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

    fn run_tx(&mut self, p: usize, vring: &VringRwLock<Mem>) {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return;
        };
        // Until the pump has nothing left: the kick that brought us here is consumed, and
        // notifications stay off while it has work, so nobody else would call again.
        loop {
            let pair = &mut self.pairs[p];
            let Some(pump) = pair.tx.as_mut() else {
                return;
            };
            let res = {
                let mut state = vring.get_mut();
                pump.process(state.get_queue_mut(), &*mem, &mut pair.queue)
            };
            let blocked = pump.is_blocked();
            let more = self.after(vring, res);
            self.watch(p, true, blocked);
            if !more {
                break;
            }
        }
    }

    fn run_rx(&mut self, p: usize, vring: &VringRwLock<Mem>) {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return;
        };
        loop {
            let pair = &mut self.pairs[p];
            let Some(pump) = pair.rx.as_mut() else {
                return;
            };
            let res = {
                let mut state = vring.get_mut();
                pump.process(state.get_queue_mut(), &*mem, &mut pair.queue, None)
            };
            let waiting = pump.is_waiting();
            let more = self.after(vring, res);
            self.watch(p, false, !waiting);
            if !more {
                break;
            }
        }
    }
}

impl<B: Backend + Send + Sync> VhostUserBackendMut for NetBackend<B>
where
    B::Queue: Send + Sync,
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

    fn acked_features(&mut self, features: u64) {
        self.acked = features & self.offered;
        info!(
            "{}: features acked {:#x}, header {} bytes",
            self.name,
            self.acked,
            self.layout().size()
        );
        self.configure_pumps();
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // No CONFIG: QEMU's vhost-user-net keeps the config space itself and refuses a
        // backend that offers it.
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&mut self) {
        for p in 0..self.pairs.len() {
            self.watch(p, false, false);
            self.watch(p, true, false);
            let pair = &mut self.pairs[p];
            pair.rx = None;
            pair.tx = None;
        }
        self.acked = 0;
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn exit_event(
        &self,
        _thread_index: usize,
    ) -> Option<(
        vmm_sys_util::event::EventConsumer,
        vmm_sys_util::event::EventNotifier,
    )> {
        // A fresh pair for each daemon: the worker of a finished connection must exit (its
        // daemon joins it on drop) while this backend serves the next one.
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

    fn update_memory(&mut self, mem: Mem) -> std::io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn stop_vring(&mut self, queue_index: u32) -> std::io::Result<()> {
        // The buffers the pumps hold go back (length 0) before the frontend reads the base.
        let q = queue_index as usize;
        if q >= self.num_queues() {
            return Ok(());
        }
        let p = q / 2;
        let tx = q % 2 == 1;
        self.watch(p, tx, false);
        let (Some(mem), Some(vring)) = (self.mem.as_ref().map(|m| m.memory()), self.vrings.get(q))
        else {
            return Ok(());
        };
        let vring = vring.clone();
        let pair = &mut self.pairs[p];
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
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock<Mem>],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        if self.vrings.len() != vrings.len() {
            self.vrings = vrings.to_vec();
        }
        let ev = usize::from(device_event);
        let nq = self.num_queues();
        let (p, tx) = if ev < nq {
            (ev / 2, ev % 2 == 1)
        } else if ev > nq && ev <= nq + 2 * self.pairs.len() {
            let k = ev - nq - 1;
            (k / 2, k % 2 == 1)
        } else {
            return Ok(());
        };
        let Some(vring) = vrings.get(2 * p + usize::from(tx)) else {
            return Ok(());
        };
        if tx {
            self.run_tx(p, vring);
        } else {
            self.run_rx(p, vring);
        }
        Ok(())
    }
}

/// A backend ready for `VhostUserDaemon`.
pub type Shared<B> = Arc<RwLock<NetBackend<B>>>;
