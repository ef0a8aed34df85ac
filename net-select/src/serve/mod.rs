//! `volt-net serve`: the vhost-user-net daemon over a TAP, a macvtap, AF_XDP or a loopback,
//! as a command-line entry point ([`ServeArgs`], [`run`]) shared by the `volt-net-serve`
//! binary and `volt-net serve` (cargo feature `cli`). It opens the host side here, where the
//! other backends are opened too; `net-vhostuser` only serves a `net_api::Backend` it is given.
//!
//! It listens on the socket, serves one frontend at a time, logs a line per session and per
//! error, and keeps serving when a frontend goes away (QEMU reconnects with `reconnect=1`).
//! SIGTERM or SIGINT ends the session, removes the socket and the TAP it created, and exits 0.
//! `--backend loopback` needs no privileges: it echoes frames back (a second thread), or, with
//! `--loopback-mode sink` or `source`, takes or makes them in the worker's own thread, as
//! DPDK testpmd's rxonly and txonly do (for benchmarks).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use log::error;
use net_api::loopback::{pair, LoopbackConfig};
use net_api::null::{Null, NullMode};
use net_api::{Backend, IoBuf, IoBufMut, MacAddr, OffloadSet, QueuePair, TxFrame};
use net_macvtap::tap::{Macvtap, Tap};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use net_vhostuser::device::{ServeConfig, DEFAULT_BUSY_POLL_US};
use net_vhostuser::server::Server;

use crate::relink::Relink;

pub mod sandbox;
mod watch;

use sandbox::{Sandbox, SeccompMode};

/// The host side of the daemon.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    /// A TAP device (created if missing; needs CAP_NET_ADMIN).
    Tap,
    /// An existing macvtap.
    Macvtap,
    /// An in-memory loopback that echoes frames back (for tests).
    Loopback,
    /// AF_XDP sockets on an interface (native XDP, copy mode; `--mac` is the guest's). Needs
    /// a build with the `afxdp` cargo feature.
    Afxdp,
}

/// Serve a volt-net backend to a vhost-user frontend.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The unix socket to listen on (created; removed on exit).
    #[arg(long)]
    pub socket: PathBuf,
    /// The host side (AF_XDP comes with net-afxdp).
    #[arg(long, value_enum)]
    pub backend: Kind,
    /// The TAP, macvtap or AF_XDP interface.
    #[arg(long, required_if_eq_any([("backend", "tap"), ("backend", "macvtap"), ("backend", "afxdp")]))]
    pub iface: Option<String>,
    /// Queue pairs.
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// The guest's MAC: the loopback's address, and what AF_XDP steers to the guest.
    #[arg(long, required_if_eq("backend", "afxdp"))]
    pub mac: Option<MacAddr>,
    /// The largest ring the frontend may use (a power of two; QEMU's rx_queue_size and
    /// tx_queue_size must not exceed it).
    #[arg(long, default_value_t = 1024)]
    pub queue_size: u16,
    /// Do not offer mergeable receive buffers.
    #[arg(long)]
    pub no_mrg_rxbuf: bool,
    /// What the loopback does with frames: send them back (echo, through a second thread),
    /// take them (sink), or take them and give the guest a frame whenever it has a buffer
    /// (source); sink and source work in the worker's own thread.
    #[arg(long, value_enum, default_value_t = LoopbackMode::Echo)]
    pub loopback_mode: LoopbackMode,
    /// The source's frame length in bytes (60 to 1514).
    #[arg(long, default_value_t = 64)]
    pub source_len: usize,
    /// How long a frontend may take from connecting to identifying itself (SET_OWNER and
    /// GET_FEATURES), in seconds.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout: u64,
    /// How long a worker keeps polling its rings after frames last moved, in microseconds,
    /// before it sleeps until the frontend kicks (0: never poll).
    #[arg(long, default_value_t = DEFAULT_BUSY_POLL_US)]
    pub busy_poll_us: u64,
    /// The socket's mode, in octal (0600: only the daemon's user; 0660 with
    /// `--socket-group`: that group too), whatever the umask.
    #[arg(long, default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// The socket's group (a name or a number).
    #[arg(long, value_parser = parse_group)]
    pub socket_group: Option<u32>,
    /// The seccomp filters of the daemon's threads once set up: enforce (a call outside a
    /// thread's list fails with EPERM), log (allowed; the kernel logs it), off.
    #[arg(long, value_enum, default_value_t = SeccompMode::Enforce)]
    pub seccomp: SeccompMode,
    /// The user (a name or a number) the daemon becomes once its backend is open, keeping
    /// only the capabilities its backend still needs (tap: CAP_NET_ADMIN; macvtap: also
    /// CAP_SYS_ADMIN and CAP_MKNOD; afxdp: CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK, CAP_BPF;
    /// loopback: none). The socket's directory must be writable by that user.
    #[arg(long, value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// No Landlock domains (by default each thread keeps only the file system access it
    /// still needs once set up).
    #[arg(long)]
    pub no_landlock: bool,
}

impl ServeArgs {
    fn sandbox(&self) -> Sandbox {
        Sandbox {
            seccomp: self.seccomp,
            landlock: !self.no_landlock,
        }
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s}: a mode in octal, such as 0600 or 0660"))?;
    if m & !0o777 != 0 {
        return Err(format!("{s}: permission bits only (at most 0777)"));
    }
    if m & 0o200 == 0 {
        return Err(format!(
            "{s}: the owner needs write permission to connect (0600 at least)"
        ));
    }
    Ok(m)
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let found = match s.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(s),
    };
    match found {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => Err(format!("{s}: no such user")),
        Err(e) => Err(format!("{s}: looking the user up: {e}")),
    }
}

/// Becomes `--user` (if given), keeping what `backend` needs; before any other thread.
fn drop_privileges(args: &ServeArgs) -> Result<(), String> {
    use sandbox::cap;
    let Some((uid, gid)) = args.user else {
        return Ok(());
    };
    let keep: &[u32] = match args.backend {
        Kind::Tap => &[cap::NET_ADMIN],
        Kind::Macvtap => &[cap::NET_ADMIN, cap::SYS_ADMIN, cap::MKNOD],
        Kind::Afxdp => &[cap::NET_ADMIN, cap::NET_RAW, cap::IPC_LOCK, cap::BPF],
        Kind::Loopback => &[],
    };
    sandbox::become_user(uid, gid, keep)?;
    let names: Vec<&str> = keep.iter().map(|&c| cap::name(c)).collect();
    log::info!(
        "running as uid {uid} gid {gid}, keeping {}",
        if names.is_empty() {
            "no capability".to_string()
        } else {
            names.join(", ")
        }
    );
    Ok(())
}

fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("{s}: no such group")),
        Err(e) => Err(format!("{s}: looking the group up: {e}")),
    }
}

/// What the loopback's far end does with the guest's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LoopbackMode {
    /// Sends each frame back.
    Echo,
    /// Drops them.
    Sink,
    /// Drops them, and fills every receive buffer the guest gives with a frame.
    Source,
}

/// Runs the daemon until SIGTERM or SIGINT (exit 0) or a fatal error (exit 1, logged).
/// Call it from `main`, with a logger set up, before starting other threads: it blocks the two
/// signals in the calling thread (the threads it starts inherit that) and takes them from a
/// signalfd.
pub fn run(args: &ServeArgs) -> ExitCode {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    let stop = signals.thread_block().and_then(|()| {
        SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    });
    let stop = match stop {
        Ok(s) => s,
        Err(e) => {
            error!("taking SIGTERM and SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = ServeConfig {
        queue_pairs: args.queues,
        queue_size: args.queue_size,
        mergeable_rx: !args.no_mrg_rxbuf,
        handshake_timeout: std::time::Duration::from_secs(args.handshake_timeout),
        busy_poll: std::time::Duration::from_micros(args.busy_poll_us),
        socket_mode: args.socket_mode,
        socket_group: args.socket_group,
    };
    let res = match args.backend {
        Kind::Tap => {
            let iface = args.iface.clone().unwrap_or_default();
            // A TAP that is not there yet is ours: created again if it is deleted.
            let created = nix::net::if_::if_nametoindex(iface.as_str()).is_err();
            Tap::create(&iface, args.queues)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let policy = watch::TapPolicy::new(b.ifname(), args.queues, created);
                    serve_supervised(args, b, policy, cfg, &stop)
                })
        }
        Kind::Macvtap => {
            let iface = args.iface.clone().unwrap_or_default();
            Macvtap::open(&iface, args.queues)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let policy = watch::MacvtapPolicy::new(&iface, args.queues);
                    serve_supervised(args, b, policy, cfg, &stop)
                })
        }
        Kind::Loopback => match drop_privileges(args).map(|()| args.loopback_mode) {
            Err(e) => Err(e),
            Ok(LoopbackMode::Echo) => loopback(args).and_then(|b| serve(args, b, cfg, &stop)),
            Ok(LoopbackMode::Sink) => Null::new(NullMode::Sink, args.queues)
                .map_err(|e| e.to_string())
                .and_then(|b| serve(args, b, cfg, &stop)),
            Ok(LoopbackMode::Source) => Null::new(
                NullMode::Source {
                    len: args.source_len,
                },
                args.queues,
            )
            .map_err(|e| e.to_string())
            .and_then(|b| serve(args, b, cfg, &stop)),
        },
        Kind::Afxdp => afxdp(args, cfg, &stop),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "afxdp")]
fn afxdp(args: &ServeArgs, cfg: ServeConfig, stop: &SignalFd) -> Result<(), String> {
    let iface = args.iface.clone().unwrap_or_default();
    let mac = args.mac.unwrap_or(MacAddr([0x02, 0, 0, 0, 0, 1]));
    let xdp = net_afxdp::AfXdpConfig {
        queues: args.queues,
        ..net_afxdp::AfXdpConfig::new(&iface, mac)
    };
    net_afxdp::AfXdp::open(xdp.clone())
        .map_err(|e| e.to_string())
        .and_then(|b| serve_supervised(args, b, watch::AfXdpPolicy::new(xdp), cfg, stop))
}

#[cfg(not(feature = "afxdp"))]
fn afxdp(_: &ServeArgs, _: ServeConfig, _: &SignalFd) -> Result<(), String> {
    Err(
        "this volt-net was built without AF_XDP: build it with the `afxdp` cargo feature \
         (cargo build --release -p net-select --features cli,afxdp; needs clang and libelf)"
            .into(),
    )
}

/// A loopback whose far end sends every frame straight back.
fn loopback(args: &ServeArgs) -> Result<net_api::loopback::Loopback, String> {
    let mut lb = LoopbackConfig {
        queue_pairs: args.queues,
        capacity: 1024,
        vnet_hdr: true,
        offloads: OffloadSet::ALL,
        ..Default::default()
    };
    if let Some(mac) = args.mac {
        lb.macs[0] = mac;
    }
    let (ours, mut far) = pair(lb).map_err(|e| e.to_string())?;
    for i in 0..args.queues {
        let mut q = far.open_queue_pair(i).map_err(|e| e.to_string())?;
        q.set_rx_offloads(OffloadSet::ALL)
            .map_err(|e| e.to_string())?;
        let (sandbox, socket) = (args.sandbox(), args.socket.clone());
        std::thread::Builder::new()
            .name("volt-loopback".into())
            .spawn(move || {
                if let Err(e) = sandbox.enter(sandbox::Kind::Loopback, &socket) {
                    error!("loopback: {e}");
                    return;
                }
                far_end(q)
            })
            .map_err(|e| format!("starting the loopback's far end: {e}"))?;
    }
    std::mem::forget(far);
    Ok(ours)
}

/// The loopback's far end: sends every frame back.
fn far_end(mut q: net_api::loopback::LoopbackQueue) {
    let mut buf = vec![0u8; 70_000];
    loop {
        match q.recv(&[IoBufMut::from_mut_slice(&mut buf)]) {
            Ok(Some(f)) => {
                let data = [IoBuf::from_slice(&buf[..f.len])];
                // Full: the frame is dropped, as a switch would.
                let _ = q.send(&[TxFrame {
                    hdr: f.hdr,
                    data: &data,
                }]);
            }
            Ok(None) => {
                let fd = q.rx_readiness().fd;
                let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            }
            Err(e) => {
                error!("loopback: {e}");
                return;
            }
        }
    }
}

/// Serves a backend whose link the daemon follows (see `watch`): queue pairs through a
/// [`Relink`], a supervisor thread that takes the link away and brings it back. When the
/// daemon stops, the server goes first (socket removed), then the supervisor, then the
/// backend (a created TAP removed, the XDP program detached).
fn serve_supervised<P: watch::Policy>(
    args: &ServeArgs,
    backend: P::B,
    policy: P,
    cfg: ServeConfig,
    stop: &SignalFd,
) -> Result<(), String>
where
    <P::B as Backend>::Queue: Send,
{
    drop_privileges(args)?;
    let (relink, handle) = Relink::new(backend).map_err(|e| format!("following the link: {e}"))?;
    let supervisor = watch::spawn(handle, policy, args.sandbox(), &args.socket)?;
    let r = serve(args, relink, cfg, stop);
    drop(supervisor);
    r
}

fn serve<B>(args: &ServeArgs, backend: B, cfg: ServeConfig, stop: &SignalFd) -> Result<(), String>
where
    B: Backend,
    B::Queue: Send,
{
    let mut server = Server::new(&args.socket, backend, cfg).map_err(|e| e.to_string())?;
    // Set up: from here on each thread keeps to its list (threads started before apply
    // their own; workers inherit this one and narrow it).
    let sb = args.sandbox();
    let landlock = sb.enter(sandbox::Kind::Daemon, &args.socket)?;
    server.on_worker_start(std::sync::Arc::new(move |_| {
        sandbox::Kind::Worker.apply(sb.seccomp)
    }));
    log::info!(
        "sandbox: seccomp filters {:?}, Landlock {landlock} (the daemon and its workers; the link supervisor and the loopback apply their own)",
        sb.seccomp
    );
    server
        .run(stop.as_fd())
        .map_err(|e| format!("serving on {}: {e}", args.socket.display()))?;
    log::info!("stopping: removing {}", args.socket.display());
    Ok(())
}
