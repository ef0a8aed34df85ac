//! `volt-net-serve`: a vhost-user-net daemon over a TAP, a macvtap or a loopback.
//!
//! ```text
//! volt-net-serve --socket /run/vm0.sock --backend tap --iface vm0tap --queues 2
//! ```
//! It listens on the socket, serves one frontend at a time, logs a line per connection, and
//! keeps serving when a frontend goes away (QEMU reconnects with `reconnect=1`). SIGTERM or
//! SIGINT removes the socket and exits 0. `--backend loopback` needs no privileges: its far
//! end echoes, drops (`--loopback-mode sink`) or generates (`source`) frames, for tests and
//! benchmarks. The command moves under
//! `volt-net serve` with the command-line issue.

use std::io::{IoSlice, IoSliceMut};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use clap::{Parser, ValueEnum};
use log::{error, info};
use net_api::loopback::{pair, LoopbackConfig};
use net_api::{Backend, MacAddr, OffloadSet, QueuePair, TxFrame};
use net_macvtap::tap::{Macvtap, Tap};
use net_vhostuser::backend::{Mem, NetBackend, ServeConfig};
use nix::sys::signal::{SigSet, Signal};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryMmap;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// A TAP device (created if missing; needs CAP_NET_ADMIN).
    Tap,
    /// An existing macvtap.
    Macvtap,
    /// An in-memory loopback that echoes frames back (for tests).
    Loopback,
}

/// Serve a volt-net backend to a vhost-user frontend.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The unix socket to listen on (created; removed on exit).
    #[arg(long)]
    socket: PathBuf,
    /// The host side.
    #[arg(long, value_enum)]
    backend: Kind,
    /// The TAP or macvtap interface.
    #[arg(long, required_if_eq_any([("backend", "tap"), ("backend", "macvtap")]))]
    iface: Option<String>,
    /// Queue pairs.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// MAC address for the loopback backend.
    #[arg(long)]
    mac: Option<MacAddr>,
    /// Do not offer mergeable receive buffers.
    #[arg(long)]
    no_mrg_rxbuf: bool,
    /// What the loopback's far end does with frames: send them back (echo), drop them
    /// (sink), or drop them and send 64-byte frames as fast as the guest takes them (source).
    #[arg(long, value_enum, default_value_t = LoopbackMode::Echo)]
    loopback_mode: LoopbackMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LoopbackMode {
    Echo,
    Sink,
    Source,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let args = Args::parse();
    // SIGTERM/SIGINT are taken by a thread of ours: block them everywhere first.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        error!("blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    let socket = args.socket.clone();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            info!("{sig}: removing {} and exiting", socket.display());
        }
        let _ = std::fs::remove_file(&socket);
        std::process::exit(0);
    });
    let cfg = ServeConfig {
        queue_pairs: args.queues,
        mergeable_rx: !args.no_mrg_rxbuf,
        ..Default::default()
    };
    let res = match args.backend {
        Kind::Tap => {
            let iface = args.iface.clone().unwrap_or_default();
            Tap::create(&iface, args.queues)
                .map_err(|e| e.to_string())
                .and_then(|b| serve(&args, b, cfg))
        }
        Kind::Macvtap => {
            let iface = args.iface.clone().unwrap_or_default();
            Macvtap::open(&iface, args.queues)
                .map_err(|e| e.to_string())
                .and_then(|b| serve(&args, b, cfg))
        }
        Kind::Loopback => loopback(&args).and_then(|b| serve(&args, b, cfg)),
    };
    let _ = std::fs::remove_file(&args.socket);
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A loopback whose far end sends every frame straight back.
fn loopback(args: &Args) -> Result<net_api::loopback::Loopback, String> {
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
        let mode = args.loopback_mode;
        std::thread::spawn(move || far_end(q, mode));
    }
    std::mem::forget(far);
    Ok(ours)
}

fn far_end(mut q: net_api::loopback::LoopbackQueue, mode: LoopbackMode) {
    let mut buf = vec![0u8; 70_000];
    let mut frame = [0u8; 64];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    loop {
        let mut idle = true;
        match q.recv(&mut [IoSliceMut::new(&mut buf)]) {
            Ok(Some(f)) => {
                idle = false;
                if mode == LoopbackMode::Echo {
                    let data = [IoSlice::new(&buf[..f.len])];
                    // Full: the frame is dropped, as a switch would.
                    let _ = q.send(&[TxFrame {
                        hdr: f.hdr,
                        data: &data,
                    }]);
                }
            }
            Ok(None) => {}
            Err(e) => {
                error!("loopback: {e}");
                return;
            }
        }
        if mode == LoopbackMode::Source {
            let data = [IoSlice::new(&frame)];
            let frames = [TxFrame {
                hdr: net_api::VirtioNetHdr::PLAIN,
                data: &data,
            }; 32];
            match q.send(&frames) {
                Ok(n) if n > 0 => idle = false,
                Ok(_) => {}
                Err(e) => {
                    error!("loopback: {e}");
                    return;
                }
            }
        }
        if idle {
            let fd = q.rx_readiness().fd;
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let timeout = if mode == LoopbackMode::Source {
                1u16
            } else {
                100
            };
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(timeout));
        }
    }
}

fn serve<B>(args: &Args, backend: B, cfg: ServeConfig) -> Result<(), String>
where
    B: Backend + Send + Sync + 'static,
    B::Queue: Send + Sync,
{
    let name = backend.name().to_string();
    let shared = Arc::new(RwLock::new(
        NetBackend::new(backend, cfg).map_err(|e| e.to_string())?,
    ));
    info!("serving {name} on {}", args.socket.display());
    // One daemon for every connection: its worker thread and handler stay, and each new
    // frontend sets the vrings up again (a daemon per connection would cost a worker and an
    // eventfd each time).
    let mem = Mem::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("volt-net-serve".into(), shared.clone(), mem)
        .map_err(|e| format!("vhost-user daemon: {e}"))?;
    if let Some(h) = daemon.get_epoll_handlers().first() {
        use std::os::fd::AsRawFd;
        shared
            .write()
            .map_err(|_| "backend lock poisoned")?
            .set_epoll(h.as_raw_fd())
            .map_err(|e| format!("the worker's epoll: {e}"))?;
    }
    let mut listener = vhost::vhost_user::Listener::new(&args.socket, true)
        .map_err(|e| format!("listening on {}: {e}", args.socket.display()))?;
    loop {
        daemon
            .start(&mut listener)
            .map_err(|e| format!("accepting a frontend: {e}"))?;
        info!("frontend connected");
        let res = daemon.wait();
        let (tx, rx) = shared.read().map(|b| b.frames()).unwrap_or_default();
        let why = match res {
            Ok(()) => "disconnected".to_string(),
            Err(e) => e.to_string(),
        };
        info!(
            "frontend gone ({why}) after {tx} frames from the guest, {rx} to it; waiting for the next one"
        );
        if let Ok(mut b) = shared.write() {
            use vhost_user_backend::VhostUserBackendMut;
            b.reset_device();
        }
    }
}
