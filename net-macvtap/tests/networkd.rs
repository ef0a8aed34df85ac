//! The networkd renderer: a proptest that any input is refused or renders into well-formed
//! files that read back to the same values, and the real systemd-networkd (Debian's v252) run
//! on the rendered files in a private namespace, creating macvtaps in every mode and a zone
//! bridge, one of whose macvtaps then carries an ARP exchange through the macvtap backend.

use net_api::IoBufMut;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use net_api::{Backend, MacAddr, QueuePair, TxFrame, VirtioNetHdr};
use net_macvtap::netlink::MacvtapMode;
use net_macvtap::networkd::{render_all, Rendered, VmLink, ZoneBridge};
use net_macvtap::tap::Macvtap;
use net_macvtap::testns::{skip_unless_root, NetNs};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// A reader for networkd's file format, strict about what a line may be.

/// Sections in order, each with its `Key=Value` pairs in order.
type Sections = Vec<(String, Vec<(String, String)>)>;

/// Parses a file as networkd would, refusing anything that is not a `[Section]`, a
/// `Key=Value`, a comment or an empty line, or that networkd would read differently from
/// the text (line continuations, surrounding whitespace).
fn parse(text: &str) -> Result<Sections, String> {
    if !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    if text.contains(['\r', '\0']) {
        return Err("carriage return or NUL".into());
    }
    let mut out: Sections = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.ends_with('\\') {
            return Err(format!("line continuation: {line:?}"));
        }
        if let Some(inner) = line.strip_prefix('[') {
            let name = inner
                .strip_suffix(']')
                .ok_or_else(|| format!("bad section line {line:?}"))?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("bad section name {line:?}"));
            }
            out.push((name.to_string(), Vec::new()));
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("neither section nor Key=Value: {line:?}"))?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("bad key in {line:?}"));
        }
        if value.is_empty() || value.trim() != value {
            return Err(format!("empty or padded value in {line:?}"));
        }
        if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(format!("control or non-ASCII byte in {line:?}"));
        }
        let Some(section) = out.last_mut() else {
            return Err(format!("Key=Value before any section: {line:?}"));
        };
        section.1.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

fn section_names(s: &Sections) -> Vec<&str> {
    s.iter().map(|(n, _)| n.as_str()).collect()
}

fn values<'a>(s: &'a Sections, section: &str, key: &str) -> Vec<&'a str> {
    s.iter()
        .filter(|(n, _)| n == section)
        .flat_map(|(_, kv)| kv.iter())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn file(r: &Rendered, name: &str) -> Result<Sections, String> {
    let text = r.file(name).ok_or_else(|| format!("{name} not rendered"))?;
    parse(text).map_err(|e| format!("{name}: {e}"))
}

/// Checks every rendered file against the input it came from.
fn check_rendered(
    r: &Rendered,
    zone: Option<&ZoneBridge>,
    vms: &[VmLink],
) -> Result<(), TestCaseError> {
    for (name, text) in &r.files {
        let ok_name = name.len() > 3
            && name.as_bytes()[..2].iter().all(u8::is_ascii_digit)
            && name.as_bytes()[2] == b'-'
            && (name.ends_with(".netdev") || name.ends_with(".network"))
            && !name.contains('/');
        prop_assert!(ok_name, "file name {:?}", name);
        prop_assert!(parse(text).is_ok(), "{}: {:?}\n{}", name, parse(text), text);
    }
    let zone_name = zone.map(|z| z.name.as_str());
    let mut expected_files = 0;
    for vm in vms {
        let stem = format!("30-vm-{}", vm.uuid.to_ascii_lowercase());
        let netdev = file(r, &format!("{stem}.netdev")).map_err(TestCaseError::fail)?;
        prop_assert_eq!(section_names(&netdev), ["NetDev", "MACVTAP"]);
        prop_assert_eq!(values(&netdev, "NetDev", "Name"), [vm.name.as_str()]);
        prop_assert_eq!(values(&netdev, "NetDev", "Kind"), ["macvtap"]);
        let mac = vm.mac.to_string();
        prop_assert_eq!(values(&netdev, "NetDev", "MACAddress"), [mac.as_str()]);
        prop_assert_eq!(values(&netdev, "MACVTAP", "Mode"), [vm.mode.as_str()]);
        let network = file(r, &format!("{stem}.network")).map_err(TestCaseError::fail)?;
        prop_assert_eq!(section_names(&network), ["Match", "Link", "Network"]);
        prop_assert_eq!(values(&network, "Match", "Name"), [vm.name.as_str()]);
        let lower_file = if Some(vm.lower.as_str()) == zone_name {
            format!("25-{}.network", vm.lower)
        } else {
            format!("20-{}.network", vm.lower)
        };
        let lower = file(r, &lower_file).map_err(TestCaseError::fail)?;
        prop_assert_eq!(values(&lower, "Match", "Name"), [vm.lower.as_str()]);
        prop_assert!(values(&lower, "Network", "MACVTAP").contains(&vm.name.as_str()));
        expected_files += 2;
    }
    let mut lowers: Vec<&str> = vms
        .iter()
        .map(|v| v.lower.as_str())
        .filter(|l| Some(*l) != zone_name)
        .collect();
    lowers.sort_unstable();
    lowers.dedup();
    for l in &lowers {
        let lower = file(r, &format!("20-{l}.network")).map_err(TestCaseError::fail)?;
        prop_assert_eq!(section_names(&lower), ["Match", "Network"]);
        let on: Vec<&str> = vms
            .iter()
            .filter(|v| v.lower == *l)
            .map(|v| v.name.as_str())
            .collect();
        prop_assert_eq!(values(&lower, "Network", "MACVTAP"), on);
    }
    expected_files += lowers.len();
    if let Some(z) = zone {
        let netdev = file(r, &format!("25-{}.netdev", z.name)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(section_names(&netdev), ["NetDev"]);
        prop_assert_eq!(values(&netdev, "NetDev", "Name"), [z.name.as_str()]);
        prop_assert_eq!(values(&netdev, "NetDev", "Kind"), ["bridge"]);
        let network = file(r, &format!("25-{}.network", z.name)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(section_names(&network), ["Match", "Link", "Network"]);
        prop_assert_eq!(values(&network, "Match", "Name"), [z.name.as_str()]);
        let address = format!("{}/{}", z.address, z.prefix);
        prop_assert_eq!(values(&network, "Network", "Address"), [address.as_str()]);
        let masq = if z.masquerade { "ipv4" } else { "no" };
        prop_assert_eq!(values(&network, "Network", "IPMasquerade"), [masq]);
        prop_assert_eq!(values(&network, "Network", "IPForward"), ["ipv4"]);
        let on: Vec<&str> = vms
            .iter()
            .filter(|v| v.lower == z.name)
            .map(|v| v.name.as_str())
            .collect();
        prop_assert_eq!(values(&network, "Network", "MACVTAP"), on);
        expected_files += 2;
    }
    prop_assert_eq!(r.files.len(), expected_files);
    Ok(())
}

/// Strings that are often close to an interface name, sometimes hostile, sometimes anything.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9_.-]{1,15}",
        2 => "[ -~]{0,17}",
        1 => "[a-z0-9]{1,6}[\n\r\0\t /\\\\\\[\\]=#;]{1,2}[a-z\\[\\]=]{0,6}",
        1 => any::<String>(),
        1 => Just("eth0\n[Match]".to_string()),
    ]
}

fn any_uuid() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        1 => "[0-9a-fA-F-]{34,38}",
        1 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{11}[\n/g\\]]",
        1 => any::<String>(),
    ]
}

fn any_mode() -> impl Strategy<Value = MacvtapMode> {
    prop::sample::select(MacvtapMode::ALL.to_vec())
}

/// Input that is valid by construction: distinct names and UUIDs, unicast MACs, a passthru
/// macvtap alone on its link, a usable zone address.
fn valid_input() -> impl Strategy<Value = (Option<ZoneBridge>, Vec<VmLink>)> {
    let vm = (
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-f]{11}",
        "[A-Za-z0-9_.-]{0,12}",
        0usize..4,
        any_mode(),
        any::<[u8; 6]>(),
    );
    let zone = (
        "[A-Za-z_.][A-Za-z0-9_.-]{1,12}",
        8u8..=30,
        any::<u32>(),
        any::<bool>(),
    );
    (prop::collection::vec(vm, 1..5), prop::option::of(zone)).prop_map(|(vms, zone)| {
        let zone = zone.map(|(name, prefix, bits, masquerade)| {
            let host_bits = 32 - u32::from(prefix);
            let host_max = (1u64 << host_bits) - 2; // no network, no broadcast address
            let host = 1 + (u64::from(bits) % host_max) as u32;
            // Inside 10.0.0.0/8, so never loopback, multicast or broadcast.
            let net = (10u32 << 24) & (u32::MAX << host_bits);
            ZoneBridge {
                name: format!("z{name}"),
                address: Ipv4Addr::from(net | host),
                prefix,
                masquerade,
            }
        });
        let lowers = ["eth0", "eth1", "bond.7"];
        let vms: Vec<VmLink> = vms
            .into_iter()
            .enumerate()
            .map(|(i, (uuid, suffix, lower, mode, mut mac))| {
                mac[0] &= 0xfe;
                mac[5] |= 1;
                let lower = match (lower, &zone) {
                    (3, Some(z)) => z.name.clone(),
                    (l, _) => lowers[l % 3].to_string(),
                };
                VmLink {
                    uuid: format!("{uuid}{i}"),
                    name: format!("v{i}{suffix}"),
                    lower,
                    mode,
                    mac: MacAddr(mac),
                }
            })
            .collect();
        // A passthru macvtap needs its link to itself.
        let vms = vms
            .iter()
            .map(|v| {
                let shared = vms.iter().filter(|o| o.lower == v.lower).count() > 1;
                let mut v = v.clone();
                if shared && v.mode == MacvtapMode::Passthru {
                    v.mode = MacvtapMode::Bridge;
                }
                v
            })
            .collect();
        (zone, vms)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Valid input with one field replaced by an arbitrary (often hostile) value.
    #[test]
    fn any_input_is_refused_or_renders_well_formed_files(
        (zone, vms) in valid_input(),
        field in 0usize..5,
        which in any::<prop::sample::Index>(),
        name in any_name(),
        uuid in any_uuid(),
        mac in any::<[u8; 6]>(),
    ) {
        let (mut zone, mut vms) = (zone, vms);
        let i = which.index(vms.len());
        match (field, zone.as_mut()) {
            (0, _) => vms[i].name = name,
            (1, _) => vms[i].lower = name,
            (2, _) => vms[i].uuid = uuid,
            (3, Some(z)) => z.name = name,
            _ => vms[i].mac = MacAddr(mac),
        }
        if let Ok(r) = render_all(zone.as_ref(), &vms) {
            check_rendered(&r, zone.as_ref(), &vms)?;
        }
    }

    #[test]
    fn valid_input_always_renders((zone, vms) in valid_input()) {
        let r = render_all(zone.as_ref(), &vms);
        prop_assert!(r.is_ok(), "{:?}", r);
        check_rendered(&r.map_err(|e| TestCaseError::fail(e.to_string()))?, zone.as_ref(), &vms)?;
    }
}

// ---------------------------------------------------------------------------------------
// The real systemd-networkd.

const NETWORKD: &str = "/lib/systemd/systemd-networkd";

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "volt-networkd-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// networkd running in a namespace, killed and reaped on drop (also when a test fails).
struct Networkd {
    child: Child,
    log: PathBuf,
}

impl Networkd {
    /// Starts networkd in `ns` with `config` as `/etc/systemd/network`, in a mount namespace
    /// of its own: tmpfs on `/run/systemd` (its state), and `/sys` read-only, which networkd
    /// takes to mean "no udev here" and so configures links without waiting for udev.
    fn start(ns: &NetNs, config: &Path, log: &Path) -> Networkd {
        const SCRIPT: &str = "set -e
            mount -t tmpfs tmpfs /run/systemd
            mount -o remount,bind,ro /sys
            mount --bind \"$1\" /etc/systemd/network
            exec \"$2\"";
        let out = File::create(log).expect("create networkd log");
        let err = out.try_clone().expect("dup log");
        // `ip netns exec`, `unshare` and `exec` replace one another: the child is networkd.
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "unshare",
                "-m",
                "sh",
                "-c",
                SCRIPT,
                "sh",
            ])
            .arg(config)
            .arg(NETWORKD)
            .env("SYSTEMD_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn systemd-networkd");
        Networkd {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Networkd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One link as `ip -d link show` describes it.
#[derive(Debug, Default)]
struct LinkInfo {
    name: String,
    /// After `@` (the lower link of a macvtap, the peer of a veth).
    at: Option<String>,
    up: bool,
    mac: String,
    /// The `macvtap mode X` line's mode.
    macvtap_mode: Option<String>,
}

fn links(ns: &NetNs) -> Vec<LinkInfo> {
    let out = ns
        .exec(&["ip", "-d", "link", "show"])
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut links: Vec<LinkInfo> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            // `5: vm0@vlow: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu ...`
            let mut parts = line.splitn(3, ": ");
            let (_, Some(full), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (name, at) = match full.split_once('@') {
                Some((n, a)) => (n.to_string(), Some(a.to_string())),
                None => (full.to_string(), None),
            };
            let flags = rest.split('>').next().unwrap_or("");
            let up = flags.trim_start_matches('<').split(',').any(|f| f == "UP");
            links.push(LinkInfo {
                name,
                at,
                up,
                ..LinkInfo::default()
            });
            continue;
        }
        let Some(link) = links.last_mut() else {
            continue;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["link/ether", mac, ..] => link.mac = mac.to_string(),
            ["macvtap", "mode", mode, ..] => link.macvtap_mode = Some(mode.to_string()),
            _ => {}
        }
    }
    links
}

fn vm(i: u8, name: &str, lower: &str, mode: MacvtapMode) -> VmLink {
    VmLink {
        uuid: format!("5f0c3a2e-7d41-4b8e-9a6f-0000000000{i:02x}"),
        name: name.into(),
        lower: lower.into(),
        mode,
        mac: MacAddr([0x52, 0x54, 0, 0xab, 0xcd, i]),
    }
}

/// An ARP request from `mac`/`ip` for `target`.
fn arp_request(mac: MacAddr, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The sender MAC of an ARP reply to `mac` that says `from` is at that MAC.
fn arp_reply_from(frame: &[u8], mac: MacAddr, from: Ipv4Addr) -> Option<MacAddr> {
    let is_reply = frame.len() >= 42
        && frame[0..6] == mac.0
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == from.octets();
    is_reply.then(|| MacAddr(frame[22..28].try_into().expect("6 bytes")))
}

/// Opens the networkd-made macvtap from inside its namespace (`Macvtap::open` finds the
/// device through that namespace's own sysfs, not the global `/dev/tap<ifindex>`).
fn open_macvtap(ns: &NetNs, name: &str, _scratch: &Path) -> Macvtap {
    let _in = ns.enter().expect("enter namespace");
    Macvtap::open(name, 1).expect("macvtap backend")
}

#[test]
fn networkd_creates_the_rendered_links_and_traffic_passes() {
    const TEST: &str = "networkd_creates_the_rendered_links_and_traffic_passes";
    if skip_unless_root(TEST) {
        return;
    }
    if !Path::new(NETWORKD).exists() {
        println!("SKIPPED {TEST}: {NETWORKD} is missing (Debian package systemd)");
        return;
    }
    let ns = NetNs::new("networkd").expect("namespace");
    let peer_ns = NetNs::new("nd-peer").expect("peer namespace");
    // vlow carries three macvtaps; its peer is a host with an address in another namespace.
    // vlow2 is owned by a passthru macvtap.
    ns.exec(&[
        "ip", "link", "add", "vlow", "type", "veth", "peer", "name", "vpeer",
    ])
    .expect("veth");
    ns.exec(&["ip", "link", "set", "vpeer", "netns", peer_ns.name()])
        .expect("move peer");
    peer_ns
        .exec(&["ip", "addr", "add", "10.9.0.2/24", "dev", "vpeer"])
        .expect("peer address");
    peer_ns
        .exec(&["ip", "link", "set", "vpeer", "up"])
        .expect("peer up");
    ns.exec(&[
        "ip", "link", "add", "vlow2", "type", "veth", "peer", "name", "vpeer2",
    ])
    .expect("veth 2");

    let vms = [
        vm(1, "vmbridge", "vlow", MacvtapMode::Bridge),
        vm(2, "vmvepa", "vlow", MacvtapMode::Vepa),
        vm(3, "vmprivate", "vlow", MacvtapMode::Private),
        vm(4, "vmpassthru", "vlow2", MacvtapMode::Passthru),
        vm(5, "vmzone", "zone0", MacvtapMode::Bridge),
    ];
    let zone = ZoneBridge {
        name: "zone0".into(),
        address: Ipv4Addr::new(10, 0, 1, 1),
        prefix: 24,
        masquerade: true,
    };
    let rendered = render_all(Some(&zone), &vms).expect("render");
    let scratch = Scratch::new("networkd");
    let config = scratch.0.join("network");
    let written = rendered.write_to(&config).expect("write files");
    assert_eq!(written.len(), 14, "5 VMs, 2 lower links, the zone");

    let start = Instant::now();
    let networkd = Networkd::start(&ns, &config, &scratch.0.join("networkd.log"));
    let ready = |links: &[LinkInfo]| {
        vms.iter()
            .all(|v| links.iter().any(|l| l.name == v.name && l.up))
    };
    let mut seen = links(&ns);
    while !ready(&seen) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        seen = links(&ns);
    }
    let took = start.elapsed();
    assert!(
        ready(&seen),
        "networkd did not create every macvtap up within 10 s; links: {seen:#?}\nlog:\n{}",
        networkd.log_tail()
    );
    // The zone's address may land a moment after its macvtap is up.
    let addr_deadline = Instant::now() + Duration::from_secs(5);
    let zone_addr = loop {
        let out = ns
            .exec(&["ip", "-4", "-o", "addr", "show", "dev", "zone0"])
            .expect("zone address");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("inet 10.0.1.1/24") || Instant::now() > addr_deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "systemd-networkd created {} macvtaps and zone0 in {took:?}",
        vms.len()
    );
    for v in &vms {
        let l = seen
            .iter()
            .find(|l| l.name == v.name)
            .expect("listed above");
        println!(
            "  {}@{}: mode {:?}, mac {}, up {}",
            l.name,
            l.at.as_deref().unwrap_or("-"),
            l.macvtap_mode,
            l.mac,
            l.up
        );
        assert_eq!(
            l.macvtap_mode.as_deref(),
            Some(v.mode.as_str()),
            "{}",
            v.name
        );
        assert_eq!(l.mac, v.mac.to_string(), "{}", v.name);
        assert_eq!(l.at.as_deref(), Some(v.lower.as_str()), "{}", v.name);
        // Name and MAC count as set by the user (NET_NAME_USER, NET_ADDR_SET): udev's
        // default .link leaves them alone, so no .link file is rendered.
        let assigned = ns
            .exec(&[
                "cat",
                &format!("/sys/class/net/{}/name_assign_type", v.name),
                &format!("/sys/class/net/{}/addr_assign_type", v.name),
            ])
            .expect("assign types");
        let assigned = String::from_utf8_lossy(&assigned.stdout).into_owned();
        assert_eq!(
            assigned.split_whitespace().collect::<Vec<_>>(),
            ["3", "3"],
            "{}",
            v.name
        );
    }
    // Passthru lends the VM's MAC to the link it owns.
    let vlow2 = seen.iter().find(|l| l.name == "vlow2").expect("vlow2");
    assert_eq!(vlow2.mac, vms[3].mac.to_string());
    assert!(zone_addr.contains("inet 10.0.1.1/24"), "zone0: {zone_addr}");
    let fwd = ns
        .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
        .expect("ip_forward");
    assert_eq!(
        String::from_utf8_lossy(&fwd.stdout).trim(),
        "1",
        "IPForward=ipv4"
    );
    if let Ok(rules) = ns.exec(&["nft", "list", "ruleset"]) {
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(
            rules.contains("10.0.1.0/24") && rules.contains("masquerade"),
            "IPMasquerade=ipv4: {rules}"
        );
        println!("  zone0 10.0.1.1/24, ip_forward 1, nft masquerade of 10.0.1.0/24");
    } else {
        println!("  nft is missing: the masquerade rule was not checked");
    }
    drop(networkd);

    // The bridge-mode macvtap carries the guest's frames: an ARP request out, the reply in.
    let mut backend = open_macvtap(&ns, "vmbridge", &scratch.0);
    let mut q = backend.open_queue_pair(0).expect("queue pair");
    let mac = vms[0].mac;
    let (me, peer) = (Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2));
    let request = arp_request(mac, me, peer);
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut next_send = Instant::now();
    let answer = loop {
        if Instant::now() >= next_send {
            let slices = [net_api::IoBuf::from_slice(&request)];
            let frame = TxFrame {
                hdr: VirtioNetHdr::PLAIN,
                data: &slices,
            };
            assert_eq!(q.send(&[frame]).expect("send"), 1, "ARP request sent");
            next_send = Instant::now() + Duration::from_millis(500);
        }
        let got = q.recv(&[IoBufMut::from_mut_slice(&mut buf)]).expect("recv");
        match got {
            Some(rx) => {
                if let Some(from) = arp_reply_from(&buf[..rx.len], mac, peer) {
                    break Some(from);
                }
            }
            None if Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let peer_mac = peer_ns
        .exec(&["cat", "/sys/class/net/vpeer/address"])
        .expect("peer MAC");
    let peer_mac = String::from_utf8_lossy(&peer_mac.stdout).trim().to_string();
    let from = answer.expect("an ARP reply from 10.9.0.2 within 5 s");
    assert_eq!(from.to_string(), peer_mac, "the reply comes from the peer");
    println!("  vmbridge: ARP who-has 10.9.0.2 answered by {from}");
}
