//! `volt-net serve`: the vhost-user-net daemon over a TAP, a macvtap or a loopback, as a
//! command-line entry point ([`ServeArgs`], [`run`]) shared by the `volt-net-serve` binary
//! and `volt-net serve`.
//!
//! It listens on the socket, serves one frontend at a time, logs a line per connection and
//! per error, and keeps serving when a frontend goes away (QEMU reconnects with
//! `reconnect=1`). SIGTERM or SIGINT removes the socket and exits 0; a TAP it created goes
//! with the process. `--backend loopback` needs no privileges: its far end echoes, drops
//! (`--loopback-mode sink`) or generates (`source`) frames, for tests and benchmarks.

use std::io::{IoSlice, IoSliceMut};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use log::{error, info};
use net_api::loopback::{pair, LoopbackConfig};
use net_api::{Backend, MacAddr, OffloadSet, QueuePair, TxFrame};
use net_macvtap::tap::{Macvtap, Tap};
use nix::sys::signal::{SigSet, Signal};

use crate::backend::{NetBackend, ServeConfig};
use crate::server::Server;

/// The host side of the daemon.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    /// A TAP device (created if missing; needs CAP_NET_ADMIN).
    Tap,
    /// An existing macvtap.
    Macvtap,
    /// An in-memory loopback that echoes frames back (for tests).
    Loopback,
    /// AF_XDP sockets on an interface (native XDP, copy mode; `--mac` is the guest's).
    #[cfg(feature = "afxdp")]
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
    /// What the loopback's far end does with frames: send them back (echo), drop them
    /// (sink), or drop them and send 64-byte frames as fast as the guest takes them (source).
    #[arg(long, value_enum, default_value_t = LoopbackMode::Echo)]
    pub loopback_mode: LoopbackMode,
}

/// What the loopback's far end does with the guest's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LoopbackMode {
    /// Sends each frame back.
    Echo,
    /// Drops them.
    Sink,
    /// Drops them and sends 64-byte frames as fast as the guest takes them.
    Source,
}

/// Runs the daemon until SIGTERM or SIGINT (exit 0) or a fatal error (exit 1, logged).
/// Call it from `main`, with a logger set up: it blocks the two signals in the calling thread
/// first, so call it before starting other threads.
pub fn run(args: &ServeArgs) -> ExitCode {
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
        queue_size: args.queue_size,
        mergeable_rx: !args.no_mrg_rxbuf,
    };
    let res = match args.backend {
        Kind::Tap => {
            let iface = args.iface.clone().unwrap_or_default();
            Tap::create(&iface, args.queues)
                .map_err(|e| e.to_string())
                .and_then(|b| serve(args, b, cfg))
        }
        Kind::Macvtap => {
            let iface = args.iface.clone().unwrap_or_default();
            Macvtap::open(&iface, args.queues)
                .map_err(|e| e.to_string())
                .and_then(|b| serve(args, b, cfg))
        }
        Kind::Loopback => loopback(args).and_then(|b| serve(args, b, cfg)),
        #[cfg(feature = "afxdp")]
        Kind::Afxdp => {
            let iface = args.iface.clone().unwrap_or_default();
            let mac = args.mac.unwrap_or(MacAddr([0x02, 0, 0, 0, 0, 1]));
            net_afxdp::AfXdp::open(net_afxdp::AfXdpConfig {
                queues: args.queues,
                ..net_afxdp::AfXdpConfig::new(&iface, mac)
            })
            .map_err(|e| e.to_string())
            .and_then(|b| serve(args, b, cfg))
        }
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

fn serve<B>(args: &ServeArgs, backend: B, cfg: ServeConfig) -> Result<(), String>
where
    B: Backend + Send + Sync + 'static,
    B::Queue: Send,
{
    let device = NetBackend::new(backend, cfg).map_err(|e| e.to_string())?;
    let name = device.name().to_string();
    let mut server = Server::new(&args.socket, device).map_err(|e| e.to_string())?;
    info!("serving {name} on {}", args.socket.display());
    let mut failures = 0u32;
    loop {
        match server.serve_one() {
            Ok(s) => {
                failures = 0;
                info!(
                    "frontend gone ({}) after {} requests, {} frames from the guest, {} to it; waiting for the next one",
                    s.end, s.requests, s.from_guest, s.to_guest
                );
            }
            // Out of fds or threads, say: give it a moment, but do not spin forever.
            Err(e) => {
                failures += 1;
                error!("serving a frontend: {e}");
                if failures >= 10 {
                    return Err(format!("giving up after {failures} failures in a row"));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}
