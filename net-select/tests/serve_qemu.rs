//! A real Linux guest under QEMU (TCG), its virtio_net driver talking to the host.
//!
//! - `slirp_guest_boots_pings_and_downloads` checks the rig itself with QEMU's own user
//!   networking: eth0 comes up with the virtio_net driver, the guest pings the slirp gateway
//!   and downloads a blob from a server in this test (through a `guestfwd`, with the guest
//!   otherwise isolated by `restrict=on`), and the boot time is printed.
//! - `vhost_user_*` do the same download (32 MiB) through `volt-net serve` over a TAP in a
//!   namespace of their own, the NIC being a vhost-user-net device served by our daemon, with
//!   QEMU's default `virtio-net-pci` (MSI-X): one and two queue pairs, mergeable receive
//!   buffers on and off; and a daemon killed while the guest is up, replaced, and reconnected
//!   to. MSI-X needs a QEMU newer than Debian bookworm's 7.2 under TCG
//!   ([`guest::Qemu::msix_capable`]); 7.2 itself runs one download with `vectors=0`, and
//!   `qemu72_msix_crashes_whatever_the_backend` keeps the evidence that its MSI-X crash is
//!   QEMU's: DPDK's `net_vhost` crashes it exactly like our daemon.
//!
//! Every test prints `SKIPPED <test>: <reason>` and passes when it cannot run here: not root,
//! no `qemu-system-x86_64`, no Debian kernel image, busybox-static or cpio.
//! `VOLT_GUEST_ECHO=1` prints the guest's console as it arrives.

mod guest;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest::{GuestImage, GuestRun};

/// The guest image, or `None` after printing why the test is skipped.
fn image_or_skip(test: &str) -> Option<GuestImage> {
    if !guest::is_root() {
        println!("SKIPPED {test}: needs root (the kernel image, namespaces and TAPs)");
        return None;
    }
    if let Some(why) = guest::missing_prerequisites() {
        println!("SKIPPED {test}: {why}");
        return None;
    }
    Some(guest::guest_image().expect("building the guest image (prerequisites are installed)"))
}

/// Prints a run's timings and console, so a failing assertion comes with the whole story.
fn report(test: &str, run: &GuestRun) {
    println!(
        "{test}: guest booted (kernel, modules, eth0 up) in {:.2} s; command done at {:.2} s; rc={}; qemu {:?}",
        run.boot.as_secs_f64(),
        run.total.as_secs_f64(),
        run.rc,
        run.qemu_status
    );
    println!("---- console ----\n{}-----------------", run.console);
}

/// The first word of the line in `output` that is a 64-digit hex hash (`sha256sum`'s answer).
fn sha256_in(output: &str) -> Option<&str> {
    output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn slirp_guest_boots_pings_and_downloads() {
    const TEST: &str = "slirp_guest_boots_pings_and_downloads";
    let Some(image) = image_or_skip(TEST) else {
        return;
    };
    let blob = guest::random_blob(4 << 20);
    let want = guest::sha256_hex(&blob).expect("sha256 of the blob");
    let (addr, server) = guest::serve_blob(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        blob,
        Duration::from_secs(180),
    )
    .expect("binding the blob server on loopback");
    // restrict=on: the guest reaches nothing outside QEMU but the gateway itself and the
    // guestfwd, which QEMU connects to our server on loopback.
    let netdev = vec![
        "-netdev".to_string(),
        format!(
            "user,id=n0,restrict=on,net=10.0.2.0/24,host=10.0.2.2,guestfwd=tcp:10.0.2.100:8080-tcp:{addr}"
        ),
        "-device".to_string(),
        "virtio-net-pci,netdev=n0".to_string(),
    ];
    let cmd = "ip addr show dev eth0\n\
               ping -c1 -W10 $PEER\n\
               wget -q -O - http://10.0.2.100:8080/blob | sha256sum\n";
    let started = Instant::now();
    let run = guest::boot(&image, &netdev, cmd, Duration::from_secs(180)).expect("guest run");
    report(TEST, &run);
    let served = server
        .join()
        .expect("blob server thread")
        .expect("serving the blob");
    println!(
        "{TEST}: served {} bytes for {:?} in {:.2} s; whole test {:.2} s",
        served.bytes,
        served.request,
        served.elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    assert_eq!(run.rc, 0, "the guest command failed:\n{}", run.output);
    let net = run.net.as_deref().expect("a VOLT-NET line from /init");
    assert!(net.contains("driver=virtio_net"), "eth0's driver: {net}");
    assert!(net.contains("operstate=up"), "eth0 is not up: {net}");
    assert!(
        run.output.contains("inet 10.0.2.15/24"),
        "eth0 does not have its address:\n{}",
        run.output
    );
    assert!(
        run.output.contains("1 packets received"),
        "no ping reply from the gateway:\n{}",
        run.output
    );
    assert_eq!(
        sha256_in(&run.output),
        Some(want.as_str()),
        "the blob arrived damaged"
    );
    assert!(
        served.request.starts_with("GET /blob "),
        "{}",
        served.request
    );
}

/// `volt-net serve`: `VOLT_NET_SERVE` if set, else the crate's `volt-net-serve` binary.
fn serve_binary() -> Option<PathBuf> {
    std::env::var_os("VOLT_NET_SERVE")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_volt-net-serve").map(PathBuf::from))
}

/// A directory removed when dropped (the test's socket lives there).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("socket directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a vhost-user test needs: the guest image, the daemon's binary, a namespace for the
/// TAP, the socket's path and its directory (removed when dropped); `None` after printing why
/// `test` is skipped.
fn vhost_user_rig(
    test: &str,
    ns_tag: &str,
) -> Option<(
    GuestImage,
    PathBuf,
    net_macvtap::testns::NetNs,
    PathBuf,
    TempDir,
)> {
    let image = image_or_skip(test)?;
    let Some(serve) = serve_binary() else {
        println!("SKIPPED {test}: no volt-net serve binary (set VOLT_NET_SERVE)");
        return None;
    };
    let ns = net_macvtap::testns::NetNs::new(ns_tag).expect("creating a network namespace");
    let dir = TempDir::new(test);
    let sock = dir.0.join("vhost-user.sock");
    Some((image, serve, ns, sock, dir))
}

/// `volt-net serve --backend tap --iface vt0` in namespace `ns`, listening on `sock`.
fn start_daemon(
    serve: &Path,
    ns: &net_macvtap::testns::NetNs,
    sock: &Path,
    queues: u16,
    mrg_rxbuf: bool,
) -> Daemon {
    let _ = std::fs::remove_file(sock);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(serve)
        .arg("--socket")
        .arg(sock)
        .args([
            "--backend",
            "tap",
            "--iface",
            "vt0",
            "--queues",
            &queues.to_string(),
        ])
        .stdin(Stdio::null());
    if !mrg_rxbuf {
        cmd.arg("--no-mrg-rxbuf");
    }
    let mut daemon = Daemon(cmd.spawn().expect("starting volt-net serve"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!("volt-net serve exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "volt-net serve did not listen on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

/// The QEMU that runs the default (MSI-X) device; fails the test, saying how to get one,
/// when there is none (`scripts/test.sh` provides it).
fn msix_qemu() -> guest::Qemu {
    guest::Qemu::msix_capable().unwrap_or_else(|e| panic!("{e}"))
}

/// Boots a guest whose NIC is a vhost-user-net device served by `volt-net serve` over a TAP
/// (`vt0`, 10.0.2.1/24) in a namespace of its own, and downloads 32 MiB of random bytes from
/// a server bound to the TAP's address there; checks the hash, the driver and the queues.
/// `msix`: QEMU's default vectors (with a QEMU that runs them), else `vectors=0` on the
/// distribution's QEMU.
fn vhost_user_download(test: &str, queues: u16, mrg_rxbuf: bool, msix: bool) {
    let Some((image, serve, ns, sock, _dir)) = vhost_user_rig(test, "vhu") else {
        return;
    };
    let qemu = if msix {
        msix_qemu()
    } else {
        guest::Qemu::distribution()
    };

    // The daemon creates the TAP in the namespace, then listens; QEMU is the client.
    let _daemon = start_daemon(&serve, &ns, &sock, queues, mrg_rxbuf);
    ns.exec(&["ip", "addr", "add", "10.0.2.1/24", "dev", "vt0"])
        .expect("address on vt0");
    ns.exec(&["ip", "link", "set", "vt0", "up"])
        .expect("vt0 up");

    // The server's socket belongs to the namespace it was bound in.
    let blob = guest::random_blob(32 << 20);
    let want = guest::sha256_hex(&blob).expect("sha256 of the blob");
    let (addr, server) = {
        let _inside = ns.enter().expect("entering the namespace");
        guest::serve_blob(
            SocketAddr::from(([10, 0, 2, 1], 8080)),
            blob,
            Duration::from_secs(300),
        )
        .expect("binding the blob server on vt0's address")
    };

    let opts = guest::BootOptions {
        smp: u32::from(queues),
        peer: "10.0.2.1".into(),
        gateway: None,
        timeout: Duration::from_secs(300),
        qemu: qemu.clone(),
        ..guest::BootOptions::default()
    };
    let cmd = format!(
        "ip addr show dev eth0\n\
         ping -c1 -W10 $PEER\n\
         wget -q -O - http://$PEER:{}/blob | sha256sum\n",
        addr.port()
    );
    let run = guest::boot_with(
        &image,
        &guest::vhost_user_args(&sock, queues, mrg_rxbuf, msix),
        &cmd,
        &opts,
    )
    .expect("guest run");
    report(test, &run);
    let served = server
        .join()
        .expect("blob server thread")
        .expect("serving the blob");
    println!(
        "{test}: {} bytes in {:.2} s ({:.1} MB/s) over vhost-user, {queues} queue pair(s), mrg_rxbuf={mrg_rxbuf}, QEMU {} {}",
        served.bytes,
        served.elapsed.as_secs_f64(),
        served.bytes as f64 / served.elapsed.as_secs_f64() / 1e6,
        qemu.version,
        if msix { "MSI-X (default vectors)" } else { "vectors=0" }
    );

    assert_eq!(run.rc, 0, "the guest command failed:\n{}", run.output);
    let net = run.net.as_deref().expect("a VOLT-NET line from /init");
    assert!(net.contains("driver=virtio_net"), "eth0's driver: {net}");
    assert!(net.contains("operstate=up"), "eth0 is not up: {net}");
    assert!(
        net.contains(&format!("rx_queues={queues} ")),
        "eth0's queues: {net}"
    );
    assert!(
        run.output.contains("1 packets received"),
        "no ping reply:\n{}",
        run.output
    );
    assert_eq!(
        sha256_in(&run.output),
        Some(want.as_str()),
        "the blob arrived damaged"
    );
}

#[test]
fn vhost_user_one_queue_mergeable() {
    vhost_user_download("vhost_user_one_queue_mergeable", 1, true, true);
}

#[test]
fn vhost_user_two_queues_mergeable() {
    vhost_user_download("vhost_user_two_queues_mergeable", 2, true, true);
}

#[test]
fn vhost_user_two_queues_big_buffers() {
    vhost_user_download("vhost_user_two_queues_big_buffers", 2, false, true);
}

/// Debian bookworm's QEMU 7.2 with `vectors=0` (legacy interrupts): the way it runs a
/// vhost-user-net device under TCG.
#[test]
fn vhost_user_one_queue_qemu72_legacy_interrupts() {
    vhost_user_download(
        "vhost_user_one_queue_qemu72_legacy_interrupts",
        1,
        true,
        false,
    );
}

/// QEMU's exit status for a guest booted with `netdev` (its console is not read: the guest
/// only has to reach the point where its driver starts the device).
fn qemu_exit(
    qemu: &guest::Qemu,
    image: &GuestImage,
    netdev: &[String],
) -> std::process::ExitStatus {
    let mut child = Command::new(&qemu.bin)
        .args([
            "-machine", "q35", "-accel", "tcg", "-m", "512M", "-smp", "1",
        ])
        .args(["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"])
        .args(["-serial", "null", "-kernel"])
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 volt.cmd=ZWNobyBvawo=",
        ])
        .args([
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-numa",
            "node,memdev=mem",
        ])
        .args(netdev)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting QEMU");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("QEMU's status");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Debian bookworm's QEMU 7.2 with its default `virtio-net-pci` (MSI-X) under TCG dies with
/// SIGSEGV when the guest's driver starts a vhost-user-net device: in
/// `msix_set_vector_notifiers`, QEMU (which turns guest-notifier masking off for vhost-user)
/// sets up an irqfd from `proxy->vector_irqfd`, a table only KVM allocates. DPDK's
/// `net_vhost` crashes it exactly like our daemon, so the fault is QEMU's, not the backend's:
/// this test keeps that evidence (and fails, to say so, if a QEMU update fixes it). QEMU 8+
/// runs the same device (the `vhost_user_*` tests above).
#[test]
fn qemu72_msix_crashes_whatever_the_backend() {
    const TEST: &str = "qemu72_msix_crashes_whatever_the_backend";
    let qemu = guest::Qemu::distribution();
    if qemu.major() >= 8 {
        println!(
            "SKIPPED {TEST}: the distribution's QEMU is {}, not 7.2",
            qemu.version
        );
        return;
    }
    let Some(image) = image_or_skip(TEST) else {
        return;
    };
    if volt_net_testkit::testpmd::testpmd_or_skip(TEST).is_none() {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new(TEST);

    // DPDK's vhost-user backend.
    let dpdk_sock = dir.0.join("dpdk.sock");
    let pmd = volt_net_testkit::testpmd::Testpmd::start(&volt_net_testkit::testpmd::Spec {
        periodic: false,
        ..volt_net_testkit::testpmd::Spec::new(
            &format!("volt-q72-{}", std::process::id()),
            0,
            &format!("net_vhost0,iface={},queues=1", dpdk_sock.display()),
            "rxonly",
        )
    });
    assert!(volt_net_testkit::testpmd::wait_for_path(
        &dpdk_sock,
        Duration::from_secs(30)
    ));
    let with_dpdk = qemu_exit(
        &qemu,
        &image,
        &guest::vhost_user_args(&dpdk_sock, 1, true, true),
    );
    drop(pmd.stop());

    // Ours (over the loopback: no TAP needed to get there).
    let ours_sock = dir.0.join("ours.sock");
    let serve = serve_binary().expect("the daemon's binary");
    let _daemon = Daemon(
        Command::new(serve)
            .arg("--socket")
            .arg(&ours_sock)
            .args(["--backend", "loopback"])
            .stderr(Stdio::null())
            .spawn()
            .expect("volt-net serve"),
    );
    assert!(volt_net_testkit::testpmd::wait_for_path(
        &ours_sock,
        Duration::from_secs(10)
    ));
    let with_ours = qemu_exit(
        &qemu,
        &image,
        &guest::vhost_user_args(&ours_sock, 1, true, true),
    );

    println!(
        "{TEST}: QEMU {} with DPDK net_vhost: {with_dpdk}; with volt-net serve: {with_ours}",
        qemu.version
    );
    assert_eq!(
        with_dpdk.signal(),
        Some(11),
        "QEMU {} with DPDK's net_vhost",
        qemu.version
    );
    assert_eq!(
        with_ours.signal(),
        Some(11),
        "QEMU {} with our daemon",
        qemu.version
    );
}

/// The daemon dies (SIGKILL) while the guest is up and a new one takes the socket: QEMU
/// (`reconnect=1`) connects again and the guest's traffic flows with no reboot. The TAP is
/// persistent here, so its address outlives the daemon.
#[test]
fn vhost_user_reconnect_after_the_daemon_dies() {
    const TEST: &str = "vhost_user_reconnect_after_the_daemon_dies";

    let Some((image, serve, ns, sock, _dir)) = vhost_user_rig(TEST, "vhr") else {
        return;
    };
    ns.exec(&[
        "ip",
        "tuntap",
        "add",
        "dev",
        "vt0",
        "mode",
        "tap",
        "multi_queue",
        "vnet_hdr",
    ])
    .expect("a persistent TAP");
    ns.exec(&["ip", "addr", "add", "10.0.2.1/24", "dev", "vt0"])
        .expect("address on vt0");
    ns.exec(&["ip", "link", "set", "vt0", "up"])
        .expect("vt0 up");

    let first = guest::random_blob(1 << 20);
    let blob = guest::random_blob(8 << 20);
    let want_first = guest::sha256_hex(&first).expect("sha256");
    let want = guest::sha256_hex(&blob).expect("sha256");
    let (servers, daemon) = {
        let _inside = ns.enter().expect("entering the namespace");
        let a = guest::serve_blob(
            SocketAddr::from(([10, 0, 2, 1], 8080)),
            first,
            Duration::from_secs(120),
        )
        .expect("binding the first server");
        let b = guest::serve_blob(
            SocketAddr::from(([10, 0, 2, 1], 8081)),
            blob,
            Duration::from_secs(180),
        )
        .expect("binding the second server");
        ((a.1, b.1), start_daemon(&serve, &ns, &sock, 1, true))
    };
    // The guest downloads from the first server, waits while the daemon is replaced, pings
    // until the link works again, and downloads from the second.
    let cmd = "wget -q -O - http://$PEER:8080/first | sha256sum\n\
               sleep 3\n\
               n=0; until ping -c1 -W1 $PEER >/dev/null; do n=$((n+1)); [ $n -ge 60 ] && break; done\n\
               echo lost-pings=$n\n\
               wget -q -O - http://$PEER:8081/blob | sha256sum\n";
    let opts = guest::BootOptions {
        peer: "10.0.2.1".into(),
        gateway: None,
        timeout: Duration::from_secs(240),
        qemu: msix_qemu(),
        ..guest::BootOptions::default()
    };
    let (first_server, second_server) = servers;
    let sock2 = sock.clone();
    let replacer = std::thread::spawn(move || {
        // Once the first download is served, the daemon dies and another one comes.
        let served = first_server.join().expect("first server thread");
        let mut old = daemon;
        let _ = old.0.kill();
        let _ = old.0.wait();
        std::thread::sleep(Duration::from_millis(500));
        (served, start_daemon(&serve, &ns, &sock2, 1, true), ns)
    });
    let run = guest::boot_with(
        &image,
        &guest::vhost_user_args(&sock, 1, true, true),
        cmd,
        &opts,
    )
    .expect("guest run");
    report(TEST, &run);
    let (first_served, _new_daemon, _ns) = replacer.join().expect("replacer thread");
    first_served.expect("the first download was served");
    let second = second_server.join().expect("second server thread");

    assert_eq!(run.rc, 0, "the guest command failed:\n{}", run.output);
    let hashes: Vec<&str> = run
        .output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert_eq!(
        hashes,
        [want_first.as_str(), want.as_str()],
        "both downloads, before and after the new daemon, arrive whole:\n{}",
        run.output
    );
    assert!(
        !run.output.contains("lost-pings=60"),
        "the link never came back:\n{}",
        run.output
    );
    second.expect("the second download was served");

    // The new daemon keeps serving after that guest is gone: a second VM gets through.
    let again = guest::boot_with(
        &image,
        &guest::vhost_user_args(&sock, 1, true, true),
        "ping -c1 -W10 $PEER\n",
        &opts,
    )
    .expect("second guest run");
    report(TEST, &again);
    assert!(
        again.rc == 0 && again.output.contains("1 packets received"),
        "a second frontend on the same daemon:\n{}",
        again.output
    );
    drop(_new_daemon);
}
