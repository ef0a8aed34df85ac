//! The daemon's seccomp filters: one per kind of thread, applied once the thread is set up
//! (`--seccomp enforce`, the default), so a thread taken over through a bug can no longer
//! start a program, open a connection or change the host beyond what its job needs.
//!
//! A filter is per thread and inherited by the threads it starts: the main thread applies
//! [`Kind::Daemon`] after the socket is bound and the backend is open (the link supervisor,
//! started before, applies its own); each worker inherits it and narrows it to
//! [`Kind::Worker`] when it starts. A call outside a thread's list fails with EPERM (the
//! caller's error path logs it; with `--seccomp log` it is allowed and the kernel logs it,
//! `dmesg | grep type=1326`, which is how a missing call is found).

use std::collections::BTreeMap;

use clap::ValueEnum;
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
