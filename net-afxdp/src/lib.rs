//! # net-afxdp: AF_XDP for volt-net
//!
//! An AF_XDP backend ([`AfXdp`]) implementing [`net_api::Backend`]: one XDP socket per queue
//! pair, bound to that queue of the interface, rings sized by the caller, batched ring
//! operations and `need_wakeup`. The kernel lets one UMEM serve a device queue, and a frame
//! can only be redirected to a socket bound to the queue it arrived on, so every VM of an
//! interface binds its sockets to the interface's one shared UMEM (`XDP_SHARED_UMEM`): one
//! region of own buffers, split between the queues, each queue's fill and completion rings
//! shared by the VMs' sockets on it, each socket with its own RX and TX rings. The first VM
//! sizes it (`queues` × `frames_per_queue` chunks of `frame_size`); later VMs use at most as
//! many queues and the same frame size. Frames reach the sockets through the project's own XDP program
//! (`src/bpf/steer.bpf.c`, compiled by clang at build time, loaded with libbpf-rs): frames for
//! the VM's MAC go to its socket for the queue they arrived on, broadcast and multicast to the
//! one VM that asks for them, and everything else passes to the host's stack, so the host
//! keeps its networking on the same NIC. Several VMs share an interface; adding or removing
//! one updates the program's maps without reloading it.
//!
//! - **No virtio-net header.** AF_XDP carries bare frames, so [`AfXdp`] reports no offloads:
//!   `net-virtio` completes checksums and segments GSO frames in software before they get
//!   here, and delivers received frames with a plain header.
//! - **Modes.** The program attaches in native (driver) mode or generic (skb) mode
//!   ([`AttachMode`]; `Auto` tries native first). Sockets bind zero-copy when the driver has
//!   it; [`ZeroCopy`] says what to do when it has not: `Off` (copy), `Prefer` (copy, with a
//!   warning; the mode is reported by [`AfXdpQueue::zero_copy`]) or `Require` (fail). Never a
//!   silent downgrade.
//! - **Frame size.** A frame must fit one UMEM chunk (`frame_size` less headroom); larger
//!   frames are refused (sending: dropped as `too-large`; the capabilities say the maximum).
//!   Multi-buffer (`XDP_USE_SG`) is not used.
//! - **Lifecycle.** The program is detached and its maps freed when the last VM on an
//!   interface goes (drop), a crashed owner's program is replaced by the next process, and a
//!   program that is not ours, or ours but owned by a live process, is never touched (the
//!   open fails saying which). Nothing is pinned, so no bpffs mount is needed.
//!
//! Needs CAP_NET_ADMIN (attach), CAP_BPF or CAP_SYS_ADMIN (load, inspect) and CAP_NET_RAW
//! (sockets); errors name the capability.

use std::collections::HashMap;

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use log::warn;
use net_api::{
    Backend, Capabilities, DropReason, Interest, IoBufMut, MacAddr, OffloadSet, QueuePair,
    QueueStats, Readiness, RxFrame, TxFrame, VirtioNetHdr,
};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

mod steer;

use steer::Steering;

/// Where the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native if the driver has it, generic otherwise (reported).
    Auto,
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// Generic, after the stack allocated an skb (`XDP_FLAGS_SKB_MODE`): any interface.
    Skb,
}

impl AttachMode {
    /// `auto`, `native` or `skb`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }
}

/// What to do about zero-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Copy mode.
    Off,
    /// Zero-copy if the driver has it; copy mode with a warning otherwise.
    Prefer,
    /// Zero-copy, or the queue does not open.
    Require,
}

/// An AF_XDP failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A libbpf call failed.
    #[error("{ifname}: {what}: {source}")]
    Bpf {
        /// The interface.
        ifname: String,
        /// What was being done, and what it needs.
        what: String,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// Something else holds what was asked for.
    #[error("{0}")]
    Busy(String),
    /// A configuration that cannot work.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// A system call failed.
    #[error("{op} on {target}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The interface or queue.
        target: String,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    fn io(op: &'static str, target: &str, source: std::io::Error) -> Error {
        Error::Io {
            op,
            target: target.to_string(),
            source,
        }
    }
}

impl From<Error> for net_api::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { op, target, source } => net_api::Error::Io { op, target, source },
            other => net_api::Error::Io {
                op: "AF_XDP",
                target: String::new(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

/// How to open an AF_XDP backend.
#[derive(Debug, Clone)]
pub struct AfXdpConfig {
    /// The interface.
    pub iface: String,
    /// Queue pairs: sockets on the interface's queues `0..queues`.
    pub queues: u16,
    /// The VM's MAC: frames for it are steered to its sockets.
    pub mac: MacAddr,
    /// Also take broadcast and multicast frames (one VM per interface; the host stack then
    /// does not see them).
    pub broadcast: bool,
    /// Where the program runs.
    pub attach: AttachMode,
    /// Zero-copy policy.
    pub zero_copy: ZeroCopy,
    /// UMEM chunk size: 2048 or 4096.
    pub frame_size: u32,
    /// UMEM chunks per queue pair (half for receiving, half for sending).
    pub frames_per_queue: u32,
    /// RX, TX, fill and completion ring sizes (a power of two).
    pub ring_size: u32,
    /// Busy polling on the sockets (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` 20 µs).
    pub busy_poll: bool,
}

impl AfXdpConfig {
    /// One queue pair on `iface` for `mac`, everything else default: auto attach, zero-copy
    /// preferred, 4096-byte chunks, 4096 of them, rings of 2048.
    pub fn new(iface: &str, mac: MacAddr) -> Self {
        AfXdpConfig {
            iface: iface.to_string(),
            queues: 1,
            mac,
            broadcast: false,
            attach: AttachMode::Auto,
            zero_copy: ZeroCopy::Prefer,
            frame_size: 4096,
            frames_per_queue: 4096,
            ring_size: 2048,
            busy_poll: false,
        }
    }
}

/// What every VM on one interface shares in this process: the program and the UMEM.
struct Iface {
    name: String,
    steering: Steering,
    umem: Umem,
    frame_size: u32,
    ring_size: u32,
    /// Per queue: the fill and completion rings (from the first socket bound there), and
    /// the chunks in no ring.
    queues: Vec<Mutex<QueueShared>>,
}

impl std::fmt::Debug for Iface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iface")
            .field("name", &self.name)
            .field("steering", &self.steering)
            .finish_non_exhaustive()
    }
}

struct QueueShared {
    rings: Option<(FillQueue, CompQueue)>,
    free: Vec<FrameDesc>,
    /// Chunks kept for sending; the rest may go to the fill ring.
    tx_reserve: usize,
}

/// An interface in a network namespace: (the namespace's inode, ifindex). Interface indices
/// repeat across namespaces.
type IfaceKey = (u64, u32);

fn registry() -> &'static Mutex<HashMap<IfaceKey, Weak<Iface>>> {
    static R: OnceLock<Mutex<HashMap<IfaceKey, Weak<Iface>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The calling thread's network namespace.
fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Iface {
    /// The interface's shared state in this process, made now (program attached, UMEM
    /// created) by the first VM.
    fn get(cfg: &AfXdpConfig, ifindex: u32) -> Result<Arc<Iface>, Error> {
        let key = (netns_inode(), ifindex);
        let mut reg = lock(registry());
        if let Some(i) = reg.get(&key).and_then(Weak::upgrade) {
            if cfg.attach != AttachMode::Auto && cfg.attach != i.steering.mode() {
                return Err(Error::Config(format!(
                    "{} already runs volt-net's XDP program in {} mode for another VM of this process: open this one in that mode too",
                    cfg.iface,
                    i.steering.mode().as_str()
                )));
            }
            if cfg.frame_size != i.frame_size || usize::from(cfg.queues) > i.queues.len() {
                return Err(Error::Config(format!(
                    "{}'s shared UMEM has {} queues of {}-byte chunks (set by its first VM): open at most that many queues with that frame size",
                    cfg.iface,
                    i.queues.len(),
                    i.frame_size
                )));
            }
            return Ok(i);
        }
        let steering = Steering::attach(&cfg.iface, ifindex, cfg.attach)?;
        let ring = QueueSize::new(cfg.ring_size).map_err(|e| Error::Config(e.to_string()))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| Error::Config(e.to_string()))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let total = cfg.frames_per_queue * u32::from(cfg.queues);
        let (umem, mut descs) = Umem::new(
            umem_cfg,
            NonZeroU32::new(total).ok_or_else(|| Error::Config("no frames".into()))?,
            false,
        )
        .map_err(|e| {
            Error::io(
                "creating the UMEM (locked memory: raise RLIMIT_MEMLOCK)",
                &cfg.iface,
                std::io::Error::other(e.to_string()),
            )
        })?;
        let per = cfg.frames_per_queue as usize;
        let mut queues = Vec::new();
        for _ in 0..cfg.queues {
            let rest = descs.split_off(per.min(descs.len()));
            queues.push(Mutex::new(QueueShared {
                rings: None,
                free: std::mem::replace(&mut descs, rest),
                tx_reserve: per / 2,
            }));
        }
        let iface = Arc::new(Iface {
            name: cfg.iface.clone(),
            steering,
            umem,
            frame_size: cfg.frame_size,
            ring_size: cfg.ring_size,
            queues,
        });
        reg.insert(key, Arc::downgrade(&iface));
        Ok(iface)
    }
}

impl Drop for Iface {
    fn drop(&mut self) {
        let mut reg = lock(registry());
        reg.retain(|_, w| w.strong_count() > 0);
    }
}

/// A VM's registration on its interface's program, removed on drop.
#[derive(Debug)]
struct Vm {
    iface: Arc<Iface>,
    slot: u32,
    mac: MacAddr,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.iface.steering.remove_vm(self.slot, self.mac);
    }
}

/// An AF_XDP backend: one VM's sockets on one interface.
#[derive(Debug)]
pub struct AfXdp {
    name: String,
    cfg: AfXdpConfig,
    mtu: u16,
    vm: Arc<Vm>,
    opened: Vec<bool>,
}

/// A bound socket's rings: its own TX and RX, and the queue's fill and completion rings when
/// it is the first socket on that queue.
type Bound = (TxQueue, RxQueue, Option<(FillQueue, CompQueue)>);

/// The headroom XDP keeps before each received frame (`XDP_PACKET_HEADROOM`).
const XDP_HEADROOM: u32 = 256;

impl AfXdp {
    /// Attaches (or joins) the program on `cfg.iface`, registers the VM's MAC, and makes (or
    /// joins) the interface's UMEM. Queue pairs open with [`Backend::open_queue_pair`].
    pub fn open(cfg: AfXdpConfig) -> Result<AfXdp, Error> {
        if cfg.queues == 0 || u32::from(cfg.queues) > steer::MAX_QUEUES {
            return Err(Error::Config(format!(
                "{} queue pairs: give 1 to {}",
                cfg.queues,
                steer::MAX_QUEUES
            )));
        }
        if cfg.frame_size != 2048 && cfg.frame_size != 4096 {
            return Err(Error::Config(format!(
                "frame size {}: use 2048 or 4096",
                cfg.frame_size
            )));
        }
        if !cfg.ring_size.is_power_of_two() || cfg.ring_size < 64 || cfg.ring_size > 16384 {
            return Err(Error::Config(format!(
                "ring size {}: a power of two from 64 to 16384",
                cfg.ring_size
            )));
        }
        if cfg.frames_per_queue < 2 * cfg.ring_size || cfg.frames_per_queue > 1 << 18 {
            return Err(Error::Config(format!(
                "{} frames per queue: give at least twice the ring size ({}) and at most 262144",
                cfg.frames_per_queue,
                2 * cfg.ring_size
            )));
        }
        if cfg.zero_copy == ZeroCopy::Require && cfg.attach == AttachMode::Skb {
            return Err(Error::Config(
                "zero-copy was required, but generic (skb) mode is always copy mode: attach natively".into(),
            ));
        }
        if !cfg.mac.is_unicast() {
            return Err(Error::Config(format!(
                "{} is not a unicast MAC: give the VM its own address",
                cfg.mac
            )));
        }
        let ifindex = nix::net::if_::if_nametoindex(cfg.iface.as_str()).map_err(|e| {
            Error::io(
                "finding the interface (ip link lists them)",
                &cfg.iface,
                e.into(),
            )
        })?;
        let mtu = link_mtu(&cfg.iface).map_err(|e| Error::io("reading the MTU", &cfg.iface, e))?;
        // A frame must fit one chunk: no multi-buffer (XDP_USE_SG).
        let room = cfg.frame_size - XDP_HEADROOM;
        if u32::from(mtu) + 18 > room {
            return Err(Error::Config(format!(
                "{} has MTU {mtu}, so frames of up to {} bytes (with a VLAN tag), but a {}-byte chunk holds {room} after XDP's headroom, and multi-buffer AF_XDP is not supported: lower the MTU to {} or use 4096-byte chunks",
                cfg.iface,
                u32::from(mtu) + 18,
                cfg.frame_size,
                room - 18
            )));
        }
        let iface = Iface::get(&cfg, ifindex)?;
        let slot = iface.steering.add_vm(cfg.mac, cfg.broadcast)?;
        let vm = Arc::new(Vm {
            iface,
            slot,
            mac: cfg.mac,
        });
        Ok(AfXdp {
            name: format!("afxdp:{}", cfg.iface),
            opened: vec![false; usize::from(cfg.queues)],
            cfg,
            mtu,
            vm,
        })
    }

    /// The mode the program runs in on this interface.
    pub fn attach_mode(&self) -> AttachMode {
        self.vm.iface.steering.mode()
    }

    /// Attaches the XDP program again if someone detached it or replaced it with another
    /// (`ip link set dev X xdp off`, another tool): `Some` says what was found and done. A
    /// daemon calls it now and then (the kernel says nothing when a program goes).
    pub fn ensure_attached(&self) -> Result<Option<String>, Error> {
        self.vm.iface.steering.ensure()
    }

    fn bind(&self, index: u16, zero_copy: bool) -> Result<Bound, Error> {
        let iface = &self.vm.iface;
        let ring = QueueSize::new(iface.ring_size).map_err(|e| Error::Config(e.to_string()))?;
        let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
        bind |= if zero_copy {
            BindFlags::XDP_ZEROCOPY
        } else {
            BindFlags::XDP_COPY
        };
        let config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            // Our own program steers: libxdp must not load (or later detach) one.
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();
        let ifname: Interface = self
            .cfg
            .iface
            .parse()
            .map_err(|_| Error::Config(format!("interface name {}", self.cfg.iface)))?;
        // A socket of a process that just died releases the queue a moment later (the
        // kernel frees it in deferred work): EBUSY is retried for up to a second.
        let mut tries = 0;
        loop {
            // SAFETY: INHIBIT_PROG_LOAD is set, as xsk-rs requires when a pair already bound
            // with this UMEM is bound again (the interface's other VMs).
            let res = unsafe { Socket::new(config, &iface.umem, &ifname, u32::from(index)) };
            let e = match res {
                Ok(bound) => return Ok(bound),
                Err(e) => e,
            };
            let os = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error);
            tries += 1;
            if os == Some(nix::libc::EBUSY) && tries < 20 {
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            let hint = if zero_copy {
                "binding zero-copy (the driver may not have it)"
            } else {
                "binding an AF_XDP socket (needs CAP_NET_RAW)"
            };
            let source = match os {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::other(e.to_string()),
            };
            return Err(Error::io(
                hint,
                &format!("{} queue {index}", self.cfg.iface),
                source,
            ));
        }
    }
}

impl Backend for AfXdp {
    type Queue = AfXdpQueue;

    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        let room = (self.vm.iface.frame_size - XDP_HEADROOM) as usize;
        Capabilities {
            vnet_hdr: false,
            tx_offloads: OffloadSet::NONE,
            rx_offloads: OffloadSet::NONE,
            max_frame: room,
            max_queue_pairs: self.cfg.queues,
            mac: Some(self.cfg.mac),
            mtu: self.mtu.min((room - 14) as u16),
            rx_csum_verified: false,
        }
    }

    fn open_queue_pair(&mut self, index: u16) -> net_api::Result<AfXdpQueue> {
        match self.opened.get(usize::from(index)) {
            None => {
                return Err(net_api::Error::NoSuchQueue {
                    backend: self.name.clone(),
                    index,
                    max: self.cfg.queues,
                })
            }
            Some(true) => {
                return Err(net_api::Error::QueueInUse {
                    backend: self.name.clone(),
                    index,
                })
            }
            Some(false) => {}
        }
        let want_zc =
            self.cfg.zero_copy != ZeroCopy::Off && self.attach_mode() == AttachMode::Native;
        let (zero_copy, bound) = if want_zc {
            match self.bind(index, true) {
                Ok(b) => (true, Ok(b)),
                Err(e) if self.cfg.zero_copy == ZeroCopy::Require => (true, Err(e)),
                Err(e) => {
                    warn!(
                        "{} queue {index}: no zero-copy ({e}); copy mode",
                        self.cfg.iface
                    );
                    (false, self.bind(index, false))
                }
            }
        } else {
            if self.cfg.zero_copy == ZeroCopy::Prefer {
                warn!(
                    "{} queue {index}: generic (skb) XDP has no zero-copy; copy mode",
                    self.cfg.iface
                );
            }
            (false, self.bind(index, false))
        };
        let (tx, rx, rings) = bound?;
        if self.cfg.busy_poll {
            busy_poll(rx.fd().as_raw_fd(), &self.cfg.iface);
        }
        let iface = self.vm.iface.clone();
        {
            let mut shared = lock(&iface.queues[usize::from(index)]);
            if let Some((mut fq, cq)) = rings {
                // The first socket on this queue: its fill ring gets the receive half.
                let half = shared.free.len() - shared.tx_reserve;
                let chunks: Vec<FrameDesc> = shared.free.drain(..half).collect();
                // SAFETY: these chunks are this UMEM's and in no ring.
                let n = unsafe { fq.produce(&chunks) };
                shared.free.extend_from_slice(&chunks[n..]);
                shared.rings = Some((fq, cq));
            }
            if shared.rings.is_none() {
                return Err(net_api::Error::from(Error::Busy(format!(
                    "{} queue {index}: bound before without its rings (another UMEM?)",
                    self.cfg.iface
                ))));
            }
        }
        let mut q = AfXdpQueue {
            index,
            target: format!("{} queue {index}", self.cfg.iface),
            vm: self.vm.clone(),
            tx,
            rx,
            tx_cache: Vec::new(),
            rx_spare: Vec::new(),
            scratch: vec![FrameDesc::default(); 64],
            room: (iface.frame_size - XDP_HEADROOM) as usize,
            zero_copy,
            link_down: false,
            stats: QueueStats::default(),
        };
        q.set_attached(true)?;
        self.opened[usize::from(index)] = true;
        Ok(q)
    }
}

/// The MTU of `ifname` in the calling thread's network namespace (`SIOCGIFMTU`; sysfs shows
/// the namespace it was mounted in, not the thread's).
fn link_mtu(ifname: &str) -> std::io::Result<u16> {
    use nix::libc;
    use std::os::fd::{FromRawFd, OwnedFd};
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other("interface name too long"));
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into `req`, which lives
    // across the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(u16::try_from(mtu).unwrap_or(u16::MAX))
}

/// `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` (20 µs) and `SO_BUSY_POLL_BUDGET` (64) on `fd`.
fn busy_poll(fd: i32, iface: &str) {
    use nix::libc;
    for (opt, val) in [
        (libc::SO_PREFER_BUSY_POLL, 1i32),
        (libc::SO_BUSY_POLL, 20),
        (libc::SO_BUSY_POLL_BUDGET, 64),
    ] {
        // SAFETY: `fd` is an open socket; `val` is an int that lives across the call.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&val as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r != 0 {
            warn!(
                "{iface}: busy polling option {opt}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// One queue pair: an XDP socket on one queue of the interface.
pub struct AfXdpQueue {
    index: u16,
    target: String,
    vm: Arc<Vm>,
    tx: TxQueue,
    rx: RxQueue,
    /// Chunks taken from the queue's pool for sending.
    tx_cache: Vec<FrameDesc>,
    /// Received chunks not yet back in the fill ring.
    rx_spare: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    /// Bytes a chunk holds (frame size less headroom).
    room: usize,
    zero_copy: bool,
    /// The last wakeup said the link is down (ENETDOWN).
    link_down: bool,
    stats: QueueStats,
}

impl std::fmt::Debug for AfXdpQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpQueue")
            .field("target", &self.target)
            .field("zero_copy", &self.zero_copy)
            .finish_non_exhaustive()
    }
}

/// Chunks a queue takes from its pool at a time.
const BATCH: usize = 64;

impl AfXdpQueue {
    /// Whether the socket is bound zero-copy.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Tries a wakeup: whether the link is still down (ENETDOWN).
    fn link_still_down(&mut self) -> bool {
        match self.tx.wakeup() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ENETDOWN) => true,
            _ => {
                self.link_down = false;
                false
            }
        }
    }

    /// The kernel's counters for the socket (drops for a full RX or empty fill ring...).
    pub fn xdp_statistics(&mut self) -> std::io::Result<xsk_rs::socket::XdpStatistics> {
        self.rx.fd_mut().xdp_statistics()
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, QueueShared> {
        lock(&self.vm.iface.queues[usize::from(self.index)])
    }

    /// Completed sends (of any socket on this queue) back to the pool, and up to `want`
    /// chunks from the pool into the cache.
    fn take_chunks(&mut self, want: usize) {
        let iface = self.vm.iface.clone();
        let mut shared = lock(&iface.queues[usize::from(self.index)]);
        let QueueShared { rings, free, .. } = &mut *shared;
        if let Some((_, cq)) = rings.as_mut() {
            loop {
                // SAFETY: the completion ring returns chunks of this UMEM that a socket on
                // this queue sent; once consumed they are the pool's again.
                let n = unsafe { cq.consume(&mut self.scratch) };
                free.extend_from_slice(&self.scratch[..n]);
                if n < self.scratch.len() {
                    break;
                }
            }
        }
        let k = want.min(free.len());
        let at = free.len() - k;
        self.tx_cache.extend(free.drain(at..));
    }

    /// Received chunks back to the fill ring, topped up from the pool beyond its send
    /// reserve.
    fn refill(&mut self) {
        let iface = self.vm.iface.clone();
        let mut shared = lock(&iface.queues[usize::from(self.index)]);
        let QueueShared {
            rings,
            free,
            tx_reserve,
        } = &mut *shared;
        let Some((fq, _)) = rings.as_mut() else {
            return;
        };
        if free.len() > *tx_reserve {
            self.rx_spare.extend(free.drain(*tx_reserve..));
        }
        if self.rx_spare.is_empty() {
            return;
        }
        // SAFETY: the spare chunks are this UMEM's and in no ring.
        let n = unsafe { fq.produce(&self.rx_spare) };
        self.rx_spare.drain(..n);
        // What the fill ring had no room for waits in the pool.
        free.append(&mut self.rx_spare);
        if n > 0 && fq.needs_wakeup() {
            let _ = fq.wakeup(self.rx.fd_mut(), 0);
        }
    }
}

impl Drop for AfXdpQueue {
    fn drop(&mut self) {
        // First stop the steering to this socket (frames go to the host), then give every
        // chunk this queue holds back to the pool.
        self.vm
            .iface
            .steering
            .clear_xsk(self.vm.slot, u32::from(self.index));
        loop {
            let mut desc = FrameDesc::default();
            // SAFETY: chunks in our RX ring are the pool's once consumed.
            if unsafe { self.rx.consume_one(&mut desc) } == 0 {
                break;
            }
            self.rx_spare.push(desc);
        }
        let mut spare = std::mem::take(&mut self.rx_spare);
        let mut cache = std::mem::take(&mut self.tx_cache);
        let mut shared = self.shared();
        shared.free.append(&mut spare);
        shared.free.append(&mut cache);
    }
}

impl QueuePair for AfXdpQueue {
    fn index(&self) -> u16 {
        self.index
    }

    fn send(&mut self, frames: &[TxFrame<'_>]) -> net_api::Result<usize> {
        if self.tx_cache.len() < frames.len() {
            self.take_chunks(frames.len().max(BATCH));
        }
        let mut batch: Vec<FrameDesc> = Vec::with_capacity(frames.len().min(self.tx_cache.len()));
        let mut done = 0;
        for f in frames {
            let len = f.len();
            let refusal = if !f.hdr.is_plain() {
                // Offloads were never offered: net-virtio translates before sending.
                Some(DropReason::UnsupportedOffload)
            } else if len > self.room {
                Some(DropReason::TooLarge)
            } else if len < net_api::ether::ETH_HLEN {
                Some(DropReason::Runt)
            } else {
                None
            };
            if let Some(reason) = refusal {
                self.stats.tx_drops.add(reason);
                done += 1;
                continue;
            }
            let Some(mut desc) = self.tx_cache.pop() else {
                break;
            };
            {
                // SAFETY: `desc` is a chunk of this UMEM from the pool: no ring holds it.
                let mut data = unsafe { self.vm.iface.umem.data_mut(&mut desc) };
                // The frame fits the chunk (checked above): its length first, then the bytes
                // copied out of the guest's buffers.
                data.cursor().set_pos(len);
                net_api::iovec::read_bufs(f.data, 0, data.contents_mut());
            }
            batch.push(desc);
            done += 1;
        }
        if batch.is_empty() {
            return Ok(done);
        }
        // SAFETY: the batch's chunks are this UMEM's, written above, in no ring.
        let n = unsafe { self.tx.produce(&batch) };
        // A full TX ring: what did not fit goes back. While the link is down nothing drains
        // the ring (copy mode sends on wakeups, which fail): those frames are dropped, as a
        // NIC without carrier drops them, rather than waiting for a writability that would
        // never come. Otherwise they are not taken from the caller.
        let unsent = batch.len() - n;
        if unsent > 0 {
            self.tx_cache.extend(batch.drain(n..));
            if self.link_down && self.link_still_down() {
                for _ in 0..unsent {
                    self.stats.tx_drops.add(DropReason::LinkDown);
                }
            } else {
                done -= unsent;
                self.stats.tx_would_block += 1;
            }
        }
        for d in &batch {
            self.stats.count_tx(d.lengths().data());
        }
        // In copy mode each wakeup (sendto) transmits at most a kernel batch (32 frames):
        // kick until the kernel has taken the whole ring, or frames would sit there until
        // the next send.
        let ring = self.vm.iface.ring_size;
        for _ in 0..(n / 32 + 2) {
            if !self.tx.needs_wakeup() {
                break;
            }
            match self.tx.wakeup() {
                Ok(()) => self.link_down = false,
                // The link is down: the frames wait in the ring for the next wakeup.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENETDOWN) => {
                    if !self.link_down {
                        warn!("{}: the link is down; frames wait in the ring", self.target);
                    }
                    self.link_down = true;
                    break;
                }
                Err(e) => {
                    return Err(net_api::Error::Io {
                        op: "sendto (AF_XDP wakeup)",
                        target: self.target.clone(),
                        source: e,
                    })
                }
            }
            if self.tx.nb_free(ring) >= ring {
                break;
            }
        }
        Ok(done)
    }

    fn recv(&mut self, bufs: &[IoBufMut<'_>]) -> net_api::Result<Option<RxFrame>> {
        let room = net_api::iovec::total_len_mut(bufs);
        loop {
            let mut desc = FrameDesc::default();
            // SAFETY: the RX ring hands back chunks of this UMEM from the fill ring; `desc` is
            // ours after this call.
            let n = unsafe { self.rx.consume_one(&mut desc) };
            if n == 0 {
                self.refill();
                return Ok(None);
            }
            let (len, fits) = {
                // SAFETY: `desc` came out of the RX ring: the kernel is done with it.
                let data = unsafe { self.vm.iface.umem.data(&desc) };
                let bytes = data.contents();
                let fits = bytes.len() <= room;
                if fits {
                    net_api::iovec::write_bufs(bufs, 0, bytes);
                }
                (bytes.len(), fits)
            };
            self.rx_spare.push(desc);
            if self.rx_spare.len() >= BATCH {
                self.refill();
            }
            if fits {
                self.stats.count_rx(len);
                return Ok(Some(RxFrame {
                    hdr: VirtioNetHdr::PLAIN,
                    len,
                }));
            }
            self.stats.rx_drops.add(DropReason::Truncated);
        }
    }

    fn set_rx_offloads(&mut self, offloads: OffloadSet) -> net_api::Result<()> {
        if offloads.is_empty() {
            Ok(())
        } else {
            Err(net_api::Error::Unsupported {
                backend: self.target.clone(),
                what: format!("receive offloads {offloads}"),
                hint: "AF_XDP carries no virtio-net header: enable none; net-virtio handles them in software".into(),
            })
        }
    }

    fn set_attached(&mut self, attached: bool) -> net_api::Result<()> {
        let steering = &self.vm.iface.steering;
        if attached {
            steering
                .set_xsk(self.vm.slot, u32::from(self.index), self.fd())
                .map_err(net_api::Error::from)?;
        } else {
            steering.clear_xsk(self.vm.slot, u32::from(self.index));
        }
        Ok(())
    }

    fn rx_readiness(&self) -> Readiness<'_> {
        Readiness {
            fd: self.fd(),
            interest: Interest::Readable,
        }
    }

    fn tx_readiness(&self) -> Readiness<'_> {
        Readiness {
            fd: self.fd(),
            interest: Interest::Writable,
        }
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }
}

impl AfXdpQueue {
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the socket's fd stays open as long as its RX queue, which `self` owns for
        // the borrow's lifetime.
        unsafe { BorrowedFd::borrow_raw(self.rx.fd().as_raw_fd()) }
    }
}
