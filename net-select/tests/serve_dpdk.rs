//! DPDK's virtio_user (a real vhost-user frontend nobody here wrote) against `volt-net-serve
//! --backend loopback`. Skipped, with the reason printed, when not root or without
//! `dpdk-testpmd`.

mod dpdk;

use std::process::Command;
use std::time::Duration;

use dpdk::{last_number_after, Child};

/// Frames a virtio_user receive queue may drop as "old packets" when its port starts
/// (`virtqueue_rxvq_flush`: what the backend delivered between the ring's enable and the
/// port's start, seen as two to five rings of 256 here), or leave unread at the end.
const RX_SLACK: u64 = 8 * 256;

/// Runs testpmd with `net_virtio_user` in `fwd` mode against `volt-net-serve --backend
/// loopback --loopback-mode MODE` until frames flow (testpmd's start takes 1 to 5 s here), then
/// one more second; returns testpmd's output and the daemon's log.
fn run(test: &str, mode: &str, fwd: &str) -> Option<(String, String)> {
    let _turn = dpdk::TURN.lock().unwrap_or_else(|e| e.into_inner());
    dpdk::testpmd_or_skip(test)?;
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
    dpdk::wait_for_path(&sock, Duration::from_secs(5));
    let pmd = dpdk::testpmd(
        &tag,
        &format!("net_virtio_user0,path={},queues=1", sock.display()),
        fwd,
        true,
    );
    let key = if fwd == "rxonly" {
        "Rx-pps:"
    } else {
        "Tx-pps:"
    };
    let flowing = pmd.wait_for_rate(key, 1000, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let out = pmd.stop();
    assert!(flowing, "no frames flowed within 30 s:\n{out}");
    std::thread::sleep(Duration::from_millis(300));
    drop(serve);
    let served = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    Some((out, served))
}

#[test]
fn dpdk_virtio_user_txonly_frames_reach_the_backend() {
    let Some((out, served)) = run(
        "dpdk_virtio_user_txonly_frames_reach_the_backend",
        "sink",
        "txonly",
    ) else {
        return;
    };
    let sent = last_number_after(&out, "TX-packets:").expect("testpmd's TX count");
    let got = last_number_after(&served, "requests: ").expect("our count");
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
fn dpdk_virtio_user_rxonly_receives_what_the_backend_sends() {
    let Some((out, served)) = run(
        "dpdk_virtio_user_rxonly_receives_what_the_backend_sends",
        "source",
        "rxonly",
    ) else {
        return;
    };
    let got = last_number_after(&out, "RX-packets:").expect("testpmd's RX count");
    let sent = last_number_after(&served, "frames from the guest, ").expect("our count");
    println!("volt-net sent {sent}, testpmd received {got}");
    assert!(sent > 10_000, "volt-net sent frames: {served}");
    // What testpmd counts came from us; what it does not count is what its port drops at
    // start (frames delivered before it was started) and leaves unread at the end.
    assert!(
        got <= sent && got + RX_SLACK >= sent,
        "sent {sent}, received {got}\n{out}"
    );
}
