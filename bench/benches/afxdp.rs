//! Frames per second through the AF_XDP backend on a veth pair, beside DPDK's `net_af_xdp`
//! PMD (`dpdk-testpmd`) on the same veth, in one run.
//!
//! ```text
//! cargo bench -p volt-net-bench --bench afxdp      # as root; VOLT_BENCH_SECS=3 by default
//! ```
//!
//! Prints a table (case, frame size, volt-net Mpps, DPDK Mpps, ratio) and writes it as JSON to
//! `target/bench/afxdp.json`. Skipped, with the reason printed, when not root or without
//! `/usr/bin/dpdk-testpmd`.
//!
//! # Method
//!
//! Namespace `A` holds `va`, namespace `B` holds `vb`, a veth pair with one queue each, deleted
//! afterwards. The side under test runs on the last CPU, anything feeding it on the first.
//!
//! - **TX only.** Our backend on `va` sends 64- or 1500-byte frames (batches of 32) as fast
//!   as its rings take them; the peer is testpmd `txonly` on `net_af_xdp0,iface=va`. Both are
//!   counted by the kernel: `vb`'s `rx_packets` over a window of `VOLT_BENCH_SECS` seconds
//!   that starts after one second of warm-up.
//! - **RX drop.** testpmd `txonly` on `net_af_xdp0,iface=vb` (namespace `B`, first CPU) sends
//!   frames to the VM's MAC for `VOLT_BENCH_SECS` seconds, timed from its first frame (`vb`'s
//!   `tx_packets` moving) to its stop; the receiver on `va` is our backend (received and
//!   dropped, counted by us) or testpmd `rxonly` on `net_af_xdp0,iface=va` (its
//!   `RX-packets`). The receiver starts first and stops after the sender; its count is divided
//!   by the sender's time. DPDK's PMD loads libxdp's program (everything to
//!   the socket); ours steers by MAC and passes the rest to the host.

#![allow(missing_docs)]

use net_api::{IoBuf, IoBufMut};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volt_net_testkit::testpmd::{last_number_after, pin, Spec, Testpmd, TESTPMD};

/// testpmd in namespace `ns` on `cpu` (totals at the end, no periodic rates).
fn testpmd(
    ns: &str,
    prefix: &str,
    cpu: usize,
    vdev: &str,
    fwd: &str,
    len: usize,
    extra: &[String],
) -> Testpmd {
    Testpmd::start(&Spec {
        netns: Some(ns.to_string()),
        txpkts: Some(len),
        periodic: false,
        extra: extra.to_vec(),
        ..Spec::new(prefix, cpu, vdev, fwd)
    })
}

use net_afxdp::{AfXdp, AfXdpConfig, AttachMode, ZeroCopy};
use net_api::{Backend, MacAddr, QueuePair, TxFrame, VirtioNetHdr};
use net_macvtap::testns::{sh, NetNs, VethPair};
use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;

const VM: MacAddr = MacAddr([0x02, 0, 0, 0, 0xbe, 0x01]);

struct Rig {
    a: NetNs,
    b: NetNs,
}

impl Rig {
    fn new() -> Rig {
        let VethPair { a, b } = VethPair::new("bx", "va", "vb", 1).expect("a veth pair");
        for ns in [&a, &b] {
            sh(&[
                "ip",
                "netns",
                "exec",
                ns.name(),
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ]);
        }
        Rig { a, b }
    }

    /// Takes whatever XDP program a testpmd left on `va` (libxdp's, when it was killed).
    fn xdp_off(&self) {
        let _ = Command::new("ip")
            .args([
                "-n",
                self.a.name(),
                "link",
                "set",
                "dev",
                "va",
                "xdp",
                "off",
            ])
            .status();
    }

    fn vb_rx(&self) -> u64 {
        VethPair::counter(&self.b, "vb", "rx_packets").expect("vb's rx_packets")
    }

    /// `vb`'s received frames per second over the window, once `active` started.
    fn window_rate(&self, secs: u64) -> f64 {
        std::thread::sleep(Duration::from_secs(1));
        let (t0, c0) = (Instant::now(), self.vb_rx());
        std::thread::sleep(Duration::from_secs(secs));
        let (t1, c1) = (Instant::now(), self.vb_rx());
        (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
    }
}

fn frame(len: usize, dst: MacAddr) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&VM.0);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn config() -> AfXdpConfig {
    AfXdpConfig {
        attach: AttachMode::Native,
        zero_copy: ZeroCopy::Off,
        ..AfXdpConfig::new("va", VM)
    }
}

/// A thread of ours in namespace A on `cpu`, running `f` until stopped.
fn ours<F>(rig: &Rig, cpu: usize, f: F) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>)
where
    F: FnOnce(AfXdp, &AtomicBool) -> u64 + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let ns = std::fs::File::open(format!("/run/netns/{}", rig.a.name())).expect("namespace A");
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        pin(cpu);
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering A");
        let be = AfXdp::open(config()).expect("opening AF_XDP on va");
        f(be, &s)
    });
    (stop, h)
}

fn tx_ours(rig: &Rig, cpu: usize, len: usize, secs: u64) -> f64 {
    let (stop, h) = ours(rig, cpu, move |mut be, stop| {
        let mut q = be.open_queue_pair(0).expect("queue");
        let f = frame(len, MacAddr([0x02, 0, 0, 0, 0xbe, 0x02]));
        let data = [IoBuf::from_slice(&f)];
        let batch = [TxFrame {
            hdr: VirtioNetHdr::PLAIN,
            data: &data,
        }; 32];
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            sent += q.send(&batch).expect("send") as u64;
        }
        sent
    });
    let rate = rig.window_rate(secs);
    stop.store(true, Ordering::Relaxed);
    let _ = h.join();
    rate
}

fn tx_dpdk(rig: &Rig, cpu: usize, len: usize, secs: u64) -> f64 {
    let pmd = testpmd(
        rig.a.name(),
        &format!("volt-bxt-{}", std::process::id()),
        cpu,
        "net_af_xdp0,iface=va",
        "txonly",
        len,
        &[],
    );
    let rate = rig.window_rate(secs);
    drop(pmd.stop());
    rig.xdp_off();
    rate
}

/// Feeds `va` from `vb` for `secs` with testpmd on `cpu`; returns how long it ran.
fn feed(rig: &Rig, cpu: usize, len: usize, secs: u64) -> Duration {
    let sent = || VethPair::counter(&rig.b, "vb", "tx_packets").expect("vb's tx_packets");
    let before = sent();
    let pmd = testpmd(
        rig.b.name(),
        &format!("volt-bxf-{}", std::process::id()),
        cpu,
        "net_af_xdp0,iface=vb",
        "txonly",
        len,
        &[format!("--eth-peer=0,{VM}")],
    );
    // The window starts when frames flow, not when testpmd starts (it takes a second or two).
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    drop(pmd.stop());
    let ran = start.elapsed();
    let _ = Command::new("ip")
        .args(["-n", rig.b.name(), "link", "set", "dev", "vb", "xdp", "off"])
        .status();
    ran
}

fn rx_ours(rig: &Rig, cpu: usize, feeder: usize, len: usize, secs: u64) -> f64 {
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let (stop, h) = ours(rig, cpu, move |mut be, stop| {
        let mut q = be.open_queue_pair(0).expect("queue");
        let mut buf = vec![0u8; 2048];
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match q.recv(&[IoBufMut::from_mut_slice(&mut buf)]).expect("recv") {
                Some(_) => n += 1,
                None => std::hint::spin_loop(),
            }
            if n % 1024 == 0 {
                g.store(n, Ordering::Relaxed);
            }
        }
        n
    });
    std::thread::sleep(Duration::from_secs(1));
    let ran = feed(rig, feeder, len, secs);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let n = h.join().unwrap_or(0);
    n as f64 / ran.as_secs_f64()
}

fn rx_dpdk(rig: &Rig, cpu: usize, feeder: usize, len: usize, secs: u64) -> f64 {
    let pmd = testpmd(
        rig.a.name(),
        &format!("volt-bxr-{}", std::process::id()),
        cpu,
        "net_af_xdp0,iface=va",
        "rxonly",
        len,
        &[],
    );
    std::thread::sleep(Duration::from_secs(2));
    let ran = feed(rig, feeder, len, secs);
    std::thread::sleep(Duration::from_millis(300));
    let out = pmd.stop();
    rig.xdp_off();
    let n = last_number_after(&out, "RX-packets:").unwrap_or(0);
    n as f64 / ran.as_secs_f64()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED afxdp: needs root (namespaces, XDP)");
        return;
    }
    if !std::path::Path::new(TESTPMD).exists() {
        println!("SKIPPED afxdp: no {TESTPMD} (apt-get install dpdk-dev librte-net-af-xdp23)");
        return;
    }
    let secs: u64 = std::env::var("VOLT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let cpus: Vec<usize> = {
        let set = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    };
    let (feeder, dut) = (cpus[0], *cpus.last().expect("a CPU"));
    let rig = Rig::new();
    let mut rows = Vec::new();
    for len in [64usize, 1500] {
        let (v, d) = (tx_ours(&rig, dut, len, secs), tx_dpdk(&rig, dut, len, secs));
        rows.push(("tx", len, v, d));
        let (v, d) = (
            rx_ours(&rig, dut, feeder, len, secs),
            rx_dpdk(&rig, dut, feeder, len, secs),
        );
        rows.push(("rx-drop", len, v, d));
    }
    println!("AF_XDP on a veth (native XDP, copy mode), side under test on CPU {dut}, feeder on CPU {feeder}, {secs} s");
    println!(
        "{:<8} {:>6} {:>12} {:>12} {:>7}",
        "case", "bytes", "volt Mpps", "DPDK Mpps", "ratio"
    );
    let mut json = String::from("[");
    for (i, (case, len, v, d)) in rows.iter().enumerate() {
        let ratio = if *d > 0.0 { v / d } else { 0.0 };
        println!(
            "{case:<8} {len:>6} {:>12.3} {:>12.3} {ratio:>7.2}",
            v / 1e6,
            d / 1e6
        );
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "{{\"case\":\"{case}\",\"bytes\":{len},\"volt_mpps\":{:.4},\"dpdk_mpps\":{:.4},\"ratio\":{ratio:.3}}}",
            v / 1e6,
            d / 1e6
        ));
    }
    json.push_str("]\n");
    let out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("afxdp.json"), json);
}
