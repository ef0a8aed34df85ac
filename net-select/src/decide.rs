//! The decision: a pure function from what the probe saw and what the VM needs to a backend,
//! with the reasons that led there, the alternatives rejected and why, and warnings.
//!
//! # How the seed's tree is read
//!
//! The seed's drawing asks "Is the NIC XDP-capable?", then "Need > 25 Gbps?", and its arrow
//! from that question's NO branch points at "Use AF_XDP" while YES leads nowhere. Read
//! literally, an XDP NIC would get AF_XDP exactly when it does *not* need the throughput. This
//! selector reads it the way the rest of the seed argues (AF_XDP costs dedicated cores and
//! memory, and pays off above what macvtap and vhost-user reach, about 20-25 Gbps):
//!
//! 1. An external vhost-user switch socket was named: **vhost-user**. The operator said where
//!    the VM's port lives; nothing on this host is chosen instead.
//! 2. The NIC has native XDP with redirect *and* more than 25 Gbps is required: **AF_XDP**,
//!    zero-copy when the driver has XSK zero-copy, copy mode otherwise.
//! 3. Otherwise macvtap, the mode from the requirements in this order: VM-to-VM on the host
//!    -> **bridge**; tenant isolation -> **private**; an external VEPA switch -> **vepa**; one
//!    VM owning the NIC -> **passthru**. With none of these, **bridge**: the seed's "NO ->
//!    passthru" leaf would hand the whole NIC (and its MAC) to one VM and cut the host and
//!    every other VM off it, which nobody should get without asking (`exclusive`).
//! 4. No macvtap (no module, or a link macvtap cannot sit on): **TAP**, the last resort, the
//!    host bridging or routing for it.
//!
//! Nothing here reads the host: tests give it any [`HostProbe`].

use serde::Serialize;

use crate::probe::{HostProbe, Interface, LinkKind};

/// Above this, AF_XDP (the seed's line: macvtap and vhost-user reach about 20-25 Gbps).
pub const AFXDP_THRESHOLD_GBPS: f64 = 25.0;

/// The largest MTU an AF_XDP frame holds in one 4 KiB chunk without multi-buffer: the page
/// less XDP's 256-byte headroom and the `skb_shared_info` tail (320 bytes on x86-64), less
/// the Ethernet header.
pub const AFXDP_SINGLE_BUFFER_MTU: u32 = 4096 - 256 - 320 - 14;

/// What the VM needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Requirements {
    /// Throughput the VM must reach, in Gb/s.
    pub throughput_gbps: Option<f64>,
    /// VMs on this host talk to each other.
    pub vm_to_vm: bool,
    /// Tenants must not see each other on this host.
    pub isolate: bool,
    /// An external switch in VEPA mode reflects traffic between VMs.
    pub vepa: bool,
    /// One VM owns the NIC.
    pub exclusive: bool,
    /// An external vhost-user switch (OVS-DPDK, ...) listens on this socket.
    pub vhost_user_socket: Option<String>,
    /// AF_XDP zero-copy is wanted.
    pub zero_copy: bool,
}

/// A macvtap mode: net-macvtap's, the one the links are made with.
pub use net_macvtap::netlink::MacvtapMode;

/// Serializes a macvtap mode as its word (`bridge`, ...).
fn mode_word<S: serde::Serializer>(mode: &MacvtapMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.as_str())
}

/// The backend chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum Choice {
    /// AF_XDP on the interface, in native (driver) mode.
    Afxdp {
        /// Zero-copy (the driver has it), else copy mode.
        zero_copy: bool,
    },
    /// A macvtap on the interface.
    Macvtap {
        /// Its mode.
        #[serde(serialize_with = "mode_word")]
        mode: MacvtapMode,
    },
    /// The VM's queues go to an external vhost-user switch.
    VhostUser {
        /// The switch's socket.
        socket: String,
    },
    /// A TAP device.
    Tap,
}

impl Choice {
    /// A short name: `afxdp (zero-copy)`, `macvtap (bridge)`, `vhost-user`, `tap`.
    pub fn label(&self) -> String {
        match self {
            Choice::Afxdp { zero_copy: true } => "afxdp (zero-copy)".into(),
            Choice::Afxdp { zero_copy: false } => "afxdp (copy)".into(),
            Choice::Macvtap { mode } => format!("macvtap ({})", mode.as_str()),
            Choice::VhostUser { .. } => "vhost-user".into(),
            Choice::Tap => "tap".into(),
        }
    }
}

/// An alternative not taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// The backend (`afxdp`, `macvtap (passthru)`, ...).
    pub backend: String,
    /// Why not.
    pub why: String,
}

/// The answer for one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The interface the VM's traffic goes through.
    pub interface: String,
    /// What was chosen.
    pub choice: Choice,
    /// Why, in the order the questions were asked.
    pub reasons: Vec<String>,
    /// What was not chosen, and why.
    pub rejected: Vec<Rejected>,
    /// What the operator should know.
    pub warnings: Vec<String>,
}

/// No backend fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("no backend fits {interface}: {}", why.join("; "))]
pub struct NoBackend {
    /// The interface.
    pub interface: String,
    /// Why each one was ruled out.
    pub why: Vec<String>,
}

/// Whether a macvtap can sit on a link of this kind, and why not.
fn macvtap_lower(kind: &LinkKind) -> Result<(), String> {
    match kind {
        LinkKind::Physical | LinkKind::Veth | LinkKind::Bridge => Ok(()),
        LinkKind::Other(k) if matches!(k.as_str(), "bond" | "vlan" | "team") => Ok(()),
        LinkKind::Loopback => Err("the loopback carries no VM traffic".into()),
        k => Err(format!(
            "a macvtap cannot sit on a {} link (it needs a NIC, a bond, a VLAN, a veth or a bridge)",
            k.as_str()
        )),
    }
}

/// Chooses a backend for a VM whose traffic goes through `iface`.
pub fn decide(
    host: &HostProbe,
    iface: &Interface,
    req: &Requirements,
) -> Result<Decision, NoBackend> {
    let name = &iface.name;
    let mut reasons = Vec::new();
    let mut rejected = Vec::new();
    let mut warnings = Vec::new();
    let reject = |rejected: &mut Vec<Rejected>, backend: &str, why: String| {
        rejected.push(Rejected {
            backend: backend.to_string(),
            why,
        })
    };
    let need = req.throughput_gbps.unwrap_or(0.0);
    let xdp = &iface.xdp;
    let xdp_src = match xdp.source {
        crate::probe::XdpSource::Netlink => "the kernel says",
        crate::probe::XdpSource::DriverList => "from the driver list",
    };
    let driver = iface.driver.as_deref().unwrap_or("unknown");

    // 1. An external switch.
    if let Some(socket) = &req.vhost_user_socket {
        reasons.push(format!(
            "an external vhost-user switch listens on {socket}: the VM's queues go to it"
        ));
        for b in ["afxdp", "macvtap", "tap"] {
            reject(
                &mut rejected,
                b,
                "the external switch carries the VM's traffic, not this host's stack".into(),
            );
        }
        return Ok(Decision {
            interface: name.clone(),
            choice: Choice::VhostUser {
                socket: socket.clone(),
            },
            reasons,
            rejected,
            warnings,
        });
    }
    reject(
        &mut rejected,
        "vhost-user",
        "no external vhost-user switch socket was given".into(),
    );

    // 2. AF_XDP when the NIC can and the throughput calls for it.
    let afxdp_why_not = if !xdp.native_redirect() {
        Some(format!(
            "{name} ({driver}) has no native XDP redirect ({xdp_src}: {})",
            xdp.words()
        ))
    } else if need <= AFXDP_THRESHOLD_GBPS {
        Some(if req.throughput_gbps.is_some() {
            format!("{need} Gb/s is within what macvtap reaches ({AFXDP_THRESHOLD_GBPS} Gb/s): AF_XDP's dedicated cores and memory do not pay off")
        } else {
            format!("no throughput above {AFXDP_THRESHOLD_GBPS} Gb/s was asked for (--throughput): AF_XDP's dedicated cores and memory do not pay off")
        })
    } else {
        None
    };
    if xdp.native_redirect() && iface.mtu > AFXDP_SINGLE_BUFFER_MTU && !xdp.rx_sg {
        warnings.push(format!(
            "MTU {} on {name} is above the {AFXDP_SINGLE_BUFFER_MTU} bytes an AF_XDP frame holds in one 4 KiB chunk, and the driver has no multi-buffer XDP (rx_sg): AF_XDP would refuse larger frames; lower the MTU",
            iface.mtu
        ));
    }
    if req.zero_copy && !xdp.xsk_zerocopy {
        warnings.push(format!(
            "zero-copy was asked for, but {name} ({driver}) has no AF_XDP zero-copy ({xdp_src}): AF_XDP would run in copy mode"
        ));
    }
    match afxdp_why_not {
        None => {
            let zero_copy = xdp.xsk_zerocopy;
            reasons.push(format!(
                "{name} ({driver}) has native XDP with redirect ({xdp_src}: {})",
                xdp.words()
            ));
            reasons.push(format!(
                "{need} Gb/s asked for: above the {AFXDP_THRESHOLD_GBPS} Gb/s macvtap and vhost-user reach"
            ));
            reasons.push(if zero_copy {
                "the driver has XSK zero-copy: frames stay in the UMEM".into()
            } else {
                "the driver has no XSK zero-copy: copy mode".into()
            });
            if !host.privileges.can_load_bpf() || !host.privileges.net_admin {
                warnings.push("this process has no CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN: loading the XDP program will fail; run the VMM with CAP_BPF, CAP_NET_ADMIN and CAP_NET_RAW".into());
            }
            for b in ["macvtap", "tap"] {
                reject(
                    &mut rejected,
                    b,
                    format!("tops out below the {need} Gb/s asked for"),
                );
            }
            return Ok(Decision {
                interface: name.clone(),
                choice: Choice::Afxdp { zero_copy },
                reasons,
                rejected,
                warnings,
            });
        }
        Some(why) => {
            if need > AFXDP_THRESHOLD_GBPS {
                warnings.push(format!(
                    "{need} Gb/s asked for, but {name} cannot do AF_XDP in driver mode: macvtap reaches about 20 Gb/s"
                ));
            }
            reject(&mut rejected, "afxdp", why);
        }
    }

    // 3. macvtap, its mode from the requirements.
    let lower = macvtap_lower(&iface.kind).and_then(|()| match &iface.master {
        Some(m) => Err(format!(
            "{name} is a port of {m}, and a port's frames belong to its master: put the macvtap on {m}"
        )),
        None => Ok(()),
    });
    let macvtap_why_not = if !host.macvtap {
        Some("the kernel has no macvtap module (CONFIG_MACVTAP)".to_string())
    } else {
        lower.err()
    };
    if let Some(why) = macvtap_why_not {
        reasons.push(format!("macvtap cannot be used: {why}"));
        reject(&mut rejected, "macvtap", why);
        // 4. TAP.
        if !host.tun {
            reject(
                &mut rejected,
                "tap",
                "/dev/net/tun is missing (load the tun module or create the node)".into(),
            );
            return Err(NoBackend {
                interface: name.clone(),
                why: rejected
                    .iter()
                    .map(|r| format!("{}: {}", r.backend, r.why))
                    .collect(),
            });
        }
        reasons.push(
            "TAP is the last resort: the host bridges or routes the VM's traffic to the uplink"
                .into(),
        );
        if !host.privileges.net_admin {
            warnings.push(
                "creating a TAP needs CAP_NET_ADMIN (or a persistent TAP owned by this user)"
                    .into(),
            );
        }
        return Ok(Decision {
            interface: name.clone(),
            choice: Choice::Tap,
            reasons,
            rejected,
            warnings,
        });
    }
    reasons.push(format!(
        "{name} is a {} link a macvtap can sit on, and the kernel has macvtap",
        iface.kind.as_str()
    ));
    let mode = if req.vm_to_vm {
        reasons.push(
            "VMs on this host talk to each other: macvtap bridge switches them in the kernel"
                .into(),
        );
        if req.isolate {
            warnings.push("tenant isolation was asked for too, but bridge mode lets sibling VMs talk: ask for isolation alone to get private mode".into());
        }
        MacvtapMode::Bridge
    } else if req.isolate {
        reasons.push(
            "tenants must not see each other: macvtap private drops traffic between sibling VMs"
                .into(),
        );
        MacvtapMode::Private
    } else if req.vepa {
        reasons.push(
            "an external VEPA switch reflects sibling traffic: macvtap vepa sends it out".into(),
        );
        MacvtapMode::Vepa
    } else if req.exclusive {
        reasons.push(format!(
            "the VM owns {name}: macvtap passthru gives it the NIC and its MAC"
        ));
        MacvtapMode::Passthru
    } else {
        reasons.push(format!(
            "no VM-to-VM, isolation, VEPA or NIC ownership asked for: macvtap bridge, which keeps {name} shared (passthru would take it from the host; ask for --exclusive)"
        ));
        MacvtapMode::Bridge
    };
    for other in [
        MacvtapMode::Bridge,
        MacvtapMode::Private,
        MacvtapMode::Vepa,
        MacvtapMode::Passthru,
    ] {
        if other == mode {
            continue;
        }
        let why = match other {
            MacvtapMode::Bridge => "VM-to-VM traffic was not asked for",
            MacvtapMode::Private => "isolation was not asked for, or VM-to-VM wins",
            MacvtapMode::Vepa => "no external VEPA switch was named",
            MacvtapMode::Passthru => "the VM was not given the NIC (--exclusive)",
        };
        reject(
            &mut rejected,
            &format!("macvtap ({})", other.as_str()),
            why.into(),
        );
    }
    reject(
        &mut rejected,
        "tap",
        "macvtap is available: no host bridge or routing needed".into(),
    );
    if mode != MacvtapMode::Passthru {
        warnings.push(format!(
            "the host cannot reach the guest through {name} itself (traffic between a lower link and its macvtaps does not pass): give the host a macvlan on {name}, or reach the guest over another link"
        ));
    }
    if !host.privileges.net_admin {
        warnings.push("creating the macvtap needs CAP_NET_ADMIN (or networkd: volt-net networkd writes its files)".into());
    }
    Ok(Decision {
        interface: name.clone(),
        choice: Choice::Macvtap { mode },
        reasons,
        rejected,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Privileges, XdpSource, XdpSupport};

    fn xdp(native: bool, zc: bool, rx_sg: bool) -> XdpSupport {
        XdpSupport {
            basic: native,
            redirect: native,
            ndo_xmit: native,
            xsk_zerocopy: zc,
            rx_sg,
            zc_max_segs: None,
            source: XdpSource::Netlink,
        }
    }

    fn iface(kind: LinkKind, xdp: XdpSupport, mtu: u32) -> Interface {
        Interface {
            name: "eth0".into(),
            ifindex: 2,
            kind,
            driver: Some("i40e".into()),
            speed_mbps: Some(40_000),
            operstate: "up".into(),
            mtu,
            mac: None,
            rx_queues: 8,
            tx_queues: 8,
            master: None,
            xdp,
        }
    }

    fn host(macvtap: bool, tun: bool, privileged: bool) -> HostProbe {
        let all = Privileges {
            net_admin: true,
            net_raw: true,
            bpf: true,
            sys_admin: true,
        };
        HostProbe {
            kernel: "6.12.0".into(),
            tun,
            macvtap,
            privileges: if privileged {
                all
            } else {
                Privileges::default()
            },
            interfaces: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn req() -> Requirements {
        Requirements::default()
    }

    /// Every leaf of the tree: (what, host, interface, requirements, expected choice).
    #[test]
    fn every_leaf() {
        let nic = |native, zc| iface(LinkKind::Physical, xdp(native, zc, false), 1500);
        let fast = Requirements {
            throughput_gbps: Some(40.0),
            ..req()
        };
        let cases: Vec<(&str, HostProbe, Interface, Requirements, Choice)> = vec![
            (
                "external switch",
                host(true, true, true),
                nic(true, true),
                Requirements {
                    vhost_user_socket: Some("/run/ovs.sock".into()),
                    ..fast.clone()
                },
                Choice::VhostUser {
                    socket: "/run/ovs.sock".into(),
                },
            ),
            (
                "XDP NIC with zero-copy, 40 Gb/s",
                host(true, true, true),
                nic(true, true),
                fast.clone(),
                Choice::Afxdp { zero_copy: true },
            ),
            (
                "XDP NIC without zero-copy, 40 Gb/s",
                host(true, true, true),
                nic(true, false),
                fast.clone(),
                Choice::Afxdp { zero_copy: false },
            ),
            (
                "XDP NIC, 10 Gb/s: the >25 NO branch goes on to macvtap",
                host(true, true, true),
                nic(true, true),
                Requirements {
                    throughput_gbps: Some(10.0),
                    ..req()
                },
                Choice::Macvtap {
                    mode: MacvtapMode::Bridge,
                },
            ),
            (
                "no XDP, 40 Gb/s",
                host(true, true, true),
                nic(false, false),
                fast.clone(),
                Choice::Macvtap {
                    mode: MacvtapMode::Bridge,
                },
            ),
            (
                "VM-to-VM",
                host(true, true, true),
                nic(false, false),
                Requirements {
                    vm_to_vm: true,
                    ..req()
                },
                Choice::Macvtap {
                    mode: MacvtapMode::Bridge,
                },
            ),
            (
                "isolation",
                host(true, true, true),
                nic(false, false),
                Requirements {
                    isolate: true,
                    ..req()
                },
                Choice::Macvtap {
                    mode: MacvtapMode::Private,
                },
            ),
            (
                "VEPA switch",
                host(true, true, true),
                nic(false, false),
                Requirements {
                    vepa: true,
                    ..req()
                },
                Choice::Macvtap {
                    mode: MacvtapMode::Vepa,
                },
            ),
            (
                "exclusive NIC",
                host(true, true, true),
                nic(false, false),
                Requirements {
                    exclusive: true,
                    ..req()
                },
                Choice::Macvtap {
                    mode: MacvtapMode::Passthru,
                },
            ),
            (
                "nothing asked",
                host(true, true, true),
                nic(false, false),
                req(),
                Choice::Macvtap {
                    mode: MacvtapMode::Bridge,
                },
            ),
            (
                "a veth lower link",
                host(true, true, true),
                iface(LinkKind::Veth, xdp(true, false, true), 1500),
                req(),
                Choice::Macvtap {
                    mode: MacvtapMode::Bridge,
                },
            ),
            (
                "a bridge port: macvtap cannot sit on it",
                host(true, true, true),
                Interface {
                    master: Some("br0".into()),
                    ..nic(false, false)
                },
                req(),
                Choice::Tap,
            ),
            (
                "no macvtap in the kernel",
                host(false, true, true),
                nic(false, false),
                req(),
                Choice::Tap,
            ),
            (
                "a link macvtap cannot sit on",
                host(true, true, true),
                iface(LinkKind::Macvlan, xdp(false, false, false), 1500),
                req(),
                Choice::Tap,
            ),
        ];
        for (what, h, i, r, want) in cases {
            let d = decide(&h, &i, &r).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(d.choice, want, "{what}: {d:#?}");
            assert!(!d.reasons.is_empty(), "{what}: no reasons");
            assert!(
                d.rejected.iter().all(|x| !x.why.is_empty()),
                "{what}: a rejection without a reason"
            );
            assert!(
                !d.rejected.iter().any(|x| x.backend == d.choice.label()),
                "{what}: the choice is also rejected"
            );
        }
    }

    #[test]
    fn no_macvtap_and_no_tun_is_no_backend() {
        let i = iface(LinkKind::Physical, xdp(false, false, false), 1500);
        let e = decide(&host(false, false, true), &i, &req()).expect_err("nothing fits");
        assert_eq!(e.interface, "eth0");
        assert!(e.why.iter().any(|w| w.contains("/dev/net/tun")), "{e}");
        assert!(e.why.iter().any(|w| w.contains("macvtap")), "{e}");
    }

    fn warnings(h: &HostProbe, i: &Interface, r: &Requirements) -> String {
        decide(h, i, r).expect("a choice").warnings.join("\n")
    }

    #[test]
    fn the_warnings_are_raised() {
        let fast = Requirements {
            throughput_gbps: Some(40.0),
            ..req()
        };
        // A jumbo MTU without multi-buffer XDP.
        let jumbo = iface(LinkKind::Physical, xdp(true, true, false), 9000);
        assert!(warnings(&host(true, true, true), &jumbo, &fast).contains("MTU 9000"));
        let jumbo_sg = iface(LinkKind::Physical, xdp(true, true, true), 9000);
        assert!(!warnings(&host(true, true, true), &jumbo_sg, &fast).contains("MTU"));
        // No CAP_BPF for AF_XDP.
        let nic = iface(LinkKind::Physical, xdp(true, true, false), 1500);
        assert!(warnings(&host(true, true, false), &nic, &fast).contains("CAP_BPF"));
        assert!(!warnings(&host(true, true, true), &nic, &fast).contains("CAP_BPF"));
        // Zero-copy asked for where the driver has none.
        let copy_only = iface(LinkKind::Physical, xdp(true, false, false), 1500);
        let zc = Requirements {
            zero_copy: true,
            ..fast.clone()
        };
        assert!(warnings(&host(true, true, true), &copy_only, &zc).contains("zero-copy"));
        // The host cannot reach a macvtap guest through the lower link (not in passthru).
        let plain = iface(LinkKind::Physical, xdp(false, false, false), 1500);
        assert!(warnings(&host(true, true, true), &plain, &req()).contains("cannot reach"));
        let excl = Requirements {
            exclusive: true,
            ..req()
        };
        assert!(!warnings(&host(true, true, true), &plain, &excl).contains("cannot reach"));
        // Throughput asked for that only AF_XDP reaches, on a NIC without it.
        assert!(warnings(&host(true, true, true), &plain, &fast).contains("40 Gb/s"));
        // Conflicting wishes.
        let both = Requirements {
            vm_to_vm: true,
            isolate: true,
            ..req()
        };
        assert!(warnings(&host(true, true, true), &plain, &both).contains("isolation"));
    }
}
