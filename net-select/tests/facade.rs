//! The facade opens what the decision chose: a macvtap in the chosen mode on the chosen
//! link (deleted when dropped), a TAP; a backend not built in is an error naming its feature.
//! The privileged part runs in a private namespace and prints SKIPPED when not root.

mod common;

use common::is_root;
use net_api::{Backend, QueuePair};
use net_select::decide::{Choice, Decision, MacvtapMode};
use net_select::facade::{open, AnyBackend, OpenError, OpenOptions, Opened};

fn decision(interface: &str, choice: Choice) -> Decision {
    Decision {
        interface: interface.into(),
        choice,
        reasons: vec!["test".into()],
        rejected: Vec::new(),
        warnings: Vec::new(),
    }
}

#[test]
fn afxdp_without_its_feature_names_the_feature() {
    let d = decision("eth0", Choice::Afxdp { zero_copy: true });
    match open(&d, &OpenOptions::new("vm0", 1)) {
        Err(OpenError::NotBuilt { feature, .. }) => assert_eq!(feature, "afxdp"),
        Err(e) => assert!(e.to_string().contains("AF_XDP"), "{e}"),
        Ok(_) => panic!("AF_XDP cannot open here"),
    }
}

#[test]
fn a_macvtap_and_a_tap_open_and_go_away() {
    if !is_root() {
        println!("SKIPPED a_macvtap_and_a_tap_open_and_go_away: needs root (a namespace, links)");
        return;
    }
    let ns = net_macvtap::testns::NetNs::new("vfac").expect("namespace");
    let _inside = ns.enter().expect("entering the namespace");
    let mut nl = net_macvtap::netlink::Netlink::open().expect("netlink");
    nl.create_veth("fa0", "fb0").expect("veth");
    nl.set_up("fa0", true).expect("up");

    let d = decision(
        "fa0",
        Choice::Macvtap {
            mode: MacvtapMode::Private,
        },
    );
    let opened = open(&d, &OpenOptions::new("fvm0", 2)).expect("opening a macvtap");
    let Opened::Datapath(mut backend) = opened else {
        panic!("a datapath");
    };
    assert!(matches!(backend, AnyBackend::Macvtap(_)));
    assert!(backend.capabilities().vnet_hdr);
    let link = nl
        .link("fvm0")
        .expect("netlink")
        .expect("the macvtap exists");
    assert_eq!(
        link.macvtap_mode,
        Some(net_macvtap::netlink::MacvtapMode::Private)
    );
    assert!(link.up);
    let q = backend.open_queue_pair(1).expect("queue pair 1");
    assert_eq!(q.index(), 1);
    drop(q);
    drop(backend);
    assert!(
        nl.link("fvm0").expect("netlink").is_none(),
        "the macvtap is deleted with its backend"
    );

    let opened =
        open(&decision("fa0", Choice::Tap), &OpenOptions::new("ftap0", 1)).expect("opening a TAP");
    let Opened::Datapath(backend) = opened else {
        panic!("a datapath");
    };
    assert!(matches!(backend, AnyBackend::Tap(_)));
    assert!(nl.link("ftap0").expect("netlink").is_some());
    drop(backend);
    assert!(
        nl.link("ftap0").expect("netlink").is_none(),
        "a TAP goes with its last fd"
    );
}

/// With the `afxdp` feature: AF_XDP opens in native mode on a veth (copy mode: the decision
/// saw no zero-copy), needs the guest's MAC, and takes its XDP program with it.
#[cfg(feature = "afxdp")]
#[test]
fn afxdp_opens_on_a_veth_and_leaves_nothing() {
    if !is_root() {
        println!("SKIPPED afxdp_opens_on_a_veth_and_leaves_nothing: needs root");
        return;
    }
    let ns = net_macvtap::testns::NetNs::new("vfx").expect("namespace");
    let _inside = ns.enter().expect("entering the namespace");
    let mut nl = net_macvtap::netlink::Netlink::open().expect("netlink");
    nl.create_veth("xa0", "xb0").expect("veth");
    nl.set_up("xa0", true).expect("up");
    nl.set_up("xb0", true).expect("up");
    let d = decision("xa0", Choice::Afxdp { zero_copy: false });
    let e = open(&d, &OpenOptions::new("unused", 1)).expect_err("no MAC");
    assert!(e.to_string().contains("MAC"), "{e}");
    let opts = OpenOptions {
        mac: Some(net_api::MacAddr([0x02, 0, 0, 0, 0x11, 0x01])),
        ..OpenOptions::new("unused", 1)
    };
    let Opened::Datapath(mut backend) = open(&d, &opts).expect("opening AF_XDP") else {
        panic!("a datapath");
    };
    assert!(matches!(backend, AnyBackend::Afxdp(_)));
    assert!(
        !backend.capabilities().vnet_hdr,
        "AF_XDP carries no virtio-net header"
    );
    let q = backend.open_queue_pair(0).expect("queue pair 0");
    drop(q);
    drop(backend);
    let out = std::process::Command::new("ip")
        .args(["link", "show", "xa0"])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("prog/xdp"),
        "no XDP program left"
    );
}
