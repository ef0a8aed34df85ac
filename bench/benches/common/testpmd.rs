//! `dpdk-testpmd` for the peer benchmarks: one virtual device, two lcores on one CPU, no
//! hugepages, forwarding from the start; killed and its runtime directory removed on drop.

use std::io::Read;
use std::process::{Child, Command, Stdio};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

pub const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

pub struct Testpmd {
    child: Child,
    prefix: String,
}

impl Testpmd {
    /// testpmd with `--vdev=VDEV`, `--forward-mode=FWD`, `--txpkts=LEN` and `extra` testpmd
    /// arguments, its lcores on `cpu`; inside network namespace `netns` when given.
    pub fn start(
        netns: Option<&str>,
        prefix: &str,
        cpu: usize,
        vdev: &str,
        fwd: &str,
        len: usize,
        extra: &[String],
    ) -> Testpmd {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, TESTPMD]);
                c
            }
            None => Command::new(TESTPMD),
        };
        cmd.args(["--no-huge", "-m", "1024", "--no-pci"])
            .arg(format!("--lcores=0@{cpu},1@{cpu}"))
            .arg(format!("--file-prefix={prefix}"))
            .arg(format!("--vdev={vdev}"))
            .arg("--")
            .arg(format!("--forward-mode={fwd}"))
            .args(["--nb-cores=1"])
            .arg(format!("--txpkts={len}"))
            .args(extra)
            .arg("-a")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("starting dpdk-testpmd");
        Testpmd {
            child,
            prefix: prefix.to_string(),
        }
    }

    /// Stops it (stdin closed: it prints its totals and cleans up) and returns its output.
    pub fn stop(mut self) -> String {
        drop(self.child.stdin.take());
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}

/// The number after the last `key` in `text` (testpmd's `RX-packets:`).
pub fn last_number_after(text: &str, key: &str) -> Option<u64> {
    text.rmatch_indices(key).next().and_then(|(i, _)| {
        text[i + key.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
pub fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).expect("cpu index");
    sched_setaffinity(Pid::from_raw(0), &set).expect("pinning");
}
