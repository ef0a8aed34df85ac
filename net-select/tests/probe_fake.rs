//! The probe on fake hosts: a NIC with native XDP and zero-copy, a veth, a kernel without the
//! netdev family, no /dev/net/tun, no capabilities.

use std::collections::HashMap;

use net_select::probe::{probe, FakeHost, LinkEntry, LinkKind, XdpSource};
use net_select::DevXdp;

fn link(name: &str, index: u32, kind: Option<&str>) -> LinkEntry {
    LinkEntry {
        name: name.into(),
        index,
        kind: kind.map(str::to_string),
        mtu: 1500,
        mac: Some("52:54:00:00:00:01".into()),
        master: None,
    }
}

/// A host with a 40 Gb/s i40e NIC (`eth0`, index 2) and a veth (`veth0`, index 3), root.
fn host() -> FakeHost {
    let mut h = FakeHost {
        links: vec![
            link("lo", 1, None),
            link("eth0", 2, None),
            link("veth0", 3, Some("veth")),
            link("br0", 4, Some("bridge")),
        ],
        ..FakeHost::default()
    };
    h.files
        .insert("/proc/sys/kernel/osrelease".into(), "6.12.0\n".into());
    h.files.insert(
        "/proc/self/status".into(),
        "Name:\tvolt-net\nCapEff:\t000001ffffffffff\n".into(),
    );
    h.paths.push("/dev/net/tun".into());
    h.paths.push("/sys/class/macvtap".into());
    h.paths.push("/sys/class/net/eth0/device".into());
    h.symlinks
        .insert("/sys/class/net/eth0/device/driver".into(), "i40e".into());
    h.files
        .insert("/sys/class/net/eth0/speed".into(), "40000".into());
    h.files
        .insert("/sys/class/net/eth0/operstate".into(), "up".into());
    h.dirs.insert(
        "/sys/class/net/eth0/queues".into(),
        [
            "rx-0", "rx-1", "rx-2", "rx-3", "tx-0", "tx-1", "tx-2", "tx-3",
        ]
        .map(String::from)
        .to_vec(),
    );
    h.files
        .insert("/sys/class/net/veth0/speed".into(), "-1".into());
    h.files
        .insert("/sys/class/net/veth0/operstate".into(), "down".into());
    h.xdp = Some(HashMap::from([
        (
            4,
            DevXdp {
                features: 0,
                zc_max_segs: None,
            },
        ),
        (
            1,
            DevXdp {
                features: 0,
                zc_max_segs: None,
            },
        ),
        // basic | redirect | ndo_xmit | xsk_zerocopy
        (
            2,
            DevXdp {
                features: 0b1111,
                zc_max_segs: Some(1),
            },
        ),
        // basic | redirect | rx_sg
        (
            3,
            DevXdp {
                features: 0b100011,
                zc_max_segs: None,
            },
        ),
    ]));
    h
}

#[test]
fn a_nic_with_native_xdp_and_zero_copy() {
    let p = probe(&host(), None).expect("probe");
    assert_eq!(p.kernel, "6.12.0");
    assert!(p.tun && p.macvtap);
    assert!(p.privileges.net_admin && p.privileges.bpf && p.privileges.net_raw);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    let eth0 = &p.interfaces[1];
    assert_eq!(eth0.kind, LinkKind::Physical);
    assert_eq!(eth0.driver.as_deref(), Some("i40e"));
    assert_eq!(eth0.speed_mbps, Some(40_000));
    assert_eq!((eth0.rx_queues, eth0.tx_queues), (4, 4));
    assert_eq!(eth0.xdp.source, XdpSource::Netlink);
    assert!(eth0.xdp.native_redirect() && eth0.xdp.ndo_xmit && eth0.xdp.xsk_zerocopy);
    assert_eq!(eth0.xdp.zc_max_segs, Some(1));
    assert_eq!(p.interfaces[0].kind, LinkKind::Loopback);
}

#[test]
fn a_veth() {
    let p = probe(&host(), Some("veth0")).expect("probe");
    assert_eq!(p.interfaces.len(), 1);
    let v = &p.interfaces[0];
    assert_eq!(v.kind, LinkKind::Veth);
    assert_eq!(v.master, None);
    assert_eq!(v.driver.as_deref(), Some("veth"));
    assert_eq!(v.speed_mbps, None, "-1 means unknown");
    assert_eq!(v.operstate, "down");
    assert!(v.xdp.basic && v.xdp.redirect && v.xdp.rx_sg);
    assert!(!v.xdp.ndo_xmit && !v.xdp.xsk_zerocopy);
}

#[test]
fn a_kernel_without_the_netdev_family_falls_back_to_the_driver_list_and_says_so() {
    let mut h = host();
    h.xdp = None;
    let p = probe(&h, None).expect("probe");
    let eth0 = &p.interfaces[1];
    assert_eq!(eth0.xdp.source, XdpSource::DriverList);
    assert!(
        eth0.xdp.native_redirect() && eth0.xdp.xsk_zerocopy,
        "i40e is on both lists"
    );
    let veth = &p.interfaces[2];
    assert!(veth.xdp.native_redirect() && !veth.xdp.xsk_zerocopy);
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("netdev") && n.contains("driver list")),
        "{:?}",
        p.notes
    );
}

#[test]
fn no_tun_and_no_capabilities() {
    let mut h = host();
    h.paths.retain(|p| p != "/dev/net/tun");
    h.files.insert(
        "/proc/self/status".into(),
        "Name:\tvolt-net\nCapEff:\t0000000000000000\n".into(),
    );
    let p = probe(&h, None).expect("probe");
    assert!(!p.tun);
    assert!(!p.privileges.net_admin && !p.privileges.bpf && !p.privileges.sys_admin);
    assert!(
        p.notes.iter().any(|n| n.contains("CAP_NET_ADMIN")),
        "{:?}",
        p.notes
    );
    // Unreadable capabilities count as none, and say so.
    h.files.remove("/proc/self/status");
    let p = probe(&h, None).expect("probe");
    assert!(
        p.notes.iter().any(|n| n.contains("capabilities")),
        "{:?}",
        p.notes
    );
}

#[test]
fn a_bridge_port_names_its_bridge() {
    let mut h = host();
    h.links[2].master = Some(4);
    let p = probe(&h, Some("veth0")).expect("probe");
    assert_eq!(p.interfaces[0].master.as_deref(), Some("br0"));
}

#[test]
fn an_unknown_interface_is_an_error_that_says_where_to_look() {
    let e = probe(&host(), Some("eth9")).expect_err("no such interface");
    assert!(e.to_string().contains("ip link"), "{e}");
}
