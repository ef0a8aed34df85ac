//! What the DPDK tests share: finding `dpdk-testpmd`, running it on one pinned CPU with no
//! hugepages, and reading its totals.

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// testpmd runs share one pinned CPU: they take turns.
pub static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `dpdk-testpmd`, or `None` after printing why `test` is skipped (not root, not installed).
pub fn testpmd_or_skip(test: &str) -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED {test}: needs root for DPDK");
        return None;
    }
    let p = "/usr/bin/dpdk-testpmd";
    if !Path::new(p).exists() {
        println!("SKIPPED {test}: no dpdk-testpmd (apt-get install dpdk-dev)");
        return None;
    }
    Some(p)
}

/// Kills and reaps a child on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A testpmd with one virtual device (`--vdev`), forwarding in `fwd` mode from the start,
/// its runtime files under `/var/run/dpdk/PREFIX` (removed by [`Testpmd::stop`]).
pub struct Testpmd {
    child: Child,
    prefix: String,
}

impl Testpmd {
    pub fn start(path: &str, prefix: &str, vdev: &str, fwd: &str) -> Testpmd {
        let child = Command::new(path)
            .args([
                "--no-huge",
                "-m",
                "1024",
                "--no-pci",
                "--lcores=0@1,1@1",
                &format!("--file-prefix={prefix}"),
                &format!("--vdev={vdev}"),
                "--",
                &format!("--forward-mode={fwd}"),
                "--nb-cores=1",
                "-a",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("testpmd");
        Testpmd {
            child: Child(child),
            prefix: prefix.to_string(),
        }
    }

    /// Closing stdin stops testpmd, which prints its totals and exits; returns its output.
    pub fn stop(mut self) -> String {
        drop(self.child.0.stdin.take());
        let mut out = String::new();
        if let Some(mut o) = self.child.0.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let _ = self.child.0.wait();
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
        out
    }
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

/// The number after the last `key` in `text`.
pub fn last_number_after(text: &str, key: &str) -> Option<u64> {
    text.rmatch_indices(key).next().and_then(|(i, _)| {
        text[i + key.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}
