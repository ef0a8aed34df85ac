//! Frames per second through the TAP and macvtap backends, beside DPDK's `net_tap` PMD
//! (`dpdk-testpmd`) on the same kind of link, in the same run.
//!
//! ```text
//! cargo bench -p volt-net-bench --bench tap_peers      # as root; VOLT_BENCH_SECS=2 by default
//! ```
//!
//! Prints a table (case, frame size, volt-net Mpps, DPDK Mpps, ratio) and writes it as JSON to
//! `target/bench/tap_peers.json`. Skipped, with the reason printed, when not run as root or
//! when `/usr/bin/dpdk-testpmd` is missing; a plain `cargo test` does nothing here.
//!
//! # Method
//!
//! Every run gets a network namespace of its own (IPv6 off, so the kernel sends nothing of its
//! own), created here and deleted afterwards with every link in it; `dpdk-testpmd` is killed on
//! every path (a guard, and `PR_SET_PDEATHSIG` should this process die) and its runtime
//! directory (`/var/run/dpdk/<unique --file-prefix>`) removed.
//!
//! - **Counting.** Both sides are counted the same way: by the kernel's counters of the device
//!   under test (`/sys/class/net/DEV/statistics`, read with `ip netns exec`), sampled before and
//!   after a window of `VOLT_BENCH_SECS` seconds that starts once the counter moves plus 0.5 s
//!   of warm-up. Frames are 64 and 1500 bytes of Ethernet frame (no FCS), an IPv4/UDP frame
//!   like testpmd's `txonly` (198.18.0.1:9 -> 198.18.0.2:9).
//!   - A TAP counts frames written into it as `rx_packets` and frames read from it as
//!     `tx_packets` (counted when the reader takes them); a frame for a TAP whose queue is full
//!     (a slow reader) is dropped and counted in `tx_dropped`.
//!   - A macvtap is the other way round: frames written into it are transmitted by the macvtap
//!     link (`tx_packets`); frames for the reader are `rx_packets`, counted when queued, and a
//!     frame for a full queue is counted again in `rx_dropped`: delivered = `rx_packets -
//!     rx_dropped`.
//!   - Our own side also counts what the backend's `send`/`recv` returned over the same
//!     window, as a check on the kernel's counters (`self_mpps` in the JSON).
//! - **CPUs.** testpmd runs with `--lcores=0@C,1@C` (its main and forwarding lcore on one CPU,
//!   C = the last CPU this process may use); our reader or writer thread is pinned to the same
//!   CPU C, and the RX source to the first CPU. Batches are 32 frames, testpmd's burst.
//! - **TX (backend -> kernel).** The backend writes frames as fast as it can for the window.
//!   - `tap`: a TAP that is up, on no bridge: the kernel takes each frame and drops it (it is
//!     addressed to another host), which is the write path alone. Peer: testpmd
//!     `--forward-mode=txonly` on `net_tap0,iface=dtap0`, same setup.
//!   - `macvtap`: a macvtap (bridge mode) on a veth; the frames leave through the veth to its
//!     peer. DPDK has no macvtap PMD, so the peer is `net_tap` again, its TAP bridged to the
//!     same kind of veth so that its frames leave the same way.
//! - **RX (kernel -> backend).** The source is a second TAP of ours on a bridge, written by a
//!   thread on the other CPU with frames for an unknown unicast address, which the bridge
//!   floods to the device under test; the same source code serves both sides.
//!   - `tap`: the TAP under test on the same bridge, read by our backend (`recv` until empty,
//!     then `poll` on its readiness fd) or by testpmd `--forward-mode=rxonly` on a `net_tap`.
//!   - `macvtap`: the source's bridge floods to a veth; on the veth's other end sits our
//!     macvtap (the frames are addressed to it) or, for the peer, a second bridge with
//!     testpmd's TAP.
//!
//!   The source's own count says what it offered over the window (delivered + dropped by the
//!   device for a full queue), printed beside the drops: a reader that drops nothing ran at the
//!   source's rate, a lower bound for it. `net_tap` sets `O_ASYNC` on its TAP queues, so the
//!   kernel raises a signal for every frame it queues to testpmd (`kill_fasync` in the
//!   writer's path, the handler on testpmd's CPU): with `net_tap` as the reader the source
//!   itself slows down, and an RX row compares the whole chain with each reader.
//!
//! A run killed before its guards run leaves its namespaces (swept by the next
//! [`NetNs::new`]) and DPDK runtime directories (swept at the start of the next run).

// A benchmark binary has no API to document.
#![allow(missing_docs)]

use std::any::Any;
use std::fmt::Write as _;
use std::io::{self, Read};

use net_api::{IoBuf, IoBufMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use net_api::{Backend, QueuePair, TxFrame, VirtioNetHdr};
use net_macvtap::tap::{Macvtap, Tap, TapQueue};
use net_macvtap::testns::{self, NetNs};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const TESTPMD: &str = "/usr/bin/dpdk-testpmd";
const SIZES: [usize; 2] = [64, 1500];
/// Frames per `send` call: testpmd's default burst.
const BATCH: usize = 32;
/// After the device's counter first moves, before the window opens.
const WARMUP: Duration = Duration::from_millis(500);
/// How long a side may take to start moving frames.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// The address of the device under test (the "guest"): RX frames go to it.
const DUT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// A host nobody has: TX frames go to it, RX frames come from it.
const REMOTE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The TAP testpmd's `net_tap` creates.
const DPDK_IFACE: &str = "dtap0";

// ---------------------------------------------------------------------------------------------
// Frames, CPUs, threads

/// An IPv4/UDP frame of `size` bytes (Ethernet header included, no FCS), like testpmd's
/// `txonly` frames.
fn udp_frame(size: usize, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    assert!(size >= 42, "a UDP frame has at least 42 bytes");
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = u16::try_from(size - 14).expect("frame sizes here fit an IPv4 length");
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[34..36].copy_from_slice(&9u16.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

/// The CPUs for the device under test (ours or testpmd) and for the RX source.
#[derive(Debug, Clone, Copy)]
struct Cpus {
    dut: usize,
    source: usize,
}

fn cpus() -> io::Result<Cpus> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    let allowed: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect();
    match (allowed.first(), allowed.last()) {
        (Some(&source), Some(&dut)) => Ok(Cpus { dut, source }),
        _ => Err(io::Error::other("this process may run on no CPU")),
    }
}

fn pin(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

/// A thread moving frames until stopped, counting them in `count`.
struct Worker {
    what: &'static str,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl Worker {
    fn spawn<F>(what: &'static str, cpu: usize, f: F) -> io::Result<Worker>
    where
        F: FnOnce(&AtomicBool, &AtomicU64) -> io::Result<()> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c) = (Arc::clone(&stop), Arc::clone(&count));
        let handle = std::thread::Builder::new()
            .name(what.into())
            .spawn(move || {
                pin(cpu)?;
                f(&s, &c)
            })?;
        Ok(Worker {
            what,
            stop,
            count,
            handle: Some(handle),
        })
    }

    /// An error if the thread has ended (it only ends on an error before it is stopped).
    fn check(&mut self) -> io::Result<()> {
        if !self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            return Ok(());
        }
        self.finish()?;
        Err(io::Error::other(format!(
            "the {} thread ended early",
            self.what
        )))
    }

    fn finish(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r.map_err(|e| io::Error::other(format!("{}: {e}", self.what))),
            Some(Err(_)) => Err(io::Error::other(format!(
                "the {} thread panicked",
                self.what
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("tap_peers: {e}");
        }
    }
}

/// Waits up to 100 ms for `q`'s fd to be ready for `flags`.
fn wait_ready(q: &TapQueue, flags: PollFlags) -> io::Result<()> {
    let fd = if flags.contains(PollFlags::POLLIN) {
        q.rx_readiness().fd
    } else {
        q.tx_readiness().fd
    };
    match poll(&mut [PollFd::new(fd, flags)], PollTimeout::from(100u16)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes `frame` in batches of [`BATCH`] until stopped.
fn writer(
    mut q: TapQueue,
    frame: Vec<u8>,
) -> impl FnOnce(&AtomicBool, &AtomicU64) -> io::Result<()> {
    move |stop, count| {
        let iov = [IoBuf::from_slice(&frame)];
        let batch = [TxFrame {
            hdr: VirtioNetHdr::PLAIN,
            data: &iov,
        }; BATCH];
        while !stop.load(Ordering::Relaxed) {
            let n = q.send(&batch).map_err(io::Error::other)?;
            if n == 0 {
                wait_ready(&q, PollFlags::POLLOUT)?;
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Receives frames until stopped: `recv` until nothing waits, then `poll` the readiness fd.
fn reader(mut q: TapQueue) -> impl FnOnce(&AtomicBool, &AtomicU64) -> io::Result<()> {
    move |stop, count| {
        let mut buf = vec![0u8; 65562];
        while !stop.load(Ordering::Relaxed) {
            match q.recv(&[IoBufMut::from_mut_slice(&mut buf)]) {
                Ok(Some(_)) => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => wait_ready(&q, PollFlags::POLLIN)?,
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// dpdk-testpmd

/// A running `dpdk-testpmd` with one `net_tap` port; stopped and cleaned up on drop.
struct Testpmd {
    child: Child,
    stdin: Option<ChildStdin>,
    runtime_dir: PathBuf,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    stopped: bool,
}

impl Testpmd {
    /// Starts testpmd in `ns` on `--vdev=net_tap0,iface=dtap0` with the forwarding arguments
    /// `fwd`; it runs until stdin closes.
    fn start(ns: &NetNs, cpu: usize, fwd: &[String]) -> io::Result<Testpmd> {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "volt-bench-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), TESTPMD])
            .args(["--no-huge", "-m", "1024", "--no-pci"])
            .arg(format!("--lcores=0@{cpu},1@{cpu}"))
            .arg(format!("--file-prefix={prefix}"))
            .arg(format!("--vdev=net_tap0,iface={DPDK_IFACE}"))
            .args(["--", "--nb-cores=1", "-a"])
            .args(fwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec the closure makes one prctl system call (async-signal
        // safe) and touches no memory of the parent's.
        unsafe {
            cmd.pre_exec(|| {
                // Should this process die without running the guards, testpmd goes with it.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)
            })
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("ip netns exec ... {TESTPMD}: {e}")))?;
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        for mut pipe in pipes.into_iter().flatten() {
            let out = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    let mut o = out.lock().expect("no reader panics holding the lock");
                    o.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        Ok(Testpmd {
            stdin: child.stdin.take(),
            child,
            runtime_dir: Path::new("/var/run/dpdk").join(prefix),
            output,
            readers,
            stopped: false,
        })
    }

    /// The last lines testpmd printed.
    fn tail(&self) -> String {
        let o = self
            .output
            .lock()
            .expect("no reader panics holding the lock");
        let lines: Vec<&str> = o.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// An error (with testpmd's last words) if it has exited.
    fn check(&mut self) -> io::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(st) => {
                self.shutdown()?;
                Err(io::Error::other(format!(
                    "dpdk-testpmd exited ({st}); its last lines:\n{}",
                    self.tail()
                )))
            }
        }
    }

    /// Stops testpmd (stdin closed: it stops forwarding and exits; SIGTERM, then SIGKILL if
    /// it does not) and removes its runtime directory.
    fn shutdown(&mut self) -> io::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        drop(self.stdin.take());
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pids fit an i32"));
        let mut exited = self.wait_for(Duration::from_secs(5))?;
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            if exited {
                break;
            }
            let _ = kill(pid, sig);
            exited = self.wait_for(Duration::from_secs(3))?;
        }
        if !exited {
            self.child.wait()?;
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        match std::fs::remove_dir_all(&self.runtime_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                e.kind(),
                format!("removing {}: {e}", self.runtime_dir.display()),
            )),
            _ => Ok(()),
        }
    }

    fn wait_for(&mut self, limit: Duration) -> io::Result<bool> {
        let end = Instant::now() + limit;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("tap_peers: stopping dpdk-testpmd: {e}");
        }
    }
}

/// Removes the DPDK runtime directories of runs whose process is gone.
fn sweep_stale_runtime_dirs() {
    let Ok(dir) = std::fs::read_dir("/var/run/dpdk") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("volt-bench-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Links and counters

fn exec(ns: &NetNs, cmd: &str) -> io::Result<()> {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    ns.exec(&args).map(drop)
}

/// A namespace with IPv6 off (no router solicitations, no MLD: nothing but our frames).
fn namespace(tag: &str) -> io::Result<NetNs> {
    let ns = NetNs::new(tag)?;
    exec(
        &ns,
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
    )?;
    Ok(ns)
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn create_tap(ns: &NetNs, name: &str) -> io::Result<(Tap, TapQueue)> {
    let _inside = ns.enter()?;
    let mut tap = Tap::create(name, 1).map_err(io::Error::other)?;
    let q = tap.open_queue_pair(0).map_err(io::Error::other)?;
    Ok((tap, q))
}

/// A macvtap on `lower` with the address [`DUT_MAC`], up, opened as a backend.
///
/// Its character device is named by ifindex, and ifindexes repeat across namespaces: each
/// macvtap gets an index of its own, far from the small ones other tests' namespaces use.
fn create_macvtap(ns: &NetNs, name: &str, lower: &str) -> io::Result<(Macvtap, TapQueue)> {
    static N: AtomicU32 = AtomicU32::new(0);
    let index = 20_000 + (std::process::id() % 20_000) * 8 + N.fetch_add(1, Ordering::Relaxed);
    exec(
        ns,
        &format!(
            "ip link add {name} index {index} link {lower} address {} type macvtap mode bridge",
            mac_str(DUT_MAC)
        ),
    )?;
    exec(ns, &format!("ip link set {name} up"))?;
    // udev may be slow to make /dev/tapN.
    let node = format!("/dev/tap{index}");
    let end = Instant::now() + Duration::from_secs(5);
    while !Path::new(&node).exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _inside = ns.enter()?;
    let mut m = Macvtap::open(name, 1).map_err(io::Error::other)?;
    let q = m.open_queue_pair(0).map_err(io::Error::other)?;
    Ok((m, q))
}

/// Waits for testpmd's TAP to appear.
fn wait_for_link(ns: &NetNs, dev: &str, pmd: &mut Testpmd) -> io::Result<()> {
    let end = Instant::now() + START_TIMEOUT;
    while ns
        .exec(&["test", "-e", &format!("/sys/class/net/{dev}")])
        .is_err()
    {
        pmd.check()?;
        if Instant::now() >= end {
            return Err(io::Error::other(format!(
                "{dev} did not appear within {START_TIMEOUT:?}; testpmd's last lines:\n{}",
                pmd.tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

const FIELDS: [&str; 6] = [
    "rx_packets",
    "tx_packets",
    "rx_dropped",
    "tx_dropped",
    "rx_errors",
    "tx_errors",
];

/// A device's counters, in the order of [`FIELDS`].
#[derive(Debug, Clone, Copy, Default)]
struct Counters([u64; 6]);

impl Counters {
    fn get(&self, field: &str) -> u64 {
        let i = FIELDS
            .iter()
            .position(|f| *f == field)
            .expect("a field of FIELDS");
        self.0[i]
    }
}

fn read_counters(ns: &NetNs, dev: &str) -> io::Result<Counters> {
    let paths: Vec<String> = FIELDS
        .iter()
        .map(|f| format!("/sys/class/net/{dev}/statistics/{f}"))
        .collect();
    let mut cmd = vec!["cat"];
    cmd.extend(paths.iter().map(String::as_str));
    let out = ns.exec(&cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut c = Counters::default();
    let mut values = text.split_whitespace();
    for v in c.0.iter_mut() {
        *v = values
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected counters of {dev}: {text}")))?;
    }
    Ok(c)
}

/// Which counters of the device under test say "frames moved" and "frames dropped".
#[derive(Debug, Clone, Copy)]
struct Count {
    moved: &'static str,
    /// A drop counter, and whether `moved` includes the drops (macvtap's `rx_packets`).
    dropped: &'static str,
    moved_includes_drops: bool,
}

/// Frames written into a TAP.
const TAP_TX: Count = Count {
    moved: "rx_packets",
    dropped: "rx_dropped",
    moved_includes_drops: false,
};
/// Frames read from a TAP; a full queue drops at the TAP's transmit.
const TAP_RX: Count = Count {
    moved: "tx_packets",
    dropped: "tx_dropped",
    moved_includes_drops: false,
};
/// Frames written into a macvtap: the macvtap link transmits them.
const MACVTAP_TX: Count = Count {
    moved: "tx_packets",
    dropped: "tx_dropped",
    moved_includes_drops: false,
};
/// Frames queued to a macvtap's reader (`rx_packets`), less those dropped on a full queue.
const MACVTAP_RX: Count = Count {
    moved: "rx_packets",
    dropped: "rx_dropped",
    moved_includes_drops: true,
};

impl Count {
    /// Delivered and dropped frames between two samples.
    fn delta(&self, a: &Counters, b: &Counters) -> (u64, u64) {
        let dropped = b.get(self.dropped).saturating_sub(a.get(self.dropped));
        let mut moved = b.get(self.moved).saturating_sub(a.get(self.moved));
        if self.moved_includes_drops {
            moved = moved.saturating_sub(dropped);
        }
        (moved, dropped)
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    TxTap,
    TxMacvtap,
    RxTap,
    RxMacvtap,
}

impl Case {
    const ALL: [Case; 4] = [Case::TxTap, Case::TxMacvtap, Case::RxTap, Case::RxMacvtap];

    fn name(self) -> &'static str {
        match self {
            Case::TxTap => "TX tap",
            Case::TxMacvtap => "TX macvtap",
            Case::RxTap => "RX tap",
            Case::RxMacvtap => "RX macvtap",
        }
    }

    fn is_rx(self) -> bool {
        matches!(self, Case::RxTap | Case::RxMacvtap)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Volt,
    Dpdk,
}

/// One side of one case, set up and moving frames. Fields drop in order: testpmd and the
/// threads stop before the links they use go, and the namespace goes last.
struct Rig {
    testpmd: Option<Testpmd>,
    workers: Vec<Worker>,
    /// The worker whose count is our backend's own (the writer for TX, the reader for RX).
    self_counted: Option<usize>,
    /// The RX source's worker.
    source: Option<usize>,
    _backends: Vec<Box<dyn Any>>,
    dev: String,
    count: Count,
    ns: NetNs,
}

impl Rig {
    fn check(&mut self) -> io::Result<()> {
        for w in &mut self.workers {
            w.check()?;
        }
        match &mut self.testpmd {
            Some(t) => t.check(),
            None => Ok(()),
        }
    }

    fn worker_count(&self, i: Option<usize>) -> Option<u64> {
        i.map(|i| self.workers[i].count.load(Ordering::Relaxed))
    }
}

fn testpmd_args(case: Case, size: usize) -> Vec<String> {
    if case.is_rx() {
        vec!["--forward-mode=rxonly".into()]
    } else {
        vec![
            "--forward-mode=txonly".into(),
            format!("--txpkts={size}"),
            format!("--eth-peer=0,{}", mac_str(REMOTE_MAC)),
        ]
    }
}

fn setup(case: Case, side: Side, size: usize, cpus: Cpus) -> io::Result<Rig> {
    let tag = format!(
        "{}-{}",
        match case {
            Case::TxTap => "txtap",
            Case::TxMacvtap => "txmvt",
            Case::RxTap => "rxtap",
            Case::RxMacvtap => "rxmvt",
        },
        match side {
            Side::Volt => "volt",
            Side::Dpdk => "dpdk",
        }
    );
    let ns = namespace(&tag)?;
    let mut rig = Rig {
        testpmd: None,
        workers: Vec::new(),
        self_counted: None,
        source: None,
        _backends: Vec::new(),
        dev: DPDK_IFACE.into(),
        count: if case.is_rx() { TAP_RX } else { TAP_TX },
        ns,
    };
    let ns = &rig.ns;

    // The links around the device under test.
    match case {
        Case::TxTap => {}
        Case::TxMacvtap => {
            exec(ns, "ip link add vlow type veth peer name vpeer")?;
            exec(ns, "ip link set vpeer up")?;
            exec(ns, "ip link set vlow up")?;
        }
        Case::RxTap | Case::RxMacvtap => {
            exec(ns, "ip link add br0 type bridge")?;
            exec(ns, "ip link set br0 up")?;
            if case == Case::RxMacvtap {
                exec(ns, "ip link add vlow type veth peer name vpeer")?;
                exec(ns, "ip link set vpeer master br0 up")?;
                exec(ns, "ip link set vlow up")?;
            }
        }
    }
    // DPDK's TAP hangs off the same kind of link: for the macvtap cases through a bridge with
    // the veth the macvtap would sit on.
    let dpdk_bridge = matches!(case, Case::TxMacvtap | Case::RxMacvtap);
    if side == Side::Dpdk && dpdk_bridge {
        exec(ns, "ip link add br1 type bridge")?;
        exec(ns, "ip link set br1 up")?;
        exec(ns, "ip link set vlow master br1")?;
    }

    // The device under test.
    match side {
        Side::Dpdk => {
            let mut pmd = Testpmd::start(ns, cpus.dut, &testpmd_args(case, size))?;
            wait_for_link(ns, DPDK_IFACE, &mut pmd)?;
            let master = match case {
                Case::TxTap => "",
                Case::RxTap => "master br0",
                Case::TxMacvtap | Case::RxMacvtap => "master br1",
            };
            rig.testpmd = Some(pmd);
            exec(ns, &format!("ip link set {DPDK_IFACE} {master} up"))?;
        }
        Side::Volt => {
            let q = match case {
                Case::TxTap | Case::RxTap => {
                    let (tap, q) = create_tap(ns, "vdut")?;
                    let master = if case == Case::RxTap {
                        "master br0"
                    } else {
                        ""
                    };
                    exec(ns, &format!("ip link set vdut {master} up"))?;
                    rig._backends.push(Box::new(tap));
                    rig.dev = "vdut".into();
                    q
                }
                Case::TxMacvtap | Case::RxMacvtap => {
                    let (m, q) = create_macvtap(ns, "mvt0", "vlow")?;
                    rig._backends.push(Box::new(m));
                    rig.dev = "mvt0".into();
                    rig.count = if case.is_rx() { MACVTAP_RX } else { MACVTAP_TX };
                    q
                }
            };
            rig.self_counted = Some(rig.workers.len());
            let w = if case.is_rx() {
                Worker::spawn("volt-net reader", cpus.dut, reader(q))?
            } else {
                let frame = udp_frame(size, REMOTE_MAC, DUT_MAC);
                Worker::spawn("volt-net writer", cpus.dut, writer(q, frame))?
            };
            rig.workers.push(w);
        }
    }

    // The RX source: a TAP of ours on br0, flooding frames for the device under test.
    if case.is_rx() {
        let (src, q) = create_tap(ns, "vsrc")?;
        exec(ns, "ip link set vsrc master br0 up")?;
        rig._backends.push(Box::new(src));
        let frame = udp_frame(size, DUT_MAC, REMOTE_MAC);
        let w = Worker::spawn("RX source", cpus.source, writer(q, frame))?;
        rig.source = Some(rig.workers.len());
        rig.workers.push(w);
    }
    Ok(rig)
}

/// What one side did over the window.
#[derive(Debug, Clone, Copy)]
struct Measured {
    frames: u64,
    dropped: u64,
    secs: f64,
    /// Our backend's own count over the same window (volt-net side only).
    self_frames: Option<u64>,
    /// Frames the RX source wrote over the window.
    offered: Option<u64>,
}

impl Measured {
    fn mpps(&self) -> f64 {
        self.frames as f64 / self.secs / 1e6
    }
    fn dropped_mpps(&self) -> f64 {
        self.dropped as f64 / self.secs / 1e6
    }
    fn self_mpps(&self) -> Option<f64> {
        self.self_frames.map(|f| f as f64 / self.secs / 1e6)
    }
    fn offered_mpps(&self) -> Option<f64> {
        self.offered.map(|f| f as f64 / self.secs / 1e6)
    }
}

/// A sample: the device's counters, our backend's own count and the source's, at the middle of
/// the time the read took.
struct Sample {
    at: Instant,
    counters: Counters,
    own: Option<u64>,
    source: Option<u64>,
}

fn sample(rig: &Rig) -> io::Result<Sample> {
    let t0 = Instant::now();
    let own = rig.worker_count(rig.self_counted);
    let source = rig.worker_count(rig.source);
    let counters = read_counters(&rig.ns, &rig.dev)?;
    let t1 = Instant::now();
    Ok(Sample {
        at: t0 + (t1 - t0) / 2,
        counters,
        own,
        source,
    })
}

fn measure(rig: &mut Rig, window: Duration) -> io::Result<Measured> {
    let first = read_counters(&rig.ns, &rig.dev)?;
    let end = Instant::now() + START_TIMEOUT;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        rig.check()?;
        let c = read_counters(&rig.ns, &rig.dev)?;
        if c.get(rig.count.moved) > first.get(rig.count.moved) {
            break;
        }
        if Instant::now() >= end {
            let mut msg = format!(
                "no frames counted on {} ({}) within {START_TIMEOUT:?}",
                rig.dev, rig.count.moved
            );
            if let Some(t) = &rig.testpmd {
                let _ = write!(msg, "; testpmd's last lines:\n{}", t.tail());
            }
            return Err(io::Error::other(msg));
        }
    }
    std::thread::sleep(WARMUP);
    let a = sample(rig)?;
    std::thread::sleep(window);
    let b = sample(rig)?;
    rig.check()?;
    let diff = |x: Option<u64>, y: Option<u64>| x.zip(y).map(|(x, y)| y - x);
    let m = {
        let (frames, dropped) = rig.count.delta(&a.counters, &b.counters);
        Measured {
            frames,
            dropped,
            secs: (b.at - a.at).as_secs_f64(),
            self_frames: diff(a.own, b.own),
            offered: diff(a.source, b.source),
        }
    };
    if std::env::var_os("VOLT_BENCH_VERBOSE").is_some() {
        let d: Vec<String> = FIELDS
            .iter()
            .zip(a.counters.0.iter().zip(b.counters.0.iter()))
            .map(|(f, (x, y))| format!("{f} {}", y.saturating_sub(*x)))
            .collect();
        eprintln!(
            "    {} over {:.3} s: {}; backend's own count {:?}, source {:?}",
            rig.dev,
            m.secs,
            d.join(", "),
            m.self_frames,
            m.offered
        );
    }
    Ok(m)
}

fn run(case: Case, side: Side, size: usize, cpus: Cpus, window: Duration) -> io::Result<Measured> {
    let mut rig = setup(case, side, size, cpus)?;
    let m = measure(&mut rig, window)?;
    // Stop testpmd here, so that an error in stopping it is reported with the run.
    if let Some(mut t) = rig.testpmd.take() {
        t.shutdown()?;
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Report

struct Row {
    case: Case,
    size: usize,
    volt: io::Result<Measured>,
    dpdk: io::Result<Measured>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (&self.volt, &self.dpdk) {
            (Ok(v), Ok(d)) if d.frames > 0 => Some(v.mpps() / d.mpps()),
            _ => None,
        }
    }
}

fn mpps_cell(m: &io::Result<Measured>) -> String {
    m.as_ref()
        .map_or("failed".into(), |m| format!("{:.3}", m.mpps()))
}

/// For RX: what the source offered and what the device dropped.
fn rx_cell(m: &io::Result<Measured>) -> String {
    match m {
        Ok(m) => format!(
            "{:.3} / {:.3}",
            m.offered_mpps().unwrap_or(f64::NAN),
            m.dropped_mpps()
        ),
        Err(_) => "failed".into(),
    }
}

fn json_side(m: &io::Result<Measured>) -> String {
    match m {
        Ok(m) => {
            let mut s = format!(
                "{{\"mpps\": {:.4}, \"frames\": {}, \"dropped\": {}, \"secs\": {:.4}",
                m.mpps(),
                m.frames,
                m.dropped,
                m.secs
            );
            if let Some(o) = m.offered_mpps() {
                let _ = write!(
                    s,
                    ", \"offered_mpps\": {o:.4}, \"dropped_mpps\": {:.4}",
                    m.dropped_mpps()
                );
            }
            if let Some(o) = m.self_mpps() {
                let _ = write!(s, ", \"self_mpps\": {o:.4}");
            }
            s.push('}');
            s
        }
        Err(e) => format!("{{\"error\": {:?}}}", e.to_string()),
    }
}

fn json(rows: &[Row], window: Duration, cpus: Cpus) -> String {
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"bench\": \"tap_peers\",");
    let _ = writeln!(s, "  \"window_secs\": {},", window.as_secs_f64());
    let _ = writeln!(s, "  \"batch\": {BATCH},");
    let _ = writeln!(
        s,
        "  \"cpu_dut\": {}, \"cpu_source\": {},",
        cpus.dut, cpus.source
    );
    let _ = writeln!(s, "  \"peer\": {PEER_NOTE:?},");
    let _ = writeln!(s, "  \"results\": [");
    for (i, r) in rows.iter().enumerate() {
        let ratio = r.ratio().map_or("null".to_string(), |x| format!("{x:.4}"));
        let _ = writeln!(
            s,
            "    {{\"case\": \"{}\", \"size\": {}, \"volt_net\": {}, \"dpdk_net_tap\": {}, \"ratio\": {ratio}}}{}",
            r.case.name(),
            r.size,
            json_side(&r.volt),
            json_side(&r.dpdk),
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    s.push_str("  ]\n}\n");
    s
}

const PEER_NOTE: &str = "dpdk-testpmd with net_tap; DPDK has no macvtap PMD, so the macvtap \
                         rows' peer is net_tap with its TAP bridged to the same kind of veth";

fn print_report(rows: &[Row]) {
    println!();
    println!(
        "{:<11} {:>5}  {:>14}  {:>18}  {:>6}",
        "case", "size", "volt-net Mpps", "dpdk net_tap Mpps", "ratio"
    );
    for r in rows {
        let ratio = r.ratio().map_or("-".to_string(), |x| format!("{x:.2}"));
        println!(
            "{:<11} {:>5}  {:>14}  {:>18}  {:>6}",
            r.case.name(),
            r.size,
            mpps_cell(&r.volt),
            mpps_cell(&r.dpdk),
            ratio
        );
    }
    println!();
    println!("RX source, Mpps offered / dropped by the device (queue full):");
    for r in rows.iter().filter(|r| r.case.is_rx()) {
        println!(
            "{:<11} {:>5}  volt-net {:>15}  dpdk {:>15}",
            r.case.name(),
            r.size,
            rx_cell(&r.volt),
            rx_cell(&r.dpdk)
        );
    }
    println!();
    println!(
        "Counted by the kernel on the device under test over the window, the same for both sides."
    );
    println!("TX: frames the backend wrote (tap rx_packets, macvtap tx_packets).");
    println!("RX: frames the reader took (tap tx_packets, macvtap rx_packets - rx_dropped).");
    println!("Peer: {PEER_NOTE}.");
    println!(
        "net_tap sets O_ASYNC on its TAP queues: every frame the kernel queues to it raises a"
    );
    println!(
        "signal (sent in the writer's path), which is why the source offers so much less to it."
    );
}

/// `target/bench`, wherever the target directory is (the one holding this binary).
fn out_dir() -> PathBuf {
    let target = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|d| d.join("CACHEDIR.TAG").exists())
            .map(Path::to_path_buf)
    });
    target
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench")
}

fn window() -> Result<Duration, String> {
    match std::env::var("VOLT_BENCH_SECS") {
        Err(_) => Ok(Duration::from_secs(2)),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s <= 600.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(format!(
                "VOLT_BENCH_SECS={v}: give the window in seconds (more than 0, at most 600)"
            )),
        },
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not, and gets nothing done.
    if !std::env::args().any(|a| a == "--bench") {
        println!("tap_peers: run it with `cargo bench -p volt-net-bench --bench tap_peers`");
        return;
    }
    if !testns::is_root() {
        println!(
            "SKIPPED tap_peers: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for namespaces, TAP and macvtap links"
        );
        return;
    }
    if !Path::new(TESTPMD).exists() {
        println!("SKIPPED tap_peers: {TESTPMD} is missing (Debian: apt-get install dpdk)");
        return;
    }
    let window = match window() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("tap_peers: {e}");
            std::process::exit(2);
        }
    };
    let cpus = match cpus() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tap_peers: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "tap_peers: {:.1} s per side, device under test on CPU {} (testpmd --lcores=0@{1},1@{1}), RX source on CPU {2}",
        window.as_secs_f64(),
        cpus.dut,
        cpus.source
    );

    sweep_stale_runtime_dirs();
    let mut rows = Vec::new();
    for case in Case::ALL {
        for size in SIZES {
            let volt = run(case, Side::Volt, size, cpus, window);
            let dpdk = run(case, Side::Dpdk, size, cpus, window);
            let row = Row {
                case,
                size,
                volt,
                dpdk,
            };
            eprintln!(
                "  {:<11} {:>4} B: volt-net {} Mpps, dpdk {} Mpps",
                case.name(),
                size,
                mpps_cell(&row.volt),
                mpps_cell(&row.dpdk)
            );
            rows.push(row);
        }
    }
    print_report(&rows);

    let mut failed = false;
    for r in &rows {
        for (who, m) in [("volt-net", &r.volt), ("dpdk", &r.dpdk)] {
            if let Err(e) = m {
                failed = true;
                eprintln!("{} {} B, {who}: {e}", r.case.name(), r.size);
            }
        }
    }
    let dir = out_dir();
    let path = dir.join("tap_peers.json");
    match std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, json(&rows, window, cpus)))
    {
        Ok(()) => println!("written to {}", path.display()),
        Err(e) => {
            failed = true;
            eprintln!("tap_peers: writing {}: {e}", path.display());
        }
    }
    if failed {
        std::process::exit(1);
    }
}
