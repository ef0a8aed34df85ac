//! Our frontend (`net_vhostuser::frontend`) against DPDK's `net_vhost` backend in
//! `dpdk-testpmd`: frames we put in the transmit ring arrive in testpmd (`rxonly` counts
//! them), and after testpmd is restarted our frontend reconnects and frames arrive again.
//! Skipped, with the reason printed, when not root or without `dpdk-testpmd`.

mod dpdk;
mod vu;

use std::path::Path;
use std::time::Duration;

use dpdk::Testpmd;
use net_vhostuser::frontend::{VhostUserNet, Vring};
use net_virtio::mock::MockQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vu::{
    echo, nonblocking_eventfd, qemu_ordered_session, send, shared_memory, Rings, TempDir, MEM, RING,
};

/// Sets both rings up (receive at 0x1_0000, transmit at 0x2_0000) and hands them over.
fn start(net: &mut VhostUserNet, mem: &GuestMemoryMmap) -> Rings {
    let rx = MockQueue::new(mem, GuestAddress(0x1_0000), RING);
    let tx = MockQueue::new(mem, GuestAddress(0x2_0000), RING);
    let (rx_kick, tx_kick) = (nonblocking_eventfd(), nonblocking_eventfd());
    for (index, q, kick) in [
        (0, &rx, rx_kick.try_clone().expect("dup")),
        (1, &tx, tx_kick.try_clone().expect("dup")),
    ] {
        let vring = Vring {
            size: q.size,
            desc: q.desc,
            avail: q.avail,
            used: q.used,
            kick,
            call: nonblocking_eventfd(),
        };
        net.start_vring(index, vring, 0).expect("starting a ring");
    }
    Rings {
        rx,
        tx,
        rx_kick,
        tx_kick,
        conn: None,
        calls: Vec::new(),
    }
}

fn testpmd_rx(out: &str) -> u64 {
    dpdk::last_number_after(out, "RX-packets:").expect("testpmd's RX count")
}

fn vhost_pmd(tag: &str, sock: &Path) -> Testpmd {
    let pmd = dpdk::testpmd(
        tag,
        &format!("net_vhost0,iface={},queues=1", sock.display()),
        "rxonly",
        false,
    );
    assert!(
        dpdk::wait_for_path(sock, Duration::from_secs(20)),
        "testpmd's net_vhost listens on {}",
        sock.display()
    );
    pmd
}

#[test]
fn frames_we_push_arrive_in_dpdk_net_vhost_and_again_after_it_restarts() {
    const TEST: &str = "frames_we_push_arrive_in_dpdk_net_vhost_and_again_after_it_restarts";
    let _turn = dpdk::TURN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_) = dpdk::testpmd_or_skip(TEST) else {
        return;
    };
    let tag = format!("volt-vfe-{}", std::process::id());
    let dir = TempDir::new(&tag);
    let sock = dir.0.join("vhost.sock");
    let mem = shared_memory();

    let pmd = vhost_pmd(&format!("{tag}-a"), &sock);
    let mut net = VhostUserNet::connect(&sock, 1).expect("connecting to net_vhost");
    let version_1 = 1u64 << 32;
    assert_ne!(net.features() & version_1, 0, "net_vhost offers VERSION_1");
    net.set_features(version_1).expect("SET_FEATURES");
    net.set_memory(&mem).expect("SET_MEM_TABLE");
    let mut rings = start(&mut net, &mem);
    let first = send(&mem, &mut rings, 5000);
    // testpmd polls its rings; give it a moment to count the last ones.
    std::thread::sleep(Duration::from_millis(500));
    let out = pmd.stop();
    println!("first testpmd received {}", testpmd_rx(&out));
    assert_eq!(first, 5000, "net_vhost completed every frame we sent");
    assert_eq!(testpmd_rx(&out), 5000, "testpmd counts them:\n{out}");

    // The backend restarts; the frontend connects again and resumes where it was.
    let pmd = vhost_pmd(&format!("{tag}-b"), &sock);
    net.reconnect(Duration::from_secs(20))
        .expect("reconnecting to the new net_vhost");
    let second = send(&mem, &mut rings, 3000);
    std::thread::sleep(Duration::from_millis(500));
    let out = pmd.stop();
    println!("second testpmd received {}", testpmd_rx(&out));
    assert_eq!(second, 3000, "the new net_vhost completed every frame");
    assert_eq!(
        testpmd_rx(&out),
        3000,
        "the new testpmd counts them:\n{out}"
    );
}

/// Our frontend against our own server (`volt-net-serve --backend loopback`, which echoes):
/// anonymous memory is refused with what to do, then frames sent come back into the receive
/// ring. Needs no privileges.
#[test]
fn our_frontend_and_our_server_echo_frames() {
    let dir = TempDir::new(&format!("volt-fe-echo-{}", std::process::id()));
    let sock = dir.0.join("vu.sock");
    let _serve = dpdk::Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_volt-net-serve"))
            .args([
                "--socket",
                sock.to_str().expect("utf-8"),
                "--backend",
                "loopback",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("volt-net-serve"),
    );
    assert!(dpdk::wait_for_path(&sock, Duration::from_secs(5)));
    let mut net = VhostUserNet::connect(&sock, 1).expect("connecting to volt-net-serve");
    let version_1 = 1u64 << 32;
    net.set_features(version_1).expect("SET_FEATURES");
    assert!(
        net.set_features(1 << 63).is_err(),
        "features the backend does not offer are refused"
    );
    let anonymous = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory");
    let err = net.set_memory(&anonymous).expect_err("anonymous memory");
    assert!(err.to_string().contains("memfd"), "{err}");

    let mem = shared_memory();
    net.set_memory(&mem).expect("SET_MEM_TABLE");
    let mut rings = start(&mut net, &mem);
    // The rings are enabled before the guest posts buffers (the server then finds the
    // receive ring dry): the buffers that come later must still be used.
    std::thread::sleep(Duration::from_millis(100));
    echo(&mem, &mut rings, "the first frontend");

    // That frontend vanishes without stopping its rings (a killed VMM), and the next one
    // comes in QEMU's order: ring enables and calls before SET_FEATURES, no enable after the
    // kicks. The server reset the device in between, so its rings start clean.
    drop(net);
    let mem2 = shared_memory();
    let mut rings2 = qemu_ordered_session(&sock, &mem2);
    echo(
        &mem2,
        &mut rings2,
        "a QEMU-ordered frontend after one that vanished",
    );
}

/// `volt-net-serve --backend afxdp` (built with the `afxdp` feature) on `va` in a namespace,
/// with our frontend as the guest: frames the guest sends leave through `va` to its peer
/// `vb`, and pings from the peer to the guest's address (its MAC as a static neighbour) land
/// in the guest's receive ring. Needs root.
#[cfg(feature = "afxdp")]
#[test]
fn the_daemon_serves_af_xdp() {
    use net_macvtap::testns::{sh, VethPair};
    use std::process::Command;
    use std::time::Instant;
    use vu::post_rx;

    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED the_daemon_serves_af_xdp: needs root (namespaces, XDP)");
        return;
    }
    let VethPair { a, b } = VethPair::new("vx", "va", "vb", 1).expect("a veth pair");
    sh(&[
        "ip",
        "-n",
        b.name(),
        "addr",
        "add",
        "10.9.0.2/24",
        "dev",
        "vb",
    ]);
    let guest = "02:00:00:00:cc:01";
    sh(&[
        "ip",
        "-n",
        b.name(),
        "neigh",
        "add",
        "10.9.0.7",
        "lladdr",
        guest,
        "dev",
        "vb",
        "nud",
        "permanent",
    ]);
    let vb_rx = || VethPair::counter(&b, "vb", "rx_packets").expect("vb's rx_packets");

    let dir = TempDir::new(&format!("volt-fe-afxdp-{}", std::process::id()));
    let sock = dir.0.join("vu.sock");
    let _serve = dpdk::Child(
        Command::new("ip")
            .args(["netns", "exec", a.name()])
            .arg(env!("CARGO_BIN_EXE_volt-net-serve"))
            .args([
                "--socket",
                sock.to_str().expect("utf-8"),
                "--backend",
                "afxdp",
            ])
            .args(["--iface", "va", "--mac", guest])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("volt-net-serve"),
    );
    assert!(dpdk::wait_for_path(&sock, Duration::from_secs(10)));
    let mut net = VhostUserNet::connect(&sock, 1).expect("connecting to volt-net-serve");
    net.set_features(1 << 32).expect("SET_FEATURES");
    let mem = shared_memory();
    net.set_memory(&mem).expect("SET_MEM_TABLE");
    let mut rings = start(&mut net, &mem);
    post_rx(&mem, &mut rings, 64);

    // Guest -> peer.
    let before = vb_rx();
    assert_eq!(
        send(&mem, &mut rings, 50),
        50,
        "the daemon took every frame"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while vb_rx() < before + 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(vb_rx() >= before + 50, "the guest's frames left through va");

    // Peer -> guest: ICMP echo requests to the guest's MAC (nobody answers them).
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            b.name(),
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "10.9.0.7",
        ])
        .output();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 3 && Instant::now() < deadline {
        got.extend(rings.rx.take_used(&mem));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(got.len() >= 3, "the pings reached the guest: {}", got.len());
    for (_, len, descs) in &got {
        let bytes = net_virtio::mock::gather(&mem, descs, *len as usize);
        // 12-byte virtio-net header, then the frame for the guest's MAC.
        assert_eq!(
            &bytes[12..18],
            &[0x02, 0, 0, 0, 0xcc, 0x01],
            "for the guest"
        );
    }
}
