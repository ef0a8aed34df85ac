//! The virtio-net device a VMM embeds: features, config space, status, queues, the control
//! queue and the event loop hooks, over any `net-api` backend.
//!
//! The VMM's transport (PCI or MMIO) forwards the driver's register accesses:
//! [`NetDevice::features`], [`NetDevice::ack_features`], [`NetDevice::set_status`],
//! [`NetDevice::read_config`], the queue setters ([`NetDevice::set_queue_size`],
//! [`NetDevice::set_queue_addresses`], [`NetDevice::set_queue_ready`]). Queue notifications
//! arrive on the device's kick eventfds ([`NetDevice::kick_fd`], for KVM's
//! `register_ioevent`); the device interrupts the guest through an [`Interrupt`] (a callback,
//! or [`crate::irq::EventFdInterrupts`] for KVM's `register_irqfd`).
//!
//! The event loop: poll every fd of [`NetDevice::watches`] for its interest and call
//! [`NetDevice::handle`] with the watch's event when it fires; when
//! [`NetDevice::watch_generation`] changes after a call, fetch the watches again (the device
//! polls a backend's receive fd only while it holds guest buffers, and its transmit fd only
//! while the backend is full, so a level-triggered poll never spins).
//!
//! Queue transport indices: `2i` receive and `2i + 1` transmit of pair `i`, then the control
//! queue: index `2N` with `VIRTIO_NET_F_MQ` (N queue pairs), index 2 without.

use std::io;

use log::{info, warn};
use net_api::{Backend, Capabilities, Interest, MacAddr, QueuePair, RxFilter};
use virtio_bindings::virtio_config as vc;
use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring as vr;
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod control;
mod types;

pub use types::{CtrlStats, DeviceConfig, DeviceError, DeviceStats, Event, Watch};

use crate::chain::Seg;
use crate::codec::HdrLayout;
use crate::ctrl::GUEST_OFFLOAD_BITS;
use crate::engine::{EngineError, PairConfig, PairEngine, RunOutcome, Side, Work};
use crate::features::{bit, check_dependencies, offload_features};
use crate::irq::{Interrupt, IrqCause};
use crate::mem::GuestRegions;
use crate::pump::BUDGET;
use crate::queue::{ConfigError, SplitQueue};

/// `VIRTIO_CONFIG_S_*` as a byte.
const S_FEATURES_OK: u8 = vc::VIRTIO_CONFIG_S_FEATURES_OK as u8;
const S_DRIVER_OK: u8 = vc::VIRTIO_CONFIG_S_DRIVER_OK as u8;
const S_NEEDS_RESET: u8 = vc::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
const S_FAILED: u8 = vc::VIRTIO_CONFIG_S_FAILED as u8;

/// Bytes of the config space this device has (`mac` .. `duplex`).
pub const CONFIG_LEN: usize = 17;

/// The queue a transport index stands for under the acked features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Rx(u16),
    Tx(u16),
    Ctrl,
}

/// A virtio-net device over a backend `B`, interrupting through `I`.
pub struct NetDevice<B: Backend, I: Interrupt> {
    name: String,
    caps: Capabilities,
    cfg: DeviceConfig,
    irq: I,
    offered: u64,
    acked: u64,
    status: u8,
    mac: Option<MacAddr>,
    mtu: u16,
    link_up: bool,
    announce: bool,
    queues: Vec<SplitQueue>,
    kicks: Vec<EventFd>,
    pairs: Vec<PairEngine<B::Queue>>,
    pair_cfg: Option<PairConfig>,
    active_pairs: u16,
    guest_rx: u64,
    filter: RxFilter,
    filter_in_backend: bool,
    ctrl_segs: Vec<Seg>,
    ctrl_stats: CtrlStats,
    needs_reset: u64,
    generation: u64,
    _backend: B,
}

impl<B: Backend, I: Interrupt> std::fmt::Debug for NetDevice<B, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("backend", &self.name)
            .field("status", &self.status)
            .field("acked", &format_args!("{:#x}", self.acked))
            .field("active_pairs", &self.active_pairs)
            .finish_non_exhaustive()
    }
}

impl<B: Backend, I: Interrupt> NetDevice<B, I> {
    /// Opens `cfg.queue_pairs` queue pairs of `backend` (detached until the driver starts)
    /// and builds the device.
    pub fn new(mut backend: B, cfg: DeviceConfig, irq: I) -> Result<Self, DeviceError> {
        let caps = backend.capabilities();
        if cfg.queue_pairs == 0 || cfg.queue_pairs > caps.max_queue_pairs {
            return Err(DeviceError::Config(format!(
                "{} queue pairs asked for; {} has 1 to {}",
                cfg.queue_pairs,
                backend.name(),
                caps.max_queue_pairs
            )));
        }
        if cfg.queue_pairs > 0x7fff {
            return Err(DeviceError::Config("at most 32767 queue pairs".into()));
        }
        let qs = cfg.max_queue_size;
        if qs == 0 || !qs.is_power_of_two() || qs > 32768 {
            return Err(DeviceError::Config(format!(
                "max queue size {qs}: use a power of two from 1 to 32768"
            )));
        }
        let mut pairs = Vec::with_capacity(usize::from(cfg.queue_pairs));
        for i in 0..cfg.queue_pairs {
            let mut q = backend.open_queue_pair(i)?;
            q.set_attached(false)?;
            pairs.push(PairEngine::new(q, false));
        }
        let nq = 2 * cfg.queue_pairs + u16::from(cfg.ctrl_queue);
        let queues = (0..nq).map(|_| SplitQueue::new(qs)).collect();
        let kicks = (0..nq)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let mac = cfg.mac.or(caps.mac);
        let mtu = cfg.mtu.unwrap_or(caps.mtu);
        let mut dev = NetDevice {
            name: backend.name().to_string(),
            offered: 0,
            acked: 0,
            status: 0,
            mac,
            mtu,
            link_up: true,
            announce: false,
            queues,
            kicks,
            pairs,
            pair_cfg: None,
            active_pairs: 1,
            guest_rx: 0,
            filter: RxFilter::default(),
            filter_in_backend: false,
            ctrl_segs: Vec::new(),
            ctrl_stats: CtrlStats::default(),
            needs_reset: 0,
            generation: 0,
            caps,
            cfg,
            irq,
            _backend: backend,
        };
        dev.offered = dev.compute_features();
        Ok(dev)
    }

    fn compute_features(&self) -> u64 {
        let mut f = bit(vc::VIRTIO_F_VERSION_1)
            | bit(vr::VIRTIO_RING_F_EVENT_IDX)
            | bit(vr::VIRTIO_RING_F_INDIRECT_DESC)
            | bit(vn::VIRTIO_NET_F_MTU)
            | bit(vn::VIRTIO_NET_F_STATUS)
            | bit(vn::VIRTIO_NET_F_SPEED_DUPLEX)
            | offload_features(&self.caps);
        if self.mac.is_some() {
            f |= bit(vn::VIRTIO_NET_F_MAC);
        }
        if self.cfg.mergeable_rx {
            f |= bit(vn::VIRTIO_NET_F_MRG_RXBUF);
        }
        if self.cfg.ctrl_queue {
            f |= bit(vn::VIRTIO_NET_F_CTRL_VQ)
                | bit(vn::VIRTIO_NET_F_CTRL_RX)
                | bit(vn::VIRTIO_NET_F_CTRL_RX_EXTRA)
                | bit(vn::VIRTIO_NET_F_CTRL_VLAN)
                | bit(vn::VIRTIO_NET_F_GUEST_ANNOUNCE)
                | bit(vn::VIRTIO_NET_F_CTRL_MAC_ADDR);
            if self.cfg.queue_pairs > 1 {
                f |= bit(vn::VIRTIO_NET_F_MQ);
            }
            if f & GUEST_OFFLOAD_BITS != 0 {
                f |= bit(vn::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);
            }
        }
        f
    }

    /// The features offered. ACCESS_PLATFORM is never offered (no IOMMU translation).
    pub fn features(&self) -> u64 {
        self.offered
    }

    /// The features the driver acked (masked to the offered ones).
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Takes the driver's features (all 64 bits: a transport that sees them 32 bits at a
    /// time assembles them first); bits not offered are dropped.
    pub fn ack_features(&mut self, features: u64) -> Result<(), DeviceError> {
        if self.status & (S_FEATURES_OK | S_DRIVER_OK) != 0 {
            return Err(DeviceError::FeaturesLocked);
        }
        self.acked = features & self.offered;
        Ok(())
    }

    fn has(&self, feature: u32) -> bool {
        self.acked & bit(feature) != 0
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Whether the device is in `NEEDS_RESET`.
    pub fn needs_reset(&self) -> bool {
        self.status & S_NEEDS_RESET != 0
    }

    /// How many queues the transport exposes (`2 * queue_pairs`, plus 1 with the control
    /// queue).
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// The queue pairs in use (1 until the driver sets more with `VIRTIO_NET_CTRL_MQ`).
    pub fn active_queue_pairs(&self) -> u16 {
        self.active_pairs
    }

    /// The receive filter the driver programmed.
    pub fn rx_filter(&self) -> &RxFilter {
        &self.filter
    }

    /// The MAC address (config space, or `CTRL_MAC_ADDR_SET`).
    pub fn mac(&self) -> Option<MacAddr> {
        self.mac
    }

    /// The receive offloads in force, as `GUEST_*` feature bits.
    pub fn guest_offloads(&self) -> u64 {
        self.guest_rx
    }

    fn role(&self, index: u16) -> Option<Role> {
        let n = self.cfg.queue_pairs;
        let mq = self.has(vn::VIRTIO_NET_F_MQ);
        let ctrl = if mq { 2 * n } else { 2 };
        if index == ctrl && self.has(vn::VIRTIO_NET_F_CTRL_VQ) {
            Some(Role::Ctrl)
        } else if index < 2 * n && (mq || index < 2) {
            Some(if index % 2 == 0 {
                Role::Rx(index / 2)
            } else {
                Role::Tx(index / 2)
            })
        } else {
            None
        }
    }

    fn queue_index_check(&self, index: u16, what: &'static str) -> Result<usize, DeviceError> {
        if usize::from(index) >= self.queues.len() {
            return Err(DeviceError::NoSuchQueue {
                index,
                count: self.num_queues(),
            });
        }
        if self.status & S_DRIVER_OK != 0 {
            return Err(DeviceError::Running { what });
        }
        Ok(usize::from(index))
    }

    /// The queue at a transport index, for save/restore or inspection.
    pub fn queue(&self, index: u16) -> Option<&SplitQueue> {
        self.queues.get(usize::from(index))
    }

    /// The largest size of a queue.
    pub fn queue_max_size(&self) -> u16 {
        self.cfg.max_queue_size
    }

    /// Sets a queue's size: a power of two up to the maximum, before `DRIVER_OK`.
    pub fn set_queue_size(&mut self, index: u16, size: u16) -> Result<(), DeviceError> {
        let i = self.queue_index_check(index, "a queue size")?;
        self.queues[i]
            .set_size(size)
            .map_err(|_| DeviceError::InvalidQueueSize {
                index,
                size,
                max: self.cfg.max_queue_size,
            })
    }

    /// Sets a queue's ring addresses, before `DRIVER_OK`.
    pub fn set_queue_addresses(
        &mut self,
        index: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<(), DeviceError> {
        let i = self.queue_index_check(index, "queue addresses")?;
        self.queues[i]
            .set_addresses(desc, avail, used)
            .map_err(|e| match e {
                ConfigError::Alignment { what, addr, .. } => {
                    DeviceError::InvalidQueueAddress { index, what, addr }
                }
                ConfigError::Size { .. } => DeviceError::Config(e.to_string()),
            })
    }

    /// Marks a queue ready (or not), before `DRIVER_OK`.
    pub fn set_queue_ready(&mut self, index: u16, ready: bool) -> Result<(), DeviceError> {
        let i = self.queue_index_check(index, "queue readiness")?;
        self.queues[i].set_ready(ready);
        Ok(())
    }

    /// The eventfd the driver's notifications for a queue land on (for `register_ioevent`).
    pub fn kick_fd(&self, index: u16) -> Option<&EventFd> {
        self.kicks.get(usize::from(index))
    }

    /// Reads the config space (`mac`, `status`, `max_virtqueue_pairs`, `mtu`, `speed`,
    /// `duplex`, little-endian); bytes beyond it read as zero.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; CONFIG_LEN];
        if let Some(mac) = self.mac {
            cfg[0..6].copy_from_slice(&mac.0);
        }
        let mut st = 0u16;
        if self.link_up {
            st |= vn::VIRTIO_NET_S_LINK_UP as u16;
        }
        if self.announce {
            st |= vn::VIRTIO_NET_S_ANNOUNCE as u16;
        }
        cfg[6..8].copy_from_slice(&st.to_le_bytes());
        cfg[8..10].copy_from_slice(&self.cfg.queue_pairs.to_le_bytes());
        cfg[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        cfg[12..16].copy_from_slice(&self.cfg.speed_mbps.unwrap_or(u32::MAX).to_le_bytes());
        cfg[16] = match self.cfg.full_duplex {
            Some(true) => 1,
            Some(false) => 0,
            None => 0xff,
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| cfg.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes the config space: only a legacy driver's MAC write (no `VERSION_1`, no
    /// `CTRL_MAC_ADDR`) has an effect; everything else is read-only and ignored.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        let legacy_mac = !self.has(vc::VIRTIO_F_VERSION_1)
            && !self.has(vn::VIRTIO_NET_F_CTRL_MAC_ADDR)
            && self.mac.is_some();
        let end = offset.saturating_add(data.len() as u64);
        if !legacy_mac || end > 6 {
            warn!(
                "{}: ignored write of {} config bytes at {offset}",
                self.name,
                data.len()
            );
            return;
        }
        if let Some(mac) = self.mac.as_mut() {
            mac.0[offset as usize..end as usize].copy_from_slice(data);
            self.filter.mac = Some(*mac);
            if let Err(e) = self.push_filter() {
                warn!(
                    "{}: the backend refused the new MAC address: {e}",
                    self.name
                );
            }
        }
    }

    /// Sets the link status (config `status`, with a config interrupt once running).
    pub fn set_link_up(&mut self, up: bool) -> io::Result<()> {
        if self.link_up == up {
            return Ok(());
        }
        self.link_up = up;
        self.config_changed()
    }

    /// Asks the guest to announce itself (gratuitous ARP / unsolicited NA) after a restore or
    /// a backend switch. Returns `false` when the guest did not negotiate `GUEST_ANNOUNCE`.
    pub fn announce(&mut self) -> io::Result<bool> {
        if !self.has(vn::VIRTIO_NET_F_GUEST_ANNOUNCE) || self.status & S_DRIVER_OK == 0 {
            return Ok(false);
        }
        self.announce = true;
        self.config_changed()?;
        Ok(true)
    }

    /// Whether an announce request is pending (cleared by the guest's ack).
    pub fn announce_pending(&self) -> bool {
        self.announce
    }

    fn config_changed(&mut self) -> io::Result<()> {
        if self.status & S_DRIVER_OK != 0 {
            self.irq.trigger(IrqCause::Config)?;
        }
        Ok(())
    }

    /// Writes the device status. Writing 0 resets the device. `FEATURES_OK` is kept only when
    /// the acked features are consistent (the driver reads the status back to check);
    /// `DRIVER_OK` starts the device: the queues are checked against `mem` and the backend is
    /// programmed with the negotiated offloads.
    pub fn set_status<M: GuestMemory>(&mut self, status: u8, mem: &M) -> Result<(), DeviceError> {
        if status == 0 {
            self.reset()?;
            return Ok(());
        }
        // A driver may not clear status bits except by a reset (virtio 1.2 2.1.2): keep them,
        // so that features and queues cannot change under a running device.
        let newly = status & !self.status;
        let mut st = (status | self.status) & !S_NEEDS_RESET | (self.status & S_NEEDS_RESET);
        if newly & S_FEATURES_OK != 0 {
            if let Err(e) = check_dependencies(self.acked) {
                self.status = st & !S_FEATURES_OK;
                return Err(e.into());
            }
        }
        if newly & S_DRIVER_OK != 0 && status & S_FAILED == 0 {
            if self.has(vc::VIRTIO_F_VERSION_1) && st & S_FEATURES_OK == 0 {
                self.status = st & !S_DRIVER_OK;
                return Err(DeviceError::FeaturesNotOk);
            }
            self.status = st;
            if let Err(e) = self.activate(mem) {
                self.enter_needs_reset();
                return Err(e);
            }
            self.generation += 1;
            // What the driver queued before DRIVER_OK, and the notifications it needs
            // (EVENT_IDX), are taken care of now.
            return self.process_all(mem);
        } else if newly & S_DRIVER_OK != 0 {
            // DRIVER_OK together with FAILED: the driver gave up; do not start.
            st &= !S_DRIVER_OK;
        }
        self.status = st;
        self.generation += 1;
        Ok(())
    }

    fn enter_needs_reset(&mut self) {
        if self.status & S_NEEDS_RESET == 0 {
            self.needs_reset += 1;
            warn!("{}: device needs reset", self.name);
        }
        self.status |= S_NEEDS_RESET;
        self.generation += 1;
        if let Err(e) = self.config_changed() {
            warn!("{}: config interrupt failed: {e}", self.name);
        }
    }

    fn reset(&mut self) -> Result<(), DeviceError> {
        for q in &mut self.queues {
            q.reset();
        }
        // Reset all the way even when the backend fails to detach a queue; report the first
        // failure.
        let mut first_err = None;
        for p in &mut self.pairs {
            p.stop();
            if let Err(e) = p.set_attached(false) {
                first_err.get_or_insert(e);
            }
        }
        self.pair_cfg = None;
        self.status = 0;
        self.acked = 0;
        self.active_pairs = 1;
        self.guest_rx = 0;
        self.announce = false;
        self.mac = self.cfg.mac.or(self.caps.mac);
        self.filter = RxFilter::default();
        self.filter_in_backend = false;
        self.generation += 1;
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    fn usable_pairs(&self) -> u16 {
        if self.has(vn::VIRTIO_NET_F_MQ) {
            self.cfg.queue_pairs
        } else {
            1
        }
    }

    fn pair_ready(&self, i: u16, mem: &GuestRegions<'_>) -> bool {
        let (rx, tx) = (usize::from(2 * i), usize::from(2 * i + 1));
        self.queues[rx].is_valid(mem) && self.queues[tx].is_valid(mem)
    }

    fn activate<M: GuestMemory>(&mut self, mem: &M) -> Result<(), DeviceError> {
        let mem = GuestRegions::from_memory(mem)?;
        if !self.pair_ready(0, &mem) {
            return Err(DeviceError::QueueNotUsable { index: 0 });
        }
        if self.has(vn::VIRTIO_NET_F_CTRL_VQ) {
            let c = self.ctrl_index();
            if !self.queues[usize::from(c)].is_valid(&mem) {
                return Err(DeviceError::QueueNotUsable { index: c });
            }
        }
        let event_idx = self.has(vr::VIRTIO_RING_F_EVENT_IDX);
        for q in &mut self.queues {
            q.set_event_idx(event_idx);
        }
        let layout = HdrLayout::from_features(self.acked);
        for p in &mut self.pairs {
            p.stop();
        }
        self.pair_cfg = None;
        // Attach pair 0 first: a detached TAP queue refuses TUNSETOFFLOAD.
        self.set_active_pairs(1)?;
        self.guest_rx = self.acked & GUEST_OFFLOAD_BITS;
        self.apply_guest_offloads()?;
        self.filter = RxFilter::default();
        self.filter.mac = self.mac;
        self.filter
            .set_vlan_filtering(self.has(vn::VIRTIO_NET_F_CTRL_VLAN));
        self.push_filter()?;
        self.set_active_pairs(1)?;
        info!(
            "{}: driver ok, features {:#x}, header {} bytes, {} queue pair(s) usable",
            self.name,
            self.acked,
            layout.size(),
            self.usable_pairs()
        );
        Ok(())
    }

    fn ctrl_index(&self) -> u16 {
        if self.has(vn::VIRTIO_NET_F_MQ) {
            2 * self.cfg.queue_pairs
        } else {
            2
        }
    }

    /// Programs the receive offloads in force into the backend and the pumps: the pumps
    /// start at the first call (`DRIVER_OK`) and are reconfigured afterwards
    /// (`CTRL_GUEST_OFFLOADS`).
    fn apply_guest_offloads(&mut self) -> Result<(), DeviceError> {
        let cfg = PairConfig::new(&self.caps, self.mtu, self.acked, self.guest_rx);
        let first = self.pair_cfg.is_none();
        for p in &mut self.pairs {
            if self.caps.vnet_hdr {
                p.backend_mut().set_rx_offloads(cfg.backend_rx_offloads)?;
            }
            if first {
                p.start(&cfg);
            } else {
                p.reconfigure_rx(&cfg);
            }
        }
        self.pair_cfg = Some(cfg);
        Ok(())
    }

    fn push_filter(&mut self) -> Result<(), DeviceError> {
        let mut all = true;
        for p in &mut self.pairs {
            all &= p.backend_mut().set_rx_filter(&self.filter)?;
        }
        self.filter_in_backend = all;
        Ok(())
    }

    fn set_active_pairs(&mut self, n: u16) -> Result<(), DeviceError> {
        for (i, p) in self.pairs.iter_mut().enumerate() {
            p.set_attached(i < usize::from(n))?;
        }
        self.active_pairs = n;
        self.generation += 1;
        Ok(())
    }

    /// Changes whenever the set of [`NetDevice::watches`] may have changed.
    pub fn watch_generation(&self) -> u64 {
        self.generation
    }

    /// The fds to poll now.
    pub fn watches(&self) -> Vec<Watch<'_>> {
        let mut w: Vec<Watch<'_>> = self
            .kicks
            .iter()
            .enumerate()
            .map(|(i, k)| Watch {
                fd: crate::irq::borrow_eventfd(k),
                interest: Interest::Readable,
                event: Event::Kick(i as u16),
            })
            .collect();
        if self.status & S_DRIVER_OK == 0 || self.needs_reset() {
            return w;
        }
        for (i, p) in self
            .pairs
            .iter()
            .enumerate()
            .take(usize::from(self.active_pairs))
        {
            let i = i as u16;
            let (rx, tx) = p.wants();
            if rx {
                let r = p.backend().rx_readiness();
                w.push(Watch {
                    fd: r.fd,
                    interest: r.interest,
                    event: Event::BackendRx(i),
                });
            }
            if tx {
                let r = p.backend().tx_readiness();
                w.push(Watch {
                    fd: r.fd,
                    interest: r.interest,
                    event: Event::BackendTx(i),
                });
            }
        }
        w
    }

    /// Handles one event from [`NetDevice::watches`]. A guest that broke a ring puts the
    /// device in `NEEDS_RESET` (and this returns `Ok`); `Err` is the backend's or the VMM's.
    pub fn handle<M: GuestMemory>(&mut self, event: Event, mem: &M) -> Result<(), DeviceError> {
        if let Event::Kick(i) = event {
            if let Some(k) = self.kicks.get(usize::from(i)) {
                // Drain the counter; an empty eventfd (spurious wake-up) is fine.
                let _ = k.read();
            }
        }
        if self.status & S_DRIVER_OK == 0 || self.needs_reset() {
            return Ok(());
        }
        let role = match event {
            Event::Kick(i) => self.role(i),
            Event::BackendRx(p) => Some(Role::Rx(p)),
            Event::BackendTx(p) => Some(Role::Tx(p)),
        };
        let mem = GuestRegions::from_memory(mem)?;
        match role {
            Some(Role::Rx(p)) if p < self.active_pairs => self.run_pair(p, Work::RX, &mem),
            Some(Role::Tx(p)) if p < self.active_pairs => self.run_pair(p, Work::TX, &mem),
            Some(Role::Ctrl) => self.run_ctrl(&mem),
            _ => Ok(()),
        }
    }

    /// Runs every active queue once (after restore, or from a simple poll loop).
    pub fn process_all<M: GuestMemory>(&mut self, mem: &M) -> Result<(), DeviceError> {
        if self.status & S_DRIVER_OK == 0 || self.needs_reset() {
            return Ok(());
        }
        let mem = GuestRegions::from_memory(mem)?;
        if self.has(vn::VIRTIO_NET_F_CTRL_VQ) {
            self.run_ctrl(&mem)?;
        }
        for p in 0..self.active_pairs {
            self.run_pair(p, Work::BOTH, &mem)?;
        }
        Ok(())
    }

    /// Moves frames on pair `p` through its engine, then interrupts the driver and kicks
    /// ourselves for what is left, as the engine says.
    fn run_pair(&mut self, p: u16, work: Work, mem: &GuestRegions<'_>) -> Result<(), DeviceError> {
        let filter = if self.filter_in_backend || self.filter.accepts_all() {
            None
        } else {
            Some(&self.filter)
        };
        let (rxi, txi) = (usize::from(2 * p), usize::from(2 * p + 1));
        let Some(engine) = self.pairs.get_mut(usize::from(p)) else {
            return Ok(());
        };
        let before = engine.wants();
        let (head, tail) = self.queues.split_at_mut(txi);
        let res = engine.run(&mut head[rxi], &mut tail[0], mem, work, filter, BUDGET);
        let after = engine.wants();
        if before != after {
            self.generation += 1;
        }
        self.after_run(p, res)
    }

    fn after_run(
        &mut self,
        p: u16,
        res: Result<RunOutcome, EngineError>,
    ) -> Result<(), DeviceError> {
        let (rxi, txi) = (2 * p, 2 * p + 1);
        match res {
            Ok(out) => {
                if out.notify_rx {
                    self.irq.trigger(IrqCause::Queue(rxi))?;
                }
                if out.notify_tx {
                    self.irq.trigger(IrqCause::Queue(txi))?;
                }
                // Come back through the poll loop, after the other queues had a turn.
                if out.more_rx {
                    self.kicks[usize::from(rxi)].write(1)?;
                }
                if out.more_tx {
                    self.kicks[usize::from(txi)].write(1)?;
                }
                Ok(())
            }
            Err(EngineError::Ring { side, error }) => {
                let index = if side == Side::Rx { rxi } else { txi };
                warn!("{}: queue {index}: {error}", self.name);
                self.enter_needs_reset();
                Ok(())
            }
            Err(EngineError::Backend(e)) => Err(e.into()),
        }
    }

    /// Returns every guest buffer the device holds (receive buffers waiting for frames, with
    /// length 0; a transmit frame half sent when the backend was full, dropped and counted),
    /// so that the queues' state (`queue(i)`) describes every buffer: call it on a paused
    /// device before saving it for a snapshot or a migration.
    pub fn release_buffers<M: GuestMemory>(&mut self, mem: &M) -> Result<(), DeviceError> {
        if self.status & S_DRIVER_OK == 0 || self.needs_reset() {
            return Ok(());
        }
        let mem = GuestRegions::from_memory(mem)?;
        for p in 0..self.pairs.len() {
            for side in [Side::Rx, Side::Tx] {
                let qi = 2 * p + usize::from(side == Side::Tx);
                let res = self.pairs[p].release(side, &mut self.queues[qi], &mem);
                let res = res.map(|notify| RunOutcome {
                    notify_rx: notify && side == Side::Rx,
                    notify_tx: notify && side == Side::Tx,
                    ..RunOutcome::default()
                });
                self.after_run(p as u16, res)?;
            }
        }
        self.generation += 1;
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> DeviceStats {
        DeviceStats {
            pairs: self.pairs.iter().map(|p| p.stats()).collect(),
            ctrl: self.ctrl_stats,
            needs_reset: self.needs_reset,
        }
    }
}
