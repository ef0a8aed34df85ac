//! The TAP and macvtap backends: one character-device fd per queue pair.
//!
//! A TAP device comes from `/dev/net/tun` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
//! IFF_MULTI_QUEUE`, opened once per queue); a macvtap's queues from its `/dev/tap<ifindex>`,
//! opened once per queue. Both speak the virtio-net header (12 bytes, little endian:
//! `TUNSETVNETHDRSZ`, `TUNSETVNETLE`), so the kernel does the offloads: a GSO frame from the
//! guest is segmented by the host stack (or the NIC) and received GSO frames come up whole,
//! once the guest's offloads are programmed with `TUNSETOFFLOAD`
//! ([`QueuePair::set_rx_offloads`]).
//!
//! `send` is one `writev` per frame (the header, then the caller's slices as they are: guest
//! memory goes to the kernel without a copy of ours); `recv` one `readv`. Both are
//! nonblocking: `EAGAIN` is would-block, and readiness is the queue's fd (readable for
//! receive, writable for transmit). Queues are detached and attached with `TUNSETQUEUE`.
//!
//! A VMM that runs without `CAP_NET_ADMIN` gets the fds from a privileged helper (over a unix
//! socket with `SCM_RIGHTS`) and builds the backend with [`Tap::from_fds`] or
//! [`Macvtap::from_fds`]; nothing else here needs a privilege.
//!
//! Batching: the kernel has no vectored multi-frame call for these devices (no `sendmmsg` on
//! a character device), so a batch is a loop of `writev`s until `EAGAIN`. `io_uring` could
//! submit a batch in one system call; it has not been measured yet, so it is not used.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use net_api::ether::ETH_HLEN;
use net_api::{
    Backend, Capabilities, DropReason, Error, GsoType, Interest, IoBuf, IoBufMut, MacAddr,
    OffloadSet, QueuePair, QueueStats, Readiness, Result, RxFrame, TxFrame, VirtioNetHdr,
    MAX_IOVECS,
};
use nix::errno::Errno;
use nix::libc;

/// The virtio-net header the kernel reads and writes: the 12-byte layout (with
/// `num_buffers`), little endian.
pub const VNET_HDR_LEN: usize = 12;

/// The largest frame: a 64 KiB GSO frame with its Ethernet header and a VLAN tag.
const MAX_FRAME: usize = 65535 + ETH_HLEN + 4;

#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        let b = name.as_bytes();
        let bad = |c: &u8| matches!(c, 0 | b'/' | b'%' | b'*' | b':') || c.is_ascii_whitespace();
        if b.is_empty() || b.len() >= libc::IFNAMSIZ || !b.is_ascii() || b.iter().any(bad) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "'{name}' is not an interface name: use 1 to 15 ASCII bytes, without '/', \
                     '%' (a kernel name template), '*', ':' or spaces"
                ),
            ));
        }
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..b.len()].copy_from_slice(b);
        Ok(r)
    }

    fn with_flags(name: &str, flags: libc::c_int) -> io::Result<IfReq> {
        let mut r = IfReq::new(name)?;
        r.data[..2].copy_from_slice(&(flags as libc::c_short).to_ne_bytes());
        Ok(r)
    }

    fn flags(&self) -> libc::c_int {
        libc::c_int::from(libc::c_short::from_ne_bytes([self.data[0], self.data[1]]))
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

mod ioctl {
    use super::IfReq;
    use nix::libc::{c_int, c_uint};
    use std::mem::size_of;

    // The kernel writes the ifreq back (the device's real name): read-write.
    nix::ioctl_readwrite_bad!(
        tunsetiff,
        nix::request_code_write!(b'T', 202, size_of::<c_int>()),
        IfReq
    );
    nix::ioctl_write_int_bad!(
        tunsetpersist,
        nix::request_code_write!(b'T', 203, size_of::<c_int>())
    );
    nix::ioctl_write_int_bad!(
        tunsetowner,
        nix::request_code_write!(b'T', 204, size_of::<c_int>())
    );
    nix::ioctl_write_int_bad!(
        tunsetoffload,
        nix::request_code_write!(b'T', 208, size_of::<c_uint>())
    );
    nix::ioctl_read_bad!(
        tungetiff,
        nix::request_code_read!(b'T', 210, size_of::<c_uint>()),
        IfReq
    );
    nix::ioctl_write_ptr_bad!(
        tunsetvnethdrsz,
        nix::request_code_write!(b'T', 216, size_of::<c_int>()),
        c_int
    );
    nix::ioctl_write_ptr_bad!(
        tunsetqueue,
        nix::request_code_write!(b'T', 217, size_of::<c_int>()),
        IfReq
    );
    nix::ioctl_write_ptr_bad!(
        tunsetvnetle,
        nix::request_code_write!(b'T', 220, size_of::<c_int>()),
        c_int
    );
    nix::ioctl_read_bad!(siocgifmtu, nix::libc::SIOCGIFMTU, IfReq);
    nix::ioctl_read_bad!(siocgifhwaddr, nix::libc::SIOCGIFHWADDR, IfReq);
}

fn io_err(op: &'static str, target: &str, e: impl Into<io::Error>) -> Error {
    Error::Io {
        op,
        target: target.to_string(),
        source: e.into(),
    }
}

/// The kernel's `TUN_F_*` flags for a set of offloads, reduced to a combination tun accepts:
/// segmentation offloads only with checksum offload, ECN only with TSO, USO only for both IP
/// versions at once.
fn tun_flags(off: OffloadSet) -> libc::c_uint {
    let mut off = off;
    if !off.contains(OffloadSet::CSUM) {
        off = OffloadSet::NONE;
    }
    if off
        .intersection(OffloadSet::TSO4 | OffloadSet::TSO6)
        .is_empty()
    {
        off = off.difference(OffloadSet::TSO_ECN);
    }
    if !off.contains(OffloadSet::USO4 | OffloadSet::USO6) {
        off = off.difference(OffloadSet::USO4 | OffloadSet::USO6);
    }
    let map = [
        (OffloadSet::CSUM, libc::TUN_F_CSUM),
        (OffloadSet::TSO4, libc::TUN_F_TSO4),
        (OffloadSet::TSO6, libc::TUN_F_TSO6),
        (OffloadSet::TSO_ECN, libc::TUN_F_TSO_ECN),
        (OffloadSet::UFO, libc::TUN_F_UFO),
        (OffloadSet::USO4, libc::TUN_F_USO4),
        (OffloadSet::USO6, libc::TUN_F_USO6),
    ];
    map.iter()
        .filter(|(o, _)| off.contains(*o))
        .fold(0, |f, (_, t)| f | t)
}

/// Sets up a queue fd: header size and endianness, nonblocking.
fn prepare_fd(fd: &OwnedFd, target: &str) -> Result<()> {
    let sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which is valid for the call.
    unsafe { ioctl::tunsetvnethdrsz(fd.as_raw_fd(), &sz) }
        .map_err(|e| io_err("TUNSETVNETHDRSZ", target, e))?;
    let le: libc::c_int = 1;
    // SAFETY: as above. Little-endian headers whatever the host (virtio 1.0 layout); a kernel
    // without cross-endian support refuses it only on big-endian hosts, where it matters.
    if let Err(e) = unsafe { ioctl::tunsetvnetle(fd.as_raw_fd(), &le) } {
        if cfg!(target_endian = "big") {
            return Err(io_err("TUNSETVNETLE", target, e));
        }
    }
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| io_err("fcntl F_GETFL", target, e))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| io_err("fcntl F_SETFL O_NONBLOCK", target, e))?;
    Ok(())
}

/// The receive offloads the kernel accepts for this device (`TUNSETOFFLOAD` probed, then
/// reset to none until the guest negotiates some).
fn probe_rx_offloads(fd: &OwnedFd, target: &str) -> Result<OffloadSet> {
    let candidates = [
        OffloadSet::ALL,
        OffloadSet::ALL.difference(OffloadSet::USO4 | OffloadSet::USO6),
        OffloadSet::CSUM | OffloadSet::TSO4 | OffloadSet::TSO6 | OffloadSet::TSO_ECN,
        OffloadSet::CSUM,
    ];
    let mut found = OffloadSet::NONE;
    for c in candidates {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { ioctl::tunsetoffload(fd.as_raw_fd(), tun_flags(c) as libc::c_int) }.is_ok() {
            found = c;
            break;
        }
    }
    // SAFETY: as above.
    unsafe { ioctl::tunsetoffload(fd.as_raw_fd(), 0) }
        .map_err(|e| io_err("TUNSETOFFLOAD", target, e))?;
    Ok(found)
}

/// The MTU of a link in the calling thread's network namespace.
fn link_mtu(name: &str) -> Result<u16> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io_err("socket for SIOCGIFMTU", name, e))?;
    let mut req = IfReq::new(name).map_err(|e| io_err("SIOCGIFMTU", name, e))?;
    // SAFETY: SIOCGIFMTU fills the ifreq the pointer refers to, which lives for the call.
    unsafe { ioctl::siocgifmtu(sock.as_raw_fd(), &mut req) }
        .map_err(|e| io_err("SIOCGIFMTU", name, e))?;
    let mtu = i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]);
    Ok(u16::try_from(mtu).unwrap_or(u16::MAX))
}

/// The device's MAC address, asked through a queue fd (tun and macvtap both answer
/// `SIOCGIFHWADDR`), so it is right whatever namespace the caller is in.
fn fd_mac(fd: &OwnedFd, target: &str) -> Result<MacAddr> {
    let mut req = IfReq::new("x").map_err(|e| io_err("SIOCGIFHWADDR", target, e))?;
    // SAFETY: SIOCGIFHWADDR fills a sockaddr inside the ifreq the pointer refers to.
    unsafe { ioctl::siocgifhwaddr(fd.as_raw_fd(), &mut req) }
        .map_err(|e| io_err("SIOCGIFHWADDR", target, e))?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req.data[2..8]);
    Ok(MacAddr(mac))
}

/// Opens `/dev/net/tun` and attaches it to TAP `name` (creating it on the first open).
fn open_tun(name: &str, flags: libc::c_int) -> Result<(OwnedFd, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|e| {
            io_err(
                "open /dev/net/tun",
                name,
                io::Error::new(
                    e.kind(),
                    format!("{e} (load the tun module, or have a privileged helper pass the fds)"),
                ),
            )
        })?;
    let fd: OwnedFd = file.into();
    let mut req = IfReq::with_flags(name, flags).map_err(|e| io_err("TUNSETIFF", name, e))?;
    // SAFETY: TUNSETIFF reads (and updates) the ifreq the pointer refers to, valid for the
    // call.
    unsafe { ioctl::tunsetiff(fd.as_raw_fd(), &mut req) }.map_err(|e| {
        let hint = match e {
            Errno::EPERM => " (needs CAP_NET_ADMIN, or a persistent tap owned by this user)",
            Errno::EBUSY => " (the device exists without multi-queue, or is in use)",
            Errno::EINVAL => " (the name belongs to a device that is not a TAP)",
            _ => "",
        };
        io_err(
            "TUNSETIFF",
            name,
            io::Error::new(io::Error::from(e).kind(), format!("{e}{hint}")),
        )
    })?;
    Ok((fd, req.name()))
}

/// Creates a persistent TAP device owned by `uid` (usable by that user without privileges),
/// with multi-queue and virtio-net headers. It stays until [`delete_persistent_tap`].
pub fn create_persistent_tap(name: &str, uid: u32) -> Result<()> {
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
    let (fd, _) = open_tun(name, flags)?;
    // SAFETY: TUNSETOWNER and TUNSETPERSIST take their argument by value.
    unsafe { ioctl::tunsetowner(fd.as_raw_fd(), uid as libc::c_int) }
        .map_err(|e| io_err("TUNSETOWNER", name, e))?;
    // SAFETY: as above.
    unsafe { ioctl::tunsetpersist(fd.as_raw_fd(), 1) }
        .map_err(|e| io_err("TUNSETPERSIST", name, e))?;
    Ok(())
}

/// Deletes a persistent TAP device.
pub fn delete_persistent_tap(name: &str) -> Result<()> {
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
    let (fd, _) = open_tun(name, flags)?;
    // SAFETY: TUNSETPERSIST takes its argument by value.
    unsafe { ioctl::tunsetpersist(fd.as_raw_fd(), 0) }
        .map_err(|e| io_err("TUNSETPERSIST", name, e))?;
    Ok(())
}

/// Opens macvtap `ifname`'s queues through `/dev/tap<index>`, checking that the node is that
/// macvtap's (`TUNGETIFF`).
fn open_dev_node(ifname: &str, index: u32, queues: u16) -> Result<Vec<OwnedFd>> {
    let path = format!("/dev/tap{index}");
    let mut fds = Vec::with_capacity(usize::from(queues));
    for _ in 0..queues {
        let f: File = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| {
                io_err(
                    "open",
                    &format!("{path} (macvtap {ifname})"),
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{e}: is {ifname} a macvtap? Its character device is \
                             /sys/class/net/{ifname}/macvtap/tap{index}/dev"
                        ),
                    ),
                )
            })?;
        let fd = OwnedFd::from(f);
        let mut req = IfReq::new("x").map_err(|e| io_err("TUNGETIFF", &path, e))?;
        // SAFETY: TUNGETIFF fills the ifreq the pointer refers to, valid for the call.
        let attached = unsafe { ioctl::tungetiff(fd.as_raw_fd(), &mut req) }.is_ok();
        if !attached || req.name() != ifname {
            return Err(Error::Unsupported {
                backend: format!("macvtap:{ifname}"),
                what: format!("{path}, which belongs to another device ({})", req.name()),
                hint: "the ifindex repeats in another network namespace: run with \
                       CAP_SYS_ADMIN (the device is then found through this namespace's \
                       sysfs) or pass the fds to from_fds"
                    .into(),
            });
        }
        fds.push(fd);
    }
    Ok(fds)
}

/// Opens macvtap `ifname`'s queues through a device node of our own, made from the
/// major:minor that this network namespace's sysfs gives.
///
/// `/dev/tap<ifindex>` cannot be trusted outside the host's namespace: ifindexes repeat per
/// namespace while `/dev` is global, and a namespace being torn down removes "its" node even
/// when another device of the same ifindex now exists. So a helper thread (in the caller's
/// network namespace) unshares its mount namespace, mounts a sysfs (which shows the mounting
/// thread's network namespace) inside a tmpfs over `/tmp` there, reads
/// `class/net/<ifname>/macvtap/tap<index>/dev`, makes the node, opens it `queues` times and
/// ends: the mounts vanish with its mount namespace, the fds stay. Needs CAP_SYS_ADMIN (EPERM
/// otherwise).
fn open_via_private_sysfs(ifname: &str, index: u32, queues: u16) -> io::Result<Vec<OwnedFd>> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};

    let name = ifname.to_string();
    let thread = std::thread::Builder::new()
        .name("volt-macvtap-open".into())
        .spawn(move || -> io::Result<Vec<OwnedFd>> {
            unshare(CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
            // Nothing of what follows may propagate back to the host's mounts.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(io::Error::from)?;
            // A tmpfs of our own holds this namespace's sysfs and the device node. sysfs is
            // not mounted over /sys: under `ip netns exec` /sys is this namespace's sysfs
            // already, and the kernel refuses the same file system twice on one mount point
            // (EBUSY).
            mount(
                Some("tmpfs"),
                "/tmp",
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("size=64k,mode=700"),
            )
            .map_err(io::Error::from)?;
            std::fs::create_dir("/tmp/sys")?;
            let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
            mount(
                Some("sysfs"),
                "/tmp/sys",
                Some("sysfs"),
                quiet | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(io::Error::from)?;
            let dev = std::fs::read_to_string(format!(
                "/tmp/sys/class/net/{name}/macvtap/tap{index}/dev"
            ))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{e}: {name} is not a macvtap in this namespace"),
                )
            })?;
            let (major, minor) = dev
                .trim()
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                .ok_or_else(|| io::Error::other(format!("unexpected device number '{dev}'")))?;
            let node = format!("/tmp/tap{index}");
            mknod(
                node.as_str(),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                makedev(major, minor),
            )
            .map_err(io::Error::from)?;
            (0..queues)
                .map(|_| {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                        .open(&node)
                        .map(OwnedFd::from)
                })
                .collect()
        })?;
    thread
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the device-opening thread panicked")))
}

/// What kind of character device the fds are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tap,
    Macvtap,
}

/// Queue fds of one device, and what it can do.
#[derive(Debug)]
struct Device {
    name: String,
    kind: Kind,
    fds: Vec<OwnedFd>,
    open: Vec<Arc<AtomicBool>>,
    /// The receive offloads asked for, device-wide (`TUNSETOFFLOAD` applies to the device;
    /// a detached tun queue refuses the ioctl, so attach applies it again).
    offloads: Arc<AtomicU32>,
    caps: Capabilities,
}

impl Device {
    fn new(name: String, kind: Kind, fds: Vec<OwnedFd>, mac: Option<MacAddr>) -> Result<Device> {
        let Some(first) = fds.first() else {
            return Err(Error::InvalidConfig {
                what: "queue count",
                why: format!("{name}: 0 queues: ask for at least 1"),
            });
        };
        let target = format!("{} {name}", kind_name(kind));
        let rx = probe_rx_offloads(first, &target)?;
        // The MAC through the fd (it works in any namespace); the MTU by name, which a
        // process in another namespace cannot see: then assume Ethernet's.
        let link_mac = fd_mac(first, &target)?;
        let mtu = match link_mtu(&name) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("{target}: {e}; assuming MTU 1500");
                1500
            }
        };
        let caps = Capabilities {
            vnet_hdr: true,
            // Anything virtio_net_hdr_to_skb takes: the host stack segments in software what
            // the device below cannot.
            tx_offloads: OffloadSet::ALL,
            rx_offloads: rx,
            rx_csum_verified: true,
            max_frame: MAX_FRAME,
            max_queue_pairs: fds.len() as u16,
            mac: mac.or(match kind {
                // A macvtap's own address is the guest's; a TAP's is the host side's.
                Kind::Macvtap => Some(link_mac),
                Kind::Tap => None,
            }),
            mtu,
        };
        let open = (0..fds.len())
            .map(|_| Arc::new(AtomicBool::new(false)))
            .collect();
        Ok(Device {
            name,
            kind,
            fds,
            open,
            offloads: Arc::new(AtomicU32::new(0)),
            caps,
        })
    }

    fn open_queue_pair(&mut self, index: u16) -> Result<TapQueue> {
        let i = usize::from(index);
        let open = net_api::error::claim_queue(&self.open, &self.backend_name(), index)?;
        // The queue pair gets its own fd; ours keeps the queue in the kernel when it is
        // dropped (closing the last fd of a TAP queue would destroy it).
        let fd = self.fds[i].try_clone().map_err(|e| {
            open.store(false, Ordering::Release);
            io_err("dup", &self.backend_name(), e)
        })?;
        let mut q = TapQueue {
            open: Arc::clone(&self.open[i]),
            offloads: Arc::clone(&self.offloads),
            index,
            target: format!("{} queue {index}", self.backend_name()),
            fd,
            detached: false,
            stats: QueueStats::default(),
            hdr: [0; VNET_HDR_LEN],
            iov: Iovecs(Vec::with_capacity(MAX_IOVECS + 1)),
        };
        // Queue pairs open attached, whatever an earlier user left.
        q.set_queue(true)?;
        Ok(q)
    }

    fn try_clone_fds(&self) -> Result<Vec<OwnedFd>> {
        self.fds
            .iter()
            .map(|f| {
                f.try_clone()
                    .map_err(|e| io_err("dup", &self.backend_name(), e))
            })
            .collect()
    }

    fn backend_name(&self) -> String {
        format!("{}:{}", kind_name(self.kind), self.name)
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Tap => "tap",
        Kind::Macvtap => "macvtap",
    }
}

/// A TAP device as a backend.
#[derive(Debug)]
pub struct Tap {
    dev: Device,
    label: String,
}

impl Tap {
    /// Creates (or attaches to) TAP `name` in the calling thread's network namespace with
    /// `queues` queues (needs `CAP_NET_ADMIN`, or a persistent tap owned by the user). The
    /// link is left down: bring it up with netlink or `ip link set NAME up`.
    pub fn create(name: &str, queues: u16) -> Result<Tap> {
        if queues == 0 {
            return Err(Error::InvalidConfig {
                what: "queue count",
                why: format!("tap {name}: 0 queues: ask for at least 1"),
            });
        }
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
        let mut fds = Vec::with_capacity(usize::from(queues));
        let mut real = name.to_string();
        for _ in 0..queues {
            let (fd, n) = open_tun(name, flags)?;
            prepare_fd(&fd, &format!("tap {name}"))?;
            real = n;
            fds.push(fd);
        }
        Tap::build(real, fds)
    }

    /// A backend over queue fds opened elsewhere (a privileged helper): each is a
    /// `/dev/net/tun` fd attached to the same TAP with `IFF_VNET_HDR`.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Result<Tap> {
        let Some(first) = fds.first() else {
            return Err(Error::InvalidConfig {
                what: "queue fds",
                why: "no fd given: pass one fd per queue".into(),
            });
        };
        let mut req = IfReq::new("x").map_err(|e| io_err("TUNGETIFF", "tap fd", e))?;
        // SAFETY: TUNGETIFF fills the ifreq the pointer refers to, valid for the call.
        unsafe { ioctl::tungetiff(first.as_raw_fd(), &mut req) }
            .map_err(|e| io_err("TUNGETIFF", "tap fd", e))?;
        if req.flags() & libc::IFF_VNET_HDR == 0 || req.flags() & libc::IFF_TAP == 0 {
            return Err(Error::Unsupported {
                backend: format!("tap:{}", req.name()),
                what: "a tun fd without IFF_TAP | IFF_VNET_HDR".into(),
                hint: "open it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE".into(),
            });
        }
        let name = req.name();
        for fd in &fds {
            prepare_fd(fd, &format!("tap {name}"))?;
        }
        Tap::build(name, fds)
    }

    fn build(name: String, fds: Vec<OwnedFd>) -> Result<Tap> {
        let dev = Device::new(name, Kind::Tap, fds, None)?;
        let label = dev.backend_name();
        Ok(Tap { dev, label })
    }

    /// The device's name.
    pub fn ifname(&self) -> &str {
        &self.dev.name
    }

    /// Duplicates the queue fds, one per queue: what a privileged helper passes (over a unix
    /// socket with `SCM_RIGHTS`) to a VMM that builds the backend with [`Tap::from_fds`].
    pub fn try_clone_fds(&self) -> Result<Vec<OwnedFd>> {
        self.dev.try_clone_fds()
    }
}

/// Both backends are a [`Device`] of queue fds with a name.
macro_rules! device_backend {
    ($t:ty) => {
        impl Backend for $t {
            type Queue = TapQueue;

            fn name(&self) -> &str {
                &self.label
            }

            fn capabilities(&self) -> Capabilities {
                self.dev.caps.clone()
            }

            fn open_queue_pair(&mut self, index: u16) -> Result<TapQueue> {
                self.dev.open_queue_pair(index)
            }
        }
    };
}

device_backend!(Tap);

/// A macvtap link as a backend: its `/dev/tap<ifindex>` opened once per queue.
#[derive(Debug)]
pub struct Macvtap {
    dev: Device,
    label: String,
}

impl Macvtap {
    /// Opens macvtap `ifname` (in the calling thread's network namespace) with `queues`
    /// queues. The guest's MAC is the macvtap's own address.
    ///
    /// With CAP_SYS_ADMIN the character device is found through this namespace's own sysfs
    /// (a private mount on a helper thread), so it is right in any namespace. Without it,
    /// `/dev/tap<ifindex>` is opened and checked to belong to `ifname` (`TUNGETIFF`): right in
    /// the host's namespace, where ifindexes are unique. Or pass fds to
    /// [`Macvtap::from_fds`].
    pub fn open(ifname: &str, queues: u16) -> Result<Macvtap> {
        if queues == 0 {
            return Err(Error::InvalidConfig {
                what: "queue count",
                why: format!("macvtap {ifname}: 0 queues: ask for at least 1"),
            });
        }
        let index = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| io_err("if_nametoindex", &format!("macvtap {ifname}"), e))?;
        let fds = match open_via_private_sysfs(ifname, index, queues) {
            Ok(fds) => fds,
            // Without CAP_SYS_ADMIN: the host's /dev, whose nodes are right in the host's
            // namespace (ifindexes are unique there).
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                open_dev_node(ifname, index, queues)?
            }
            Err(e) => {
                return Err(io_err(
                    "finding the character device",
                    &format!("macvtap {ifname}"),
                    e,
                ))
            }
        };
        Macvtap::from_fds(ifname, fds)
    }

    /// A backend over `/dev/tapN` fds of macvtap `ifname` opened elsewhere.
    pub fn from_fds(ifname: &str, fds: Vec<OwnedFd>) -> Result<Macvtap> {
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
        let target = format!("macvtap {ifname}");
        for fd in &fds {
            let mut req =
                IfReq::with_flags(ifname, flags).map_err(|e| io_err("TUNSETIFF", &target, e))?;
            // SAFETY: TUNSETIFF reads the ifreq the pointer refers to, valid for the call.
            unsafe { ioctl::tunsetiff(fd.as_raw_fd(), &mut req) }
                .map_err(|e| io_err("TUNSETIFF", &target, e))?;
            // The fd must be this macvtap's (macvtap answers TUNGETIFF with its name).
            let mut got = IfReq::new("x").map_err(|e| io_err("TUNGETIFF", &target, e))?;
            // SAFETY: TUNGETIFF fills the ifreq the pointer refers to, valid for the call.
            unsafe { ioctl::tungetiff(fd.as_raw_fd(), &mut got) }
                .map_err(|e| io_err("TUNGETIFF", &target, e))?;
            if got.name() != ifname {
                return Err(Error::InvalidConfig {
                    what: "macvtap fds",
                    why: format!("an fd belongs to {}, not {ifname}", got.name()),
                });
            }
            prepare_fd(fd, &target)?;
        }
        let dev = Device::new(ifname.to_string(), Kind::Macvtap, fds, None)?;
        let label = dev.backend_name();
        Ok(Macvtap { dev, label })
    }
}

device_backend!(Macvtap);

/// One queue of a TAP or macvtap device.
#[derive(Debug)]
pub struct TapQueue {
    open: Arc<AtomicBool>,
    offloads: Arc<AtomicU32>,
    index: u16,
    target: String,
    fd: OwnedFd,
    /// Detached with `set_attached(false)`: EBADFD is then expected, not a device gone.
    detached: bool,
    stats: QueueStats,
    hdr: [u8; VNET_HDR_LEN],
    /// The iovecs of one `writev`/`readv`, reused: the header, then the frame's buffers.
    iov: Iovecs,
}

/// Scratch space for the iovecs of one system call.
#[derive(Default)]
struct Iovecs(Vec<libc::iovec>);

// SAFETY: the pointers in the vector are written right before the `writev`/`readv` of one call
// and never read afterwards: moving the (stale) scratch space to another thread moves no
// access to the memory they name.
unsafe impl Send for Iovecs {}

impl std::fmt::Debug for Iovecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Iovecs")
    }
}

// `IoBuf` and `IoBufMut` have the layout of `struct iovec`; the iovecs below are built from
// their fields, so only the field order and sizes matter here.
const _: () = assert!(std::mem::size_of::<libc::iovec>() == std::mem::size_of::<IoBuf<'_>>());

/// `writev` of a header of ours and the frame's buffers (guest memory, untouched: the kernel
/// copies them).
fn writev_frame(
    fd: BorrowedFd<'_>,
    iov: &mut Iovecs,
    hdr: &[u8],
    bufs: &[IoBuf<'_>],
) -> nix::Result<usize> {
    let iov = &mut iov.0;
    iov.clear();
    iov.push(libc::iovec {
        iov_base: hdr.as_ptr() as *mut libc::c_void,
        iov_len: hdr.len(),
    });
    iov.extend(bufs.iter().map(|b| libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }));
    // SAFETY: every iovec describes readable memory for the call: `hdr` is ours, and each
    // `IoBuf` is readable for its lifetime, which outlives the call. The kernel only reads.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    Errno::result(n).map(|n| n as usize)
}

/// `readv` into a header of ours and the caller's buffers (guest memory, written by the kernel).
fn readv_frame(
    fd: BorrowedFd<'_>,
    iov: &mut Iovecs,
    hdr: &mut [u8],
    bufs: &[IoBufMut<'_>],
) -> nix::Result<usize> {
    let iov = &mut iov.0;
    iov.clear();
    iov.push(libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: hdr.len(),
    });
    iov.extend(bufs.iter().map(|b| libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    }));
    // SAFETY: every iovec describes writable memory for the call: `hdr` is ours (borrowed
    // mutably), and each `IoBufMut` is writable for its lifetime, which outlives the call.
    let n = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    Errno::result(n).map(|n| n as usize)
}

fn encode(hdr: &VirtioNetHdr, out: &mut [u8; VNET_HDR_LEN]) {
    out[0] = hdr.flags;
    out[1] = hdr.gso_type;
    out[2..4].copy_from_slice(&hdr.hdr_len.to_le_bytes());
    out[4..6].copy_from_slice(&hdr.gso_size.to_le_bytes());
    out[6..8].copy_from_slice(&hdr.csum_start.to_le_bytes());
    out[8..10].copy_from_slice(&hdr.csum_offset.to_le_bytes());
    out[10..12].copy_from_slice(&0u16.to_le_bytes());
}

fn decode(b: &[u8; VNET_HDR_LEN]) -> VirtioNetHdr {
    let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    VirtioNetHdr {
        flags: b[0],
        gso_type: b[1],
        hdr_len: u(2),
        gso_size: u(4),
        csum_start: u(6),
        csum_offset: u(8),
        num_buffers: 0,
    }
}

impl Drop for TapQueue {
    fn drop(&mut self) {
        self.open.store(false, Ordering::Release);
    }
}

impl TapQueue {
    /// Programs the device's receive offloads; a detached tun queue cannot (EBADFD), and
    /// the next attach does it.
    fn apply_offloads(&mut self) -> Result<()> {
        let flags = self.offloads.load(Ordering::Acquire);
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        match unsafe { ioctl::tunsetoffload(self.fd.as_raw_fd(), flags as libc::c_int) } {
            Ok(_) | Err(Errno::EBADFD) => Ok(()),
            Err(e) => Err(io_err("TUNSETOFFLOAD", &self.target, e)),
        }
    }

    /// The device was deleted under the queue (tun answers EBADFD, and polls EPOLLERR).
    fn gone(&self) -> Error {
        Error::Disconnected {
            target: self.target.clone(),
            why: "the device was deleted".into(),
        }
    }

    fn set_queue(&mut self, attach: bool) -> Result<()> {
        let flag = if attach {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        let req =
            IfReq::with_flags("q", flag).map_err(|e| io_err("TUNSETQUEUE", &self.target, e))?;
        // SAFETY: TUNSETQUEUE reads the ifreq's flags through the pointer, valid for the call.
        match unsafe { ioctl::tunsetqueue(self.fd.as_raw_fd(), &req) } {
            Ok(_) => {}
            // Attaching an attached queue, detaching a detached one (both drivers say EINVAL;
            // a tun device without IFF_MULTI_QUEUE too, and it has a single queue anyway).
            Err(Errno::EINVAL) => {}
            Err(e) => return Err(io_err("TUNSETQUEUE", &self.target, e)),
        }
        self.detached = !attach;
        if attach {
            self.apply_offloads()?;
        }
        Ok(())
    }
}

impl QueuePair for TapQueue {
    fn index(&self) -> u16 {
        self.index
    }

    fn send(&mut self, frames: &[TxFrame<'_>]) -> Result<usize> {
        for (done, frame) in frames.iter().enumerate() {
            let len = frame.len();
            if frame.data.len() > MAX_IOVECS {
                self.stats.tx_drops.add(DropReason::HostError);
                continue;
            }
            if len < ETH_HLEN {
                self.stats.tx_drops.add(DropReason::Runt);
                continue;
            }
            let mut hdr = [0u8; VNET_HDR_LEN];
            encode(&frame.hdr, &mut hdr);
            match writev_frame(self.fd.as_fd(), &mut self.iov, &hdr, frame.data) {
                Ok(n) if n == len + VNET_HDR_LEN => self.stats.count_tx(len),
                Ok(_) => self.stats.tx_drops.add(DropReason::HostError),
                Err(Errno::EAGAIN) => {
                    self.stats.tx_would_block += 1;
                    return Ok(done);
                }
                Err(Errno::EINTR) => {
                    // Not consumed: offer it again.
                    return Ok(done);
                }
                // The kernel refused this frame's header or size.
                Err(Errno::EINVAL) => self.stats.tx_drops.add(DropReason::MalformedHeader),
                Err(Errno::EMSGSIZE) => self.stats.tx_drops.add(DropReason::TooLarge),
                // The link is down (EIO) or out of memory: the frame is lost, as on a NIC.
                Err(Errno::EIO | Errno::ENOMEM | Errno::ENOBUFS | Errno::EFAULT) => {
                    self.stats.tx_drops.add(DropReason::HostError)
                }
                Err(Errno::EBADFD) if self.detached => {
                    return Err(Error::InvalidConfig {
                        what: "queue state",
                        why: format!("{} is detached: attach it before sending", self.target),
                    })
                }
                Err(Errno::EBADFD) => return Err(self.gone()),
                Err(e) => return Err(io_err("writev", &self.target, e)),
            }
        }
        Ok(frames.len())
    }

    fn recv(&mut self, bufs: &[IoBufMut<'_>]) -> Result<Option<RxFrame>> {
        let room = net_api::iovec::total_len_mut(bufs);
        // Frames dropped in one call are bounded: the caller comes back (readiness is
        // level-triggered) if more wait.
        for _ in 0..64 {
            let n = {
                match readv_frame(self.fd.as_fd(), &mut self.iov, &mut self.hdr, bufs) {
                    Ok(n) => n,
                    Err(Errno::EAGAIN) => return Ok(None),
                    Err(Errno::EINTR) => continue,
                    // A detached queue has nothing to read.
                    Err(Errno::EBADFD) if self.detached => return Ok(None),
                    Err(Errno::EBADFD) => return Err(self.gone()),
                    // tun refuses to deliver one frame it cannot describe (an unexpected
                    // GSO type): that frame is gone, the next one is fine.
                    Err(Errno::EINVAL) => {
                        self.stats.rx_drops.add(DropReason::MalformedHeader);
                        continue;
                    }
                    Err(e) => return Err(io_err("readv", &self.target, e)),
                }
            };
            if n < VNET_HDR_LEN + ETH_HLEN {
                self.stats.rx_drops.add(DropReason::Runt);
                continue;
            }
            let len = n - VNET_HDR_LEN;
            if len > room {
                // The kernel reports the whole length of a frame it had to cut.
                self.stats.rx_drops.add(DropReason::Truncated);
                continue;
            }
            let hdr = decode(&self.hdr);
            if GsoType::from_raw(hdr.gso_type).is_none() {
                self.stats.rx_drops.add(DropReason::MalformedHeader);
                continue;
            }
            self.stats.count_rx(len);
            return Ok(Some(RxFrame { hdr, len }));
        }
        Ok(None)
    }

    fn set_rx_offloads(&mut self, offloads: OffloadSet) -> Result<()> {
        self.offloads.store(tun_flags(offloads), Ordering::Release);
        self.apply_offloads()
    }

    fn set_attached(&mut self, attached: bool) -> Result<()> {
        self.set_queue(attached)
    }

    fn rx_readiness(&self) -> Readiness<'_> {
        Readiness {
            fd: self.fd.as_fd(),
            interest: Interest::Readable,
        }
    }

    fn tx_readiness(&self) -> Readiness<'_> {
        Readiness {
            fd: self.fd.as_fd(),
            interest: Interest::Writable,
        }
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }
}

/// The fd of a queue, for a VMM that polls it itself.
impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        encode(&h, &mut b);
        assert_eq!(b[..4], [1, 1, 54, 0]);
        assert_eq!(decode(&b), h);
    }

    #[test]
    fn offload_flags_map_to_the_kernels() {
        assert_eq!(tun_flags(OffloadSet::NONE), 0);
        assert_eq!(
            tun_flags(OffloadSet::CSUM | OffloadSet::TSO4),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        );
        assert_eq!(tun_flags(OffloadSet::ALL), 0x7f);
    }

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        assert!(IfReq::new("").is_err());
        assert!(IfReq::new("sixteen-bytes-xx").is_err());
        assert!(IfReq::new("a/b").is_err());
        assert_eq!(
            IfReq::new("tap0").map(|r| r.name()).ok().as_deref(),
            Some("tap0")
        );
    }
}
