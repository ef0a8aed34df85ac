//! DPDK's virtio_user (a real vhost-user frontend nobody here wrote) against `volt-net-serve
//! --backend loopback`. Skipped, with the reason printed, when not root or without
//! `dpdk-testpmd`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn testpmd() -> Option<&'static str> {
    let p = "/usr/bin/dpdk-testpmd";
    std::path::Path::new(p).exists().then_some(p)
}

/// Kills and reaps a child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn last_number_after(text: &str, key: &str) -> Option<u64> {
    text.rmatch_indices(key).next().and_then(|(i, _)| {
        text[i + key.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[test]
fn dpdk_virtio_user_txonly_frames_reach_the_backend() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED dpdk_virtio_user_txonly_frames_reach_the_backend: needs root for DPDK");
        return;
    }
    let Some(tpmd) = testpmd() else {
        println!(
            "SKIPPED dpdk_virtio_user_txonly_frames_reach_the_backend: no dpdk-testpmd \
             (apt-get install dpdk-dev)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("volt-vu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("vu.sock");
    let log = dir.join("serve.log");
    let serve = Child(
        Command::new(env!("CARGO_BIN_EXE_volt-net-serve"))
            .args([
                "--socket",
                sock.to_str().expect("utf-8"),
                "--backend",
                "loopback",
            ])
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("volt-net-serve"),
    );
    let end = Instant::now() + Duration::from_secs(5);
    while !sock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let prefix = format!("volt-vu-{}", std::process::id());
    let mut pmd = Child(
        Command::new(tpmd)
            .args([
                "--no-huge",
                "-m",
                "1024",
                "--no-pci",
                "--lcores=0@1,1@1",
                &format!("--file-prefix={prefix}"),
                &format!("--vdev=net_virtio_user0,path={},queues=1", sock.display()),
                "--",
                "--forward-mode=txonly",
                "--nb-cores=1",
                "-a",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("testpmd"),
    );
    std::thread::sleep(Duration::from_secs(3));
    // Closing stdin stops testpmd, which prints its totals and disconnects.
    drop(pmd.0.stdin.take());
    let mut out = String::new();
    if let Some(mut o) = pmd.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let _ = pmd.0.wait();
    std::thread::sleep(Duration::from_millis(300));
    drop(serve);
    let served = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    let sent = last_number_after(&out, "TX-packets:").expect("testpmd's TX count");
    let got = last_number_after(&served, "disconnected after").expect("our count");
    println!("testpmd sent {sent}, volt-net received {got}");
    assert!(sent > 10_000, "testpmd sent frames: {out}");
    // Every frame testpmd counts as sent was in the ring; we take them all before the end,
    // except at most one ring's worth still in flight at the disconnect.
    assert!(
        got + 256 >= sent && got <= sent,
        "sent {sent}, received {got}\n{served}"
    );
}
