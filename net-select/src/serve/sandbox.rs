//! The daemon's sandbox: a Landlock domain and a seccomp filter per kind of thread, applied
//! once the thread is set up (`--seccomp enforce`, the default, and Landlock unless
//! `--no-landlock`), so a thread taken over through a bug can no longer open files, start a
//! program, open a connection or change the host beyond what its job needs.
//!
//! Landlock (file system, TCP, signals and abstract sockets outside the daemon): the main
//! thread keeps only the removal of its socket at exit (workers inherit that: they open no
//! path); the link supervisor reads /sys and /proc and opens /dev/net/tun (a TAP created
//! again, an AF_XDP owner looked up), except for a macvtap, whose device is found again
//! through a private sysfs mount, which Landlock forbids (its seccomp filter still applies);
//! the loopback's far end, nothing.
//!
//! A filter is per thread and inherited by the threads it starts: the main thread applies
//! [`Kind::Daemon`] after the socket is bound and the backend is open (the link supervisor,
//! started before, applies its own); each worker inherits it and narrows it to
//! [`Kind::Worker`] when it starts. A call outside a thread's list fails with EPERM (the
//! caller's error path logs it; with `--seccomp log` it is allowed and the kernel logs it,
//! `dmesg | grep type=1326`, which is how a missing call is found).

use std::collections::BTreeMap;
use std::path::Path;

use clap::ValueEnum;
use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use nix::libc;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};

/// What a filter does with a call outside its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    /// Refuse it (EPERM).
    Enforce,
    /// Allow it, and let the kernel log it (to find a call missing from a list).
    Log,
    /// No filter.
    Off,
}

/// The kinds of threads of the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The main thread: accepts frontends, speaks the protocol, maps their memory, starts
    /// workers (which inherit its filter, so it holds theirs too).
    Daemon,
    /// A queue pair's worker: the datapath, and opening the queue again when the link is
    /// back (a TAP's or macvtap's fd, an AF_XDP socket).
    Worker,
    /// The link supervisor: link events, creating a TAP again, attaching an XDP program,
    /// mounting a private sysfs to find a macvtap's device.
    Watch,
    /// The loopback's far end: moves frames in memory.
    Loopback,
}

/// What every thread does: memory, futexes, waiting, time, signals, its own exit, and
/// reading and writing the fds it has.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_ppoll,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getrandom,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_tgkill,
    libc::SYS_prctl,
];

/// The same, under their older names (x86_64 only).
#[cfg(target_arch = "x86_64")]
const COMMON_LEGACY: &[libc::c_long] = &[libc::SYS_epoll_wait, libc::SYS_poll];
#[cfg(not(target_arch = "x86_64"))]
const COMMON_LEGACY: &[libc::c_long] = &[];

/// A worker: the datapath (AF_XDP wake-ups are `sendto`/`recvfrom`) and opening its queue on
/// a link that came back (`openat` of /dev/tapN or /dev/net/tun, `ioctl`s of TUN, an AF_XDP
/// socket bound and put in the XDP program's map).
const WORKER: &[libc::c_long] = &[
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_ioctl,
    libc::SYS_openat,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_bpf,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
];

/// The main thread, beyond a worker's: frontends (accept, fds in messages, timeouts),
/// eventfds per session, starting and joining workers, removing the socket at exit.
const DAEMON: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    // A worker narrows its inherited filter when it starts.
    libc::SYS_seccomp,
    libc::SYS_rt_sigaction,
];

/// The loopback's far end, beyond every thread's: its readiness is a socket pair.
const LOOPBACK: &[libc::c_long] = &[libc::SYS_sendto, libc::SYS_recvfrom];

/// The supervisor, beyond a worker's: netlink, the /proc scan for an XDP program's owner,
/// the private mount namespace and sysfs of a macvtap's lookup (in a thread of its own).
const WATCH: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_unlinkat,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_capget,
    libc::SYS_uname,
    // libbpf, loading the XDP program again.
    libc::SYS_memfd_create,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
];

impl Kind {
    /// The calls the thread kind may make.
    pub fn syscalls(self) -> Vec<libc::c_long> {
        let mut v: Vec<libc::c_long> = COMMON.iter().chain(COMMON_LEGACY).copied().collect();
        match self {
            Kind::Loopback => v.extend_from_slice(LOOPBACK),
            Kind::Worker => v.extend_from_slice(WORKER),
            Kind::Daemon => {
                v.extend_from_slice(WORKER);
                v.extend_from_slice(DAEMON);
            }
            Kind::Watch => {
                v.extend_from_slice(WORKER);
                v.extend_from_slice(WATCH);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if matches!(self, Kind::Daemon | Kind::Watch) {
            v.extend_from_slice(&[
                libc::SYS_unlink,
                libc::SYS_mkdir,
                libc::SYS_mknod,
                libc::SYS_readlink,
                libc::SYS_access,
            ]);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The compiled filter for `mode` (`None` when off).
    pub fn program(self, mode: SeccompMode) -> Result<Option<BpfProgram>, String> {
        let mismatch = match mode {
            SeccompMode::Off => return Ok(None),
            SeccompMode::Enforce => SeccompAction::Errno(libc::EPERM as u32),
            SeccompMode::Log => SeccompAction::Log,
        };
        let rules: BTreeMap<i64, Vec<SeccompRule>> = self
            .syscalls()
            .into_iter()
            // c_long is i64 here, i32 on 32-bit targets.
            .map(|n| {
                #[allow(clippy::useless_conversion)]
                let n = i64::from(n);
                (n, Vec::new())
            })
            .collect();
        let arch = std::env::consts::ARCH
            .try_into()
            .map_err(|e| format!("seccomp on {}: {e:?}", std::env::consts::ARCH))?;
        let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
            .map_err(|e| format!("a seccomp filter: {e}"))?;
        let prog: BpfProgram = filter
            .try_into()
            .map_err(|e| format!("compiling a seccomp filter: {e:?}"))?;
        Ok(Some(prog))
    }

    /// Applies the filter to the calling thread (and the threads it starts from now on).
    pub fn apply(self, mode: SeccompMode) -> Result<(), String> {
        let Some(prog) = self.program(mode)? else {
            return Ok(());
        };
        seccompiler::apply_filter(&prog)
            .map_err(|e| format!("applying the {self:?} thread's seccomp filter: {e}"))
    }
}

/// What a daemon's threads run under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The seccomp filters.
    pub seccomp: SeccompMode,
    /// Landlock domains.
    pub landlock: bool,
}

impl Sandbox {
    /// Puts the calling thread under `kind`'s Landlock domain (not for workers: they inherit
    /// the main thread's) and then its seccomp filter. `socket` is the daemon's socket (its
    /// removal at exit stays allowed). Returns how Landlock went, for the log.
    pub fn enter(self, kind: Kind, socket: &Path) -> Result<&'static str, String> {
        let landlock = if self.landlock && kind != Kind::Worker {
            landlock(kind, socket)?
        } else {
            "off"
        };
        kind.apply(self.seccomp)?;
        Ok(landlock)
    }
}

/// Puts the calling thread (and the threads it starts) in `kind`'s Landlock domain.
pub fn landlock(kind: Kind, socket: &Path) -> Result<&'static str, String> {
    let abi = ABI::V6;
    let err = |e: landlock::RulesetError| format!("Landlock for the {kind:?} thread: {e}");
    let ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .map_err(err)?;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    // TUN's ioctls are device ioctls (Landlock ABI 5).
    let tun = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    let ruleset = match kind {
        Kind::Daemon => {
            let dir = socket
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            ruleset.add_rules(path_beneath_rules([dir], AccessFs::RemoveFile))
        }
        Kind::Watch => ruleset
            .add_rules(path_beneath_rules(["/sys", "/proc"], read))
            .and_then(|r| r.add_rules(path_beneath_rules(["/dev/net/tun"], tun))),
        Kind::Worker | Kind::Loopback => Ok(ruleset),
    }
    .map_err(err)?;
    let status = ruleset.restrict_self().map_err(err)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "enforced",
        RulesetStatus::PartiallyEnforced => "partly enforced (an older kernel)",
        RulesetStatus::NotEnforced => "not available in this kernel",
    })
}

/// Capability numbers (linux/capability.h).
pub mod cap {
    /// Network configuration: TUN ioctls, XDP attachment, links.
    pub const NET_ADMIN: u32 = 12;
    /// Raw sockets: AF_XDP.
    pub const NET_RAW: u32 = 13;
    /// Locked memory beyond RLIMIT_MEMLOCK: AF_XDP's UMEM.
    pub const IPC_LOCK: u32 = 14;
    /// Mounts: a macvtap's private sysfs.
    pub const SYS_ADMIN: u32 = 21;
    /// Device nodes: a macvtap's, in that private mount.
    pub const MKNOD: u32 = 27;
    /// BPF programs and maps.
    pub const BPF: u32 = 39;

    /// A capability's name.
    pub fn name(c: u32) -> &'static str {
        match c {
            NET_ADMIN => "CAP_NET_ADMIN",
            NET_RAW => "CAP_NET_RAW",
            IPC_LOCK => "CAP_IPC_LOCK",
            SYS_ADMIN => "CAP_SYS_ADMIN",
            MKNOD => "CAP_MKNOD",
            BPF => "CAP_BPF",
            _ => "?",
        }
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_V3: u32 = 0x2008_0522;

/// Becomes `uid`/`gid` (supplementary groups: `gid` only) keeping the capabilities `keep`
/// and no other, permitted and effective. Call it while the process has one thread: the
/// user and the capabilities of threads started before would differ.
pub fn become_user(uid: u32, gid: u32, keep: &[u32]) -> Result<(), String> {
    // A helper thread joined a moment ago (a macvtap's lookup) may still be listed while the
    // kernel finishes its exit.
    let count = || std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while count() > 1 && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let threads = count();
    if threads != 1 {
        return Err(format!(
            "changing user with {threads} threads running: a bug (it must come before any)"
        ));
    }
    let err = |what: &str, e: nix::Error| format!("--user: {what}: {e}");
    // The bounding set too (while CAP_SETPCAP is there): nothing else can come back.
    for c in 0..64u32 {
        if !keep.contains(&c) {
            // SAFETY: prctl with integer arguments; EINVAL past the kernel's last one.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(err("PR_SET_KEEPCAPS", nix::Error::last()));
    }
    let g = nix::unistd::Gid::from_raw(gid);
    let u = nix::unistd::Uid::from_raw(uid);
    nix::unistd::setgroups(&[g]).map_err(|e| err("setgroups", e))?;
    nix::unistd::setresgid(g, g, g).map_err(|e| err("setresgid", e))?;
    nix::unistd::setresuid(u, u, u).map_err(|e| err("setresuid", e))?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    let mut data = [CapData::default(); 2];
    for &c in keep {
        let (word, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: capset reads a v3 header and two data words we own.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(err("capset", nix::Error::last()));
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno_of(r: libc::c_long) -> i32 {
        if r == -1 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    /// In a thread of its own (a filter cannot be taken off): a worker may do its job, and
    /// is refused what it has no business doing, with EPERM.
    #[test]
    fn a_worker_is_refused_what_it_has_no_business_doing() {
        std::thread::spawn(|| {
            Kind::Worker.apply(SeccompMode::Enforce).expect("filter");
            let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
            assert!(status.contains("Seccomp:\t2"), "{status}");
            // Its job: eventfds, reads and writes, epoll.
            let efd = nix::sys::eventfd::EventFd::new().expect("an eventfd");
            efd.write(1).expect("write");
            assert_eq!(efd.read().expect("read"), 1);
            // Not its job: starting a program, a child, a connection, unlinking a file.
            let sh = c"/bin/sh";
            let argv = [sh.as_ptr(), std::ptr::null()];
            // SAFETY: valid C strings and a null-terminated argv; the call is refused.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_execve,
                    sh.as_ptr(),
                    argv.as_ptr(),
                    std::ptr::null::<*const libc::c_char>(),
                )
            };
            assert_eq!(errno_of(r), libc::EPERM, "execve");
            // SAFETY: fork without arguments; refused, so there is no child.
            let r = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            assert_eq!(errno_of(r), libc::EPERM, "clone");
            // SAFETY: connect on fd -1 with a null address: refused before it is looked at.
            let r = unsafe { libc::syscall(libc::SYS_connect, -1, 0, 0) };
            assert_eq!(errno_of(r), libc::EPERM, "connect");
            // SAFETY: a valid C string; refused before the path is looked at.
            let r = unsafe { libc::syscall(libc::SYS_unlinkat, libc::AT_FDCWD, c"/x".as_ptr(), 0) };
            assert_eq!(errno_of(r), libc::EPERM, "unlinkat");
            // SAFETY: ptrace(PTRACE_TRACEME): refused.
            let r = unsafe { libc::syscall(libc::SYS_ptrace, 0, 0, 0, 0) };
            assert_eq!(errno_of(r), libc::EPERM, "ptrace");
        })
        .join()
        .expect("the filtered thread");
        // The test's own thread is not filtered.
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        assert!(status.contains("Seccomp:\t0"), "{status}");
    }

    /// The main thread's domain: no file opened, a file beside the socket removed; the
    /// supervisor's: /proc read, nothing written outside /dev/net/tun.
    #[test]
    fn landlock_leaves_the_main_thread_only_its_sockets_removal() {
        let dir = std::env::temp_dir().join(format!("volt-landlock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("vu.sock");
        std::fs::write(&sock, b"").expect("a stand-in");
        let outside = dir
            .join("..")
            .join(format!("volt-landlock-{}.x", std::process::id()));
        std::fs::write(&outside, b"x").expect("a file outside");
        let (s, o) = (sock.clone(), outside.clone());
        let r = std::thread::spawn(move || {
            let how = landlock(Kind::Daemon, &s).expect("landlock");
            if how != "enforced" {
                return how;
            }
            let denied = |r: std::io::Result<()>| {
                matches!(r, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
            };
            assert!(denied(std::fs::read("/etc/hostname").map(drop)), "read /etc");
            assert!(denied(std::fs::read(&o).map(drop)), "read beside");
            assert!(denied(std::fs::remove_file(&o)), "remove outside");
            assert!(denied(std::fs::write(s.with_extension("new"), b"").map(drop)), "create");
            std::fs::remove_file(&s).expect("the socket is removed at exit");
            how
        })
        .join()
        .expect("the sandboxed thread");
        if r == "enforced" {
            assert!(!sock.exists());
        }
        let w = std::thread::spawn(|| {
            if landlock(Kind::Watch, Path::new("/nonexistent/x")).expect("landlock") != "enforced" {
                return;
            }
            assert!(
                std::fs::read_to_string("/proc/self/status").is_ok(),
                "/proc read"
            );
            assert!(std::fs::read("/etc/hostname").is_err(), "/etc not");
        });
        w.join().expect("the supervisor's thread");
        let _ = std::fs::remove_file(&outside);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_kind_compiles_and_lists_are_nested() {
        for k in [Kind::Daemon, Kind::Worker, Kind::Watch, Kind::Loopback] {
            assert!(k.program(SeccompMode::Enforce).expect("compiles").is_some());
            assert!(k.program(SeccompMode::Off).expect("off").is_none());
        }
        // Workers inherit the daemon's filter: its list must hold theirs.
        let daemon = Kind::Daemon.syscalls();
        for n in Kind::Worker.syscalls() {
            assert!(
                daemon.contains(&n),
                "syscall {n}: a worker's, not the daemon's"
            );
        }
        assert!(!Kind::Worker.syscalls().contains(&libc::SYS_execve));
        assert!(!Kind::Daemon.syscalls().contains(&libc::SYS_execve));
    }
}
