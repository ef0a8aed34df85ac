//! Steady-state rates of a vhost-user-net backend against DPDK's virtio_user, ours beside
//! DPDK's own `net_vhost`, in one run.
//!
//! ```text
//! cargo bench -p volt-net-bench --bench vhost_user   # as root
//! ```
//!
//! Prints a table and writes it as JSON to `target/bench/vhost_user.json`. Skipped, with the
//! reason printed, when not run as root or without `/usr/bin/dpdk-testpmd`.
//!
//! # Method
//!
//! The frontend is DPDK's `net_virtio_user0` in testpmd, its two lcores on the last CPU; the
//! backend runs on the first CPU. Two directions, at 64 and 1514-byte frames:
//!
//! - **guest → backend**: the frontend in `txonly` mode; the backend drops what it takes:
//!   DPDK `net_vhost` in `rxonly` mode, or our server over the `null` sink (each frame read
//!   once in the worker thread, as `net_vhost` copies it into an mbuf);
//! - **backend → guest**: the frontend in `rxonly` mode; the backend makes frames: DPDK
//!   `net_vhost` in `txonly` mode, or our server over the `null` source (a frame written into
//!   each receive buffer in the worker thread).
//!
//! Our server runs in this process, pinned (its session and worker threads inherit the CPU),
//! one queue pair, mergeable buffers offered, busy polling as `volt-net serve` does by default.
//! The rate is the frontend's: testpmd prints it every second (`--stats-period 1`); after
//! traffic starts, the first `VOLT_BENCH_WARMUP` periods (2) are skipped and the next
//! `VOLT_BENCH_PERIODS` (4) kept. The machines this runs on are shared and noisy (the same
//! run can vary by 2x from one minute to the next), so each row alternates the two backends
//! over `VOLT_BENCH_ROUNDS` rounds (3), DPDK first in odd rounds and ours first in even ones,
//! and compares the medians of all the periods each side got. A rate below 0.05 Mpps is a
//! broken run: the row says so and no ratio is computed.

#![allow(missing_docs)]

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use net_api::null::{Null, NullMode};
use net_vhostuser::device::ServeConfig;
use net_vhostuser::server::Server;
use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;
use volt_net_testkit::testpmd::{pin, wait_for_path, Spec, Steady, Testpmd, TESTPMD};

/// Which way frames go.
#[derive(Clone, Copy, PartialEq)]
enum Dir {
    /// The frontend transmits, the backend takes.
    ToBackend,
    /// The backend makes frames, the frontend receives.
    ToGuest,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::ToBackend => "virtio_user txonly -> backend sink",
            Dir::ToGuest => "backend source -> virtio_user rxonly",
        }
    }
    fn frontend_fwd(self) -> &'static str {
        match self {
            Dir::ToBackend => "txonly",
            Dir::ToGuest => "rxonly",
        }
    }
    fn backend_fwd(self) -> &'static str {
        match self {
            Dir::ToBackend => "rxonly",
            Dir::ToGuest => "txonly",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Dir::ToBackend => "Tx-pps:",
            Dir::ToGuest => "Rx-pps:",
        }
    }
}

struct Setup {
    backend_cpu: usize,
    frontend_cpu: usize,
    warmup: usize,
    periods: usize,
    rounds: usize,
    dir: PathBuf,
}

/// The median of every period a side got over the rounds.
fn pooled(runs: &[Option<Steady>]) -> Option<Steady> {
    let mut samples: Vec<u64> = runs
        .iter()
        .flatten()
        .flat_map(|s| s.samples.clone())
        .collect();
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2] as f64
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) as f64 / 2.0
    };
    Some(Steady { median, samples })
}

/// The frontend against the socket; its steady rate.
fn frontend(s: &Setup, tag: &str, sock: &Path, d: Dir, len: usize) -> (Option<Steady>, String) {
    let pmd = Testpmd::start(&Spec {
        txpkts: Some(len),
        ..Spec::new(
            tag,
            s.frontend_cpu,
            &format!("net_virtio_user0,path={},queues=1", sock.display()),
            d.frontend_fwd(),
        )
    });
    let steady = pmd.steady(d.key(), s.warmup, s.periods, Duration::from_secs(40));
    let out = pmd.stop();
    (steady, out)
}

fn dpdk(s: &Setup, d: Dir, len: usize) -> Option<Steady> {
    let sock = s.dir.join(format!("dpdk-{len}.sock"));
    let pid = std::process::id();
    let backend = Testpmd::start(&Spec {
        txpkts: Some(len),
        periodic: false,
        ..Spec::new(
            &format!("volt-bvh-{pid}"),
            s.backend_cpu,
            &format!("net_vhost0,iface={},queues=1", sock.display()),
            d.backend_fwd(),
        )
    });
    assert!(
        wait_for_path(&sock, Duration::from_secs(30)),
        "net_vhost's socket"
    );
    let (steady, out) = frontend(s, &format!("volt-bvv-{pid}"), &sock, d, len);
    drop(backend.stop());
    if steady.is_none() {
        eprintln!("DPDK row, {} {len} B: no traffic\n{out}", d.name());
    }
    steady
}

fn ours(s: &Setup, d: Dir, len: usize) -> Option<Steady> {
    let sock = s.dir.join(format!("ours-{len}.sock"));
    let mode = match d {
        Dir::ToBackend => NullMode::Sink,
        Dir::ToGuest => NullMode::Source { len },
    };
    let backend = Null::new(mode, 1).expect("null backend");
    let cfg = ServeConfig {
        queue_size: 1024,
        ..ServeConfig::default()
    };
    let (stop, trigger) = UnixStream::pair().expect("socketpair");
    let backend_cpu = s.backend_cpu;
    let path = sock.clone();
    let serving = std::thread::spawn(move || {
        pin(backend_cpu);
        let mut server = Server::new(&path, backend, cfg).expect("server");
        server.serve_one(Some(stop.as_fd()))
    });
    assert!(wait_for_path(&sock, Duration::from_secs(10)), "our socket");
    let (steady, out) = frontend(
        s,
        &format!("volt-bvo-{}", std::process::id()),
        &sock,
        d,
        len,
    );
    drop(trigger);
    let session = serving.join().expect("server thread");
    if steady.is_none() {
        eprintln!(
            "volt-net row, {} {len} B: no traffic ({session:?})\n{out}",
            d.name()
        );
    }
    steady
}

fn main() {
    // `cargo test --benches` runs bench binaries with no `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED vhost_user: needs root for DPDK");
        return;
    }
    if !Path::new(TESTPMD).exists() {
        println!("SKIPPED vhost_user: no {TESTPMD} (apt-get install dpdk-dev)");
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let cpus: Vec<usize> = {
        let set = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    };
    let dir = std::env::temp_dir().join(format!("volt-bench-vhost-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let s = Setup {
        backend_cpu: cpus[0],
        frontend_cpu: *cpus.last().expect("a CPU"),
        warmup: env("VOLT_BENCH_WARMUP", 2),
        periods: env("VOLT_BENCH_PERIODS", 4),
        rounds: env("VOLT_BENCH_ROUNDS", 3),
        dir,
    };

    println!(
        "vhost-user-net backends against DPDK virtio_user (testpmd), backend on CPU {}, frontend on CPU {}; steady state: {} rounds alternating the backends, {} one-second periods each after {} of warm-up, medians",
        s.backend_cpu, s.frontend_cpu, s.rounds, s.periods, s.warmup
    );
    println!(
        "{:<40} {:>6} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "direction", "bytes", "ours Mpps", "DPDK Mpps", "ours Gb/s", "DPDK Gb/s", "ratio"
    );
    let mut json = Vec::new();
    for d in [Dir::ToBackend, Dir::ToGuest] {
        for len in [64usize, 1500] {
            let (mut t, mut m) = (Vec::new(), Vec::new());
            for round in 0..s.rounds {
                if round % 2 == 0 {
                    t.push(dpdk(&s, d, len));
                    m.push(ours(&s, d, len));
                } else {
                    m.push(ours(&s, d, len));
                    t.push(dpdk(&s, d, len));
                }
            }
            let (theirs, mine) = (pooled(&t), pooled(&m));
            let mpps = |x: &Option<Steady>| x.as_ref().map_or(0.0, |x| x.median / 1e6);
            let (v, p) = (mpps(&mine), mpps(&theirs));
            // Frames on the wire: the rate times the frame, in bits.
            let gbps = |m: f64| m * 1e6 * len as f64 * 8.0 / 1e9;
            let sane = v >= 0.05 && p >= 0.05;
            let ratio = if sane { v / p } else { f64::NAN };
            println!(
                "{:<40} {:>6} {:>10.3} {:>10.3} {:>10.2} {:>10.2} {:>7}",
                d.name(),
                len,
                v,
                p,
                gbps(v),
                gbps(p),
                if sane {
                    format!("{ratio:.2}")
                } else {
                    "broken".into()
                }
            );
            let samples = |x: &Option<Steady>| {
                x.as_ref()
                    .map_or(String::from("[]"), |x| format!("{:?}", x.samples))
            };
            json.push(format!(
                "{{\"direction\":\"{}\",\"bytes\":{len},\"volt_net_mpps\":{v:.4},\"dpdk_mpps\":{p:.4},\"ratio\":{},\"volt_net_samples\":{},\"dpdk_samples\":{}}}",
                d.name(),
                if sane { format!("{ratio:.4}") } else { "null".into() },
                samples(&mine),
                samples(&theirs)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&s.dir);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join("vhost_user.json"),
        format!("[\n  {}\n]\n", json.join(",\n  ")),
    );
}
