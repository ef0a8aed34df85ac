//! One frontend's session: the vhost-user protocol, from connect to disconnect.
//!
//! The session thread reads requests ([`crate::wire`]), keeps what the frontend configured
//! (features, memory table, each ring's size, addresses, base, fds, enable state), and tells
//! the workers (one per queue pair, [`crate::worker`]) when a ring starts, stops or changes.
//! A ring starts when it has its size, addresses, kick eventfd and the features are set; it
//! runs while enabled (always, without `VHOST_USER_F_PROTOCOL_FEATURES`). `SET_VRING_ENABLE`
//! may come before `SET_FEATURES`, as QEMU 7.2+ sends it on start and reconnect: it is
//! simply remembered.
//!
//! Whatever a frontend sends that the spec does not allow, or this daemon does not offer,
//! ends the session with one log line naming the request and the reason (with a negative
//! reply-ack first when the frontend asked for one). Kick and call fds must be eventfds: a
//! socket, pipe or file is refused when it is handed over.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info};
use net_virtio::engine::{PairConfig, Side};
use net_virtio::SplitQueue;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_ring as vr;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{Device, PROTOCOL_FEATURES};
use crate::memory::FrontendMemory;
use crate::wire::{self, RawMsg, Request, FLAG_NEED_REPLY};
use crate::worker::Ctl;

/// How long the session waits for a worker to stop a ring.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The frontend closed the connection.
    Disconnected,
    /// The frontend sent what is refused (the reason).
    Refused(String),
    /// A fault on an fd the frontend gave, or in the backend (the reason).
    Fault(String),
    /// The frontend did not finish setting up in time.
    Stalled,
    /// The daemon is shutting down.
    Shutdown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Disconnected => f.write_str("disconnected"),
            End::Refused(why) => write!(f, "refused: {why}"),
            End::Fault(why) => write!(f, "fault: {why}"),
            End::Stalled => {
                f.write_str("stalled in its handshake (no SET_OWNER and GET_FEATURES in time)")
            }
            End::Shutdown => f.write_str("the daemon is shutting down"),
        }
    }
}

#[derive(Default)]
struct Vring {
    num: Option<u16>,
    /// Guest addresses: descriptor table, available ring, used ring.
    addr: Option<(u64, u64, u64)>,
    base: u16,
    kick: Option<OwnedFd>,
    enabled: bool,
    started: bool,
}

/// A worker as the session sees it.
pub(crate) struct WorkerLink {
    pub ctl: Sender<Ctl>,
    pub wake: Arc<EventFd>,
}

impl WorkerLink {
    fn send(&self, c: Ctl) {
        // A worker that is gone reported why already (or the session is ending).
        let _ = self.ctl.send(c);
        let _ = self.wake.write(1);
    }
}

/// The protocol state of one frontend (see the module).
pub(crate) struct Session<'d> {
    device: &'d Device,
    workers: Vec<WorkerLink>,
    vrings: Vec<Vring>,
    acked: Option<u64>,
    protocol: u64,
    memory: Option<Arc<FrontendMemory>>,
    /// Requests handled.
    pub requests: u64,
    /// Whether the frontend has identified itself (`SET_OWNER` and the features asked for):
    /// the handshake is over, and it may wait as long as it likes for its guest's driver.
    pub running: bool,
    owner: bool,
    asked_features: bool,
}

/// Whether `fd` is an eventfd (`/proc/self/fd/N` names `anon_inode:[eventfd]`).
fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| format!("F_GETFL: {e}"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags))
        .map(|_| ())
        .map_err(|e| format!("F_SETFL: {e}"))
}

impl<'d> Session<'d> {
    pub(crate) fn new(device: &'d Device, workers: Vec<WorkerLink>) -> Session<'d> {
        Session {
            device,
            workers,
            vrings: (0..device.rings()).map(|_| Vring::default()).collect(),
            acked: None,
            protocol: 0,
            memory: None,
            requests: 0,
            running: false,
            owner: false,
            asked_features: false,
        }
    }

    /// The workers.
    pub(crate) fn links(&self) -> &[WorkerLink] {
        &self.workers
    }

    /// Handles one message; `Err` ends the session.
    pub(crate) fn handle(&mut self, socket: &UnixStream, m: RawMsg) -> Result<(), End> {
        self.requests += 1;
        let (code, flags) = (m.request, m.flags);
        let name = wire::name(code);
        let need_reply = flags & FLAG_NEED_REPLY != 0
            && self.protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
        let req = wire::parse(m).map_err(|e| End::Refused(e.to_string()))?;
        debug!("{}: {name}", self.device.name);
        let res = self.apply(req);
        let reply = match &res {
            Ok(Some(body)) => Some(body.clone()),
            Ok(None) if need_reply => Some(0u64.to_le_bytes().to_vec()),
            Err(_) if need_reply => Some(1u64.to_le_bytes().to_vec()),
            _ => None,
        };
        if let Some(body) = reply {
            wire::reply(socket, code, &body)
                .map_err(|e| End::Fault(format!("replying to {name}: {e}")))?;
        }
        res.map(|_| ())
            .map_err(|why| End::Refused(format!("{name}: {why}")))
    }

    fn vring(&mut self, index: u32) -> Result<usize, String> {
        let i = index as usize;
        if i >= self.vrings.len() {
            return Err(format!(
                "ring {index}: the device has {}",
                self.vrings.len()
            ));
        }
        Ok(i)
    }

    fn worker(&self, ring: usize) -> (&WorkerLink, Side) {
        let side = if ring % 2 == 0 { Side::Rx } else { Side::Tx };
        (&self.workers[ring / 2], side)
    }

    /// Applies a request: `Ok(Some(body))` is a reply of its own.
    fn apply(&mut self, req: Request) -> Result<Option<Vec<u8>>, String> {
        let max = self.device.cfg.queue_size;
        match req {
            Request::GetFeatures => {
                self.asked_features = true;
                self.running |= self.owner;
                return Ok(Some(self.device.features.to_le_bytes().to_vec()));
            }
            Request::GetProtocolFeatures => {
                return Ok(Some(self.device.protocol_features().to_le_bytes().to_vec()))
            }
            Request::GetQueueNum => {
                return Ok(Some(
                    u64::from(self.device.cfg.queue_pairs)
                        .to_le_bytes()
                        .to_vec(),
                ))
            }
            Request::SetOwner => {
                self.owner = true;
                self.running |= self.asked_features;
            }
            Request::ResetOwner | Request::ResetDevice => self.reset(),
            Request::SetFeatures(f) => {
                if f & !self.device.features != 0 {
                    return Err(format!(
                        "features {:#x} were not offered (offered {:#x})",
                        f & !self.device.features,
                        self.device.features
                    ));
                }
                self.acked = Some(f);
                let cfg = PairConfig::new(&self.device.caps, self.device.caps.mtu, f, f);
                let event_idx = f & (1 << vr::VIRTIO_RING_F_EVENT_IDX) != 0;
                for w in &self.workers {
                    w.send(Ctl::Config(cfg, event_idx, self.device.caps.vnet_hdr));
                }
                info!(
                    "{}: features acked {f:#x}, header {} bytes",
                    self.device.name,
                    cfg.layout.size()
                );
                // Rings waiting for the features, and enable states that now mean something.
                for i in 0..self.vrings.len() {
                    self.try_start(i);
                    self.push_enable(i);
                }
            }
            Request::SetProtocolFeatures(p) => {
                let offered = self.device.protocol_features();
                if p & !offered != 0 {
                    return Err(format!(
                        "protocol features {:#x} were not offered (offered {offered:#x})",
                        p & !offered
                    ));
                }
                self.protocol = p;
            }
            Request::SetMemTable(regions) => {
                let mem = FrontendMemory::map(regions).map_err(|e| e.to_string())?;
                info!("{}: memory table {mem:?}", self.device.name);
                let mem = Arc::new(mem);
                for w in &self.workers {
                    w.send(Ctl::Memory(Some(mem.clone())));
                }
                self.memory = Some(mem);
            }
            Request::SetVringNum { index, num } => {
                let i = self.vring(index)?;
                let n = u16::try_from(num)
                    .ok()
                    .filter(|n| n.is_power_of_two() && *n <= max);
                let Some(n) = n else {
                    return Err(format!("ring size {num}: a power of two up to {max}"));
                };
                if self.vrings[i].started {
                    return Err(format!("ring {index} is running"));
                }
                self.vrings[i].num = Some(n);
            }
            Request::SetVringAddr {
                index,
                desc,
                used,
                avail,
                ..
            } => {
                let i = self.vring(index)?;
                if self.vrings[i].started {
                    return Err(format!("ring {index} is running"));
                }
                let mem = self.memory.as_ref().ok_or("no memory table yet")?;
                let n = u64::from(self.vrings[i].num.unwrap_or(max));
                let tr = |what: &str, addr: u64, len: u64| {
                    mem.user_to_guest(addr, len).ok_or(format!(
                        "ring {index}: the {what} at {addr:#x} is not in the memory table"
                    ))
                };
                let d = tr("descriptor table", desc, 16 * n)?;
                let a = tr("available ring", avail, 6 + 2 * n)?;
                let u = tr("used ring", used, 6 + 8 * n)?;
                self.vrings[i].addr = Some((d, a, u));
            }
            Request::SetVringBase { index, base } => {
                let i = self.vring(index)?;
                let b = u16::try_from(base).map_err(|_| format!("base {base} is above 65535"))?;
                if self.vrings[i].started {
                    return Err(format!("ring {index} is running"));
                }
                self.vrings[i].base = b;
            }
            Request::GetVringBase { index } => {
                let i = self.vring(index)?;
                let base = self.stop(i).unwrap_or(self.vrings[i].base);
                let mut body = index.to_le_bytes().to_vec();
                body.extend_from_slice(&u32::from(base).to_le_bytes());
                return Ok(Some(body));
            }
            Request::SetVringKick { index, fd } => {
                let i = self.vring(u32::from(index))?;
                let fd = fd.ok_or("a ring without a kick fd (polling) is not supported")?;
                if !is_eventfd(&fd) {
                    return Err(format!("the kick fd of ring {index} is not an eventfd"));
                }
                set_nonblocking(&fd)?;
                // A new kick fd for a running ring: it goes on from where it is.
                if let Some(base) = self.stop(i) {
                    self.vrings[i].base = base;
                }
                self.vrings[i].kick = Some(fd);
                self.try_start(i);
            }
            Request::SetVringCall { index, fd } => {
                let i = self.vring(u32::from(index))?;
                if let Some(fd) = &fd {
                    if !is_eventfd(fd) {
                        return Err(format!("the call fd of ring {index} is not an eventfd"));
                    }
                    set_nonblocking(fd)?;
                }
                let (w, side) = self.worker(i);
                w.send(Ctl::Call { side, fd });
            }
            Request::SetVringErr { index, fd } => {
                self.vring(u32::from(index))?;
                if let Some(fd) = &fd {
                    if !is_eventfd(fd) {
                        return Err(format!("the error fd of ring {index} is not an eventfd"));
                    }
                }
                // Nothing is ever reported on it.
            }
            Request::SetVringEnable { index, on } => {
                let i = self.vring(index)?;
                self.vrings[i].enabled = on;
                self.push_enable(i);
            }
            Request::Unsupported(name) => return Err(format!("{name} is not supported")),
        }
        Ok(None)
    }

    /// Whether ring `i` runs when started: enabled, or always without protocol features.
    fn effective_enable(&self, i: usize) -> bool {
        let protocol = self.acked.is_some_and(|f| f & PROTOCOL_FEATURES != 0);
        !protocol || self.vrings[i].enabled
    }

    fn push_enable(&self, i: usize) {
        if self.vrings[i].started {
            let (w, side) = self.worker(i);
            w.send(Ctl::Enable {
                side,
                on: self.effective_enable(i),
            });
        }
    }

    /// Starts ring `i` if it has all it needs.
    fn try_start(&mut self, i: usize) {
        let max = self.device.cfg.queue_size;
        let v = &self.vrings[i];
        if v.started || self.acked.is_none() {
            return;
        }
        let (Some((d, a, u)), Some(_)) = (v.addr, v.kick.as_ref()) else {
            return;
        };
        let mut q = SplitQueue::new(max);
        if q.set_size(v.num.unwrap_or(max)).is_err() || q.set_addresses(d, a, u).is_err() {
            return;
        }
        q.set_next_avail(v.base);
        q.set_next_used(v.base);
        q.set_ready(true);
        let Some(kick) = self.vrings[i].kick.take() else {
            return;
        };
        let on = self.effective_enable(i);
        let (w, side) = self.worker(i);
        w.send(Ctl::Start {
            side,
            queue: q,
            kick,
        });
        w.send(Ctl::Enable { side, on });
        self.vrings[i].started = true;
    }

    /// Stops ring `i` if it runs; returns where it stopped.
    fn stop(&mut self, i: usize) -> Option<u16> {
        if !self.vrings[i].started {
            return None;
        }
        self.vrings[i].started = false;
        let (w, side) = self.worker(i);
        let (tx, rx) = mpsc::sync_channel(1);
        w.send(Ctl::Stop { side, reply: tx });
        let base = rx.recv_timeout(STOP_TIMEOUT).ok().flatten();
        if let Some(b) = base {
            self.vrings[i].base = b;
        }
        base
    }

    /// `RESET_DEVICE`/`RESET_OWNER`, and the end of a session: every ring stopped, memory
    /// unmapped, the virtio features forgotten. The protocol features stay: they belong to
    /// the connection (the frontend goes on expecting its reply-acks after a reset).
    pub(crate) fn reset(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop(i);
        }
        self.vrings = (0..self.device.rings()).map(|_| Vring::default()).collect();
        for w in &self.workers {
            w.send(Ctl::Memory(None));
        }
        self.memory = None;
        self.acked = None;
    }
}
