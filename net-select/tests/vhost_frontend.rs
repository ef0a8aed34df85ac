//! Our frontend (`net_vhostuser::frontend`) against DPDK's `net_vhost` backend in
//! `dpdk-testpmd`: frames we put in the transmit ring arrive in testpmd (`rxonly` counts
//! them), and after testpmd is restarted our frontend reconnects and frames arrive again.
//! Skipped, with the reason printed, when not root or without `dpdk-testpmd`.

mod dpdk;

use std::path::Path;
use std::time::{Duration, Instant};

use dpdk::Testpmd;
use net_vhostuser::frontend::{VhostUserNet, Vring};
use net_virtio::mock::{Desc, MockQueue};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 16 << 20;
const RING: u16 = 256;
/// A 12-byte virtio-net header (VERSION_1) and a 60-byte frame, one descriptor each.
const FRAME: usize = 72;
const BUFFERS: u64 = 0x10_0000;

/// A directory under the temp dir, removed when dropped (also when a test fails).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Guest memory in a memfd, as a VMM shares it.
fn shared_memory() -> GuestMemoryMmap {
    let fd = nix::sys::memfd::memfd_create(c"volt-guest", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd");
    let file = std::fs::File::from(fd);
    file.set_len(MEM as u64).expect("memfd size");
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEM,
        Some(FileOffset::new(file, 0)),
    )])
    .expect("guest memory")
}

struct Rings {
    rx: MockQueue,
    tx: MockQueue,
    rx_kick: EventFd,
    tx_kick: EventFd,
}

/// Sets both rings up (receive at 0x1_0000, transmit at 0x2_0000) and hands them over.
fn start(net: &mut VhostUserNet, mem: &GuestMemoryMmap) -> Rings {
    let rx = MockQueue::new(mem, GuestAddress(0x1_0000), RING);
    let tx = MockQueue::new(mem, GuestAddress(0x2_0000), RING);
    let eventfd = || EventFd::new(libc_nonblock()).expect("eventfd");
    let (rx_kick, tx_kick) = (eventfd(), eventfd());
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
            call: eventfd(),
        };
        net.start_vring(index, vring, 0).expect("starting a ring");
    }
    Rings {
        rx,
        tx,
        rx_kick,
        tx_kick,
    }
}

fn libc_nonblock() -> i32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits()
}

/// Sends `n` frames through the transmit ring, reusing descriptors as the backend completes
/// them; returns how many it completed (within 20 s).
fn send(mem: &GuestMemoryMmap, rings: &mut Rings, n: u64) -> u64 {
    let mut frame = [0u8; FRAME];
    frame[12..18].copy_from_slice(&[0xff; 6]);
    frame[18..24].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[24..26].copy_from_slice(&[0x88, 0xb5]);
    let (mut sent, mut done) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    while done < n && Instant::now() < deadline {
        while sent < n && rings.tx.free_descriptors() > 0 {
            let addr = BUFFERS + (sent % u64::from(RING)) * 2048;
            frame[26..34].copy_from_slice(&sent.to_be_bytes());
            mem.write_slice(&frame, GuestAddress(addr)).expect("frame");
            rings
                .tx
                .add_chain(
                    mem,
                    &[Desc {
                        addr,
                        len: FRAME as u32,
                        write: false,
                    }],
                )
                .expect("a free descriptor");
            sent += 1;
        }
        let _ = rings.tx_kick.write(1);
        let used = rings.tx.take_used(mem).len() as u64;
        done += used;
        if used == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    done
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

/// Posts `n` 2048-byte receive buffers and kicks.
fn post_rx(mem: &GuestMemoryMmap, rings: &mut Rings, n: u64) {
    for i in 0..n {
        rings
            .rx
            .add_chain(
                mem,
                &[Desc {
                    addr: BUFFERS + 0x80_0000 + i * 2048,
                    len: 2048,
                    write: true,
                }],
            )
            .expect("a receive buffer");
    }
    let _ = rings.rx_kick.write(1);
}

/// Posts receive buffers, sends 100 frames, and checks that the echo fills the buffers.
fn echo(mem: &GuestMemoryMmap, rings: &mut Rings, who: &str) {
    post_rx(mem, rings, u64::from(RING));
    assert_eq!(
        send(mem, rings, 100),
        100,
        "{who}: the server took every frame"
    );
    let mut back = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.len() < 100 && Instant::now() < deadline {
        back.extend(rings.rx.take_used(mem));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(back.len(), 100, "{who}: every frame came back");
    assert!(
        back.iter().all(|(_, len, _)| *len as usize == FRAME),
        "{who}: header and frame, whole: {:?}",
        &back[..3]
    );
}

/// One vhost-user request written by hand, with its fds (QEMU's order cannot be produced
/// with the vhost crate's frontend, which refuses an early ring enable itself).
fn raw(s: &std::os::unix::net::UnixStream, req: u32, body: &[u8], fds: &[i32]) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let mut hdr = req.to_le_bytes().to_vec();
    hdr.extend_from_slice(&1u32.to_le_bytes());
    hdr.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let iov = [IoSlice::new(&hdr), IoSlice::new(body)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).expect("sendmsg");
    assert_eq!(n, hdr.len() + body.len());
}

/// A request with a `u64` answer.
fn raw_get(s: &std::os::unix::net::UnixStream, req: u32) -> u64 {
    use std::io::Read;
    raw(s, req, &[], &[]);
    let mut reply = [0u8; 20];
    (&*s).read_exact(&mut reply).expect("a reply");
    u64::from_le_bytes(reply[12..20].try_into().expect("8 bytes"))
}

fn u64s(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn ring_state(index: u32, num: u32) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&num.to_le_bytes());
    b
}

/// A session set up as QEMU 7.2 sets one up when it (re)connects: calls and ring enables
/// before SET_FEATURES, then the memory table and the rings, and no enable after the kicks.
fn qemu_ordered_session(sock: &Path, mem: &GuestMemoryMmap) -> Rings {
    use std::os::fd::AsRawFd;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    let s = std::os::unix::net::UnixStream::connect(sock).expect("connecting");
    raw(&s, 3, &[], &[]); // SET_OWNER
    let offered = raw_get(&s, 1); // GET_FEATURES
    let proto = raw_get(&s, 15); // GET_PROTOCOL_FEATURES
    raw(&s, 16, &u64s(&[proto & 1]), &[]); // SET_PROTOCOL_FEATURES: MQ, no REPLY_ACK
    let eventfd = || EventFd::new(libc_nonblock()).expect("eventfd");
    let calls = [eventfd(), eventfd()];
    for (i, c) in calls.iter().enumerate() {
        raw(&s, 13, &u64s(&[i as u64]), &[c.as_raw_fd()]); // SET_VRING_CALL
        raw(&s, 18, &ring_state(i as u32, 1), &[]); // SET_VRING_ENABLE, early
    }
    raw(&s, 2, &u64s(&[(1 << 32) | (offered & (1 << 30))]), &[]); // SET_FEATURES
    let region = mem.iter().next().expect("a region");
    let file = region.file_offset().expect("file-backed");
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend(u64s(&[
        0,
        region.len(),
        region.as_ptr() as u64,
        file.start(),
    ]));
    raw(&s, 5, &table, &[file.file().as_raw_fd()]); // SET_MEM_TABLE
    let rx = MockQueue::new(mem, GuestAddress(0x1_0000), RING);
    let tx = MockQueue::new(mem, GuestAddress(0x2_0000), RING);
    let (rx_kick, tx_kick) = (eventfd(), eventfd());
    for (i, q, kick) in [(0u32, &rx, &rx_kick), (1, &tx, &tx_kick)] {
        let host = |a: GuestAddress| mem.get_host_address(a).expect("in memory") as u64;
        raw(&s, 8, &ring_state(i, u32::from(q.size)), &[]); // SET_VRING_NUM
        let mut addr = ring_state(i, 0);
        addr.extend(u64s(&[host(q.desc), host(q.used), host(q.avail), 0]));
        raw(&s, 9, &addr, &[]); // SET_VRING_ADDR
        raw(&s, 10, &ring_state(i, 0), &[]); // SET_VRING_BASE
        raw(&s, 12, &u64s(&[u64::from(i)]), &[kick.as_raw_fd()]); // SET_VRING_KICK
        raw(
            &s,
            13,
            &u64s(&[u64::from(i)]),
            &[calls[i as usize].as_raw_fd()],
        );
    }
    // A round trip: everything above is handled.
    raw_get(&s, 1);
    // The connection must outlive the rings: it lives as long as the test process.
    std::mem::forget(s);
    std::mem::forget(calls);
    Rings {
        rx,
        tx,
        rx_kick,
        tx_kick,
    }
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
