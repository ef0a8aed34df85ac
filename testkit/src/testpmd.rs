//! `dpdk-testpmd` as a peer (see the crate).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where Debian's `dpdk-dev` installs testpmd.
pub const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

/// testpmd, or `None` after printing why `test` is skipped (not root, not installed).
pub fn testpmd_or_skip(test: &str) -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED {test}: needs root for DPDK");
        return None;
    }
    if !Path::new(TESTPMD).exists() {
        println!("SKIPPED {test}: no {TESTPMD} (apt-get install dpdk-dev)");
        return None;
    }
    Some(TESTPMD)
}

/// How to run one testpmd.
#[derive(Debug, Clone)]
pub struct Spec {
    /// A network namespace to run it in (`ip netns exec`).
    pub netns: Option<String>,
    /// `--file-prefix`: its runtime files go under `/var/run/dpdk/PREFIX` (removed at stop).
    pub prefix: String,
    /// The CPU both lcores run on.
    pub cpu: usize,
    /// `--vdev`.
    pub vdev: String,
    /// `--forward-mode`.
    pub fwd: String,
    /// `--txpkts` (frame length of txonly).
    pub txpkts: Option<usize>,
    /// Print rates every second (`--stats-period 1`); it then runs until [`Testpmd::stop`].
    pub periodic: bool,
    /// More testpmd arguments.
    pub extra: Vec<String>,
}

impl Spec {
    /// testpmd on `cpu` with `vdev` in `fwd` mode, printing its rates every second.
    pub fn new(prefix: &str, cpu: usize, vdev: &str, fwd: &str) -> Spec {
        Spec {
            netns: None,
            prefix: prefix.to_string(),
            cpu,
            vdev: vdev.to_string(),
            fwd: fwd.to_string(),
            txpkts: None,
            periodic: true,
            extra: Vec::new(),
        }
    }
}

/// A running testpmd; killed, and its runtime directory removed, when dropped.
pub struct Testpmd {
    child: Child,
    stdin: Option<ChildStdin>,
    prefix: String,
    out: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

/// A steady-state rate: the median of the periods after the warm-up.
#[derive(Debug, Clone)]
pub struct Steady {
    /// The median, per second.
    pub median: f64,
    /// The periods it is the median of.
    pub samples: Vec<u64>,
}

impl Steady {
    /// The median of `samples` (`None` without any).
    pub fn of(samples: Vec<u64>) -> Option<Steady> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2] as f64
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0
        };
        Some(Steady { median, samples })
    }
}

impl Testpmd {
    /// Starts testpmd as `spec` says.
    pub fn start(spec: &Spec) -> Testpmd {
        let mut cmd = match &spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, TESTPMD]);
                c
            }
            None => Command::new(TESTPMD),
        };
        cmd.args(["--no-huge", "-m", "1024", "--no-pci"])
            .arg(format!("--lcores=0@{cpu},1@{cpu}", cpu = spec.cpu))
            .arg(format!("--file-prefix={}", spec.prefix))
            .arg(format!("--vdev={}", spec.vdev))
            .arg("--")
            .arg(format!("--forward-mode={}", spec.fwd))
            .arg("--nb-cores=1");
        if let Some(len) = spec.txpkts {
            cmd.arg(format!("--txpkts={len}"));
        }
        if spec.periodic {
            cmd.arg("--stats-period=1");
        }
        cmd.args(&spec.extra)
            .arg("-a")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("starting dpdk-testpmd");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("testpmd's stdout");
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).into_owned();
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
                line.clear();
            }
        });
        Testpmd {
            child,
            stdin,
            prefix: spec.prefix.clone(),
            out,
            reader: Some(reader),
        }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The per-second rates printed so far after `key` (`Rx-pps:`, `Tx-pps:`).
    pub fn rates(&self, key: &str) -> Vec<u64> {
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        numbers_after(&out, key)
    }

    /// Waits until a period's rate after `key` is at least `min` (set up, and traffic flows);
    /// `false` after `timeout`.
    pub fn wait_for_rate(&self, key: &str, min: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.rates(key).iter().any(|&r| r >= min) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The steady-state rate after `key`: waits for traffic (a period at 1000/s or more,
    /// within `timeout`), skips `warmup` more periods, then takes the median of the next
    /// `periods`. `None` when traffic never flowed.
    pub fn steady(
        &self,
        key: &str,
        warmup: usize,
        periods: usize,
        timeout: Duration,
    ) -> Option<Steady> {
        if !self.wait_for_rate(key, 1000, timeout) {
            return None;
        }
        let first = self.rates(key).iter().position(|&r| r >= 1000)?;
        let want = first + 1 + warmup + periods;
        let end = Instant::now() + Duration::from_secs((warmup + periods) as u64 * 2 + 10);
        while self.rates(key).len() < want && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        let r = self.rates(key);
        Steady::of(r.get(first + 1 + warmup..want.min(r.len()))?.to_vec())
    }

    /// Stops it (stdin closed and SIGINT: it prints its totals and exits) and returns
    /// everything it printed.
    pub fn stop(mut self) -> String {
        drop(self.stdin.take());
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.output()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}

/// Every number after `key` in `text`.
pub fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    text.match_indices(key)
        .filter_map(|(i, _)| {
            text[i + key.len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The number after the last `key` in `text` (testpmd's `RX-packets:`).
pub fn last_number_after(text: &str, key: &str) -> Option<u64> {
    numbers_after(text, key).last().copied()
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
pub fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).expect("cpu index");
    sched_setaffinity(Pid::from_raw(0), &set).expect("pinning");
}

/// Waits up to `timeout` for `path` to appear.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_after_their_key() {
        let out =
            "  Rx-pps:  12  Rx-bps: 5\n  Rx-pps: 7 \nRX-packets: 99 RX-dropped: 0\nRX-packets: 100";
        assert_eq!(numbers_after(out, "Rx-pps:"), vec![12, 7]);
        assert_eq!(last_number_after(out, "RX-packets:"), Some(100));
        assert_eq!(last_number_after(out, "TX-packets:"), None);
    }
}
