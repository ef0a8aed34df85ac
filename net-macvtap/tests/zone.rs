//! Zones against the real kernel and the real `nft`, inside namespaces of their own.
//!
//! The layout: namespace H is the host side (the zone lives there), U is "the internet"
//! (192.0.2.0/24, reached from H by the veth `up0` - `wan0`, with no route back to the zone's
//! subnet), C is a container. Needs root; skipped with a printed reason otherwise. Every
//! namespace is deleted when its `NetNs` drops (also when a test fails).

use net_api::{IoBuf, IoBufMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use net_api::{Backend, MacAddr, QueuePair, TxFrame, VirtioNetHdr};
use net_macvtap::netlink::Netlink;
use net_macvtap::tap::Macvtap;
use net_macvtap::testns::{skip_unless_root, NetNs};
use net_macvtap::zone::{Zone, ZoneConfig};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CONTAINER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const VM: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 50);
const H_UPLINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const U_WAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn cfg(name: &str, uplink: Option<&str>) -> ZoneConfig {
    ZoneConfig {
        name: name.to_string(),
        bridge: "zone0".to_string(),
        address: GATEWAY,
        prefix: 24,
        uplink: uplink.map(str::to_string),
    }
}

/// H and U joined by `up0` (H, 192.0.2.1/24) - `wan0` (U, 192.0.2.2/24).
fn host_and_internet(tag: &str) -> (NetNs, NetNs) {
    let h = NetNs::new(&format!("{tag}-h")).expect("namespace H");
    let u = NetNs::new(&format!("{tag}-u")).expect("namespace U");
    let mut nh = Netlink::open_in(h.file().as_fd()).expect("netlink in H");
    nh.create_veth("up0", "wan0").expect("uplink veth");
    nh.move_to_netns("wan0", u.file().as_fd())
        .expect("wan0 to U");
    nh.add_address("up0", H_UPLINK.into(), 24)
        .expect("H's uplink address");
    nh.set_up("up0", true).expect("up0 up");
    let mut nu = Netlink::open_in(u.file().as_fd()).expect("netlink in U");
    nu.add_address("wan0", U_WAN.into(), 24)
        .expect("U's address");
    nu.set_up("wan0", true).expect("wan0 up");
    (h, u)
}

fn text(ns: &NetNs, cmd: &[&str]) -> String {
    let out = ns.exec(cmd).expect("command in the namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_forward(ns: &NetNs) -> String {
    text(ns, &["cat", "/proc/sys/net/ipv4/ip_forward"])
        .trim()
        .to_string()
}

fn tables(ns: &NetNs) -> String {
    text(ns, &["nft", "list", "tables"])
}

/// A UDP socket bound in `ns` (the thread visits it and comes back).
fn udp_in(ns: &NetNs, addr: &str) -> UdpSocket {
    let _visit = ns.enter().expect("entering the namespace");
    let socket = UdpSocket::bind(addr).expect("binding a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("a read timeout");
    socket
}

#[test]
fn a_container_reaches_the_internet_only_through_masquerade() {
    if skip_unless_root("a_container_reaches_the_internet_only_through_masquerade") {
        return;
    }
    let (h, u) = host_and_internet("nat");
    let c = NetNs::new("nat-c").expect("namespace C");
    let _in = h.enter().expect("entering H");
    assert_eq!(ip_forward(&h), "0", "a new namespace does not forward");

    let mut zone = Zone::up(cfg("nat", Some("up0"))).expect("zone up");
    assert!(zone.owns_bridge() && zone.owns_table());
    assert_eq!(ip_forward(&h), "1");
    let ruleset = text(&h, &["nft", "list", "table", "inet", "volt_zone_nat"]);
    assert!(
        ruleset.contains(r#"ip saddr 10.99.0.0/24 oifname "up0" masquerade"#),
        "{ruleset}"
    );
    zone.attach_container("vc0", c.file().as_fd(), "eth0", CONTAINER)
        .expect("attach the container");

    let mut nl = Netlink::open().expect("netlink in H");
    let bridge = nl.index("zone0").expect("the bridge");
    let port = nl.link("vc0").expect("lookup").expect("the host end");
    assert_eq!(port.master, Some(bridge), "the host end is a bridge port");
    assert!(port.up);
    let addrs = text(&c, &["ip", "-j", "addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains(r#""local":"10.99.0.2","prefixlen":24"#),
        "{addrs}"
    );
    let routes = text(&c, &["ip", "-j", "route", "show", "default"]);
    assert!(
        routes.contains(r#""gateway":"10.99.0.1","dev":"eth0""#),
        "{routes}"
    );
    assert!(
        u.exec(&["ip", "route", "get", "10.99.0.2"]).is_err(),
        "U has no route to the zone: a reply can come back only through NAT"
    );

    // A datagram from C arrives in U from H's uplink address, and the answer finds its way
    // back to C.
    let server = udp_in(&u, "192.0.2.2:7777");
    let client = udp_in(&c, "0.0.0.0:0");
    let mut buf = [0u8; 64];
    let mut seen = None;
    for _ in 0..3 {
        client
            .send_to(b"hello", "192.0.2.2:7777")
            .expect("sending from C");
        if let Ok((n, from)) = server.recv_from(&mut buf) {
            seen = Some((buf[..n].to_vec(), from));
            break;
        }
    }
    let (data, from) = seen.expect("U receives C's datagram");
    assert_eq!(data, b"hello");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(H_UPLINK),
        "masqueraded to H's uplink address"
    );
    server.send_to(b"welcome", from).expect("U answers");
    let (n, answer_from) = client.recv_from(&mut buf).expect("C receives the answer");
    assert_eq!(&buf[..n], b"welcome");
    assert_eq!(answer_from, SocketAddr::from((U_WAN, 7777)));

    // The control: without the zone's table, a new flow from C reaches U with its own
    // address, and U has no way to answer it.
    h.exec(&["nft", "delete", "table", "inet", "volt_zone_nat"])
        .expect("deleting the zone's table behind its back");
    let unmasked = udp_in(&c, "0.0.0.0:0");
    unmasked
        .send_to(b"bare", "192.0.2.2:7777")
        .expect("sending from C");
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("U receives the bare datagram");
    assert_eq!(&buf[..n], b"bare");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(CONTAINER),
        "not masqueraded"
    );
    assert!(
        server.send_to(b"lost", from).is_err(),
        "U cannot answer the zone's address"
    );
    zone.down().expect("zone down");
    let mut zone = Zone::up(cfg("nat", Some("up0"))).expect("zone up again");
    zone.attach_container("vc0", c.file().as_fd(), "eth0", CONTAINER)
        .expect("attach the container again");

    let ping = ["/usr/bin/ping", "/bin/ping"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    match ping {
        Some(ping) => {
            c.exec(&[ping, "-c1", "-W2", "192.0.2.2"])
                .expect("ping from C to U through NAT");
        }
        None => println!("ping is not installed: the UDP exchange above stands in for it"),
    }

    zone.down().expect("zone down");
    assert_eq!(nl.link("zone0").expect("lookup"), None, "bridge removed");
    assert_eq!(nl.link("vc0").expect("lookup"), None, "veth removed");
    assert!(
        nl.link("up0").expect("lookup").is_some(),
        "the uplink stays"
    );
    assert!(
        c.exec(&["ip", "link", "show", "eth0"]).is_err(),
        "the container's end went with the veth"
    );
    assert!(!tables(&h).contains("volt_zone_nat"), "{}", tables(&h));
    assert_eq!(ip_forward(&h), "0", "forwarding restored");
}

#[test]
fn up_twice_takes_over_and_down_twice_is_harmless() {
    if skip_unless_root("up_twice_takes_over_and_down_twice_is_harmless") {
        return;
    }
    let h = NetNs::new("twice-h").expect("namespace H");
    let _in = h.enter().expect("entering H");
    let mut nl = Netlink::open().expect("netlink in H");

    let first = Zone::up(cfg("twice", None)).expect("first up");
    let second = Zone::up(cfg("twice", None)).expect("second up");
    assert!(first.owns_bridge() && first.owns_table());
    assert!(!second.owns_bridge() && !second.owns_table(), "taken over");
    let addrs = text(&h, &["ip", "-j", "addr", "show", "dev", "zone0"]);
    assert_eq!(
        addrs.matches(r#""local":"10.99.0.1""#).count(),
        1,
        "{addrs}"
    );
    let rules = text(&h, &["nft", "list", "table", "inet", "volt_zone_twice"]);
    assert_eq!(rules.matches("masquerade").count(), 1, "{rules}");
    assert!(
        rules.contains(r#"ip saddr 10.99.0.0/24 oifname != "zone0" masquerade"#),
        "{rules}"
    );
    assert_eq!(tables(&h).matches("volt_zone_twice").count(), 1);

    second.down().expect("the second down removes nothing");
    assert!(nl.link("zone0").expect("lookup").is_some());
    assert!(tables(&h).contains("volt_zone_twice"));
    assert_eq!(ip_forward(&h), "1");
    first.down().expect("the first down removes everything");
    assert_eq!(nl.link("zone0").expect("lookup"), None);
    assert!(!tables(&h).contains("volt_zone_twice"));
    assert_eq!(ip_forward(&h), "0");

    // What was removed behind the zone's back is skipped.
    let zone = Zone::up(cfg("twice", None)).expect("up again");
    assert!(nl.delete("zone0").expect("delete the bridge"));
    h.exec(&["nft", "delete", "table", "inet", "volt_zone_twice"])
        .expect("delete the table");
    zone.down().expect("down with nothing left to remove");
    assert_eq!(ip_forward(&h), "0");
}

#[test]
fn what_existed_before_up_stays_after_down() {
    if skip_unless_root("what_existed_before_up_stays_after_down") {
        return;
    }
    let h = NetNs::new("before-h").expect("namespace H");
    let _in = h.enter().expect("entering H");
    let mut nl = Netlink::open().expect("netlink in H");
    nl.create_bridge("zone0")
        .expect("a bridge of the operator's");
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("forwarding on");

    let zone = Zone::up(cfg("before", None)).expect("up");
    assert!(!zone.owns_bridge() && zone.owns_table());
    zone.down().expect("down");
    let bridge = nl.link("zone0").expect("lookup").expect("the bridge stays");
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    let addrs = text(&h, &["ip", "-j", "addr", "show", "dev", "zone0"]);
    assert!(
        !addrs.contains("10.99.0.1"),
        "the address up added is gone: {addrs}"
    );
    assert!(!tables(&h).contains("volt_zone_before"));
    assert_eq!(ip_forward(&h), "1", "it was on before up");
}

#[test]
fn failures_name_the_link_and_leave_nothing_behind() {
    if skip_unless_root("failures_name_the_link_and_leave_nothing_behind") {
        return;
    }
    let h = NetNs::new("fail-h").expect("namespace H");
    let c = NetNs::new("fail-c").expect("namespace C");
    let _in = h.enter().expect("entering H");
    let mut nl = Netlink::open().expect("netlink in H");

    let e = Zone::up(cfg("fail", Some("nope0"))).expect_err("no uplink");
    assert_eq!(
        e.to_string(),
        "bringing up zone 'fail' with uplink 'nope0' failed: no link named 'nope0' in this \
         network namespace"
    );
    assert_eq!(
        nl.link("zone0").expect("lookup"),
        None,
        "the bridge was removed"
    );
    assert!(!tables(&h).contains("volt_zone_fail"));
    assert_eq!(ip_forward(&h), "0");

    nl.create_veth("zone0", "other")
        .expect("a veth called zone0");
    let e = Zone::up(cfg("fail", None)).expect_err("not a bridge");
    assert!(
        e.to_string().contains("'zone0' exists and is a veth"),
        "{e}"
    );
    assert!(nl.delete("zone0").expect("cleanup"));

    let mut zone = Zone::up(cfg("fail", None)).expect("up");
    let e = zone
        .attach_container("vc0", c.file().as_fd(), "eth0", Ipv4Addr::new(10, 98, 0, 2))
        .expect_err("outside the subnet");
    assert!(e.to_string().contains("10.98.0.2"), "{e}");
    // A name taken inside the container: the veth is removed again.
    let mut inside = Netlink::open_in(c.file().as_fd()).expect("netlink in C");
    inside.create_bridge("eth0").expect("eth0 exists in C");
    let e = zone
        .attach_container("vc0", c.file().as_fd(), "eth0", CONTAINER)
        .expect_err("eth0 is taken in C");
    assert!(e.to_string().contains("as 'eth0' failed"), "{e}");
    assert_eq!(
        nl.link("vc0").expect("lookup"),
        None,
        "the veth was removed"
    );
    let leftovers: Vec<String> = nl
        .links()
        .expect("dump")
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("vz"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let e = zone
        .attach_vm("vm0", MacAddr([0x52, 0x54, 0, 0, 0, 1]), 0)
        .expect_err("no queues");
    assert!(e.to_string().contains("queue count"), "{e}");
    assert_eq!(zone.vms().count(), 0);
    zone.down().expect("down");
    let names: Vec<String> = nl
        .links()
        .expect("dump")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["lo"]);
}

// --- A VM on the zone, frames built by hand ---

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

fn arp(op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha.0);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha.0);
    a.extend_from_slice(&tpa.octets());
    a
}

fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"volt-net zone test");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// The VM's side of the wire: a macvtap queue that answers ARP for the VM's address.
struct Guest<Q: QueuePair> {
    queue: Q,
    mac: MacAddr,
}

impl<Q: QueuePair> Guest<Q> {
    fn send(&mut self, frame: &[u8]) {
        let data = [IoBuf::from_slice(frame)];
        let tx = [TxFrame {
            hdr: VirtioNetHdr::default(),
            data: &data,
        }];
        assert_eq!(
            self.queue.send(&tx).expect("send"),
            1,
            "the macvtap took the frame"
        );
    }

    /// Receives for up to `wait` until `want` accepts a frame (answering ARP requests for the
    /// VM meanwhile).
    fn wait_for<T>(
        &mut self,
        wait: Duration,
        mut want: impl FnMut(&[u8]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            let got = {
                let bufs = [IoBufMut::from_mut_slice(&mut buf)];
                self.queue.recv(&bufs).expect("recv")
            };
            let Some(rx) = got else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let f = buf[..rx.len].to_vec();
            if f.len() >= 42
                && f[12..14] == [0x08, 0x06]
                && f[20..22] == [0, 1]
                && f[38..42] == VM.octets()
            {
                let asker = MacAddr(f[22..28].try_into().expect("6 bytes"));
                let asker_ip = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
                let reply = arp(2, self.mac, VM, asker, asker_ip);
                self.send(&ethernet(asker, self.mac, 0x0806, &reply));
                continue;
            }
            if let Some(t) = want(&f) {
                return Some(t);
            }
        }
        None
    }

    /// Sends `frame` every second, as a guest's stack retries, until `want` accepts a frame.
    fn exchange<T>(
        &mut self,
        what: &str,
        frame: &[u8],
        mut want: impl FnMut(&[u8]) -> Option<T>,
    ) -> T {
        for _ in 0..5 {
            self.send(frame);
            if let Some(t) = self.wait_for(Duration::from_secs(1), &mut want) {
                return t;
            }
        }
        panic!("the VM received no {what} within 5 s");
    }

    fn resolve(&mut self, ip: Ipv4Addr) -> MacAddr {
        let request = arp(1, self.mac, VM, MacAddr([0; 6]), ip);
        let frame = ethernet(MacAddr::BROADCAST, self.mac, 0x0806, &request);
        self.exchange(&format!("ARP reply from {ip}"), &frame, |f| {
            (f.len() >= 42
                && f[12..14] == [0x08, 0x06]
                && f[20..22] == [0, 2]
                && f[28..32] == ip.octets())
            .then(|| MacAddr(f[22..28].try_into().expect("6 bytes")))
        })
    }

    fn ping(&mut self, via: MacAddr, ip: Ipv4Addr, seq: u16) {
        let echo = icmp_echo(VM, ip, 0x7a11, seq);
        let frame = ethernet(via, self.mac, 0x0800, &echo);
        self.exchange(&format!("echo reply from {ip}"), &frame, |f| {
            let ip_ok = f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1;
            let from =
                f.get(26..30) == Some(&ip.octets()[..]) && f.get(30..34) == Some(&VM.octets()[..]);
            let ihl = usize::from(f.get(14).copied().unwrap_or(0) & 0xf) * 4;
            let icmp = f.get(14 + ihl..).unwrap_or(&[]);
            let reply = icmp.len() >= 8
                && icmp[0] == 0
                && icmp[4..6] == 0x7a11u16.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes();
            (ip_ok && from && reply).then_some(())
        })
    }
}

#[test]
fn a_vm_on_the_zone_talks_to_a_container_and_through_nat() {
    if skip_unless_root("a_vm_on_the_zone_talks_to_a_container_and_through_nat") {
        return;
    }
    let (h, _u) = host_and_internet("vm");
    let c = NetNs::new("vm-c").expect("namespace C");
    let _in = h.enter().expect("entering H");
    let mut zone = Zone::up(cfg("vm", Some("up0"))).expect("zone up");
    zone.attach_container("vc0", c.file().as_fd(), "eth0", CONTAINER)
        .expect("attach the container");

    // /dev/tap<ifindex> is one node for every namespace, and ifindexes repeat across
    // namespaces: when another namespace holds a macvtap of the same index, attach again (the
    // next macvtap gets a higher index). `Macvtap::open` checks the node's device by name,
    // and names repeat too: this one is made unlikely to exist elsewhere.
    let mac = MacAddr([0x52, 0x54, 0x00, 0x99, 0x00, 0x32]);
    let mut opened = None;
    for attempt in 0..8 {
        let name = format!("vmz{:x}x{attempt}", std::process::id() & 0xffff);
        let link = zone.attach_vm(&name, mac, 1).expect("attach the VM");
        assert_eq!(link.kind.as_deref(), Some("macvtap"));
        assert_eq!(
            link.macvtap_mode,
            Some(net_macvtap::netlink::MacvtapMode::Bridge)
        );
        assert_eq!(link.mac, Some(mac));
        assert!(link.up);
        match Macvtap::open(&name, 1) {
            Ok(backend) => {
                opened = Some(backend);
                break;
            }
            Err(e) => {
                println!("{name}: {e}; attaching again");
                assert!(zone.detach(&name).expect("detach"));
            }
        }
    }
    let mut backend = opened.expect("a macvtap whose /dev/tap node is its own");
    let queue = backend.open_queue_pair(0).expect("queue pair 0");
    let mut guest = Guest { queue, mac };

    let container_mac = guest.resolve(CONTAINER);
    guest.ping(container_mac, CONTAINER, 1);
    // The gateway, and through it and the masquerade, U.
    let gateway_mac = guest.resolve(GATEWAY);
    guest.ping(gateway_mac, GATEWAY, 2);
    guest.ping(gateway_mac, U_WAN, 3);

    drop(guest);
    drop(backend);
    zone.down().expect("zone down");
    let mut nl = Netlink::open().expect("netlink in H");
    let names: Vec<String> = nl
        .links()
        .expect("dump")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["lo", "up0"], "only the uplink is left");
}
