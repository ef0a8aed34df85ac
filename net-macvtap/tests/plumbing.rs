//! Netlink plumbing against the real kernel, each test inside namespaces of its own.
//!
//! Needs root; skipped with a printed reason otherwise. Every namespace is deleted when its
//! `NetNs` drops (also when a test fails), and every link in it goes with it.

use std::net::IpAddr;
use std::os::fd::AsFd;

use net_api::MacAddr;
use net_macvtap::netlink::{Link, LinkEvent, LinkMonitor, MacvtapMode, Netlink, PlumbError};
use net_macvtap::testns::{skip_unless_root, NetNs};

fn mac(last: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, last])
}

fn link(nl: &mut Netlink, name: &str) -> Link {
    nl.link(name)
        .expect("reading a link")
        .unwrap_or_else(|| panic!("{name} exists"))
}

fn ip_json(ns: &NetNs, args: &[&str]) -> String {
    let mut cmd = vec!["ip", "-j"];
    cmd.extend_from_slice(args);
    let out = ns.exec(&cmd).expect("ip runs in the namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_kind_reads_back_as_created() {
    if skip_unless_root("every_kind_reads_back_as_created") {
        return;
    }
    let ns = NetNs::new("kinds").expect("namespace");
    let _in = ns.enter().expect("entering the namespace");
    let mut nl = Netlink::open().expect("netlink socket");

    nl.create_veth("v0", "v1").expect("veth");
    nl.create_veth("p0", "p1").expect("veth for passthru");
    nl.create_bridge("br0").expect("bridge");
    let v0 = link(&mut nl, "v0");
    let v1 = link(&mut nl, "v1");
    let p0 = link(&mut nl, "p0");
    let br0 = link(&mut nl, "br0");
    assert_eq!(v0.kind.as_deref(), Some("veth"));
    assert_eq!(v0.link, Some(v1.index), "a veth's IFLA_LINK is its peer");
    assert_eq!(br0.kind.as_deref(), Some("bridge"));
    assert_eq!((v0.mtu, br0.mtu), (1500, 1500));
    assert!(!v0.up && !br0.up, "created down");
    assert_eq!(v0.macvtap_mode, None);

    // Private and VEPA beside each other on one veth, bridge on the bridge, passthru alone
    // on a veth of its own (it takes the whole lower link).
    let cases = [
        ("mvt-priv", "v0", &v0, MacvtapMode::Private, 1),
        ("mvt-vepa", "v0", &v0, MacvtapMode::Vepa, 2),
        ("mvt-br", "br0", &br0, MacvtapMode::Bridge, 3),
        ("mvt-pt", "p0", &p0, MacvtapMode::Passthru, 4),
    ];
    for (name, lower, lower_link, mode, last) in cases {
        let created = nl
            .create_macvtap(name, lower, mode, Some(mac(last)), 4)
            .unwrap_or_else(|e| panic!("{mode} macvtap: {e}"));
        let read = link(&mut nl, name);
        assert_eq!(created, read, "create returns what the kernel reports");
        assert_eq!(read.name, name);
        assert_eq!(read.kind.as_deref(), Some("macvtap"), "{name}");
        assert_eq!(read.macvtap_mode, Some(mode), "{name}");
        assert_eq!(read.link, Some(lower_link.index), "{name} sits on {lower}");
        assert_eq!(read.tx_queues, Some(4), "{name}");
        assert_eq!(
            read.mtu, lower_link.mtu,
            "{name} takes its lower link's MTU"
        );
        assert!(!read.up, "{name} is created down");
        if mode == MacvtapMode::Passthru {
            // The kernel gives a passthru macvtap its lower link's address.
            assert_eq!(read.mac, lower_link.mac, "{name}");
        } else {
            assert_eq!(read.mac, Some(mac(last)), "{name}");
        }
    }
    // A second passthru on the same lower link is refused, naming both links.
    let e = nl
        .create_macvtap("mvt-pt2", "p0", MacvtapMode::Passthru, None, 1)
        .expect_err("one passthru per lower link");
    assert!(
        e.to_string()
            .starts_with("creating macvtap 'mvt-pt2' on 'p0' failed: "),
        "{e}"
    );

    let all = nl.links().expect("dump");
    let mut names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["br0", "lo", "mvt-br", "mvt-priv", "mvt-pt", "mvt-vepa", "p0", "p1", "v0", "v1"]
    );
    let from_dump = all
        .iter()
        .find(|l| l.name == "mvt-vepa")
        .expect("in the dump");
    assert_eq!(
        from_dump,
        &link(&mut nl, "mvt-vepa"),
        "dump and lookup agree"
    );
}

#[test]
fn link_settings_change_and_read_back() {
    if skip_unless_root("link_settings_change_and_read_back") {
        return;
    }
    let ns = NetNs::new("settings").expect("namespace");
    let _in = ns.enter().expect("entering the namespace");
    let mut nl = Netlink::open().expect("netlink socket");
    nl.create_veth("a0", "a1").expect("veth");
    nl.create_bridge("br0").expect("bridge");

    nl.set_up("a0", true).expect("up");
    assert!(link(&mut nl, "a0").up);
    nl.set_up("a0", false).expect("down");
    assert!(!link(&mut nl, "a0").up);

    nl.set_mtu("a0", 1400).expect("mtu");
    assert_eq!(link(&mut nl, "a0").mtu, 1400);
    nl.set_mac("a0", mac(0x77)).expect("mac");
    assert_eq!(link(&mut nl, "a0").mac, Some(mac(0x77)));

    let br = nl.index("br0").expect("bridge index");
    nl.set_master("a0", Some("br0")).expect("enslave");
    assert_eq!(link(&mut nl, "a0").master, Some(br));
    nl.set_master("a0", None).expect("release");
    assert_eq!(link(&mut nl, "a0").master, None);

    nl.set_up("a0", true).expect("up");
    nl.set_up("a1", true).expect("peer up");
    let v4: IpAddr = "10.1.2.3".parse().expect("an address");
    let v6: IpAddr = "2001:db8::3".parse().expect("an address");
    nl.add_address("a0", v4, 24).expect("IPv4 address");
    nl.add_address("a0", v6, 64).expect("IPv6 address");
    let addrs = ip_json(&ns, &["addr", "show", "dev", "a0"]);
    assert!(
        addrs.contains(r#""local":"10.1.2.3","prefixlen":24"#),
        "{addrs}"
    );
    assert!(
        addrs.contains(r#""local":"2001:db8::3","prefixlen":64"#),
        "{addrs}"
    );
    let e = nl
        .add_address("a0", v4, 24)
        .expect_err("the address is there");
    assert_eq!(e.os_error(), Some(17));
    // The kernel may add its own words (an extended ACK) after the error number.
    assert!(
        e.to_string()
            .starts_with("adding 10.1.2.3/24 to 'a0' failed: File exists (os error 17)"),
        "{e}"
    );

    nl.add_default_route("a0", "10.1.2.1".parse().expect("an address"))
        .expect("default route");
    let routes = ip_json(&ns, &["route", "show", "default"]);
    assert!(
        routes.contains(r#""dst":"default","gateway":"10.1.2.1","dev":"a0""#),
        "{routes}"
    );

    assert!(nl.del_address("a0", v4, 24).expect("remove"));
    assert!(!nl.del_address("a0", v4, 24).expect("already gone"));
    let addrs = ip_json(&ns, &["addr", "show", "dev", "a0"]);
    assert!(!addrs.contains("10.1.2.3"), "{addrs}");
}

#[test]
fn a_veth_end_moves_to_another_namespace() {
    if skip_unless_root("a_veth_end_moves_to_another_namespace") {
        return;
    }
    let here = NetNs::new("move-a").expect("namespace");
    let there = NetNs::new("move-b").expect("namespace");
    let _in = here.enter().expect("entering the namespace");
    let mut nl = Netlink::open().expect("netlink socket");
    nl.create_veth("m0", "m1").expect("veth");
    nl.create_veth("r0", "eth0").expect("veth");

    nl.move_to_netns("m1", there.file().as_fd())
        .expect("move m1");
    assert_eq!(
        nl.link("m1").expect("lookup"),
        None,
        "m1 left this namespace"
    );
    // `eth0` exists here; it arrives there as `eth1`.
    nl.move_to_netns_as("eth0", there.file().as_fd(), "eth1")
        .expect("move and rename");
    assert_eq!(nl.link("eth0").expect("lookup"), None);

    let mut far = Netlink::open_in(there.file().as_fd()).expect("netlink over there");
    let m1 = link(&mut far, "m1");
    assert_eq!(m1.kind.as_deref(), Some("veth"));
    assert_eq!(link(&mut far, "eth1").kind.as_deref(), Some("veth"));
    let listed = there.exec(&["ip", "-o", "link", "show"]).expect("ip link");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(" m1@") && listed.contains(" eth1@"),
        "{listed}"
    );

    // A link can be set up over there through the far socket, from this thread.
    far.set_up("m1", true).expect("up over there");
    assert!(link(&mut far, "m1").up);

    // Deleting this end takes the far one with it.
    assert!(nl.delete("m0").expect("delete"));
    assert_eq!(far.link("m1").expect("lookup"), None);
}

#[test]
fn delete_says_whether_the_link_existed() {
    if skip_unless_root("delete_says_whether_the_link_existed") {
        return;
    }
    let ns = NetNs::new("delete").expect("namespace");
    let _in = ns.enter().expect("entering the namespace");
    let mut nl = Netlink::open().expect("netlink socket");
    nl.create_bridge("br0").expect("bridge");
    nl.create_veth("d0", "d1").expect("veth");
    nl.create_macvtap("mvt0", "br0", MacvtapMode::Bridge, None, 1)
        .expect("macvtap");
    assert!(nl.delete("mvt0").expect("delete"));
    assert!(!nl.delete("mvt0").expect("gone already"));
    assert!(nl.delete("br0").expect("delete"));
    assert_eq!(nl.link("br0").expect("lookup"), None);
    assert!(nl.delete("d1").expect("delete a veth end"));
    assert_eq!(nl.link("d0").expect("lookup"), None, "the peer goes too");
    let names: Vec<String> = nl
        .links()
        .expect("dump")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["lo"]);
}

#[test]
fn errors_name_the_operation_and_the_link() {
    if skip_unless_root("errors_name_the_operation_and_the_link") {
        return;
    }
    let ns = NetNs::new("errors").expect("namespace");
    let _in = ns.enter().expect("entering the namespace");
    let mut nl = Netlink::open().expect("netlink socket");
    nl.create_bridge("br0").expect("bridge");

    let e = nl.create_bridge("br0").expect_err("exists");
    assert!(
        e.to_string()
            .starts_with("creating bridge 'br0' failed: File exists (os error 17)"),
        "{e}"
    );
    nl.create_veth("x0", "x1").expect("veth");
    let e = nl.create_veth("x0", "x2").expect_err("exists");
    assert!(
        e.to_string()
            .starts_with("creating veth 'x0' with peer 'x2' failed: File exists"),
        "{e}"
    );
    let e = nl
        .create_macvtap("x0", "br0", MacvtapMode::Bridge, None, 1)
        .expect_err("the name is taken");
    assert!(
        e.to_string()
            .starts_with("creating macvtap 'x0' on 'br0' failed: File exists (os error 17)"),
        "{e}"
    );
    let e = nl
        .create_macvtap("vm0", "nope0", MacvtapMode::Bridge, None, 1)
        .expect_err("no lower link");
    assert_eq!(
        e.to_string(),
        "creating macvtap 'vm0' on 'nope0' failed: no link named 'nope0' in this network namespace"
    );
    assert_eq!(e.missing_link(), Some("nope0"));

    let e = nl.index("nope0").expect_err("missing");
    assert!(matches!(e, PlumbError::NoSuchLink { ref name } if name == "nope0"));
    assert_eq!(
        e.to_string(),
        "no link named 'nope0' in this network namespace"
    );
    let e = nl.set_up("nope0", true).expect_err("missing");
    assert_eq!(
        e.to_string(),
        "setting 'nope0' up failed: no link named 'nope0' in this network namespace"
    );
    let e = nl.set_master("x0", Some("nope1")).expect_err("no master");
    assert_eq!(
        e.to_string(),
        "enslaving 'x0' to 'nope1' failed: no link named 'nope1' in this network namespace"
    );
    let e = nl.set_mtu("x0", 10).expect_err("below the minimum MTU");
    assert!(
        e.to_string()
            .starts_with("setting the MTU of 'x0' to 10 failed: "),
        "{e}"
    );

    // Refused before anything is sent.
    let e = nl
        .create_bridge("this-name-is-too-long")
        .expect_err("too long");
    assert!(matches!(e, PlumbError::InvalidName { .. }), "{e}");
    let e = nl
        .create_macvtap("vm0", "br0", MacvtapMode::Bridge, None, 0)
        .expect_err("no queues");
    assert!(e.to_string().contains("queue count"), "{e}");
    assert_eq!(nl.link("vm0").expect("lookup"), None);
}

#[test]
fn link_events_say_what_appeared_changed_and_went() {
    if skip_unless_root("link_events_say_what_appeared_changed_and_went") {
        return;
    }
    let ns = NetNs::new("events").expect("namespace");
    let mut mon = LinkMonitor::open_in(ns.file().as_fd()).expect("link events");
    assert!(
        mon.events().expect("nothing yet").is_empty(),
        "no events yet"
    );
    let mut nl = Netlink::open_in(ns.file().as_fd()).expect("netlink socket");
    nl.create_veth("e0", "e1").expect("veth");
    nl.set_up("e0", true).expect("up");
    nl.delete("e0").expect("delete");
    let mut seen = Vec::new();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !seen
        .iter()
        .any(|e| matches!(e, LinkEvent::Del(l) if l.name == "e1"))
        && std::time::Instant::now() < end
    {
        let mut fds = [nix::poll::PollFd::new(
            mon.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        seen.extend(mon.events().expect("events"));
    }
    let has = |f: &dyn Fn(&LinkEvent) -> bool| seen.iter().any(f);
    assert!(
        has(&|e| matches!(e, LinkEvent::New(l) if l.name == "e0")),
        "{seen:?}"
    );
    assert!(
        has(&|e| matches!(e, LinkEvent::New(l) if l.name == "e0" && l.up)),
        "{seen:?}"
    );
    assert!(
        has(&|e| matches!(e, LinkEvent::Del(l) if l.name == "e0")),
        "{seen:?}"
    );
    assert!(
        has(&|e| matches!(e, LinkEvent::Del(l) if l.name == "e1")),
        "{seen:?}"
    );
}
