//! What the DPDK tests share: testpmd from `volt-net-testkit`, one at a time, on the last CPU.

#![allow(dead_code)]

pub use volt_net_testkit::testpmd::{
    last_number_after, testpmd_or_skip, wait_for_path, Spec, Testpmd,
};

/// testpmd runs share one pinned CPU: they take turns.
pub static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The CPU testpmd runs on: the last one this process may use.
pub fn cpu() -> usize {
    use nix::sched::{sched_getaffinity, CpuSet};
    let set = sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
    (0..CpuSet::count())
        .rfind(|&c| set.is_set(c).unwrap_or(false))
        .unwrap_or(0)
}

/// testpmd with `vdev` in `fwd` mode; `periodic` prints rates every second.
pub fn testpmd(prefix: &str, vdev: &str, fwd: &str, periodic: bool) -> Testpmd {
    Testpmd::start(&Spec {
        periodic,
        ..Spec::new(prefix, cpu(), vdev, fwd)
    })
}

/// Kills and reaps a child on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
