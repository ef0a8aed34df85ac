//! Faults a frontend can cause, one named test each, against `volt-net-serve --backend
//! loopback` (no privileges): a kick or call fd that is no eventfd, a kick counter read back,
//! a call counter at its maximum, a client that stalls in its handshake, a second frontend,
//! frames left by a previous session, vring indexes past the queues, a memory file shrunk
//! under traffic; and the sandbox: the socket's mode whatever the umask, a live daemon's
//! socket kept, every thread under its seccomp filter. After each: the daemon is alive, a fresh frontend gets frames both ways,
//! the daemon's fds and memory are back where they were, it is idle, and its log says what
//! happened.

mod vu;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vu::{
    echo_from, hung_up, memory_file, post_rx, raw, raw_get, received, send_from, session,
    shared_memory, u64s, Daemon, Swap, GET_FEATURES, SET_OWNER, SET_VRING_KICK,
};

/// What the daemon held after serving one healthy frontend.
struct Baseline {
    fds: usize,
    rss_kib: u64,
    threads: usize,
}

fn loopback(tag: &str) -> (Daemon, Baseline) {
    let mut d = Daemon::start(
        tag,
        &[],
        &["--backend", "loopback", "--handshake-timeout", "1"],
    );
    d.serves_a_fresh_frontend("the first frontend");
    let base = settle(&d, None);
    (d, base)
}

/// Waits for the daemon to finish with the last session (its fds and threads fall back to
/// `to`, or stop changing) and returns what it holds.
fn settle(d: &Daemon, to: Option<&Baseline>) -> Baseline {
    let end = Instant::now() + Duration::from_secs(5);
    let mut last = (usize::MAX, usize::MAX);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = (d.fds(), d.threads());
        let done = match to {
            Some(b) => now.0 <= b.fds && now.1 <= b.threads,
            None => now == last,
        };
        if done || Instant::now() > end {
            return Baseline {
                fds: now.0,
                rss_kib: d.rss_kib(),
                threads: now.1,
            };
        }
        last = now;
    }
}

/// After a fault: the log line, a fresh frontend served, resources back, no spinning.
fn recovered(d: &mut Daemon, base: &Baseline, from: usize, line: &str, what: &str) {
    d.expect_log(from, line);
    d.serves_a_fresh_frontend(what);
    let now = settle(d, Some(base));
    assert!(
        now.fds <= base.fds,
        "{what}: the daemon holds {} fds, {} before",
        now.fds,
        base.fds
    );
    assert!(
        now.threads <= base.threads,
        "{what}: the daemon runs {} threads, {} before",
        now.threads,
        base.threads
    );
    assert!(
        now.rss_kib <= base.rss_kib + 8 * 1024,
        "{what}: resident memory {} KiB, {} KiB before",
        now.rss_kib,
        base.rss_kib
    );
    d.assert_idle(what);
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

#[test]
fn a_kick_or_call_fd_that_is_not_an_eventfd_ends_only_its_session() {
    let (mut d, base) = loopback("notevent");
    let mem = shared_memory();
    // A pipe whose writer is gone (end of file at once).
    let (eof, w) = pipe();
    drop(w);
    // A pipe holding 3 bytes (a short read).
    let (short, w3) = pipe();
    nix::unistd::write(&w3, b"abc").expect("3 bytes");
    // A socket.
    let (sock, _peer) = UnixStream::pair().expect("socketpair");
    // A full pipe as call fd (a blocking write would hang the worker).
    let (_r, w) = pipe();
    nix::fcntl::fcntl(
        &w,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("non-blocking");
    let mut full = std::fs::File::from(w);
    while full.write(&[0u8; 4096]).is_ok() {}
    let kick = |ring: usize, fd: i32| {
        let mut s = Swap::default();
        s.kick[ring] = Some(fd);
        s
    };
    let call = |ring: usize, fd: i32| {
        let mut s = Swap::default();
        s.call[ring] = Some(fd);
        s
    };
    let cases = [
        (
            "a pipe at end of file as kick fd",
            kick(1, eof.as_raw_fd()),
            "the kick fd of ring 1",
        ),
        (
            "a pipe with 3 bytes as kick fd",
            kick(0, short.as_raw_fd()),
            "the kick fd of ring 0",
        ),
        (
            "a socket as kick fd",
            kick(1, sock.as_raw_fd()),
            "the kick fd of ring 1",
        ),
        (
            "a full pipe as call fd",
            call(0, full.as_raw_fd()),
            "the call fd of ring 0",
        ),
    ];
    for (what, swap, fd) in cases {
        let from = d.mark();
        assert!(session(&d.sock, &mem, swap).is_err(), "{what}: refused");
        let line = format!("{fd} is not an eventfd");
        recovered(&mut d, &base, from, &line, what);
    }
}

#[test]
fn a_kick_counter_the_frontend_reads_back_is_only_a_spurious_wake_up() {
    let (mut d, base) = loopback("readback");
    let mem = shared_memory();
    let mut rings = session(&d.sock, &mem, Swap::default()).expect("a session");
    let from = d.mark();
    // The frontend kicks and reads its own kick back, a thousand times: the daemon finds the
    // counter empty (EAGAIN), which is no fault.
    for _ in 0..1000 {
        rings.tx_kick.write(1).expect("kick");
        let _ = rings.tx_kick.read();
    }
    vu::echo_from(
        &mem,
        &mut rings,
        500,
        "the same session, after its kicks were read back",
    );
    assert!(!d.log()[from..].contains("fault"), "no fault:\n{}", d.log());
    drop(rings);
    let from = d.mark();
    recovered(
        &mut d,
        &base,
        from,
        "frontend gone (disconnected)",
        "after kicks read back",
    );
}

#[test]
fn a_call_counter_at_its_maximum_ends_the_session_instead_of_blocking() {
    let (mut d, base) = loopback("callmax");
    let mem = shared_memory();
    let mut rings = session(&d.sock, &mem, Swap::default()).expect("a session");
    // The frontend never reads its transmit call eventfd, which is one short of full: the
    // next interrupt cannot be written (a blocking write would hang the worker forever).
    rings.calls[1]
        .write(u64::MAX - 1)
        .expect("counter at its maximum");
    let from = d.mark();
    send_from(&mem, &mut rings, 0, 10);
    d.expect_log(from, "writing the Tx call fd");
    assert!(
        hung_up(
            rings.conn.as_ref().expect("connection"),
            Duration::from_secs(5)
        ),
        "the daemon ended the session"
    );
    drop(rings);
    recovered(
        &mut d,
        &base,
        from,
        "frontend gone (fault: queue pair 0: writing the Tx call fd",
        "a call counter at its maximum",
    );
}

#[test]
fn a_client_that_stalls_in_its_handshake_is_dropped_and_the_next_is_served() {
    let (mut d, base) = loopback("stall");
    // Connects and says nothing; another connects and stops after SET_OWNER.
    for (what, owner) in [("silent", false), ("after SET_OWNER", true)] {
        let from = d.mark();
        let s = UnixStream::connect(&d.sock).expect("connect");
        if owner {
            raw(&s, SET_OWNER, &[], &[]).expect("SET_OWNER");
        }
        let t = Instant::now();
        assert!(
            hung_up(&s, Duration::from_secs(5)),
            "{what}: the daemon hangs up on a stalled client"
        );
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "{what}: not before the deadline ({waited:?})"
        );
        recovered(
            &mut d,
            &base,
            from,
            "stalled in its handshake",
            &format!("a client {what}"),
        );
    }
}

#[test]
fn a_second_frontend_is_refused_while_one_is_served() {
    let (mut d, base) = loopback("second");
    let mem = shared_memory();
    let mut first = session(&d.sock, &mem, Swap::default()).expect("a session");
    let from = d.mark();
    let second = UnixStream::connect(&d.sock).expect("connect");
    assert!(
        hung_up(&second, Duration::from_secs(5)),
        "the second frontend is refused at once"
    );
    d.expect_log(from, "refused a second frontend");
    vu::echo_from(&mem, &mut first, 7, "the first frontend, still served");
    drop(first);
    recovered(
        &mut d,
        &base,
        from,
        "frontend gone (disconnected)",
        "after a second frontend",
    );
}

#[test]
fn frames_queued_for_one_frontend_are_not_delivered_to_the_next() {
    let (mut d, base) = loopback("flush");
    let mem = shared_memory();
    let mut first = session(&d.sock, &mem, Swap::default()).expect("a session");
    // 500 frames echoed into a receive ring without buffers: they wait in the backend.
    assert_eq!(send_from(&mem, &mut first, 0, 500), 500);
    std::thread::sleep(Duration::from_millis(300));
    let from = d.mark();
    drop(first);
    // The next frontend posts buffers: none of the first one's frames arrives.
    let mem2 = shared_memory();
    let mut next = session(&d.sock, &mem2, Swap::default()).expect("the next session");
    post_rx(&mem2, &mut next, 64);
    let stale = received(&mem2, &mut next, 1, Duration::from_millis(500));
    assert!(
        stale.is_empty(),
        "frames of the previous session arrived: {stale:?}"
    );
    d.expect_log(from, "frames queued for no frontend");
    drop(next);
    recovered(
        &mut d,
        &base,
        from,
        "frontend gone (disconnected)",
        "after a flush",
    );
}

#[test]
fn vring_indexes_past_the_queues_are_refused_before_any_truncation() {
    let (mut d, base) = loopback("index");
    let kick = vu::nonblocking_eventfd();
    // 0x201: ring 1 with a reserved bit; 0x1_0000 and 0x1_0001: rings 0 and 1 once cut to
    // 16 bits.
    for index in [0x201u64, 0x1_0000, 0x1_0001] {
        let from = d.mark();
        let s = UnixStream::connect(&d.sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        raw(&s, SET_OWNER, &[], &[]).expect("SET_OWNER");
        raw_get(&s, GET_FEATURES).expect("GET_FEATURES");
        let _ = raw(&s, SET_VRING_KICK, &u64s(&[index]), &[kick.as_raw_fd()]);
        assert!(
            hung_up(&s, Duration::from_secs(5)),
            "SET_VRING_KICK {index:#x}: refused"
        );
        recovered(
            &mut d,
            &base,
            from,
            "frontend gone (refused",
            &format!("SET_VRING_KICK {index:#x}"),
        );
    }
}

#[test]
fn a_memory_file_shrunk_under_traffic_ends_only_that_session() {
    let (mut d, base) = loopback("sigbus");
    for round in 0..3 {
        let mem = shared_memory();
        let mut rings = session(&d.sock, &mem, Swap::default()).expect("a session");
        vu::echo_from(&mem, &mut rings, 0, "before the shrink");
        let from = d.mark();
        // The frontend cuts its memory file to one page: every ring and buffer is past the
        // end now. The kick makes the daemon read the transmit ring: SIGBUS, contained.
        memory_file(&mem).set_len(4096).expect("shrink");
        rings.tx_kick.write(1).expect("kick");
        d.expect_log(from, "shrank a memory file");
        assert!(
            hung_up(
                rings.conn.as_ref().expect("connection"),
                Duration::from_secs(5)
            ),
            "round {round}: the daemon ended that session"
        );
        // The frontend's own mapping is past the file's end too: it is dropped untouched.
        drop(rings);
        drop(mem);
        recovered(
            &mut d,
            &base,
            from,
            "frontend gone (fault: queue pair 0: the frontend shrank a memory file",
            &format!("round {round}: a memory file shrunk under traffic"),
        );
    }
}

/// Each thread's name and its `Seccomp` and `Seccomp_filters` lines.
fn seccomp_of(pid: u32) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let t = t.expect("task").path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = t.join("status");
        let field = |k: &str| vu::status_field(&status, k);
        out.push((
            comm.trim().to_string(),
            field("Seccomp:"),
            field("Seccomp_filters:"),
        ));
    }
    out
}

#[test]
fn every_thread_of_the_daemon_runs_under_its_seccomp_filter() {
    let d = Daemon::start("seccomp", &[], &["--backend", "loopback"]);
    let mem = shared_memory();
    let mut rings = session(&d.sock, &mem, Swap::default()).expect("a session");
    echo_from(&mem, &mut rings, 1, "under the filters");
    let threads = seccomp_of(d.pid());
    let show = format!("{threads:?}\n{}", d.log());
    assert!(
        threads.iter().any(|t| t.0.starts_with("vhost-user-q")),
        "{show}"
    );
    assert!(threads.iter().any(|t| t.0 == "volt-loopback"), "{show}");
    for (name, mode, filters) in &threads {
        assert_eq!(mode, "2", "{name} is filtered: {show}");
        // A worker inherits the daemon's filter and adds its own.
        let want = if name.starts_with("vhost-user-q") {
            "2"
        } else {
            "1"
        };
        assert_eq!(filters, want, "{name}'s filters: {show}");
    }
    assert!(
        d.log()
            .contains("sandbox: seccomp filters Enforce, Landlock enforced"),
        "{}",
        d.log()
    );
    drop(rings);

    // Off when asked (and then nothing is filtered).
    let mut off = Daemon::start(
        "seccompoff",
        &[],
        &["--backend", "loopback", "--seccomp", "off"],
    );
    off.serves_a_fresh_frontend("without filters");
    for (name, mode, _) in seccomp_of(off.pid()) {
        assert_eq!(mode, "0", "{name}");
    }
}

#[test]
fn the_socket_is_0600_whatever_the_umask_and_a_live_daemons_socket_is_kept() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut d = Daemon::start(
        "umask",
        &["sh", "-c", "umask 000; exec \"$0\" \"$@\""],
        &["--backend", "loopback"],
    );
    let meta = std::fs::metadata(&d.sock).expect("the socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "under umask 000");
    // A second daemon on the same path is refused, and the live one keeps its socket.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_volt-net-serve"))
        .arg("--socket")
        .arg(&d.sock)
        .args(["--backend", "loopback"])
        .output()
        .expect("a second daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("a daemon is serving on"), "{err}");
    assert_eq!(
        std::fs::metadata(&d.sock).expect("still there").ino(),
        meta.ino(),
        "the live daemon's socket is kept"
    );
    d.serves_a_fresh_frontend("the first daemon, after the second was refused");

    // A mode and a group of the operator's choosing (any group as root; our own otherwise).
    let gid = if nix::unistd::geteuid().is_root() {
        4321
    } else {
        nix::unistd::getegid().as_raw()
    };
    let gid_s = gid.to_string();
    let g = Daemon::start(
        "sockgroup",
        &[],
        &[
            "--backend",
            "loopback",
            "--socket-mode",
            "0660",
            "--socket-group",
            &gid_s,
        ],
    );
    let meta = std::fs::metadata(&g.sock).expect("the socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    // Modes the owner could not connect with, or beyond permission bits, are refused.
    for bad in ["0400", "4755", "rw"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_volt-net-serve"))
            .args(["--socket", "/nonexistent/x.sock", "--backend", "loopback"])
            .args(["--socket-mode", bad])
            .output()
            .expect("volt-net-serve");
        assert_eq!(out.status.code(), Some(2), "{bad}: a usage error");
    }
}
