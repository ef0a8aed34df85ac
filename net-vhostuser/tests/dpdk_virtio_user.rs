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

/// Runs testpmd with `net_virtio_user` in `fwd` mode for 3 s against `volt-net-serve
/// --backend loopback --loopback-mode MODE`; returns testpmd's output and the daemon's log.
/// The testpmd runs share one pinned CPU: they take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(test: &str, mode: &str, fwd: &str) -> Option<(String, String)> {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED {test}: needs root for DPDK");
        return None;
    }
    let Some(tpmd) = testpmd() else {
        println!("SKIPPED {test}: no dpdk-testpmd (apt-get install dpdk-dev)");
        return None;
    };
    let tag = format!("volt-vu-{}-{fwd}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
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
                "--loopback-mode",
                mode,
            ])
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("volt-net-serve"),
    );
    let end = Instant::now() + Duration::from_secs(5);
    while !sock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut pmd = Child(
        Command::new(tpmd)
            .args([
                "--no-huge",
                "-m",
                "1024",
                "--no-pci",
                "--lcores=0@1,1@1",
                &format!("--file-prefix={tag}"),
                &format!("--vdev=net_virtio_user0,path={},queues=1", sock.display()),
                "--",
                &format!("--forward-mode={fwd}"),
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
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{tag}"));
    Some((out, served))
}

#[test]
#[ignore = "issue 5: the daemon's pumps stall intermittently under load (a lost wake-up being investigated); run with --ignored"]
fn dpdk_virtio_user_txonly_frames_reach_the_backend() {
    let Some((out, served)) = run(
        "dpdk_virtio_user_txonly_frames_reach_the_backend",
        "sink",
        "txonly",
    ) else {
        return;
    };
    let sent = last_number_after(&out, "TX-packets:").expect("testpmd's TX count");
    let got = last_number_after(&served, ") after").expect("our count");
    println!("testpmd sent {sent}, volt-net received {got}");
    assert!(sent > 10_000, "testpmd sent frames: {out}");
    // Every frame testpmd counts as sent was in the ring; we take them all before the end,
    // except at most one ring's worth still in flight at the disconnect.
    assert!(
        got + 256 >= sent && got <= sent,
        "sent {sent}, received {got}\n{served}"
    );
}

#[test]
#[ignore = "issue 5: the daemon's pumps stall intermittently under load (a lost wake-up being investigated); run with --ignored"]
fn dpdk_virtio_user_rxonly_receives_what_the_backend_sends() {
    let Some((out, served)) = run(
        "dpdk_virtio_user_rxonly_receives_what_the_backend_sends",
        "source",
        "rxonly",
    ) else {
        return;
    };
    let got = last_number_after(&out, "RX-packets:").expect("testpmd's RX count");
    let sent = served
        .rsplit_once("frames from the guest, ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<u64>().ok())
        .expect("our count");
    println!("volt-net sent {sent}, testpmd received {got}");
    assert!(sent > 10_000, "volt-net sent frames: {served}");
    // testpmd stops polling before it disconnects: what we delivered meanwhile (used entries
    // it never read, bounded by its ring and the frames still arriving) goes uncounted.
    assert!(
        got <= sent && got + 1024 >= sent,
        "sent {sent}, received {got}\n{out}"
    );
}
