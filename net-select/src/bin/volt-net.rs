//! `volt-net`: probe the host, choose a backend per interface and say why, write networkd
//! files for a VM's macvtap, and serve a backend over vhost-user.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use net_api::MacAddr;
use net_select::decide::{self, Decision, MacvtapMode, NoBackend, Requirements};
use net_select::probe::{self, Interface, LinkKind, System};
use serde::Serialize;

/// Exit status when no backend fits (an interface named with --iface, or every interface).
const EXIT_NO_BACKEND: u8 = 3;

const EXIT_CODES: &str = "Exit status: 0 done; 1 failed (the message says why and what to do); \
2 bad arguments; 3 no backend fits (select).";

/// Kernel-native VM networking: which backend fits this host, and why.
#[derive(Parser, Debug)]
#[command(name = "volt-net", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// What the host offers: interfaces (kind, driver, speed, queues, XDP features), TUN,
    /// macvtap, this process's capabilities.
    Probe {
        /// Only this interface.
        iface: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The backend for a VM on each interface (every interface when none is named), with
    /// the reasons, the alternatives rejected and warnings.
    Select(SelectArgs),
    /// Write the systemd-networkd files for a VM's macvtap on a lower link.
    Networkd(NetworkdArgs),
    /// Serve a backend to a vhost-user frontend (QEMU, Cloud Hypervisor, DPDK).
    Serve(net_select::serve::ServeArgs),
}

#[derive(clap::Args, Debug)]
struct SelectArgs {
    /// The interface the VM's traffic goes through (repeat for several).
    #[arg(long)]
    iface: Vec<String>,
    /// Throughput the VM needs, in Gb/s.
    #[arg(long, value_name = "GBPS", value_parser = gbps)]
    throughput: Option<f64>,
    /// VMs on this host talk to each other.
    #[arg(long)]
    vm_to_vm: bool,
    /// Tenants must not see each other on this host.
    #[arg(long)]
    isolate: bool,
    /// An external switch in VEPA mode reflects traffic between VMs.
    #[arg(long)]
    vepa: bool,
    /// One VM owns the interface.
    #[arg(long)]
    exclusive: bool,
    /// An external vhost-user switch (OVS-DPDK, ...) listens on this socket.
    #[arg(long, value_name = "SOCKET")]
    vhost_user: Option<String>,
    /// AF_XDP zero-copy is wanted (a warning when the driver cannot).
    #[arg(long)]
    zero_copy: bool,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct NetworkdArgs {
    /// The VM's UUID.
    #[arg(long)]
    vm: String,
    /// The lower link the macvtap sits on (a NIC, a veth, a zone bridge).
    #[arg(long)]
    iface: String,
    /// The macvtap's name (default: `vm` and the first 11 hex digits of the UUID).
    #[arg(long)]
    name: Option<String>,
    /// The macvtap mode.
    #[arg(long, default_value_t = MacvtapMode::Bridge)]
    mode: MacvtapMode,
    /// The guest's MAC (default: locally administered, from the UUID).
    #[arg(long)]
    mac: Option<MacAddr>,
    /// The directory to write the files into (`/etc/systemd/network`; created if missing).
    #[arg(long)]
    out: PathBuf,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon says what it does (a line per session, refusal and fault); the one-shot
    // commands print their answer and only warn in the log.
    let level = if matches!(cli.cmd, Cmd::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    let res = match cli.cmd {
        Cmd::Probe { iface, json } => probe_cmd(iface.as_deref(), json),
        Cmd::Select(a) => select_cmd(&a),
        Cmd::Networkd(a) => networkd_cmd(&a),
        Cmd::Serve(a) => return net_select::serve::run(&a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("volt-net: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| format!("JSON: {e}"))?;
    println!("{s}");
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn probe_cmd(iface: Option<&str>, json: bool) -> Result<ExitCode, String> {
    let host = probe::probe(&System, iface).map_err(|e| e.to_string())?;
    if json {
        print_json(&host)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "kernel {}; /dev/net/tun: {}; macvtap: {}; capabilities: {}",
        host.kernel,
        yes(host.tun),
        yes(host.macvtap),
        host.privileges.words()
    );
    println!(
        "{:<16} {:<9} {:<12} {:<8} {:>7} {:>6} {:>7}  XDP",
        "INTERFACE", "KIND", "DRIVER", "STATE", "MB/S", "MTU", "QUEUES"
    );
    for i in &host.interfaces {
        println!(
            "{:<16} {:<9} {:<12} {:<8} {:>7} {:>6} {:>7}  {} ({})",
            i.name,
            i.kind.as_str(),
            i.driver.as_deref().unwrap_or("-"),
            i.operstate,
            i.speed_mbps.map_or("-".into(), |s| s.to_string()),
            i.mtu,
            format!("{}/{}", i.rx_queues, i.tx_queues),
            i.xdp.words(),
            match i.xdp.source {
                probe::XdpSource::Netlink => "kernel",
                probe::XdpSource::DriverList => "driver list",
            }
        );
    }
    for n in &host.notes {
        println!("note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One interface's outcome.
#[derive(Serialize)]
#[serde(untagged)]
enum Outcome {
    Chosen(Decision),
    Skipped {
        interface: String,
        skipped: String,
    },
    None {
        interface: String,
        no_backend: Vec<String>,
    },
}

#[derive(Serialize)]
struct SelectReport<'a> {
    requirements: &'a Requirements,
    interfaces: Vec<Outcome>,
    notes: &'a [String],
}

/// Why an interface is not a VM uplink when every interface is looked at.
fn not_an_uplink(i: &Interface) -> Option<&'static str> {
    match i.kind {
        LinkKind::Loopback => Some("the loopback"),
        LinkKind::Macvtap | LinkKind::Tun => Some("a VM's own link"),
        LinkKind::Other(ref k) if k == "ifb" => Some("a traffic-shaping (ifb) device"),
        _ => None,
    }
}

/// `--throughput`: a finite, non-negative number of Gb/s.
fn gbps(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("'{s}': give the Gb/s the VM needs, e.g. 10")),
    }
}

fn select_cmd(a: &SelectArgs) -> Result<ExitCode, String> {
    let req = Requirements {
        throughput_gbps: a.throughput,
        vm_to_vm: a.vm_to_vm,
        isolate: a.isolate,
        vepa: a.vepa,
        exclusive: a.exclusive,
        vhost_user_socket: a.vhost_user.clone(),
        zero_copy: a.zero_copy,
    };
    let host = probe::probe(&System, None).map_err(|e| e.to_string())?;
    for name in &a.iface {
        if !host.interfaces.iter().any(|i| &i.name == name) {
            return Err(format!(
                "no interface named '{name}' in this network namespace (`ip link` lists them)"
            ));
        }
    }
    let named = !a.iface.is_empty();
    let mut outcomes = Vec::new();
    for i in &host.interfaces {
        if named && !a.iface.contains(&i.name) {
            continue;
        }
        if !named {
            if let Some(why) = not_an_uplink(i) {
                outcomes.push(Outcome::Skipped {
                    interface: i.name.clone(),
                    skipped: why.into(),
                });
                continue;
            }
        }
        outcomes.push(match decide::decide(&host, i, &req) {
            Ok(d) => Outcome::Chosen(d),
            Err(NoBackend { interface, why }) => Outcome::None {
                interface,
                no_backend: why,
            },
        });
    }
    let chosen = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Chosen(_)))
        .count();
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::None { .. }))
        .count();
    if a.json {
        print_json(&SelectReport {
            requirements: &req,
            interfaces: outcomes,
            notes: &host.notes,
        })?;
    } else {
        for o in &outcomes {
            match o {
                Outcome::Chosen(d) => {
                    println!("{}: {}", d.interface, d.choice.label());
                    for r in &d.reasons {
                        println!("  because {r}");
                    }
                    for r in &d.rejected {
                        println!("  not {}: {}", r.backend, r.why);
                    }
                    for w in &d.warnings {
                        println!("  warning: {w}");
                    }
                }
                Outcome::Skipped { interface, skipped } => {
                    println!("{interface}: skipped ({skipped})");
                }
                Outcome::None {
                    interface,
                    no_backend,
                } => {
                    println!("{interface}: no backend fits");
                    for w in no_backend {
                        println!("  {w}");
                    }
                }
            }
        }
        if outcomes.is_empty() {
            println!("no interfaces to choose for");
        }
        for n in &host.notes {
            println!("note: {n}");
        }
    }
    let none_fit = if named { failed > 0 } else { chosen == 0 };
    Ok(if none_fit {
        ExitCode::from(EXIT_NO_BACKEND)
    } else {
        ExitCode::SUCCESS
    })
}

fn networkd_cmd(a: &NetworkdArgs) -> Result<ExitCode, String> {
    use net_macvtap::networkd::{check_uuid, render_all, VmLink};
    let uuid = check_uuid(&a.vm).map_err(|e| e.to_string())?;
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("vm{}", &hex[..11]));
    let mac = match a.mac {
        Some(m) => m,
        None => {
            let mut b = [0x02u8, 0, 0, 0, 0, 0];
            for (k, byte) in b[1..].iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).unwrap_or(0);
            }
            MacAddr(b)
        }
    };
    let vm = VmLink {
        uuid,
        name,
        lower: a.iface.clone(),
        mode: a.mode,
        mac,
    };
    let files = render_all(None, std::slice::from_ref(&vm)).map_err(|e| e.to_string())?;
    let written = files.write_to(&a.out).map_err(|e| e.to_string())?;
    #[derive(Serialize)]
    struct Written {
        macvtap: String,
        mac: String,
        files: Vec<PathBuf>,
    }
    let report = Written {
        macvtap: vm.name.clone(),
        mac: vm.mac.to_string(),
        files: written,
    };
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "macvtap {} ({}) on {}, guest MAC {}:",
            report.macvtap,
            vm.mode.as_str(),
            vm.lower,
            report.mac
        );
        for f in &report.files {
            println!("  wrote {}", f.display());
        }
        println!("run `networkctl reload` to apply");
    }
    Ok(ExitCode::SUCCESS)
}
