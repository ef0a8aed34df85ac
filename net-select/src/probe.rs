//! What the host offers, per interface: kind, driver, speed, state, queues, MTU, XDP features
//! (from the kernel's `netdev` generic-netlink family, or a driver list on kernels without
//! it, saying which), and host-wide: `/dev/net/tun`, macvtap, the process's capabilities.
//!
//! Everything is read through [`HostView`], so tests hand the probe a fake sysfs tree and
//! fake netlink answers; [`System`] is the real host.

use std::io;

use serde::Serialize;

use crate::genl::DevXdp;

/// `NETDEV_XDP_ACT_*` bits of `NETDEV_A_DEV_XDP_FEATURES`.
pub mod xdp_act {
    /// XDP_PASS, XDP_DROP, XDP_ABORTED, XDP_TX in the driver (native XDP).
    pub const BASIC: u64 = 1 << 0;
    /// XDP_REDIRECT from the driver (what AF_XDP needs in native mode).
    pub const REDIRECT: u64 = 1 << 1;
    /// `ndo_xdp_xmit`: frames redirected to this device can be sent.
    pub const NDO_XMIT: u64 = 1 << 2;
    /// AF_XDP zero-copy.
    pub const XSK_ZEROCOPY: u64 = 1 << 3;
    /// Offload to the NIC.
    pub const HW_OFFLOAD: u64 = 1 << 4;
    /// Multi-buffer (frames over one page) on receive.
    pub const RX_SG: u64 = 1 << 5;
    /// Multi-buffer for `ndo_xdp_xmit`.
    pub const NDO_XMIT_SG: u64 = 1 << 6;
}

/// Drivers with native XDP (basic, redirect, `ndo_xdp_xmit`), for kernels without the
/// `netdev` family (before 6.3): in-tree drivers whose XDP has redirect (`ixgbevf` and `nfp`
/// have native XDP without it, and are left out).
#[rustfmt::skip]
const NATIVE_XDP_DRIVERS: &[&str] = &[
    "bnxt_en", "dpaa2-eth", "ena", "enetc", "fec", "gve", "hv_netvsc", "i40e", "ice", "idpf",
    "igb", "igc", "ixgbe", "mlx4_en", "mlx5_core", "mvneta", "mvpp2", "qede", "sfc",
    "stmmac", "thunder-nicvf", "tsnep", "tun", "veth", "virtio_net", "xennet",
];

/// Drivers with AF_XDP zero-copy, for the same kernels.
#[rustfmt::skip]
const ZEROCOPY_DRIVERS: &[&str] = &[
    "gve", "i40e", "ice", "idpf", "igc", "ixgbe", "mlx5_core", "stmmac",
];

/// A link as rtnetlink lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEntry {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, ...); `None` for physical links and `lo`.
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// MAC address, when the link has one.
    pub mac: Option<String>,
    /// The index of the link's master (the bridge or bond it is a port of).
    pub master: Option<u32>,
}

/// Where the probe reads the host. Paths are absolute (`/sys/class/net/eth0/speed`).
pub trait HostView {
    /// Every link in the network namespace.
    fn links(&self) -> io::Result<Vec<LinkEntry>>;
    /// A small text file (sysfs, procfs), trimmed; `None` when unreadable.
    fn read(&self, path: &str) -> Option<String>;
    /// The last component of a symlink's target (`.../device/driver` -> `i40e`).
    fn read_link(&self, path: &str) -> Option<String>;
    /// A directory's entries.
    fn list(&self, path: &str) -> Vec<String>;
    /// Whether a path exists.
    fn exists(&self, path: &str) -> bool;
    /// `NETDEV_CMD_DEV_GET` for `ifindex`: `Ok(None)` when the kernel has no `netdev` family.
    fn xdp(&self, ifindex: u32) -> io::Result<Option<DevXdp>>;
}

/// The real host: sysfs, procfs, rtnetlink and generic netlink in the caller's network
/// namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct System;

impl HostView for System {
    fn links(&self) -> io::Result<Vec<LinkEntry>> {
        let mut nl = net_macvtap::netlink::Netlink::open().map_err(io::Error::other)?;
        Ok(nl
            .links()
            .map_err(io::Error::other)?
            .into_iter()
            .map(|l| LinkEntry {
                name: l.name,
                index: l.index,
                kind: l.kind,
                mtu: l.mtu,
                mac: l.mac.map(|m| m.to_string()),
                master: l.master,
            })
            .collect())
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn read_link(&self, path: &str) -> Option<String> {
        std::fs::read_link(path)
            .ok()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }

    fn list(&self, path: &str) -> Vec<String> {
        std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn exists(&self, path: &str) -> bool {
        std::path::Path::new(path).exists()
    }

    fn xdp(&self, ifindex: u32) -> io::Result<Option<DevXdp>> {
        crate::genl::dev_xdp(ifindex)
    }
}

/// What an interface is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// A NIC (a device behind a bus: `/sys/class/net/IF/device` exists).
    Physical,
    /// One end of a veth pair.
    Veth,
    /// A Linux bridge.
    Bridge,
    /// A macvlan.
    Macvlan,
    /// A macvtap.
    Macvtap,
    /// A TUN/TAP device.
    Tun,
    /// The loopback.
    Loopback,
    /// Another virtual kind (`vlan`, `bond`, `vxlan`, ...), as the kernel names it.
    Other(String),
}

impl LinkKind {
    /// The kernel's name for it.
    pub fn as_str(&self) -> &str {
        match self {
            LinkKind::Physical => "physical",
            LinkKind::Veth => "veth",
            LinkKind::Bridge => "bridge",
            LinkKind::Macvlan => "macvlan",
            LinkKind::Macvtap => "macvtap",
            LinkKind::Tun => "tun",
            LinkKind::Loopback => "loopback",
            LinkKind::Other(k) => k,
        }
    }
}

/// Where the XDP answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpSource {
    /// The kernel's `netdev` family (authoritative).
    Netlink,
    /// The built-in driver list (the kernel could not be asked).
    DriverList,
}

/// An interface's XDP features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XdpSupport {
    /// Native XDP in the driver.
    pub basic: bool,
    /// `XDP_REDIRECT` (to an XSK).
    pub redirect: bool,
    /// `ndo_xdp_xmit`.
    pub ndo_xmit: bool,
    /// AF_XDP zero-copy.
    pub xsk_zerocopy: bool,
    /// Multi-buffer receive (frames larger than a page).
    pub rx_sg: bool,
    /// Most buffers per zero-copy frame, when the kernel says.
    pub zc_max_segs: Option<u32>,
    /// Where this came from.
    pub source: XdpSource,
}

impl XdpSupport {
    fn from_bits(bits: u64, zc_max_segs: Option<u32>) -> Self {
        XdpSupport {
            basic: bits & xdp_act::BASIC != 0,
            redirect: bits & xdp_act::REDIRECT != 0,
            ndo_xmit: bits & xdp_act::NDO_XMIT != 0,
            xsk_zerocopy: bits & xdp_act::XSK_ZEROCOPY != 0,
            rx_sg: bits & xdp_act::RX_SG != 0,
            zc_max_segs,
            source: XdpSource::Netlink,
        }
    }

    fn from_driver(driver: Option<&str>) -> Self {
        let native = driver.is_some_and(|d| NATIVE_XDP_DRIVERS.contains(&d));
        XdpSupport {
            basic: native,
            redirect: native,
            ndo_xmit: native,
            xsk_zerocopy: driver.is_some_and(|d| ZEROCOPY_DRIVERS.contains(&d)),
            rx_sg: false,
            zc_max_segs: None,
            source: XdpSource::DriverList,
        }
    }

    /// Native XDP able to redirect to an XSK: what AF_XDP needs to run in driver mode.
    pub fn native_redirect(&self) -> bool {
        self.basic && self.redirect
    }

    /// The features set, as words (`basic redirect ndo_xmit`), or `none`.
    pub fn words(&self) -> String {
        words(&[
            (self.basic, "basic"),
            (self.redirect, "redirect"),
            (self.ndo_xmit, "ndo_xmit"),
            (self.xsk_zerocopy, "xsk_zerocopy"),
            (self.rx_sg, "rx_sg"),
        ])
    }
}

/// The names of the flags that are set, space-separated, or `none`.
fn words(flags: &[(bool, &str)]) -> String {
    let w: Vec<&str> = flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, w)| *w)
        .collect();
    if w.is_empty() {
        "none".into()
    } else {
        w.join(" ")
    }
}

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Index.
    pub ifindex: u32,
    /// Kind.
    pub kind: LinkKind,
    /// Driver (sysfs for devices; the link kind for virtual links).
    pub driver: Option<String>,
    /// Link speed in Mb/s, when the driver reports one.
    pub speed_mbps: Option<u32>,
    /// `operstate` (`up`, `down`, `unknown`, ...).
    pub operstate: String,
    /// MTU.
    pub mtu: u32,
    /// MAC address.
    pub mac: Option<String>,
    /// Receive queues.
    pub rx_queues: u32,
    /// Transmit queues.
    pub tx_queues: u32,
    /// The bridge or bond this link is a port of.
    pub master: Option<String>,
    /// XDP features.
    pub xdp: XdpSupport,
}

/// The process's capabilities that matter here (effective set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Privileges {
    /// `CAP_NET_ADMIN`: create links, attach XDP, open TAPs.
    pub net_admin: bool,
    /// `CAP_NET_RAW`: AF_XDP sockets.
    pub net_raw: bool,
    /// `CAP_BPF`: load BPF programs (Linux 5.8+).
    pub bpf: bool,
    /// `CAP_SYS_ADMIN`: BPF on older kernels, and everything else.
    pub sys_admin: bool,
}

impl Privileges {
    /// From the hex `CapEff:` of `/proc/self/status`.
    pub fn from_cap_eff(hex: &str) -> Option<Privileges> {
        let bits = u64::from_str_radix(hex.trim(), 16).ok()?;
        let has = |cap: u32| bits & (1u64 << cap) != 0;
        Some(Privileges {
            net_admin: has(12),
            net_raw: has(13),
            sys_admin: has(21),
            bpf: has(39),
        })
    }

    /// The capabilities held, as words (`net_admin bpf`), or `none`.
    pub fn words(&self) -> String {
        words(&[
            (self.net_admin, "net_admin"),
            (self.net_raw, "net_raw"),
            (self.bpf, "bpf"),
            (self.sys_admin, "sys_admin"),
        ])
    }

    /// May load the XDP program.
    pub fn can_load_bpf(&self) -> bool {
        self.bpf || self.sys_admin
    }
}

/// Everything the probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostProbe {
    /// `uname -r`.
    pub kernel: String,
    /// `/dev/net/tun` exists.
    pub tun: bool,
    /// macvtap is loaded or loadable.
    pub macvtap: bool,
    /// The process's capabilities.
    pub privileges: Privileges,
    /// The interfaces probed.
    pub interfaces: Vec<Interface>,
    /// What the probe could not see, and how it made do.
    pub notes: Vec<String>,
}

/// The probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Interfaces could not be listed.
    #[error("listing the interfaces over rtnetlink: {0}")]
    Links(io::Error),
    /// The interface asked for does not exist.
    #[error("no interface named '{0}' in this network namespace (`ip link` lists them)")]
    NoSuchInterface(String),
}

/// Probes the host; only `only` when given.
pub fn probe(host: &impl HostView, only: Option<&str>) -> Result<HostProbe, ProbeError> {
    let links = host.links().map_err(ProbeError::Links)?;
    if let Some(name) = only {
        if !links.iter().any(|l| l.name == name) {
            return Err(ProbeError::NoSuchInterface(name.to_string()));
        }
    }
    let kernel = host
        .read("/proc/sys/kernel/osrelease")
        .unwrap_or_else(|| "unknown".into());
    let mut notes = Vec::new();
    let privileges = match host
        .read("/proc/self/status")
        .as_deref()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:")))
        .and_then(Privileges::from_cap_eff)
    {
        Some(p) => p,
        None => {
            notes.push("could not read the capabilities (/proc/self/status): assuming none".into());
            Privileges::default()
        }
    };
    if !privileges.net_admin {
        notes.push(
            "no CAP_NET_ADMIN: this process could not create macvtaps or TAPs or attach XDP; run as root (or with CAP_NET_ADMIN) to use what is chosen"
                .into(),
        );
    }
    let tun = host.exists("/dev/net/tun");
    // Registered (built in or loaded: the device class exists), or a module to load.
    let macvtap = host.exists("/sys/class/macvtap")
        || host.exists("/sys/module/macvtap")
        || host
            .list(&format!("/lib/modules/{kernel}/kernel/drivers/net"))
            .iter()
            .any(|f| f.starts_with("macvtap.ko"));
    let mut netlink_note = None;
    let mut interfaces = Vec::new();
    for link in links.iter().filter(|l| only.is_none_or(|n| n == l.name)) {
        let (mut iface, note) = interface(host, link);
        iface.master = link
            .master
            .and_then(|m| links.iter().find(|l| l.index == m))
            .map(|l| l.name.clone());
        if netlink_note.is_none() {
            netlink_note = note;
        }
        interfaces.push(iface);
    }
    notes.extend(netlink_note);
    Ok(HostProbe {
        kernel,
        tun,
        macvtap,
        privileges,
        interfaces,
        notes,
    })
}

fn interface(host: &impl HostView, link: &LinkEntry) -> (Interface, Option<String>) {
    let sys = format!("/sys/class/net/{}", link.name);
    let kind = match link.kind.as_deref() {
        Some("veth") => LinkKind::Veth,
        Some("bridge") => LinkKind::Bridge,
        Some("macvlan") => LinkKind::Macvlan,
        Some("macvtap") => LinkKind::Macvtap,
        Some("tun") => LinkKind::Tun,
        Some(other) => LinkKind::Other(other.to_string()),
        None if link.name == "lo" => LinkKind::Loopback,
        None if host.exists(&format!("{sys}/device")) => LinkKind::Physical,
        None => LinkKind::Other("unknown".into()),
    };
    let driver = host
        .read_link(&format!("{sys}/device/driver"))
        .or_else(|| link.kind.clone());
    let speed_mbps = host
        .read(&format!("{sys}/speed"))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|&s| s > 0)
        .and_then(|s| u32::try_from(s).ok());
    let operstate = host
        .read(&format!("{sys}/operstate"))
        .unwrap_or_else(|| "unknown".into());
    let queues = host.list(&format!("{sys}/queues"));
    let count = |p: &str| queues.iter().filter(|q| q.starts_with(p)).count() as u32;
    let (xdp, note) = match host.xdp(link.index) {
        Ok(Some(d)) => (XdpSupport::from_bits(d.features, d.zc_max_segs), None),
        Ok(None) => (
            XdpSupport::from_driver(driver.as_deref()),
            Some("the kernel has no netdev generic-netlink family (Linux < 6.3): XDP features come from a driver list".to_string()),
        ),
        Err(e) => (
            XdpSupport::from_driver(driver.as_deref()),
            Some(format!(
                "asking the kernel's netdev family failed ({e}): XDP features come from a driver list"
            )),
        ),
    };
    (
        Interface {
            name: link.name.clone(),
            ifindex: link.index,
            kind,
            driver,
            speed_mbps,
            operstate,
            mtu: link.mtu,
            mac: link.mac.clone(),
            rx_queues: count("rx-"),
            tx_queues: count("tx-"),
            master: None,
            xdp,
        },
        note,
    )
}

/// A host made of maps, for tests (of this crate and of VMMs that embed the probe).
#[derive(Debug, Default, Clone)]
pub struct FakeHost {
    /// The links rtnetlink would list.
    pub links: Vec<LinkEntry>,
    /// File contents by path.
    pub files: std::collections::HashMap<String, String>,
    /// Symlink targets' last component by path.
    pub symlinks: std::collections::HashMap<String, String>,
    /// Directory entries by path.
    pub dirs: std::collections::HashMap<String, Vec<String>>,
    /// Paths that exist besides the above.
    pub paths: Vec<String>,
    /// XDP answers by ifindex; `None`: the kernel has no `netdev` family.
    pub xdp: Option<std::collections::HashMap<u32, DevXdp>>,
}

impl HostView for FakeHost {
    fn links(&self) -> io::Result<Vec<LinkEntry>> {
        Ok(self.links.clone())
    }

    fn read(&self, path: &str) -> Option<String> {
        self.files.get(path).map(|s| s.trim().to_string())
    }

    fn read_link(&self, path: &str) -> Option<String> {
        self.symlinks.get(path).cloned()
    }

    fn list(&self, path: &str) -> Vec<String> {
        self.dirs.get(path).cloned().unwrap_or_default()
    }

    fn exists(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p == path)
            || self.files.contains_key(path)
            || self.symlinks.contains_key(path)
            || self.dirs.contains_key(path)
    }

    fn xdp(&self, ifindex: u32) -> io::Result<Option<DevXdp>> {
        match &self.xdp {
            None => Ok(None),
            Some(m) => m
                .get(&ifindex)
                .copied()
                .map(Some)
                .ok_or_else(|| io::Error::from_raw_os_error(nix::errno::Errno::ENODEV as i32)),
        }
    }
}
