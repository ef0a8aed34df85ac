//! The project's XDP program on one interface: loaded and attached once per interface (in
//! this process), shared by every VM on it, detached when the last VM goes.
//!
//! A VM is a slot: its MAC in `volt_macs`, its sockets in `volt_xsks` at
//! `slot * MAX_QUEUES + queue`, and, if it asked, the broadcast slot. Adding or removing a VM
//! updates the maps; the program is never reloaded for it.
//!
//! The program records its owner's pid in `volt_owner`. On attach, a program already on the
//! interface is looked at: one of ours whose owner is gone (a crash) is replaced; one of ours
//! whose owner lives (another process) or anyone else's is left alone and the attach fails,
//! saying which. Nothing is pinned: no bpffs mount is needed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use libbpf_rs::query::{ProgInfoIter, ProgInfoQueryOptions};
use libbpf_rs::{MapCore, MapFlags, MapHandle, ObjectBuilder, Xdp, XdpFlags};
use log::{info, warn};
use net_api::MacAddr;

use crate::{AttachMode, Error};

/// The compiled program (`build.rs`).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// The program's name, how a stale copy is recognised.
pub(crate) const PROGRAM: &str = "volt_steer";
/// VMs per interface and queues per VM (`VOLT_MAX_VMS`, `VOLT_MAX_QUEUES` in the C).
pub(crate) const MAX_VMS: u32 = 64;
pub(crate) const MAX_QUEUES: u32 = 64;

/// What is attached to an interface in this process.
pub(crate) struct Steering {
    ifname: String,
    ifindex: u32,
    mode: AttachMode,
    /// The attached program's id (what Drop detaches, and only that).
    prog_id: AtomicU32,
    prog: OwnedFd,
    macs: MapHandle,
    bcast: MapHandle,
    xsks: MapHandle,
    slots: Mutex<[bool; MAX_VMS as usize]>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn flags(mode: AttachMode) -> XdpFlags {
    match mode {
        AttachMode::Native => XdpFlags::DRV_MODE,
        AttachMode::Skb | AttachMode::Auto => XdpFlags::SKB_MODE,
    }
}

fn bpf_err(ifname: &str, what: &str, e: libbpf_rs::Error) -> Error {
    Error::Bpf {
        ifname: ifname.to_string(),
        what: what.to_string(),
        source: e,
    }
}

/// The XDP program attached to `ifindex` in either mode, as (id, mode flag bits).
fn attached(ifindex: u32, any_fd: BorrowedFd<'_>) -> Vec<(u32, u32)> {
    let xdp = Xdp::new(any_fd);
    [XdpFlags::SKB_MODE.bits(), XdpFlags::DRV_MODE.bits()]
        .into_iter()
        .filter_map(
            |f| match xdp.query_id(ifindex as i32, XdpFlags::from_bits_retain(f)) {
                Ok(id) if id != 0 => Some((id, f)),
                _ => None,
            },
        )
        .collect()
}

/// What the program with `id` is: ours (with its owner's pid, if readable) or not.
fn identify(id: u32) -> Option<(String, Option<u32>)> {
    let info = ProgInfoIter::with_query_opts(ProgInfoQueryOptions::default().include_map_ids(true))
        .find(|p| p.id == id)?;
    let name = info.name.to_string_lossy().into_owned();
    let owner = info.map_ids.iter().find_map(|&m| {
        let h = MapHandle::from_map_id(m).ok()?;
        if h.name().to_str()? != "volt_owner" {
            return None;
        }
        let v = h.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).ok()??;
        Some(u32::from_ne_bytes(v.get(0..4)?.try_into().ok()?))
    });
    Some((name, owner))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The other processes holding an fd of program `id` (pid, command), and whether some
/// process's fds could not be read (without CAP_SYS_PTRACE, say).
fn holders(id: u32) -> (Vec<(u32, String)>, bool) {
    let me = std::process::id();
    let mut out = Vec::new();
    let mut incomplete = false;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return (out, true);
    };
    let want = id.to_string();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            incomplete |= alive(pid);
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path())
                .map_or(true, |t| t.as_os_str() != "anon_inode:bpf-prog")
            {
                continue;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let held = info
                .lines()
                .any(|l| l.strip_prefix("prog_id:").is_some_and(|v| v.trim() == want));
            if held {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                out.push((pid, comm));
                break;
            }
        }
    }
    (out, incomplete)
}

impl Steering {
    /// Loads the program and attaches it to `ifname` (replacing a stale one of ours).
    pub(crate) fn attach(ifname: &str, ifindex: u32, mode: AttachMode) -> Result<Steering, Error> {
        let obj = ObjectBuilder::default()
            .open_memory(OBJECT)
            .and_then(|o| o.load())
            .map_err(|e| {
                bpf_err(
                    ifname,
                    "loading the XDP program (needs CAP_BPF or CAP_SYS_ADMIN)",
                    e,
                )
            })?;
        let prog = obj
            .progs()
            .find(|p| p.name() == PROGRAM)
            .ok_or_else(|| Error::Config(format!("the XDP object has no program {PROGRAM}")))?;
        let prog = prog
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup of the XDP program fd", ifname, e))?;
        let map = |name: &str| -> Result<MapHandle, Error> {
            let m = obj
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| Error::Config(format!("the XDP object has no map {name}")))?;
            MapHandle::try_from(&m).map_err(|e| bpf_err(ifname, "opening a map", e))
        };
        let (macs, bcast, xsks, owner) = (
            map("volt_macs")?,
            map("volt_bcast")?,
            map("volt_xsks")?,
            map("volt_owner")?,
        );
        owner
            .update(
                &0u32.to_ne_bytes(),
                &std::process::id().to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|e| bpf_err(ifname, "recording the owner", e))?;

        // Whatever is attached already: a stale program of ours is replaced, anything else
        // stops us.
        for (id, f) in attached(ifindex, prog.as_fd()) {
            match identify(id) {
                Some((name, owner)) if name == PROGRAM => {
                    // Who holds the program (the owner keeps its fd) decides; the pid in its
                    // map only helps when the holders cannot all be read.
                    let (held, incomplete) = holders(id);
                    let live = owner.filter(|&p| p != std::process::id() && alive(p));
                    if let Some((pid, comm)) = held.first() {
                        return Err(Error::Busy(format!(
                            "{ifname} is steered by volt-net process {pid} ({comm}, XDP program id {id}): the VMs of one interface belong to one process; stop that one or use another interface"
                        )));
                    }
                    if let (true, Some(pid)) = (incomplete, live) {
                        return Err(Error::Busy(format!(
                            "{ifname} has volt-net's XDP program (id {id}) recorded as owned by process {pid}, which runs, and not every process's fds could be read: stop it, or run with CAP_SYS_PTRACE to let this check see who holds the program"
                        )));
                    }
                    info!(
                        "{ifname}: replacing a stale volt-net XDP program (id {id}; no process holds it{})",
                        owner.map_or(String::new(), |p| format!(", its owner {p} is gone"))
                    );
                    Xdp::new(prog.as_fd())
                        .detach(ifindex as i32, XdpFlags::from_bits_retain(f))
                        .map_err(|e| bpf_err(ifname, "detaching a stale program", e))?;
                }
                Some((name, _)) => {
                    return Err(Error::Busy(format!(
                        "{ifname} has an XDP program that is not volt-net's (id {id}, name '{name}'): detach it (ip link set dev {ifname} xdp off) or use another interface"
                    )))
                }
                None => {
                    return Err(Error::Busy(format!(
                        "{ifname} has an XDP program (id {id}) this process cannot inspect (needs CAP_SYS_ADMIN): detach it or run with more privileges"
                    )))
                }
            }
        }
        let xdp = Xdp::new(prog.as_fd());
        let try_mode = |m: AttachMode| {
            xdp.attach(ifindex as i32, flags(m) | XdpFlags::UPDATE_IF_NOEXIST)
                .map(|()| m)
        };
        let mode = match mode {
            AttachMode::Auto => try_mode(AttachMode::Native).or_else(|e| {
                warn!("{ifname}: native XDP failed ({e}); using generic (skb) mode");
                try_mode(AttachMode::Skb)
            }),
            m => try_mode(m),
        }
        .map_err(|e| bpf_err(ifname, "attaching the XDP program (needs CAP_NET_ADMIN)", e))?;
        let prog_id = xdp.query_id(ifindex as i32, flags(mode)).unwrap_or(0);
        info!(
            "{ifname}: volt-net XDP program (id {prog_id}) attached in {} mode",
            mode.as_str()
        );
        Ok(Steering {
            ifname: ifname.to_string(),
            ifindex,
            mode,
            prog_id: AtomicU32::new(prog_id),
            prog,
            macs,
            bcast,
            xsks,
            slots: Mutex::new([false; MAX_VMS as usize]),
        })
    }

    /// The mode the program runs in.
    pub(crate) fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Attaches the program again if someone detached or replaced it; what was found, when
    /// it had to.
    pub(crate) fn ensure(&self) -> Result<Option<String>, Error> {
        let ours = self.prog_id.load(Ordering::Acquire);
        let now = attached(self.ifindex, self.prog.as_fd());
        if now.iter().any(|&(id, _)| id == ours) {
            return Ok(None);
        }
        let xdp = Xdp::new(self.prog.as_fd());
        let what = match now.first() {
            None => "volt-net's XDP program had been detached (not by this daemon)".to_string(),
            Some(&(id, f)) => {
                let name = identify(id).map_or_else(|| "?".into(), |(n, _)| n);
                xdp.detach(self.ifindex as i32, XdpFlags::from_bits_retain(f))
                    .map_err(|e| {
                        bpf_err(&self.ifname, "detaching the program that replaced ours", e)
                    })?;
                format!("volt-net's XDP program had been replaced by program id {id} ('{name}'), which is detached")
            }
        };
        xdp.attach(
            self.ifindex as i32,
            flags(self.mode) | XdpFlags::UPDATE_IF_NOEXIST,
        )
        .map_err(|e| bpf_err(&self.ifname, "attaching the XDP program again", e))?;
        let id = xdp
            .query_id(self.ifindex as i32, flags(self.mode))
            .unwrap_or(0);
        self.prog_id.store(id, Ordering::Release);
        Ok(Some(format!("{what}; attached it again (id {id})")))
    }

    /// Registers a VM: its MAC, and broadcast/multicast if it asks.
    pub(crate) fn add_vm(&self, mac: MacAddr, broadcast: bool) -> Result<u32, Error> {
        if !mac.is_unicast() {
            return Err(Error::Config(format!(
                "{mac} is not a unicast MAC: give the VM its own address"
            )));
        }
        let key = mac_key(mac);
        if self
            .macs
            .lookup(&key, MapFlags::ANY)
            .map_err(|e| bpf_err(&self.ifname, "reading volt_macs", e))?
            .is_some()
        {
            return Err(Error::Busy(format!(
                "{mac} already belongs to a VM on {}",
                self.ifname
            )));
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots
            .iter()
            .position(|used| !used)
            .ok_or_else(|| Error::Busy(format!("{} already has {MAX_VMS} VMs", self.ifname)))?
            as u32;
        if broadcast {
            let cur = self
                .bcast
                .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| bpf_err(&self.ifname, "reading volt_bcast", e))?
                .and_then(|v| {
                    v.get(0..4)
                        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                })
                .unwrap_or(0);
            if cur != 0 {
                return Err(Error::Busy(format!(
                    "another VM on {} already takes broadcast and multicast: XDP cannot copy a frame to two sockets",
                    self.ifname
                )));
            }
            self.bcast
                .update(
                    &0u32.to_ne_bytes(),
                    &(slot + 1).to_ne_bytes(),
                    MapFlags::ANY,
                )
                .map_err(|e| bpf_err(&self.ifname, "setting volt_bcast", e))?;
        }
        self.macs
            .update(&key, &slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| bpf_err(&self.ifname, "adding to volt_macs", e))?;
        slots[slot as usize] = true;
        Ok(slot)
    }

    /// Unregisters a VM (its sockets first).
    pub(crate) fn remove_vm(&self, slot: u32, mac: MacAddr) {
        for q in 0..MAX_QUEUES {
            self.clear_xsk(slot, q);
        }
        let _ = self.macs.delete(&mac_key(mac));
        let cur = self
            .bcast
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .and_then(|v| {
                v.get(0..4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            });
        if cur == Some(slot + 1) {
            let _ = self
                .bcast
                .update(&0u32.to_ne_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY);
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get_mut(slot as usize) {
            *s = false;
        }
    }

    /// Steers the VM's frames arriving on `queue` to the socket `fd`.
    pub(crate) fn set_xsk(&self, slot: u32, queue: u32, fd: BorrowedFd<'_>) -> Result<(), Error> {
        let key = slot * MAX_QUEUES + queue;
        self.xsks
            .update(
                &key.to_ne_bytes(),
                &(fd.as_raw_fd() as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|e| bpf_err(&self.ifname, "adding the socket to volt_xsks", e))
    }

    /// Stops steering the VM's frames on `queue` (they pass to the host).
    pub(crate) fn clear_xsk(&self, slot: u32, queue: u32) {
        let key = slot * MAX_QUEUES + queue;
        let _ = self.xsks.delete(&key.to_ne_bytes());
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        // Detach only what is still ours (someone may have replaced it meanwhile).
        let xdp = Xdp::new(self.prog.as_fd());
        let ours = self.prog_id.load(Ordering::Acquire);
        match xdp.query_id(self.ifindex as i32, flags(self.mode)) {
            Ok(id) if id != 0 && id == ours => {
                match xdp.detach(self.ifindex as i32, flags(self.mode)) {
                    Ok(()) => info!("{}: volt-net XDP program detached", self.ifname),
                    Err(e) => warn!("{}: detaching the XDP program: {e}", self.ifname),
                }
            }
            Ok(id) if id != 0 => warn!(
                "{}: the XDP program is no longer ours (id {id}, ours was {ours}): left alone",
                self.ifname
            ),
            _ => {}
        }
    }
}

/// A MAC as the program's hash key: 6 bytes, little-endian in a `u64`.
fn mac_key(mac: MacAddr) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..6].copy_from_slice(&mac.0);
    k
}
