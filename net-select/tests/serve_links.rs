//! Host faults under a running daemon, on links in namespaces of the test's own (root; skipped
//! with the reason otherwise): a TAP deleted (created again when the daemon made it, opened
//! again when a named one reappears), a macvtap whose lower link goes, the macvtap backend
//! under `ip netns exec`, `nsenter` and in the host's namespace, an AF_XDP link flap, an XDP
//! program detached by someone else, a second daemon on a live daemon's interface, and
//! SIGTERM. After each: the log line, frames both ways in the same session (and a fresh
//! one), the daemon's fds back where they were, and no CPU burnt while it waits.

mod vu;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use net_macvtap::testns::{is_root, NetNs, VethPair};
use nix::libc;
use vm_memory::GuestMemoryMmap;
use vu::{post_rx, received, send_from, session, shared_memory, Daemon, Rings, Swap};

/// The guest's MAC (a macvtap's own address, AF_XDP's steering key).
const GUEST: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x07];
const GUEST_MAC: &str = "02:00:00:00:cc:07";

fn skip(test: &str) -> bool {
    if !is_root() {
        println!("SKIPPED {test}: needs root (namespaces, TAP, macvtap, XDP)");
        return true;
    }
    false
}

/// A namespace without IPv6 (no router or neighbour solicitations reaching the guest).
fn quiet(ns: &NetNs) {
    ns.without_ipv6().expect("IPv6 off");
}

fn ip(ns: Option<&NetNs>, args: &str) {
    let mut cmd: Vec<&str> = match ns {
        Some(n) => vec!["ip", "-n", n.name()],
        None => vec!["ip"],
    };
    cmd.extend(args.split_whitespace());
    net_macvtap::testns::sh(&cmd);
}

/// The host's end of the guest's link: where the guest's frames are counted and where frames
/// for the guest are injected.
struct Host<'a> {
    ns: Option<&'a NetNs>,
    dev: String,
}

impl Host<'_> {
    fn rx(&self) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/rx_packets", self.dev);
        let text = match self.ns {
            Some(ns) => ns
                .exec(&["cat", &path])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default(),
            None => std::fs::read_to_string(&path).unwrap_or_default(),
        };
        text.trim().parse().unwrap_or(0)
    }

    /// Sends `n` test frames for the guest (sequence numbers from `first`) out of `dev`.
    fn inject(&self, first: u64, n: u64) {
        let _in = self
            .ns
            .map(|ns| ns.enter().expect("entering the namespace"));
        let index = nix::net::if_::if_nametoindex(self.dev.as_str()).expect("the device");
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(
            raw >= 0,
            "a packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&GUEST);
        for i in 0..n {
            let f = vu::frame(first + i);
            let mut frame = f[12..].to_vec();
            frame[..6].copy_from_slice(&GUEST);
            frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xee, 0x01]);
            // SAFETY: sends our buffer to the address above, both valid for the call.
            let r = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                r,
                frame.len() as isize,
                "injecting on {}: {}",
                self.dev,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Frames both ways through the daemon: 20 from the guest counted on the host's device, 5
/// injected there arriving in the guest's receive ring.
fn both_ways(
    d: &Daemon,
    mem: &GuestMemoryMmap,
    rings: &mut Rings,
    host: &Host<'_>,
    first: u64,
    who: &str,
) {
    let before = host.rx();
    assert_eq!(
        send_from(mem, rings, first, 20),
        20,
        "{who}: the daemon took the guest's frames"
    );
    let end = Instant::now() + Duration::from_secs(5);
    while host.rx() < before + 20 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        host.rx() >= before + 20,
        "{who}: the guest's frames reached {} ({} -> {}):\n{}",
        host.dev,
        before,
        host.rx(),
        d.log()
    );
    post_rx(mem, rings, 32);
    host.inject(first, 5);
    let got = received(mem, rings, 5, Duration::from_secs(5));
    let want: Vec<u64> = (first..first + 5).collect();
    assert_eq!(
        got,
        want,
        "{who}: the host's frames reached the guest:\n{}",
        d.log()
    );
}

/// A session that is set up and carries frames both ways; returns its memory and rings.
fn served(d: &Daemon, host: &Host<'_>, who: &str) -> (GuestMemoryMmap, Rings) {
    let mem = shared_memory();
    let mut rings = session(&d.sock, &mem, Swap::default()).expect("a session");
    both_ways(d, &mem, &mut rings, host, 0, who);
    (mem, rings)
}

/// While the link is gone: the guest's frames are consumed (not stuck), and the daemon sleeps.
fn while_gone(d: &Daemon, mem: &GuestMemoryMmap, rings: &mut Rings, what: &str) {
    assert_eq!(
        send_from(mem, rings, 900, 50),
        50,
        "{what}: the guest's frames are consumed while the link is gone"
    );
    d.assert_idle(what);
}

fn fds_back(d: &Daemon, before: usize, what: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    while d.fds() > before && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.fds() <= before,
        "{what}: the daemon holds {} fds, {before} before",
        d.fds()
    );
}

/// The link goes and comes back under one session: `go` takes it away (the daemon logs
/// `gone`); when `back` is given, the guest's frames are consumed meanwhile, the daemon
/// sleeps, and `back` brings the link again (else the daemon does it itself); the daemon logs
/// each of `again` and that the link is back; the same session then carries frames both ways,
/// and no fd is left over.
fn gone_and_back(
    d: &Daemon,
    host: &Host<'_>,
    what: &str,
    go: impl FnOnce(),
    gone: &str,
    back: Option<&dyn Fn()>,
    again: &[&str],
) -> (GuestMemoryMmap, Rings) {
    let (mem, mut rings) = served(d, host, "before");
    let fds = d.fds();
    let from = d.mark();
    go();
    d.expect_log(from, gone);
    if let Some(back) = back {
        while_gone(d, &mem, &mut rings, what);
        back();
    }
    for line in again.iter().chain(&["the link is back"]) {
        d.expect_log(from, line);
    }
    both_ways(
        d,
        &mem,
        &mut rings,
        host,
        100,
        &format!("{what}: the same session"),
    );
    d.assert_idle(&format!("{what}: after the link came back"));
    fds_back(d, fds, &format!("{what}: after the link came back"));
    (mem, rings)
}

#[test]
fn a_tap_the_daemon_created_is_created_again_after_it_is_deleted() {
    if skip("a_tap_the_daemon_created_is_created_again_after_it_is_deleted") {
        return;
    }
    let ns = NetNs::new("tapgone").expect("namespace");
    quiet(&ns);
    let d = Daemon::start(
        "tapgone",
        &["ip", "netns", "exec", ns.name()],
        &["--backend", "tap", "--iface", "vt0"],
    );
    ip(Some(&ns), "link set vt0 up");
    let host = Host {
        ns: Some(&ns),
        dev: "vt0".into(),
    };
    let rings = gone_and_back(
        &d,
        &host,
        "a TAP of the daemon's deleted",
        || ip(Some(&ns), "link del vt0"),
        "vt0: the TAP was deleted",
        None,
        &["vt0: created the TAP again"],
    );
    let show = std::process::Command::new("ip")
        .args(["-n", ns.name(), "link", "show", "vt0"])
        .output()
        .expect("ip");
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains(",UP"),
        "created again, up as it was: {show}\n{}",
        d.log()
    );
    drop(rings);
    let _fresh = served(&d, &host, "a fresh session");
}

#[test]
fn a_daemon_run_as_nobody_keeps_only_cap_net_admin_and_creates_its_tap_again() {
    if skip("a_daemon_run_as_nobody_keeps_only_cap_net_admin_and_creates_its_tap_again") {
        return;
    }
    let ns = NetNs::new("tapuser").expect("namespace");
    quiet(&ns);
    let d = Daemon::start(
        "tapuser",
        &["ip", "netns", "exec", ns.name()],
        &["--backend", "tap", "--iface", "vt0", "--user", "nobody"],
    );
    ip(Some(&ns), "link set vt0 up");
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("lookup")
        .expect("nobody")
        .uid
        .as_raw()
        .to_string();
    let uid = d.status("Uid:");
    assert!(
        uid.split_whitespace().all(|u| u == nobody),
        "every uid is nobody's: {uid}"
    );
    // CAP_NET_ADMIN is bit 12, and the only one, in every set that matters.
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(d.status(set), "0000000000001000", "{set}");
    }
    assert_eq!(d.status("CapAmb:"), "0000000000000000");
    assert!(d.log().contains("keeping CAP_NET_ADMIN"), "{}", d.log());
    let host = Host {
        ns: Some(&ns),
        dev: "vt0".into(),
    };
    gone_and_back(
        &d,
        &host,
        "a TAP deleted under a daemon run as nobody",
        || ip(Some(&ns), "link del vt0"),
        "vt0: the TAP was deleted",
        None,
        &["vt0: created the TAP again"],
    );
}

#[test]
fn a_named_tap_is_opened_again_when_it_reappears() {
    if skip("a_named_tap_is_opened_again_when_it_reappears") {
        return;
    }
    let ns = NetNs::new("tapnamed").expect("namespace");
    quiet(&ns);
    let add = "tuntap add dev vt1 mode tap multi_queue vnet_hdr";
    ip(Some(&ns), add);
    ip(Some(&ns), "link set vt1 up");
    let d = Daemon::start(
        "tapnamed",
        &["ip", "netns", "exec", ns.name()],
        &["--backend", "tap", "--iface", "vt1"],
    );
    let host = Host {
        ns: Some(&ns),
        dev: "vt1".into(),
    };
    let from = d.mark();
    let rings = gone_and_back(
        &d,
        &host,
        "a named TAP deleted",
        || ip(Some(&ns), "link del vt1"),
        "vt1: the TAP was deleted",
        Some(&|| {
            assert!(
                !d.log()[from..].contains("created the TAP again"),
                "not ours to create"
            );
            ip(Some(&ns), add);
            ip(Some(&ns), "link set vt1 up");
        }),
        &["vt1: the TAP reappeared; opened it again"],
    );
    drop(rings);
    drop(d);
    ip(Some(&ns), "tuntap del dev vt1 mode tap multi_queue");
}

/// A veth `m0`/`m1` in `ns` and macvtap `mv0` (the guest's MAC) on `m1`.
fn macvtap_links(ns: Option<&NetNs>, m0: &str, m1: &str, mv: &str) {
    ip(ns, &format!("link add {m0} type veth peer name {m1}"));
    ip(
        ns,
        &format!("link add link {m1} name {mv} address {GUEST_MAC} type macvtap mode bridge"),
    );
    for dev in [m0, m1, mv] {
        ip(ns, &format!("link set {dev} up"));
    }
}

#[test]
fn a_macvtap_whose_lower_link_goes_is_opened_again_when_it_is_back() {
    if skip("a_macvtap_whose_lower_link_goes_is_opened_again_when_it_is_back") {
        return;
    }
    let ns = NetNs::new("mvgone").expect("namespace");
    quiet(&ns);
    macvtap_links(Some(&ns), "m0", "m1", "mv0");
    let d = Daemon::start(
        "mvgone",
        &["ip", "netns", "exec", ns.name()],
        &["--backend", "macvtap", "--iface", "mv0"],
    );
    let host = Host {
        ns: Some(&ns),
        dev: "m0".into(),
    };
    gone_and_back(
        &d,
        &host,
        "a macvtap's lower link deleted",
        || ip(Some(&ns), "link del m1"),
        "mv0: its lower link m1 was deleted",
        Some(&|| macvtap_links(Some(&ns), "m0", "m1", "mv0")),
        &["mv0: a macvtap of that name reappeared"],
    );
}

#[test]
fn the_macvtap_backend_starts_under_ip_netns_exec_nsenter_and_in_the_host_namespace() {
    if skip("the_macvtap_backend_starts_under_ip_netns_exec_nsenter_and_in_the_host_namespace") {
        return;
    }
    let ns = NetNs::new("mvwhere").expect("namespace");
    quiet(&ns);
    macvtap_links(Some(&ns), "m0", "m1", "mv0");
    let nsenter = format!("--net=/run/netns/{}", ns.name());
    for (how, wrap) in [
        ("ip netns exec", vec!["ip", "netns", "exec", ns.name()]),
        ("nsenter --net", vec!["nsenter", nsenter.as_str()]),
    ] {
        let d = Daemon::start(
            "mvwhere",
            &wrap,
            &["--backend", "macvtap", "--iface", "mv0"],
        );
        let host = Host {
            ns: Some(&ns),
            dev: "m0".into(),
        };
        served(&d, &host, how);
    }
    // The host's namespace: links of this test's own, deleted when it ends.
    struct Links(String);
    impl Drop for Links {
        fn drop(&mut self) {
            let _ = net_macvtap::testns::run("ip", &["link", "del", &self.0]);
        }
    }
    let tag = std::process::id() % 10000;
    let (m0, m1, mv) = (
        format!("vh{tag}a"),
        format!("vh{tag}b"),
        format!("vh{tag}m"),
    );
    let _links = Links(m0.clone());
    for dev in [&m0, &m1] {
        let _ = net_macvtap::testns::run(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{dev}.disable_ipv6=1")],
        );
    }
    macvtap_links(None, &m0, &m1, &mv);
    let d = Daemon::start("mvhost", &[], &["--backend", "macvtap", "--iface", &mv]);
    let host = Host { ns: None, dev: m0 };
    served(&d, &host, "the host's namespace");
}

/// A veth pair `va` (namespace a, the daemon's) / `vb` (namespace b), and the daemon on `va`.
fn afxdp(tag: &str) -> (VethPair, Daemon) {
    let pair = VethPair::new(tag, "va", "vb", 1).expect("a veth pair");
    quiet(&pair.a);
    quiet(&pair.b);
    let d = Daemon::start(
        tag,
        &["ip", "netns", "exec", pair.a.name()],
        &["--backend", "afxdp", "--iface", "va", "--mac", GUEST_MAC],
    );
    (pair, d)
}

fn xdp_prog(ns: &NetNs) -> String {
    net_macvtap::testns::sh(&["ip", "-n", ns.name(), "link", "show", "va"])
}

#[test]
fn af_xdp_frames_flow_again_after_a_link_flap() {
    if skip("af_xdp_frames_flow_again_after_a_link_flap") {
        return;
    }
    let (pair, d) = afxdp("xflap");
    let host = Host {
        ns: Some(&pair.b),
        dev: "vb".into(),
    };
    let (mem, mut rings) = served(&d, &host, "before");
    ip(Some(&pair.a), "link set va down");
    // Frames the guest sends while the link is down are consumed, not stuck.
    assert_eq!(send_from(&mem, &mut rings, 500, 100), 100);
    d.assert_idle("with the link down");
    ip(Some(&pair.a), "link set va up");
    std::thread::sleep(Duration::from_millis(500));
    both_ways(
        &d,
        &mem,
        &mut rings,
        &host,
        1000,
        "the same session after the flap",
    );
    assert!(!d.log().contains("fault"), "no fault:\n{}", d.log());
}

#[test]
fn an_af_xdp_interface_deleted_and_created_again_is_opened_again() {
    if skip("an_af_xdp_interface_deleted_and_created_again_is_opened_again") {
        return;
    }
    let (pair, d) = afxdp("xgone");
    let host = Host {
        ns: Some(&pair.b),
        dev: "vb".into(),
    };
    let from = d.mark();
    gone_and_back(
        &d,
        &host,
        "an AF_XDP interface deleted",
        || ip(Some(&pair.a), "link del va"),
        "va: the interface was deleted",
        Some(&|| {
            let b = pair.b.name();
            ip(
                Some(&pair.a),
                &format!("link add va type veth peer name vb netns {b}"),
            );
            ip(Some(&pair.a), "link set va up");
            ip(Some(&pair.b), "link set vb up");
        }),
        &["va: the interface reappeared; opened it again"],
    );
    assert!(
        xdp_prog(&pair.a).contains("volt_steer"),
        "{}",
        xdp_prog(&pair.a)
    );
    assert!(
        !d.log()[from..].contains("could not be attached again"),
        "no attach attempts on a link going away:\n{}",
        d.log()
    );
}

#[test]
fn an_xdp_program_detached_by_someone_else_is_attached_again() {
    if skip("an_xdp_program_detached_by_someone_else_is_attached_again") {
        return;
    }
    let (pair, d) = afxdp("xoff");
    let host = Host {
        ns: Some(&pair.b),
        dev: "vb".into(),
    };
    let (mem, mut rings) = served(&d, &host, "before");
    let from = d.mark();
    ip(Some(&pair.a), "link set dev va xdp off");
    d.expect_log(
        from,
        "had been detached (not by this daemon); attached it again",
    );
    assert!(
        xdp_prog(&pair.a).contains("volt_steer"),
        "{}",
        xdp_prog(&pair.a)
    );
    both_ways(
        &d,
        &mem,
        &mut rings,
        &host,
        100,
        "the same session, program back",
    );
}

#[test]
fn a_second_daemon_never_replaces_a_live_owners_program() {
    if skip("a_second_daemon_never_replaces_a_live_owners_program") {
        return;
    }
    let (pair, mut d) = afxdp("xtwo");
    let host = Host {
        ns: Some(&pair.b),
        dev: "vb".into(),
    };
    let before = xdp_prog(&pair.a);
    let dir = vu::TempDir::new(&format!("volt-xtwo2-{}", std::process::id()));
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", pair.a.name()])
        .arg(env!("CARGO_BIN_EXE_volt-net-serve"))
        .arg("--socket")
        .arg(dir.0.join("second.sock"))
        .args([
            "--backend",
            "afxdp",
            "--iface",
            "va",
            "--mac",
            "02:00:00:00:cc:08",
        ])
        .output()
        .expect("a second daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second daemon fails:\n{err}");
    let pid = d.pid().to_string();
    assert!(
        err.contains("is steered by volt-net process") && err.contains(&pid),
        "it names the owner ({pid}):\n{err}"
    );
    assert_eq!(
        xdp_prog(&pair.a),
        before,
        "the first daemon's program stays"
    );
    assert!(d.alive());
    served(&d, &host, "the first daemon, after the second was refused");
}

#[test]
fn sigterm_removes_the_socket_the_tap_and_the_xdp_program_and_exits_0() {
    if skip("sigterm_removes_the_socket_the_tap_and_the_xdp_program_and_exits_0") {
        return;
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let term = |d: &mut Daemon| {
        kill(Pid::from_raw(d.pid() as i32), Signal::SIGTERM).expect("SIGTERM");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = d.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < end,
                "the daemon exits on SIGTERM:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A TAP it created, with a session running.
    let ns = NetNs::new("term").expect("namespace");
    quiet(&ns);
    let mut d = Daemon::start(
        "term",
        &["ip", "netns", "exec", ns.name()],
        &["--backend", "tap", "--iface", "vt2"],
    );
    ip(Some(&ns), "link set vt2 up");
    let host = Host {
        ns: Some(&ns),
        dev: "vt2".into(),
    };
    let (_mem, _rings) = served(&d, &host, "before SIGTERM");
    let st = term(&mut d);
    assert_eq!(st.code(), Some(0), "exit 0:\n{}", d.log());
    assert!(!d.sock.exists(), "the socket is removed");
    assert!(
        ns.exec(&["ip", "link", "show", "vt2"]).is_err(),
        "the TAP it created is gone"
    );
    // AF_XDP: the program is detached.
    let (pair, mut d) = afxdp("xterm");
    assert!(xdp_prog(&pair.a).contains("volt_steer"));
    let st = term(&mut d);
    assert_eq!(st.code(), Some(0), "exit 0:\n{}", d.log());
    assert!(
        !xdp_prog(&pair.a).contains("xdp"),
        "detached: {}",
        xdp_prog(&pair.a)
    );
    assert!(!d.sock.exists(), "the socket is removed");
}
