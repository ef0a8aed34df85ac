//! Frames per second a vhost-user-net backend takes from DPDK's virtio_user, ours beside
//! DPDK's own `net_vhost`, in one run.
//!
//! ```text
//! cargo bench -p volt-net-bench --bench vhost_user     # as root; VOLT_BENCH_SECS=5 by default
//! ```
//!
//! Prints a table and writes it as JSON to `target/bench/vhost_user.json`. Skipped, with the
//! reason printed, when not run as root or without `/usr/bin/dpdk-testpmd`.
//!
//! # Method
//!
//! The frontend is the same in both rows: `dpdk-testpmd` with `net_virtio_user0` in `txonly`
//! mode (64-byte frames, bursts of 32), its lcores on the last CPU. The backend runs on the
//! first CPU:
//!
//! - **volt-net**: [`net_vhostuser::server::Server`] in this process (pinned, with its worker
//!   threads), over a loopback whose far end, a thread on the same CPU, drops every frame
//!   (the drop sink). One queue pair, mergeable buffers offered, as `volt-net-serve` does.
//! - **DPDK**: a second testpmd with `net_vhost0` in `rxonly` mode (it counts and frees every
//!   frame), its lcores on the first CPU.
//!
//! Both rows count what the backend received over the whole life of the frontend (from its
//! start to its stop after `VOLT_BENCH_SECS`), divided by that time: the connection set-up,
//! the same in both rows, is inside the window. The ratio is volt-net / DPDK.

#![allow(missing_docs)]

use std::io::IoSliceMut;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use net_api::loopback::{pair, LoopbackConfig, LoopbackQueue};
use net_api::{Backend, OffloadSet, QueuePair};
use net_vhostuser::backend::{NetBackend, ServeConfig};
use net_vhostuser::server::Server;
use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;

#[path = "common/testpmd.rs"]
mod testpmd;

use testpmd::{last_number_after, pin, Testpmd, TESTPMD};

fn wait_for(path: &Path) {
    let end = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < end, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The far end of the loopback: takes every frame and drops it.
fn drop_sink(mut q: LoopbackQueue) {
    let mut buf = vec![0u8; 2048];
    loop {
        match q.recv(&mut [IoSliceMut::new(&mut buf)]) {
            Ok(Some(_)) => continue,
            Ok(None) => {
                let fd = q.rx_readiness().fd;
                let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            }
            Err(_) => return,
        }
    }
}

/// Runs the virtio_user txonly frontend against `sock` for `secs`; returns the time it ran.
fn drive(prefix: &str, cpu: usize, sock: &Path, secs: u64) -> Duration {
    let start = Instant::now();
    let pmd = Testpmd::start(
        None,
        prefix,
        cpu,
        &format!("net_virtio_user0,path={},queues=1", sock.display()),
        "txonly",
        64,
        &[],
    );
    std::thread::sleep(Duration::from_secs(secs));
    let _ = pmd.stop();
    start.elapsed()
}

fn ours(dir: &Path, backend_cpu: usize, frontend_cpu: usize, secs: u64) -> (u64, Duration) {
    // Pinned before the server and its workers exist: they inherit the CPU.
    pin(backend_cpu);
    let (near, mut far) = pair(LoopbackConfig {
        capacity: 1024,
        vnet_hdr: true,
        offloads: OffloadSet::ALL,
        ..Default::default()
    })
    .expect("loopback");
    let q = far.open_queue_pair(0).expect("far queue");
    std::thread::spawn(move || drop_sink(q));
    let sock = dir.join("volt.sock");
    let device = NetBackend::new(near, ServeConfig::default()).expect("device");
    let mut server = Server::new(&sock, device).expect("server");
    let serving = std::thread::spawn(move || {
        let session = server.serve_one();
        (session, server)
    });
    let ran = drive(
        &format!("volt-bench-vu-{}", std::process::id()),
        frontend_cpu,
        &sock,
        secs,
    );
    let (session, _server) = serving.join().expect("server thread");
    let session = session.expect("serving testpmd");
    std::mem::forget(far);
    (session.from_guest, ran)
}

fn dpdk(dir: &Path, backend_cpu: usize, frontend_cpu: usize, secs: u64) -> (u64, Duration) {
    let sock = dir.join("dpdk.sock");
    let backend = Testpmd::start(
        None,
        &format!("volt-bench-vh-{}", std::process::id()),
        backend_cpu,
        &format!("net_vhost0,iface={},queues=1", sock.display()),
        "rxonly",
        64,
        &[],
    );
    wait_for(&sock);
    let ran = drive(
        &format!("volt-bench-vv-{}", std::process::id()),
        frontend_cpu,
        &sock,
        secs,
    );
    std::thread::sleep(Duration::from_millis(200));
    let out = backend.stop();
    let rx = last_number_after(&out, "RX-packets:").expect("net_vhost's RX count");
    (rx, ran)
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
    let secs: u64 = std::env::var("VOLT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let cpus: Vec<usize> = {
        let set = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    };
    let (backend_cpu, frontend_cpu) = (cpus[0], *cpus.last().expect("a CPU"));
    let dir = std::env::temp_dir().join(format!("volt-bench-vhost-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let (d_frames, d_time) = dpdk(&dir, backend_cpu, frontend_cpu, secs);
    let (v_frames, v_time) = ours(&dir, backend_cpu, frontend_cpu, secs);
    let _ = std::fs::remove_dir_all(&dir);

    let mpps = |f: u64, t: Duration| f as f64 / t.as_secs_f64() / 1e6;
    let (v, d) = (mpps(v_frames, v_time), mpps(d_frames, d_time));
    let ratio = if d > 0.0 { v / d } else { 0.0 };
    println!("vhost-user backend, 64 B frames from DPDK virtio_user txonly, backend on CPU {backend_cpu}, frontend on CPU {frontend_cpu}, {secs} s");
    println!("{:<28} {:>12} {:>10}", "backend", "frames", "Mpps");
    println!(
        "{:<28} {:>12} {:>10.3}",
        "volt-net (loopback sink)", v_frames, v
    );
    println!(
        "{:<28} {:>12} {:>10.3}",
        "DPDK net_vhost (rxonly)", d_frames, d
    );
    println!("ratio volt-net / DPDK: {ratio:.3}");

    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let json = format!(
        "{{\"case\":\"vhost_user_txonly_64\",\"seconds\":{secs},\"volt_net\":{{\"frames\":{v_frames},\"mpps\":{v:.4}}},\"dpdk_net_vhost\":{{\"frames\":{d_frames},\"mpps\":{d:.4}}},\"ratio\":{ratio:.4}}}\n"
    );
    let _ = std::fs::write(out.join("vhost_user.json"), json);
}
