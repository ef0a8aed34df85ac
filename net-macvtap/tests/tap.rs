//! The TAP and macvtap backends on real links, in namespaces the tests create (skipped, with
//! the reason printed, when not root). Peers are queues of our own backends on the far side of
//! a veth pair, in another namespace, with receive offloads off: what they receive is what
//! the kernel put on the wire, segmented and checksummed.

use net_api::{IoBuf, IoBufMut};
use std::time::{Duration, Instant};

use etherparse::{Ipv4Header, TcpHeader};
use net_api::{Backend, GsoType, MacAddr, OffloadSet, QueuePair, TxFrame, VirtioNetHdr};
use net_macvtap::tap::{Macvtap, Tap, TapQueue};
use net_macvtap::testns::{skip_unless_root, NetNs};
use net_virtio::test_utils::GuestFrame;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

fn ip(ns: &NetNs, args: &str) {
    let mut cmd = vec!["ip"];
    cmd.extend(args.split_whitespace());
    ns.exec(&cmd).expect("ip command");
}

/// A namespace without IPv6 (no router or neighbour solicitations on the links).
fn quiet_ns(tag: &str) -> NetNs {
    let ns = NetNs::new(tag).expect("namespace");
    ns.without_ipv6().expect("IPv6 off");
    ns
}

/// Receives frames until `want` of them matched `keep` or `timeout` passed.
fn recv_matching(
    q: &mut TapQueue,
    want: usize,
    keep: impl Fn(&[u8]) -> bool,
    timeout: Duration,
) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    let end = Instant::now() + timeout;
    while out.len() < want && Instant::now() < end {
        match q.recv(&[IoBufMut::from_mut_slice(&mut buf)]).expect("recv") {
            Some(f) => {
                if keep(&buf[..f.len]) {
                    out.push((f.hdr, buf[..f.len].to_vec()));
                }
            }
            None => {
                let mut fds = [PollFd::new(q.rx_readiness().fd, PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(50u16));
            }
        }
    }
    out
}

fn send(q: &mut TapQueue, hdr: VirtioNetHdr, frame: &[u8]) {
    let data = [IoBuf::from_slice(frame)];
    assert_eq!(q.send(&[TxFrame { hdr, data: &data }]).expect("send"), 1);
}

fn from(mac: MacAddr) -> impl Fn(&[u8]) -> bool {
    move |f: &[u8]| f.len() >= 12 && f[6..12] == mac.0
}

const A_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0a]);
const B_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0b]);

fn plain(len: usize, src: MacAddr, dst: MacAddr, tag: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(13) ^ tag).collect();
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// Two namespaces joined by a veth pair, each end in a bridge with one of our TAPs.
struct TapPair {
    a: Tap,
    b: Tap,
    // Dropped last: the namespaces go after the devices' fds.
    _nb: NetNs,
    _na: NetNs,
}

fn tap_pair(queues: u16) -> TapPair {
    let na = quiet_ns("tapa");
    let nb = quiet_ns("tapb");
    ip(
        &na,
        &format!("link add va type veth peer name vb netns {}", nb.name()),
    );
    let a = {
        let _in = na.enter().expect("enter a");
        Tap::create("tap0", queues).expect("tap0")
    };
    let b = {
        let _in = nb.enter().expect("enter b");
        Tap::create("tap1", 1).expect("tap1")
    };
    for (ns, tap, v) in [(&na, "tap0", "va"), (&nb, "tap1", "vb")] {
        ip(ns, "link add br0 type bridge stp_state 0 forward_delay 0");
        ip(ns, &format!("link set {tap} master br0 up"));
        ip(ns, &format!("link set {v} master br0 up"));
        ip(ns, "link set br0 up");
    }
    TapPair {
        a,
        b,
        _nb: nb,
        _na: na,
    }
}

#[test]
fn tap_frames_cross_byte_exact_both_ways() {
    if skip_unless_root("tap_frames_cross_byte_exact_both_ways") {
        return;
    }
    let mut p = tap_pair(1);
    let caps = p.a.capabilities();
    assert!(caps.vnet_hdr);
    assert_eq!(caps.mtu, 1500);
    assert!(caps
        .rx_offloads
        .contains(OffloadSet::CSUM | OffloadSet::TSO4));
    let mut qa = p.a.open_queue_pair(0).expect("queue a");
    let mut qb = p.b.open_queue_pair(0).expect("queue b");
    let frames: Vec<Vec<u8>> = [60usize, 61, 1000, 1514]
        .iter()
        .enumerate()
        .map(|(i, &n)| plain(n, A_MAC, B_MAC, i as u8))
        .collect();
    // The bridges learn nothing yet and flood: give the ports a moment to forward.
    let mut got = Vec::new();
    for _ in 0..20 {
        for f in &frames {
            send(&mut qa, VirtioNetHdr::PLAIN, f);
        }
        got = recv_matching(
            &mut qb,
            frames.len(),
            from(A_MAC),
            Duration::from_millis(300),
        );
        if got.len() == frames.len() {
            break;
        }
    }
    let got: Vec<Vec<u8>> = got.into_iter().map(|g| g.1).collect();
    assert_eq!(got, frames, "a -> b, byte-exact");
    let back: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| plain(f.len(), B_MAC, A_MAC, 0x77))
        .collect();
    for f in &back {
        send(&mut qb, VirtioNetHdr::PLAIN, f);
    }
    let got: Vec<Vec<u8>> = recv_matching(&mut qa, back.len(), from(B_MAC), Duration::from_secs(3))
        .into_iter()
        .map(|g| g.1)
        .collect();
    assert_eq!(got, back, "b -> a, byte-exact");
    assert_eq!(qa.stats().tx_drops.total(), 0);
}

fn check_tcp(frame: &[u8]) -> Vec<u8> {
    let (ip, rest) = Ipv4Header::from_slice(&frame[14..]).expect("IPv4");
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 checksum"
    );
    let (tcp, payload) = TcpHeader::from_slice(rest).expect("TCP");
    assert_eq!(
        tcp.checksum,
        tcp.calc_checksum_ipv4(&ip, payload).expect("checksum"),
        "TCP checksum"
    );
    payload.to_vec()
}

#[test]
fn the_kernel_segments_a_tso_frame_and_completes_a_partial_checksum() {
    if skip_unless_root("the_kernel_segments_a_tso_frame_and_completes_a_partial_checksum") {
        return;
    }
    let mut p = tap_pair(1);
    let mut qa = p.a.open_queue_pair(0).expect("queue a");
    let mut qb = p.b.open_queue_pair(0).expect("queue b");
    // b takes no offload: the kernel must hand it plain, complete frames.
    qb.set_rx_offloads(OffloadSet::NONE).expect("offloads");
    let spec = GuestFrame {
        payload_len: 30_000,
        gso: GsoType::TcpV4,
        gso_size: 1448,
        ..GuestFrame::default()
    };
    let (hdr, tso) = spec.build();
    let (chdr, csum) = GuestFrame {
        payload_len: 500,
        seed: 3,
        ..GuestFrame::default()
    }
    .build();
    assert!(chdr.needs_csum());
    let segments = spec.payload_len.div_ceil(1448);
    let mut got = Vec::new();
    for _ in 0..20 {
        send(&mut qa, hdr, &tso);
        send(&mut qa, chdr, &csum);
        got = recv_matching(
            &mut qb,
            segments + 1,
            from(A_MAC),
            Duration::from_millis(300),
        );
        if got.len() == segments + 1 {
            break;
        }
    }
    assert_eq!(got.len(), segments + 1, "every segment and the small frame");
    let mut payload = Vec::new();
    for (h, f) in &got[..segments] {
        assert_eq!(h.gso_type, 0, "plain frames toward a peer without offloads");
        assert!(f.len() <= 1514);
        payload.extend(check_tcp(f));
    }
    assert_eq!(
        payload,
        spec.payload(),
        "segments reassemble to the payload"
    );
    let (_, small) = &got[segments];
    assert_eq!(small.len(), csum.len());
    check_tcp(small);
    // With offloads on, the same super-frame arrives whole, still partial.
    qb.set_rx_offloads(OffloadSet::CSUM | OffloadSet::TSO4)
        .expect("offloads");
    send(&mut qa, hdr, &tso);
    let got = recv_matching(&mut qb, 1, from(A_MAC), Duration::from_secs(3));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, tso);
    assert_eq!(got[0].0.gso_type, GsoType::TcpV4.raw());
}

/// A macvtap in namespace `a` on veth `va`, whose peer `vb` is bridged with a TAP of ours in
/// namespace `b`.
struct MacvtapRig {
    na: NetNs,
    peer: Tap,
    _nb: NetNs,
}

fn macvtap_rig() -> MacvtapRig {
    let na = quiet_ns("mvta");
    let nb = quiet_ns("mvtb");
    ip(
        &na,
        &format!("link add va type veth peer name vb netns {}", nb.name()),
    );
    ip(&na, "link set va up");
    let peer = {
        let _in = nb.enter().expect("enter b");
        Tap::create("tap1", 1).expect("tap1")
    };
    ip(&nb, "link add br0 type bridge stp_state 0 forward_delay 0");
    ip(&nb, "link set tap1 master br0 up");
    ip(&nb, "link set vb master br0 up");
    ip(&nb, "link set br0 up");
    MacvtapRig { na, peer, _nb: nb }
}

/// `/dev/tap<ifindex>` is global while ifindexes repeat per namespace: the tests that make
/// macvtaps take turns.
static MACVTAP_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn macvtap_turn() -> std::sync::MutexGuard<'static, ()> {
    MACVTAP_TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn add_macvtap(ns: &NetNs, name: &str, mode: &str, mac: MacAddr, queues: u16) -> Macvtap {
    ip(
        ns,
        &format!(
            "link add link va name {name} numtxqueues {queues} numrxqueues {queues} address {mac} type macvtap mode {mode}"
        ),
    );
    ip(ns, &format!("link set {name} up"));
    let _in = ns.enter().expect("enter");
    Macvtap::open(name, queues).expect("open macvtap")
}

#[test]
fn macvtap_with_four_queues_carries_traffic_on_each() {
    if skip_unless_root("macvtap_with_four_queues_carries_traffic_on_each") {
        return;
    }
    let _turn = macvtap_turn();
    let mut r = macvtap_rig();
    let mut m = add_macvtap(&r.na, "mvt0", "bridge", A_MAC, 4);
    let caps = m.capabilities();
    assert_eq!(caps.mac, Some(A_MAC), "the guest's MAC is the macvtap's");
    assert_eq!(caps.max_queue_pairs, 4);
    let mut qs: Vec<TapQueue> = (0..4)
        .map(|i| m.open_queue_pair(i).expect("queue"))
        .collect();
    let mut peer = r.peer.open_queue_pair(0).expect("peer");
    // Transmit on every queue.
    let mut got = Vec::new();
    for _ in 0..20 {
        for (i, q) in qs.iter_mut().enumerate() {
            send(q, VirtioNetHdr::PLAIN, &plain(100, A_MAC, B_MAC, i as u8));
        }
        got = recv_matching(&mut peer, 4, from(A_MAC), Duration::from_millis(300));
        if got.len() == 4 {
            break;
        }
    }
    let mut tags: Vec<u8> = got
        .iter()
        .map(|g| g.1[20] ^ (20u8.wrapping_mul(13)))
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, vec![0, 1, 2, 3], "a frame from each queue");
    // Receive on every queue: the macvtap spreads flows by hash; 64 UDP flows reach all 4.
    // (Frames can be lost under load in the kernel's backlog, as on a real link: the test
    // asks for flows on every queue, not for every frame.)
    let (_, base) = GuestFrame {
        tcp: false,
        payload_len: 64,
        ..GuestFrame::default()
    }
    .build();
    let flows = |peer: &mut TapQueue, port_base: u16| {
        for flow in 0..64u16 {
            let mut f = base.clone();
            f[..6].copy_from_slice(&A_MAC.0);
            f[6..12].copy_from_slice(&B_MAC.0);
            // Vary the UDP source port; a zero UDP checksum means "none" over IPv4.
            f[34..36].copy_from_slice(&(port_base + flow).to_be_bytes());
            f[40..42].copy_from_slice(&[0, 0]);
            send(peer, VirtioNetHdr::PLAIN, &f);
        }
    };
    let collect = |qs: &mut [TapQueue]| {
        let mut per_queue = [0usize; 4];
        let end = Instant::now() + Duration::from_millis(600);
        while Instant::now() < end {
            for (i, q) in qs.iter_mut().enumerate() {
                per_queue[i] += recv_matching(q, 64, from(B_MAC), Duration::from_millis(10)).len();
            }
        }
        per_queue
    };
    flows(&mut peer, 10_000);
    let per_queue = collect(&mut qs);
    assert!(per_queue.iter().sum::<usize>() >= 48, "{per_queue:?}");
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "every queue received: {per_queue:?}"
    );
    // A detached queue receives nothing: its flows go to the others.
    qs[3].set_attached(false).expect("detach");
    flows(&mut peer, 20_000);
    let per_queue = collect(&mut qs);
    assert_eq!(per_queue[3], 0, "{per_queue:?}");
    assert!(per_queue.iter().sum::<usize>() >= 48, "{per_queue:?}");
    qs[3].set_attached(true).expect("attach");
    drop(qs);
    drop(m);
    drop(r.peer);
    drop(r.na);
}

const C_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0c]);

/// Whether a frame from macvtap `x` reaches macvtap `y` on the same lower link.
fn reaches(x: &mut Macvtap, y: &mut Macvtap, xm: MacAddr, ym: MacAddr) -> bool {
    let mut qx = x.open_queue_pair(0).expect("queue x");
    let mut qy = y.open_queue_pair(0).expect("queue y");
    for i in 0..5 {
        send(&mut qx, VirtioNetHdr::PLAIN, &plain(100, xm, ym, i));
        if !recv_matching(&mut qy, 1, from(xm), Duration::from_millis(200)).is_empty() {
            return true;
        }
    }
    false
}

#[test]
fn macvtap_modes_behave_as_documented() {
    if skip_unless_root("macvtap_modes_behave_as_documented") {
        return;
    }
    let _turn = macvtap_turn();
    // bridge: two macvtaps on one lower link reach each other inside the host.
    let r = macvtap_rig();
    let mut x = add_macvtap(&r.na, "mvx", "bridge", A_MAC, 1);
    let mut y = add_macvtap(&r.na, "mvy", "bridge", C_MAC, 1);
    assert!(reaches(&mut x, &mut y, A_MAC, C_MAC), "bridge mode");
    drop((x, y, r));
    // private: they do not, whatever the switch outside does.
    let r = macvtap_rig();
    let mut x = add_macvtap(&r.na, "mvx", "private", A_MAC, 1);
    let mut y = add_macvtap(&r.na, "mvy", "private", C_MAC, 1);
    assert!(!reaches(&mut x, &mut y, A_MAC, C_MAC), "private mode");
    drop((x, y, r));
    // vepa: frames go out to the adjacent switch; a veth peer (no hairpin) does not send
    // them back, so they do not meet.
    let r = macvtap_rig();
    let mut x = add_macvtap(&r.na, "mvx", "vepa", A_MAC, 1);
    let mut y = add_macvtap(&r.na, "mvy", "vepa", C_MAC, 1);
    assert!(
        !reaches(&mut x, &mut y, A_MAC, C_MAC),
        "vepa without a hairpin switch"
    );
    // ... but they do reach the outside.
    let mut peer = r.peer;
    let mut qx = x.open_queue_pair(0).expect("queue");
    let mut qp = peer.open_queue_pair(0).expect("peer");
    let mut ok = false;
    for i in 0..10 {
        send(&mut qx, VirtioNetHdr::PLAIN, &plain(100, A_MAC, B_MAC, i));
        if !recv_matching(&mut qp, 1, from(A_MAC), Duration::from_millis(200)).is_empty() {
            ok = true;
            break;
        }
    }
    assert!(ok, "vepa reaches the wire");
    drop((qx, qp, x, y, peer));
    drop(r.na);
    // passthru: one macvtap owns the lower link; a second is refused.
    let r = macvtap_rig();
    let _x = add_macvtap(&r.na, "mvx", "passthru", A_MAC, 1);
    let second = r.na.exec(&[
        "ip", "link", "add", "link", "va", "name", "mvy", "type", "macvtap", "mode", "passthru",
    ]);
    assert!(second.is_err(), "a second passthru macvtap on one link");
}

#[test]
fn the_host_cannot_reach_a_guest_through_the_macvtaps_own_lower_link() {
    if skip_unless_root("the_host_cannot_reach_a_guest_through_the_macvtaps_own_lower_link") {
        return;
    }
    let _turn = macvtap_turn();
    // The host's own address sits on the lower link `va`; the guest behind the macvtap has
    // 10.7.0.2. The host's ARP request leaves through `va` to the wire: macvlan only sees
    // what arrives *from* the wire, so the guest never hears it. (The zone gives host and
    // guests a bridge to meet on instead: see the zone tests.)
    let r = macvtap_rig();
    let mut m = add_macvtap(&r.na, "mvt0", "bridge", A_MAC, 1);
    let mut q = m.open_queue_pair(0).expect("queue");
    ip(&r.na, "addr add 10.7.0.1/24 dev va");
    // Anything toward 10.7.0.2 makes the host ARP for it.
    let poke = || {
        let _ = r.na.exec(&["bash", "-c", "echo x > /dev/udp/10.7.0.2/9"]);
    };
    poke();
    let arp_for_guest =
        |f: &[u8]| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[38..42] == [10, 7, 0, 2];
    let heard = recv_matching(&mut q, 1, arp_for_guest, Duration::from_millis(500));
    assert!(
        heard.is_empty(),
        "the guest heard the host's ARP: {heard:?}"
    );
    // Whereas the peer on the wire does see it.
    let mut peer = r.peer;
    let mut qp = peer.open_queue_pair(0).expect("peer");
    let mut seen = false;
    for _ in 0..5 {
        poke();
        if !recv_matching(&mut qp, 1, arp_for_guest, Duration::from_millis(500)).is_empty() {
            seen = true;
            break;
        }
    }
    assert!(seen, "the wire hears the host's ARP");
}

#[test]
fn handed_over_fds_make_a_backend_and_bad_ones_are_refused() {
    if skip_unless_root("handed_over_fds_make_a_backend_and_bad_ones_are_refused") {
        return;
    }
    let ns = quiet_ns("fds");
    let _in = ns.enter().expect("enter");
    let tap = Tap::create("tap9", 2).expect("tap");
    // What a helper would pass: fds of the device (here: dups of ours).
    let fds = tap.try_clone_fds().expect("dup");
    let mut again = Tap::from_fds(fds).expect("from fds");
    assert_eq!(again.ifname(), "tap9");
    assert_eq!(again.capabilities().max_queue_pairs, 2);
    let q1 = again.open_queue_pair(1).expect("queue 1");
    assert!(matches!(
        again.open_queue_pair(1),
        Err(net_api::Error::QueueInUse { .. })
    ));
    drop(q1);
    assert!(again.open_queue_pair(1).is_ok(), "free again once dropped");
    assert!(matches!(
        again.open_queue_pair(2),
        Err(net_api::Error::NoSuchQueue { .. })
    ));
    let not_tap = std::fs::File::open("/dev/null").expect("null");
    let err = Tap::from_fds(vec![not_tap.into()]).expect_err("not a tun fd");
    assert!(err.to_string().contains("TUNGETIFF"), "{err}");
    let err = Macvtap::open("lo", 1).expect_err("lo is no macvtap");
    assert!(err.to_string().contains("macvtap"), "{err}");
    let err = Tap::create("bad/name", 1).expect_err("bad name");
    assert!(err.to_string().contains("not an interface name"), "{err}");
}

#[test]
fn a_deleted_tap_is_reported_gone_and_a_detached_queue_is_not() {
    if skip_unless_root("a_deleted_tap_is_reported_gone_and_a_detached_queue_is_not") {
        return;
    }
    let ns = quiet_ns("gone");
    let _in = ns.enter().expect("enter");
    let mut tap = Tap::create("tapg", 2).expect("tap");
    let mut q0 = tap.open_queue_pair(0).expect("queue 0");
    let mut q1 = tap.open_queue_pair(1).expect("queue 1");
    let mut buf = vec![0u8; 2048];
    let bufs = [IoBufMut::from_mut_slice(&mut buf)];
    // Detached by us: nothing to read, and no error.
    q1.set_attached(false).expect("detach");
    assert!(q1.recv(&bufs).expect("a detached queue").is_none());
    ip(&ns, "link del tapg");
    // The fd polls EPOLLERR now; both directions say the device is gone.
    let mut fds = [PollFd::new(q0.rx_readiness().fd, PollFlags::POLLIN)];
    assert_eq!(poll(&mut fds, PollTimeout::ZERO).expect("poll"), 1);
    let err = q0.recv(&bufs).expect_err("the device is gone");
    assert!(matches!(err, net_api::Error::Disconnected { .. }), "{err}");
    assert!(err.to_string().contains("tapg"), "{err}");
    let frame = plain(60, A_MAC, B_MAC, 1);
    let data = [IoBuf::from_slice(&frame)];
    let err = q0
        .send(&[TxFrame {
            hdr: VirtioNetHdr::default(),
            data: &data,
        }])
        .expect_err("the device is gone");
    assert!(matches!(err, net_api::Error::Disconnected { .. }), "{err}");
}

#[test]
fn a_persistent_tap_outlives_its_creator_and_belongs_to_its_user() {
    if skip_unless_root("a_persistent_tap_outlives_its_creator_and_belongs_to_its_user") {
        return;
    }
    let ns = quiet_ns("persist");
    {
        let _in = ns.enter().expect("enter");
        net_macvtap::tap::create_persistent_tap("ptap0", 65534).expect("persistent tap");
    }
    // No fd of ours is open now: the device is still there, owned by uid 65534.
    let show = ns
        .exec(&["ip", "-d", "link", "show", "ptap0"])
        .expect("ip link show");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("persist on"), "{text}");
    assert!(
        text.contains("user nobody") || text.contains("user 65534"),
        "{text}"
    );
    assert!(
        text.contains("vnet_hdr on") && text.contains("multi_queue"),
        "{text}"
    );
    {
        let _in = ns.enter().expect("enter");
        // The owner (here: root acting for it) opens it as a backend.
        let mut tap = Tap::create("ptap0", 2).expect("open the persistent tap");
        assert!(tap.open_queue_pair(1).is_ok());
        drop(tap);
        net_macvtap::tap::delete_persistent_tap("ptap0").expect("delete");
    }
    assert!(ns.exec(&["ip", "link", "show", "ptap0"]).is_err(), "gone");
}

#[test]
fn a_virtio_net_device_runs_on_a_tap() {
    if skip_unless_root("a_virtio_net_device_runs_on_a_tap") {
        return;
    }
    use net_virtio::features::bit;
    use net_virtio::mock::MockDriver;
    use net_virtio::{DeviceConfig, NetDevice};
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_net as vn;
    // The guest's device on tap0 (its queues detached until DRIVER_OK, then programmed with
    // the guest's offloads), the peer a plain TAP on the far side.
    let p = tap_pair(2);
    let TapPair { a, mut b, _nb, _na } = p;
    let irq = |_: net_virtio::IrqCause| Ok(());
    let mut dev = NetDevice::new(a, DeviceConfig::default(), irq).expect("device on a tap");
    let mut drv = MockDriver::new(64 << 20, dev.num_queues(), 256);
    let features = bit(VIRTIO_F_VERSION_1)
        | bit(vn::VIRTIO_NET_F_CSUM)
        | bit(vn::VIRTIO_NET_F_GUEST_CSUM)
        | bit(vn::VIRTIO_NET_F_GUEST_TSO4)
        | bit(vn::VIRTIO_NET_F_MRG_RXBUF);
    drv.start(&mut dev, features).expect("DRIVER_OK on a tap");
    let mut qb = b.open_queue_pair(0).expect("peer");
    let f = plain(200, A_MAC, B_MAC, 5);
    let mut got = Vec::new();
    for _ in 0..20 {
        drv.send(1, &VirtioNetHdr::PLAIN, &f, &[12]).expect("chain");
        drv.force_kick(&mut dev, 1).expect("kick");
        got = recv_matching(&mut qb, 1, from(A_MAC), Duration::from_millis(200));
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.first().map(|g| &g.1), Some(&f), "guest -> tap -> peer");
}
