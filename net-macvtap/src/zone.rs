//! A zone: VMs and containers sharing one IPv4 subnet on a bridge, NATed to the outside.
//!
//! [`Zone::up`] makes the bridge (`zone0`) with the zone's gateway address (`10.99.0.1/24`),
//! turns IPv4 forwarding on in the namespace (remembering the old value), and loads an
//! nftables table `inet volt_zone_<name>` with a source-NAT chain that masquerades the
//! subnet's traffic leaving by the uplink, and a forward chain accepting the zone's traffic.
//! [`Zone::attach_vm`] adds a bridge-mode macvtap for a VM (a VMM opens it with
//! [`crate::tap::Macvtap`]); [`Zone::attach_container`] adds a veth whose host end is a bridge
//! port and whose other end goes into the container's namespace with an address from the
//! subnet and a default route via the gateway. [`Zone::down`] removes exactly what `up` and
//! the attach calls created.
//!
//! **A VM's macvtap sits on a veth, not on the bridge itself.** A macvtap whose lower link is
//! the bridge reaches the bridge's ports (containers) but never the bridge's own address:
//! what a macvtap sends leaves through its lower link's transmit path, and a bridge transmits
//! to its ports only, so the gateway, and with it NAT, would be out of the VM's reach (and the
//! host could not reach the VM). So each VM gets a veth pair: one end a bridge port, the other
//! the macvtap's lower link. The VM then reaches the containers, the other VMs, the gateway
//! and, through it, the uplink.
//!
//! A zone that is up already (the bridge, its address, the table) is taken over by a second
//! `up` rather than duplicated: the table's rules are replaced by the same rules, and that
//! `Zone` owns nothing, so its `down` removes nothing. Dropping a `Zone` without `down` leaves
//! everything in place (a restarted manager takes it over).
//!
//! **Namespaces.** The zone lives in the network namespace of the thread that called `up`.
//! Netlink requests go through a socket opened there; the sysctl and `nft` run on a helper
//! thread that enters that namespace with `setns`, so `attach_*` and `down` may be called
//! from any thread. A container is reached through its namespace fd the same way: a helper
//! thread opens a netlink socket inside it and sets the veth's address, link state and
//! default route there. That works for any namespace fd (`/proc/<pid>/ns/net` of an
//! nspawn container as well as `/run/netns/<name>`), where `ip netns exec` would need a
//! named one.
//!
//! **Why the `nft` binary.** The rules are written in nftables' own language and fed to
//! `nft -f -` on stdin, as one atomic transaction. Speaking nf_tables netlink directly means
//! encoding rules as expression bytecode (payload loads, compares, NAT expressions, set
//! lookups): a large protocol that no maintained pure-Rust crate covers, and `libnftables`,
//! which does, is a C library, while this crate must build without C. The binary is the
//! stable interface of the Debian package `nftables`.

use std::fs::{self, File};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use net_api::MacAddr;
use nix::libc;

use crate::netlink::{validate_name, with_netns, Link, MacvtapMode, Netlink, PlumbError};

/// The namespace's IPv4 forwarding switch.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The nftables command line tool.
const NFT: &str = "nft";
/// Prefix of the zone's nftables table name.
pub const TABLE_PREFIX: &str = "volt_zone_";
/// Longest zone name.
pub const MAX_ZONE_NAME: usize = 32;

/// What a zone is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The zone's name: `[a-z0-9_]`, at most 32 characters; the table is `volt_zone_<name>`.
    pub name: String,
    /// The bridge (`zone0`).
    pub bridge: String,
    /// The bridge's address, the members' gateway (`10.99.0.1`).
    pub address: Ipv4Addr,
    /// The subnet's prefix length (`24`), 1 to 30.
    pub prefix: u8,
    /// The link whose outgoing traffic from the subnet is masqueraded; `None` masquerades
    /// the subnet's traffic leaving by any link other than the bridge.
    pub uplink: Option<String>,
}

impl ZoneConfig {
    /// The subnet's network address (`10.99.0.0` for `10.99.0.1/24`).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & self.mask())
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) | !self.mask())
    }

    fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        }
    }

    /// Whether `addr` is a member address: in the subnet, not the network, broadcast or
    /// gateway address.
    pub fn is_member_address(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network())
            && addr != self.network()
            && addr != self.broadcast()
            && addr != self.address
    }

    /// The nftables table (`volt_zone_<name>`, family `inet`).
    pub fn table(&self) -> String {
        format!("{TABLE_PREFIX}{}", self.name)
    }

    /// Checks every field; nothing is touched before this passes.
    pub fn validate(&self) -> Result<(), PlumbError> {
        let invalid = |what, why: String| Err(PlumbError::InvalidConfig { what, why });
        if self.name.is_empty()
            || self.name.len() > MAX_ZONE_NAME
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return invalid(
                "zone name",
                format!(
                    "'{}': use 1 to {MAX_ZONE_NAME} characters of a-z, 0-9 and '_'",
                    self.name
                ),
            );
        }
        for name in std::iter::once(&self.bridge).chain(self.uplink.as_ref()) {
            validate_name(name)?;
            // Both are written into the ruleset inside double quotes.
            if !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            {
                return invalid(
                    "zone link name",
                    format!(
                        "'{name}' in zone '{}': use printable ASCII without quotes or backslashes",
                        self.name
                    ),
                );
            }
        }
        if self.uplink.as_deref() == Some(self.bridge.as_str()) {
            return invalid(
                "zone uplink",
                format!(
                    "zone '{}': the uplink '{}' is the zone's own bridge",
                    self.name, self.bridge
                ),
            );
        }
        if !(1..=30).contains(&self.prefix) {
            return invalid(
                "zone prefix length",
                format!(
                    "/{} in zone '{}': give 1 to 30 (a subnet with room for members)",
                    self.prefix, self.name
                ),
            );
        }
        if self.address == self.network() || self.address == self.broadcast() {
            return invalid(
                "zone address",
                format!(
                    "{}/{} in zone '{}' is the subnet's network or broadcast address",
                    self.address, self.prefix, self.name
                ),
            );
        }
        Ok(())
    }

    /// The nftables script `up` loads: creates the table if missing, empties it, and defines
    /// it, in one transaction (so a second `up` replaces the rules rather than adding more).
    pub fn ruleset(&self) -> String {
        let table = self.table();
        let subnet = format!("{}/{}", self.network(), self.prefix);
        let bridge = &self.bridge;
        let out = match &self.uplink {
            Some(uplink) => format!("oifname \"{uplink}\""),
            None => format!("oifname != \"{bridge}\""),
        };
        format!(
            "table inet {table} {{}}\n\
             flush table inet {table}\n\
             table inet {table} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {subnet} {out} masquerade\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{bridge}\" accept\n\
             \t\toifname \"{bridge}\" ct state established,related accept\n\
             \t}}\n\
             }}\n"
        )
    }

    /// The nftables script `down` runs: deletes the table, and is a no-op when it is gone.
    pub fn teardown_script(&self) -> String {
        let table = self.table();
        format!("table inet {table} {{}}\ndelete table inet {table}\n")
    }
}

/// A zone that is up; see the module documentation.
#[derive(Debug)]
pub struct Zone {
    cfg: ZoneConfig,
    nl: Netlink,
    /// The namespace the zone lives in (the thread's at `up`).
    ns: File,
    created_bridge: bool,
    added_address: bool,
    created_table: bool,
    /// The forwarding switch before `up` turned it on; `None` when it was on already.
    ip_forward_before: Option<String>,
    /// Each VM's macvtap and the bridge-port end of the veth under it.
    vms: Vec<(String, String)>,
    containers: Vec<String>,
}

/// A link name of our own for this process: `vz<tag><pid>x<n>`, at most 15 bytes.
fn private_name(tag: char) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "vz{tag}{:x}x{:x}",
        std::process::id() & 0xffff,
        NEXT.fetch_add(1, Ordering::Relaxed) & 0xf_ffff
    )
}

impl Zone {
    /// Brings the zone up in the calling thread's network namespace, or takes over a zone
    /// that is up already. On failure, what this call created is removed again.
    pub fn up(cfg: ZoneConfig) -> Result<Zone, PlumbError> {
        cfg.validate()?;
        let ns = File::open("/proc/thread-self/ns/net").map_err(|source| PlumbError::Io {
            op: format!(
                "bringing up zone '{}': opening this thread's network namespace",
                cfg.name
            ),
            source,
        })?;
        let nl = Netlink::open()?;
        let mut zone = Zone {
            cfg,
            nl,
            ns,
            created_bridge: false,
            added_address: false,
            created_table: false,
            ip_forward_before: None,
            vms: Vec::new(),
            containers: Vec::new(),
        };
        if let Err(e) = zone.bring_up() {
            if let Err(undo) = zone.teardown() {
                log::warn!("zone {}: undoing a failed up: {undo}", zone.cfg.name);
            }
            return Err(e);
        }
        Ok(zone)
    }

    fn bring_up(&mut self) -> Result<(), PlumbError> {
        let name = self.cfg.name.clone();
        let bridge = self.cfg.bridge.clone();
        let op = || format!("bringing up zone '{name}'");
        match self.nl.link(&bridge)? {
            Some(link) if link.kind.as_deref() == Some("bridge") => {
                log::info!("zone {name}: bridge {bridge} exists, taking it over");
            }
            Some(link) => {
                return Err(PlumbError::InvalidConfig {
                    what: "zone bridge",
                    why: format!(
                        "zone '{name}': '{bridge}' exists and is a {}, not a bridge",
                        link.kind.as_deref().unwrap_or("physical link")
                    ),
                })
            }
            None => {
                self.nl.create_bridge(&bridge)?;
                self.created_bridge = true;
            }
        }
        match self
            .nl
            .add_address(&bridge, IpAddr::V4(self.cfg.address), self.cfg.prefix)
        {
            Ok(()) => self.added_address = true,
            Err(e) if e.os_error() == Some(libc::EEXIST) => {
                log::info!("zone {name}: {bridge} has {} already", self.cfg.address);
            }
            Err(e) => return Err(e),
        }
        self.nl.set_up(&bridge, true)?;
        if let Some(uplink) = self.cfg.uplink.clone() {
            if self.nl.link(&uplink)?.is_none() {
                return Err(PlumbError::MissingLink {
                    op: format!("{} with uplink '{uplink}'", op()),
                    name: uplink,
                });
            }
        }

        let before = self.in_ns("reading the IPv4 forwarding switch", || {
            fs::read_to_string(IP_FORWARD).map_err(|source| PlumbError::Io {
                op: format!("reading {IP_FORWARD}"),
                source,
            })
        })?;
        let before = before.trim().to_string();
        if before != "1" {
            self.write_ip_forward("1")?;
            self.ip_forward_before = Some(before);
        }

        let table = self.cfg.table();
        let existed = self.nft_tables()?.contains(&table);
        let ruleset = self.cfg.ruleset();
        self.nft(&format!("{}: loading table inet {table}", op()), &ruleset)?;
        self.created_table = !existed;
        if existed {
            log::info!("zone {name}: table inet {table} exists, its rules were replaced");
        }
        Ok(())
    }

    /// The zone's settings.
    pub fn config(&self) -> &ZoneConfig {
        &self.cfg
    }

    /// The macvtaps `attach_vm` created, by name.
    pub fn vms(&self) -> impl Iterator<Item = &str> {
        self.vms.iter().map(|(vm, _)| vm.as_str())
    }

    /// The host ends of the veths `attach_container` created.
    pub fn containers(&self) -> &[String] {
        &self.containers
    }

    /// Whether this `Zone` created the bridge (and so removes it on `down`).
    pub fn owns_bridge(&self) -> bool {
        self.created_bridge
    }

    /// Whether this `Zone` created the nftables table (and so removes it on `down`).
    pub fn owns_table(&self) -> bool {
        self.created_table
    }

    /// Adds a VM: a bridge-mode macvtap `name` with the guest's MAC and `queues` queues, up,
    /// on a veth whose other end is a port of the zone bridge (`vzp...`/`vzl...`, see the
    /// module documentation). Open its queues with [`crate::tap::Macvtap::open`].
    pub fn attach_vm(&mut self, name: &str, mac: MacAddr, queues: u16) -> Result<Link, PlumbError> {
        validate_name(name)?;
        let (port, lower) = (private_name('p'), private_name('l'));
        self.nl.create_veth(&port, &lower)?;
        // Deleting the port deletes the lower end, and the macvtap on it, with it.
        match self.plumb_vm(name, &port, &lower, mac, queues) {
            Ok(link) => {
                self.vms.push((name.to_string(), port));
                Ok(link)
            }
            Err(e) => {
                self.undo_link(&port);
                Err(e)
            }
        }
    }

    fn plumb_vm(
        &mut self,
        name: &str,
        port: &str,
        lower: &str,
        mac: MacAddr,
        queues: u16,
    ) -> Result<Link, PlumbError> {
        let bridge = self.cfg.bridge.clone();
        let mtu = self.nl.link(&bridge)?.map(|b| b.mtu).unwrap_or(0);
        if mtu != 0 && mtu != 1500 {
            self.nl.set_mtu(port, mtu)?;
            self.nl.set_mtu(lower, mtu)?;
        }
        self.nl.set_master(port, Some(&bridge))?;
        self.nl.set_up(port, true)?;
        self.nl.set_up(lower, true)?;
        self.nl
            .create_macvtap(name, lower, MacvtapMode::Bridge, Some(mac), queues)?;
        self.nl.set_up(name, true)?;
        wait_oper_up(&mut self.nl, &[port, name]);
        match self.nl.link(name)? {
            Some(link) => Ok(link),
            None => Err(PlumbError::MissingLink {
                op: format!("attaching VM '{name}' to zone '{}'", self.cfg.name),
                name: name.to_string(),
            }),
        }
    }

    /// Adds a container: a veth whose end `host_end` is a port of the zone bridge, and whose
    /// other end goes into the namespace `ns` as `ns_end`, with `addr` (a member address of
    /// the subnet), up, and a default route via the zone's address. The namespace must not
    /// have a default route already.
    pub fn attach_container(
        &mut self,
        host_end: &str,
        ns: BorrowedFd<'_>,
        ns_end: &str,
        addr: Ipv4Addr,
    ) -> Result<(), PlumbError> {
        validate_name(host_end)?;
        validate_name(ns_end)?;
        if !self.cfg.is_member_address(addr) {
            return Err(PlumbError::InvalidConfig {
                what: "container address",
                why: format!(
                    "{addr} for '{ns_end}' in zone '{}': give a host address of {}/{} other \
                     than the zone's own {}",
                    self.cfg.name,
                    self.cfg.network(),
                    self.cfg.prefix,
                    self.cfg.address
                ),
            });
        }
        // The end for the container gets a name of our own here, and its final name when it
        // moves: `ns_end` (`eth0`, say) may well exist on this side.
        let temp = private_name('c');
        self.nl.create_veth(host_end, &temp)?;
        if let Err(e) = self.plumb_container(host_end, &temp, ns, ns_end, addr) {
            self.undo_link(host_end);
            return Err(e);
        }
        self.containers.push(host_end.to_string());
        Ok(())
    }

    fn plumb_container(
        &mut self,
        host_end: &str,
        temp: &str,
        ns: BorrowedFd<'_>,
        ns_end: &str,
        addr: Ipv4Addr,
    ) -> Result<(), PlumbError> {
        let bridge = self.cfg.bridge.clone();
        self.nl.set_master(host_end, Some(&bridge))?;
        self.nl.set_up(host_end, true)?;
        self.nl.move_to_netns_as(temp, ns, ns_end)?;
        let mut inside = Netlink::open_in(ns)?;
        inside.add_address(ns_end, IpAddr::V4(addr), self.cfg.prefix)?;
        inside.set_up(ns_end, true)?;
        inside.add_default_route(ns_end, IpAddr::V4(self.cfg.address))?;
        wait_oper_up(&mut self.nl, &[host_end]);
        wait_oper_up(&mut inside, &[ns_end]);
        Ok(())
    }

    /// Removes a VM's macvtap or a container's veth that this zone attached; `false` when
    /// the zone did not attach a link of that name.
    pub fn detach(&mut self, name: &str) -> Result<bool, PlumbError> {
        if let Some(i) = self.vms.iter().position(|(vm, _)| vm == name) {
            let (vm, port) = self.vms.remove(i);
            self.nl.delete(&vm)?;
            self.nl.delete(&port)?;
            return Ok(true);
        }
        if let Some(i) = self.containers.iter().position(|c| c == name) {
            let host_end = self.containers.remove(i);
            self.nl.delete(&host_end)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Removes what `up` and the attach calls created, and nothing else: the macvtaps and
    /// veths, the table and bridge if `up` made them (the address if only that was added),
    /// and restores the forwarding switch. What is gone already is skipped; every step is
    /// tried, and the first failure is returned.
    pub fn down(mut self) -> Result<(), PlumbError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), PlumbError> {
        let mut first = None;
        for (vm, port) in std::mem::take(&mut self.vms) {
            note(&mut first, self.nl.delete(&vm).map(drop));
            note(&mut first, self.nl.delete(&port).map(drop));
        }
        for host_end in std::mem::take(&mut self.containers) {
            note(&mut first, self.nl.delete(&host_end).map(drop));
        }
        if self.created_table {
            let op = format!(
                "taking down zone '{}': deleting table inet {}",
                self.cfg.name,
                self.cfg.table()
            );
            let script = self.cfg.teardown_script();
            note(&mut first, self.nft(&op, &script).map(drop));
            self.created_table = false;
        }
        let bridge = self.cfg.bridge.clone();
        if self.created_bridge {
            note(&mut first, self.nl.delete(&bridge).map(drop));
            self.created_bridge = false;
        } else if self.added_address {
            let removed =
                self.nl
                    .del_address(&bridge, IpAddr::V4(self.cfg.address), self.cfg.prefix);
            match removed {
                Err(e) if e.missing_link().is_some() => {}
                other => note(&mut first, other.map(drop)),
            }
        }
        self.added_address = false;
        if let Some(before) = self.ip_forward_before.take() {
            note(&mut first, self.write_ip_forward(&before));
        }
        first.map_or(Ok(()), Err)
    }

    /// Deletes a link created by a failed attach, logging what cannot be undone.
    fn undo_link(&mut self, name: &str) {
        if let Err(e) = self.nl.delete(name) {
            log::warn!(
                "zone {}: removing '{name}' after a failed attach: {e}",
                self.cfg.name
            );
        }
    }

    fn in_ns<T: Send>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, PlumbError> + Send,
    ) -> Result<T, PlumbError> {
        with_netns(self.ns.as_fd(), what, f)
    }

    fn write_ip_forward(&self, value: &str) -> Result<(), PlumbError> {
        let op = format!("zone '{}': setting {IP_FORWARD} to {value}", self.cfg.name);
        self.in_ns(&op.clone(), || {
            fs::write(IP_FORWARD, value).map_err(|source| PlumbError::Io { op, source })
        })
    }

    /// Runs `nft` with `args` in the zone's namespace, `stdin` on its standard input.
    fn run_nft(&self, op: &str, args: &[&str], stdin: &str) -> Result<String, PlumbError> {
        self.in_ns(op, || {
            let spawn_err = |source: std::io::Error| PlumbError::Io {
                op: format!("{op}: running {NFT} (install the nftables package)"),
                source,
            };
            let mut child = Command::new(NFT)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(spawn_err)?;
            if let Some(mut input) = child.stdin.take() {
                input.write_all(stdin.as_bytes()).map_err(spawn_err)?;
            }
            let out = child.wait_with_output().map_err(spawn_err)?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(PlumbError::Command {
                    op: op.to_string(),
                    program: NFT,
                    detail: if stderr.is_empty() {
                        format!("it ended with {}", out.status)
                    } else {
                        stderr
                    },
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
    }

    fn nft(&self, op: &str, script: &str) -> Result<String, PlumbError> {
        self.run_nft(op, &["-f", "-"], script)
    }

    /// The `inet` tables in the zone's namespace.
    fn nft_tables(&self) -> Result<Vec<String>, PlumbError> {
        let op = format!(
            "bringing up zone '{}': listing nftables tables",
            self.cfg.name
        );
        let out = self.run_nft(&op, &["list", "tables", "inet"], "")?;
        Ok(parse_tables(&out))
    }
}

/// Table names from `nft list tables inet` (`table inet NAME` lines).
fn parse_tables(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("table"), Some("inet"), Some(name)) => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// How long an attach waits for its links to pass traffic.
const OPER_UP_WAIT: Duration = Duration::from_secs(2);

/// Waits (briefly) until the links pass traffic, so that the first frames a VM or container
/// sends right after the attach are not dropped; a link that stays down is logged, not an
/// error (it may come up later).
fn wait_oper_up(nl: &mut Netlink, names: &[&str]) {
    for name in names {
        match nl.wait_oper_up(name, OPER_UP_WAIT) {
            Ok(true) => {}
            Ok(false) => log::warn!("'{name}' is not operationally up after {OPER_UP_WAIT:?}"),
            Err(e) => log::warn!("{e}"),
        }
    }
}

/// Keeps the first error of a teardown and logs every one.
fn note(first: &mut Option<PlumbError>, result: Result<(), PlumbError>) {
    if let Err(e) = result {
        log::warn!("zone teardown: {e}");
        first.get_or_insert(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ZoneConfig {
        ZoneConfig {
            name: "zone0".into(),
            bridge: "zone0".into(),
            address: Ipv4Addr::new(10, 99, 0, 1),
            prefix: 24,
            uplink: Some("eth0".into()),
        }
    }

    #[test]
    fn the_subnet_follows_the_prefix() {
        let c = cfg();
        assert_eq!(c.network(), Ipv4Addr::new(10, 99, 0, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 99, 0, 255));
        assert!(c.is_member_address(Ipv4Addr::new(10, 99, 0, 2)));
        for not in [
            Ipv4Addr::new(10, 99, 0, 0),
            Ipv4Addr::new(10, 99, 0, 1),
            Ipv4Addr::new(10, 99, 0, 255),
            Ipv4Addr::new(10, 99, 1, 2),
        ] {
            assert!(!c.is_member_address(not), "{not}");
        }
        let c = ZoneConfig {
            address: Ipv4Addr::new(172, 16, 5, 129),
            prefix: 26,
            ..cfg()
        };
        assert_eq!(c.network(), Ipv4Addr::new(172, 16, 5, 128));
        assert_eq!(c.broadcast(), Ipv4Addr::new(172, 16, 5, 191));
    }

    #[test]
    fn the_ruleset_masquerades_the_subnet_out_of_the_uplink() {
        let rules = cfg().ruleset();
        assert!(
            rules.starts_with("table inet volt_zone_zone0 {}\nflush table inet volt_zone_zone0\n")
        );
        assert!(rules.contains("type nat hook postrouting priority srcnat;"));
        assert!(rules.contains("ip saddr 10.99.0.0/24 oifname \"eth0\" masquerade"));
        assert!(rules.contains("type filter hook forward priority filter;"));
        assert!(rules.contains("iifname \"zone0\" accept"));
        let any = ZoneConfig {
            uplink: None,
            ..cfg()
        };
        assert!(any
            .ruleset()
            .contains("ip saddr 10.99.0.0/24 oifname != \"zone0\" masquerade"));
        assert_eq!(
            cfg().teardown_script(),
            "table inet volt_zone_zone0 {}\ndelete table inet volt_zone_zone0\n"
        );
    }

    #[test]
    fn bad_settings_are_refused_before_anything_is_touched() {
        cfg().validate().expect("valid");
        let cases: Vec<(ZoneConfig, &str)> = vec![
            (
                ZoneConfig {
                    name: "Zone".into(),
                    ..cfg()
                },
                "zone name",
            ),
            (
                ZoneConfig {
                    name: "".into(),
                    ..cfg()
                },
                "zone name",
            ),
            (
                ZoneConfig {
                    name: "a-b".into(),
                    ..cfg()
                },
                "zone name",
            ),
            (
                ZoneConfig {
                    name: "a;flush ruleset".into(),
                    ..cfg()
                },
                "zone name",
            ),
            (
                ZoneConfig {
                    name: "x".repeat(33),
                    ..cfg()
                },
                "zone name",
            ),
            (
                ZoneConfig {
                    bridge: "a/b".into(),
                    ..cfg()
                },
                "invalid link name 'a/b'",
            ),
            (
                ZoneConfig {
                    bridge: "br\"0".into(),
                    ..cfg()
                },
                "quotes",
            ),
            (
                ZoneConfig {
                    uplink: Some("x y".into()),
                    ..cfg()
                },
                "whitespace",
            ),
            (
                ZoneConfig {
                    uplink: Some("zone0".into()),
                    ..cfg()
                },
                "own bridge",
            ),
            (
                ZoneConfig {
                    prefix: 31,
                    ..cfg()
                },
                "/31",
            ),
            (ZoneConfig { prefix: 0, ..cfg() }, "/0"),
            (
                ZoneConfig {
                    address: Ipv4Addr::new(10, 99, 0, 0),
                    ..cfg()
                },
                "network or broadcast",
            ),
            (
                ZoneConfig {
                    address: Ipv4Addr::new(10, 99, 0, 255),
                    ..cfg()
                },
                "network or broadcast",
            ),
        ];
        for (c, why) in cases {
            let e = c.validate().expect_err(why);
            assert!(e.to_string().contains(why), "{e} should say {why}");
        }
    }

    #[test]
    fn tables_are_read_from_the_listing() {
        let listing = "table inet filter\ntable inet volt_zone_z1\n\ntable ip nat\n";
        assert_eq!(parse_tables(listing), ["filter", "volt_zone_z1"]);
    }
}
