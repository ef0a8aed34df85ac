//! `volt-net` end to end: the real binary, its `--json` parsed back, its exit codes and
//! messages. The veth test needs root (a private namespace) and `ethtool`; it prints SKIPPED
//! otherwise.

mod common;

use common::is_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_volt-net");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running volt-net")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "volt-net failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("volt-net printed JSON")
}

#[test]
fn probe_json_describes_every_interface() {
    let v = json(&run(&["probe", "--json"]));
    let ifaces = v["interfaces"].as_array().expect("interfaces");
    assert!(
        ifaces
            .iter()
            .any(|i| i["name"] == "lo" && i["kind"] == "loopback"),
        "{v:#}"
    );
    for i in ifaces {
        assert!(i["ifindex"].as_u64().is_some_and(|x| x > 0), "{i}");
        assert!(i["xdp"]["source"].is_string(), "{i}");
    }
    assert!(v["privileges"]["net_admin"].is_boolean());
    assert!(v["tun"].is_boolean() && v["macvtap"].is_boolean());
}

#[test]
fn select_without_arguments_chooses_for_every_interface() {
    let out = run(&["select", "--json"]);
    // 0 when something fits, 3 when nothing does: both are answers.
    let code = out.status.code();
    assert!(matches!(code, Some(0) | Some(3)), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let all = v["interfaces"].as_array().expect("interfaces");
    assert!(
        all.iter()
            .any(|o| o["interface"] == "lo" && o["skipped"].is_string()),
        "the loopback is skipped with a reason: {v:#}"
    );
    for o in all {
        let answered = o["choice"]["backend"].is_string()
            || o["skipped"].is_string()
            || o["no_backend"].is_array();
        assert!(answered, "{o}");
        if o["choice"].is_object() {
            assert!(!o["reasons"].as_array().expect("reasons").is_empty(), "{o}");
        }
    }
    // The text form says the same.
    let text = run(&["select"]);
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.contains("lo: skipped"), "{s}");
}

#[test]
fn select_honours_requirements_and_names_the_external_switch() {
    let v = json(&run(&[
        "select",
        "--iface",
        "lo",
        "--vhost-user",
        "/run/ovs/vm0.sock",
        "--json",
    ]));
    let d = &v["interfaces"][0];
    assert_eq!(d["interface"], "lo");
    assert_eq!(d["choice"]["backend"], "vhost-user");
    assert_eq!(d["choice"]["socket"], "/run/ovs/vm0.sock");
    assert!(
        d["rejected"].as_array().is_some_and(|r| r.len() >= 3),
        "{d}"
    );
    assert_eq!(v["requirements"]["vhost_user_socket"], "/run/ovs/vm0.sock");
}

#[test]
fn errors_say_what_to_do_and_exit_non_zero() {
    let out = run(&["probe", "nosuchif0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nosuchif0") && err.contains("ip link"),
        "{err}"
    );

    let out = run(&["select", "--iface", "nosuchif0"]);
    assert_eq!(out.status.code(), Some(1));

    let out = run(&["select", "--throughput", "NaN"]);
    assert_eq!(out.status.code(), Some(2), "a bad argument");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Gb/s"));

    let out = run(&[
        "networkd",
        "--vm",
        "not-a-uuid",
        "--iface",
        "eth0",
        "--out",
        "/tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-uuid"));

    // Bad arguments are clap's: exit 2.
    let out = run(&["select", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn networkd_writes_the_vm_and_lower_link_files() {
    let dir = std::env::temp_dir().join(format!("volt-net-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let uuid = "4B1D0C2E-9F3A-4E6B-8C7D-0123456789AB";
    let v = json(&run(&[
        "networkd",
        "--vm",
        uuid,
        "--iface",
        "eth0",
        "--mode",
        "private",
        "--out",
        dir.to_str().expect("utf-8"),
        "--json",
    ]));
    assert_eq!(v["macvtap"], "vm4b1d0c2e9f3");
    assert_eq!(v["mac"], "02:4b:1d:0c:2e:9f");
    let files: Vec<PathBuf> = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| PathBuf::from(f.as_str().expect("path")))
        .collect();
    let read = |name: &str| {
        let p = dir.join(name);
        assert!(files.contains(&p), "{} listed in {files:?}", p.display());
        std::fs::read_to_string(&p).expect("written")
    };
    let netdev = read("30-vm-4b1d0c2e-9f3a-4e6b-8c7d-0123456789ab.netdev");
    assert!(
        netdev.contains("Kind=macvtap") && netdev.contains("Mode=private"),
        "{netdev}"
    );
    assert!(netdev.contains("MACAddress=02:4b:1d:0c:2e:9f"), "{netdev}");
    let lower = read("20-eth0.network");
    assert!(lower.contains("MACVTAP=vm4b1d0c2e9f3"), "{lower}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `volt-net ARGS` inside network namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, BIN])
        .args(args)
        .output()
        .expect("ip netns exec")
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("running a command");
    assert!(out.status.success(), "{args:?}: {out:?}");
}

#[test]
fn probe_reports_a_veth_as_the_kernel_describes_it() {
    if !is_root() {
        println!("SKIPPED probe_reports_a_veth_as_the_kernel_describes_it: needs root");
        return;
    }
    if !Path::new("/usr/sbin/ethtool").exists() && !Path::new("/sbin/ethtool").exists() {
        println!("SKIPPED probe_reports_a_veth_as_the_kernel_describes_it: no ethtool (apt-get install ethtool)");
        return;
    }
    let ns = net_macvtap::testns::NetNs::new("vsel").expect("namespace");
    let n = ns.name();
    sh(&[
        "ip", "-n", n, "link", "add", "vsa", "type", "veth", "peer", "name", "vsb",
    ]);
    sh(&["ip", "-n", n, "link", "set", "vsa", "up"]);
    sh(&["ip", "-n", n, "link", "set", "vsb", "up"]);
    // GRO on vsb makes vsa a target for XDP redirects (ndo_xmit); vsb stays without.
    sh(&[
        "ip", "netns", "exec", n, "ethtool", "-K", "vsb", "gro", "on",
    ]);

    let v = json(&in_ns(n, &["probe", "vsa", "--json"]));
    let a = &v["interfaces"][0];
    assert_eq!(a["name"], "vsa");
    assert_eq!(a["kind"], "veth");
    assert_eq!(a["driver"], "veth");
    let x = &a["xdp"];
    assert_eq!(x["source"], "netlink", "{v:#}");
    assert_eq!(
        (
            &x["basic"],
            &x["redirect"],
            &x["ndo_xmit"],
            &x["xsk_zerocopy"]
        ),
        (
            &Value::Bool(true),
            &Value::Bool(true),
            &Value::Bool(true),
            &Value::Bool(false)
        ),
        "{x}"
    );
    let v = json(&in_ns(n, &["probe", "vsb", "--json"]));
    assert_eq!(v["interfaces"][0]["xdp"]["ndo_xmit"], false, "{v:#}");

    // In that namespace: a veth with XDP but no zero-copy, 40 Gb/s asked for -> AF_XDP in
    // copy mode; nothing asked -> macvtap bridge on the veth.
    let v = json(&in_ns(
        n,
        &["select", "--iface", "vsa", "--throughput", "40", "--json"],
    ));
    assert_eq!(v["interfaces"][0]["choice"]["backend"], "afxdp", "{v:#}");
    assert_eq!(v["interfaces"][0]["choice"]["zero_copy"], false);
    let v = json(&in_ns(n, &["select", "--iface", "vsa", "--json"]));
    assert_eq!(v["interfaces"][0]["choice"]["backend"], "macvtap", "{v:#}");
    assert_eq!(v["interfaces"][0]["choice"]["mode"], "bridge");
}
