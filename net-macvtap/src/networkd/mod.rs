//! systemd-networkd files for the links volt-net declares: a VM's macvtap, the lower link it
//! sits on, and a zone bridge.
//!
//! | file | what it declares |
//! |---|---|
//! | `20-<lower>.network` | the lower link (a NIC, a veth): one `MACVTAP=` line per macvtap on it |
//! | `25-<zone>.netdev` | the zone bridge (`Kind=bridge`) |
//! | `25-<zone>.network` | its address, IPv4 forwarding and masquerade, and the macvtaps on it |
//! | `30-vm-<uuid>.netdev` | the VM's macvtap: name, MAC, mode |
//! | `30-vm-<uuid>.network` | the macvtap up, with no host address of any kind |
//!
//! networkd creates a macvtap when it configures the link named in a `MACVTAP=` line of that
//! link's `.network` file, so a `.netdev` alone does nothing: [`render_all`] writes both
//! sides. networkd applies only the first `.network` file, in lexical order, that matches a
//! link. Two consequences:
//! - when a macvtap's lower link is the zone bridge, its `MACVTAP=` line goes into
//!   `25-<zone>.network` and no `20-<zone>.network` is written (it would hide the zone's
//!   address);
//! - `20-<lower>.network` owns the lower link. On a host whose NIC already has a `.network`
//!   file sorting before it, networkd ignores ours and creates no macvtap; put the `MACVTAP=`
//!   lines into a drop-in of the existing file (`<file>.network.d/*.conf`) instead.
//!
//! The VM's `.network` turns off link-local addressing and router advertisements: the host
//! must not speak on the guest's link with the guest's MAC, and `RequiredForOnline=no`
//! keeps `systemd-networkd-wait-online` from waiting for VMs. In passthru mode the kernel
//! ignores the MAC given at creation and lends the macvtap the lower link's address, so the
//! `.network` also sets `MACAddress=` in `[Link]`, which networkd applies after creation (it
//! changes the lower link's MAC too: the VM owns that link).
//!
//! No `.link` file is written: the kernel records a MAC and a name given at creation as set
//! by the user, and udev's default `.link` (`MACAddressPolicy=persistent`, `NamePolicy=`)
//! only changes random MACs and kernel-enumerated names, so neither needs pinning.
//!
//! Every value is checked before it reaches a file: interface names (1 to 15 bytes of
//! `[A-Za-z0-9_.-]`), canonical UUIDs, unicast MACs, usable zone addresses, and, for every
//! `Key=Value` line, printable ASCII without leading or trailing whitespace or a trailing
//! `\` (which would continue the line). File names are made only from checked values.
//!
//! ```
//! use net_macvtap::netlink::MacvtapMode;
//! use net_macvtap::networkd::{render_all, VmLink};
//!
//! let vm = VmLink {
//!     uuid: "123e4567-e89b-12d3-a456-426614174000".into(),
//!     name: "vm0".into(),
//!     lower: "eth0".into(),
//!     mode: MacvtapMode::Bridge,
//!     mac: "52:54:00:12:34:56".parse().expect("a MAC"),
//! };
//! let files = render_all(None, &[vm]).expect("valid input");
//! assert!(files.file("20-eth0.network").expect("lower").contains("MACVTAP=vm0\n"));
//! assert!(files.file("30-vm-123e4567-e89b-12d3-a456-426614174000.netdev").is_some());
//! // files.write_to(Path::new("/etc/systemd/network")), then `networkctl reload`.
//! ```

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use net_api::MacAddr;

use crate::netlink::MacvtapMode;

/// The longest interface name the kernel takes (`IFNAMSIZ` less the NUL).
pub const MAX_IFNAME_LEN: usize = nix::libc::IFNAMSIZ - 1;

/// What cannot be rendered or written, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NetworkdError {
    /// An interface name the kernel or networkd would refuse, or that could break a file.
    #[error(
        "{role} {name:?} is not a usable interface name: {why}; use 1 to 15 bytes of letters, \
         digits, '_', '.' and '-', not starting with '-', not all digits, not \".\" or \"..\""
    )]
    InvalidIfname {
        /// Which name (`macvtap name`, `lower link`, `zone bridge`).
        role: &'static str,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A VM UUID that is not in canonical form.
    #[error(
        "VM UUID {0:?} is not canonical: write 32 hex digits grouped 8-4-4-4-12 with '-', \
         e.g. 123e4567-e89b-12d3-a456-426614174000"
    )]
    InvalidUuid(String),
    /// A group or all-zero MAC for a VM.
    #[error(
        "macvtap {name}: MAC {mac} is not a unicast address (group bit set, or all zero): \
         give the VM a unicast MAC such as 52:54:00:12:34:56"
    )]
    NotUnicast {
        /// The macvtap.
        name: String,
        /// The MAC given.
        mac: MacAddr,
    },
    /// A macvtap whose lower link is itself or another macvtap.
    #[error(
        "macvtap {name} cannot sit on {lower}, which is {why}: give the physical link, veth or \
         bridge it should attach to"
    )]
    BadLower {
        /// The macvtap.
        name: String,
        /// The lower link given.
        lower: String,
        /// Why that cannot work.
        why: &'static str,
    },
    /// A zone address that cannot serve as the zone's gateway.
    #[error("zone bridge {zone}: {address}/{prefix} {why}")]
    InvalidZoneAddress {
        /// The zone bridge.
        zone: String,
        /// The address given.
        address: Ipv4Addr,
        /// The prefix length given.
        prefix: u8,
        /// What is wrong and what to use.
        why: &'static str,
    },
    /// Two links would get the same interface name or the same files.
    #[error(
        "{what} {value:?} is used twice: give every VM its own UUID and every link its own name"
    )]
    Duplicate {
        /// `VM UUID` or `interface name`.
        what: &'static str,
        /// The repeated value.
        value: String,
    },
    /// A passthru macvtap sharing its lower link.
    #[error(
        "passthru macvtap {name} needs {lower} to itself, but macvtap {other} is also on it: \
         move one of them to another link, or use bridge, vepa or private mode"
    )]
    PassthruShared {
        /// The passthru macvtap.
        name: String,
        /// Their lower link.
        lower: String,
        /// The other macvtap.
        other: String,
    },
    /// A lower-link file was asked for a link no VM sits on.
    #[error(
        "no VM link sits on {0}: there are no MACVTAP= lines to write; delete its \
         20-{0}.network instead of rewriting it"
    )]
    NoVmOnLower(String),
    /// A value that would break the file's line structure.
    #[error("{file}: {key}={value:?} cannot be written: {why}")]
    UnsafeValue {
        /// The file being rendered.
        file: String,
        /// The key (or `#` for a comment).
        key: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A file name that is not a plain name inside the target directory.
    #[error(
        "file name {name:?} cannot be written: {why}; use a plain name like 30-vm-<uuid>.network"
    )]
    InvalidFileName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The file system refused.
    #[error(
        "{action} {path}: {source}; check that the directory exists or can be created, is \
         writable by this user and is on a writable file system"
    )]
    Io {
        /// The operation (`create`, `write`, `fsync`, `rename`, ...).
        action: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, NetworkdError>;

/// A VM's macvtap as networkd should create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLink {
    /// The VM's UUID (canonical 8-4-4-4-12; either case, written lowercase in file names).
    pub uuid: String,
    /// The macvtap's interface name (at most 15 bytes).
    pub name: String,
    /// The link it sits on: a NIC, a veth, or the zone bridge.
    pub lower: String,
    /// Its mode ([`MacvtapMode::as_str`] is networkd's spelling).
    pub mode: MacvtapMode,
    /// The guest's MAC (unicast).
    pub mac: MacAddr,
}

/// A zone bridge: the gateway of a subnet shared by containers and VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneBridge {
    /// The bridge's interface name (`zone0`).
    pub name: String,
    /// The host's address on the zone, the members' gateway.
    pub address: Ipv4Addr,
    /// The zone's prefix length (1 to 30).
    pub prefix: u8,
    /// Whether traffic leaving the zone is masqueraded (`IPMasquerade=ipv4`).
    pub masquerade: bool,
}

/// Rendered files: `(file name, contents)`, in the order they were rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// File names (no directory) and their contents.
    pub files: Vec<(String, String)>,
}

/// Checks an interface name; `role` says which one in errors.
pub fn check_ifname(role: &'static str, name: &str) -> Result<()> {
    let bad = |why| {
        Err(NetworkdError::InvalidIfname {
            role,
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("it is longer than 15 bytes");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return bad(match c {
            '\n' | '\r' => "it contains a line break",
            '\0' => "it contains NUL",
            '/' => "it contains '/'",
            c if c.is_whitespace() => "it contains whitespace",
            _ => "it contains a character other than letters, digits, '_', '.' and '-'",
        });
    }
    if name == "." || name == ".." {
        return bad("it is a directory name");
    }
    if name.starts_with('-') {
        return bad("it starts with '-', which tools read as an option");
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return bad("it is all digits, which networkd reads as an interface index");
    }
    Ok(())
}

/// Checks a canonical UUID and returns it lowercase.
pub fn check_uuid(uuid: &str) -> Result<String> {
    let b = uuid.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if !ok {
        return Err(NetworkdError::InvalidUuid(uuid.to_string()));
    }
    Ok(uuid.to_ascii_lowercase())
}

/// Checks a value for a `Key=Value` line (or a comment's text, with `key` `"#"`).
fn check_value(file: &str, key: &str, value: &str) -> Result<()> {
    let bad = |why| {
        Err(NetworkdError::UnsafeValue {
            file: file.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            why,
        })
    };
    if key != "#" && (key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return bad("the key must be letters and digits");
    }
    if value.is_empty() && key != "#" {
        return bad("the value is empty, which resets the setting");
    }
    if value.contains(['\n', '\r']) {
        return bad("it contains a line break, which would start a new line or section");
    }
    if value.contains('\0') {
        return bad("it contains NUL");
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return bad("it contains a control or non-ASCII character");
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return bad("it has leading or trailing whitespace, which networkd strips");
    }
    if value.ends_with('\\') {
        return bad("it ends with '\\', which joins the next line to it");
    }
    Ok(())
}

/// Checks a file name for [`Rendered::write_to`].
fn check_file_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(NetworkdError::InvalidFileName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 255 {
        return bad("it must be 1 to 255 bytes");
    }
    if name.starts_with('.') {
        return bad("it starts with '.' (hidden, and the prefix of our temporary files)");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@'))
    {
        return bad("it may hold only letters, digits, '_', '.', '-' and '@' (no '/')");
    }
    Ok(())
}

/// One file being rendered, every line checked as it is added.
struct Ini {
    name: String,
    text: String,
    sections: usize,
}

impl Ini {
    fn new(name: String, comment: &str) -> Result<Ini> {
        check_value(&name, "#", comment)?;
        let text = format!("# {comment}\n");
        Ok(Ini {
            name,
            text,
            sections: 0,
        })
    }

    fn section(&mut self, section: &str) {
        if self.sections > 0 {
            self.text.push('\n');
        }
        self.sections += 1;
        self.text.push_str(&format!("[{section}]\n"));
    }

    fn kv(&mut self, key: &str, value: &str) -> Result<()> {
        check_value(&self.name, key, value)?;
        self.text.push_str(&format!("{key}={value}\n"));
        Ok(())
    }

    fn done(self) -> (String, String) {
        (self.name, self.text)
    }
}

const GENERATED: &str = "Generated by volt-net; changes are overwritten";

impl VmLink {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        check_uuid(&self.uuid)?;
        check_ifname("macvtap name", &self.name)?;
        check_ifname("lower link", &self.lower)?;
        if self.name == self.lower {
            return Err(NetworkdError::BadLower {
                name: self.name.clone(),
                lower: self.lower.clone(),
                why: "the macvtap itself",
            });
        }
        if !self.mac.is_unicast() {
            return Err(NetworkdError::NotUnicast {
                name: self.name.clone(),
                mac: self.mac,
            });
        }
        Ok(())
    }

    /// `30-vm-<uuid>`, the stem of the VM's two files.
    pub fn file_stem(&self) -> Result<String> {
        Ok(format!("30-vm-{}", check_uuid(&self.uuid)?))
    }

    /// The VM's `.netdev` and `.network` (its lower link's file comes from [`render_lower`]
    /// or [`render_all`]).
    pub fn render(&self) -> Result<Rendered> {
        self.validate()?;
        let stem = self.file_stem()?;
        let uuid = check_uuid(&self.uuid)?;
        let comment = format!("{GENERATED}: VM {uuid}");

        let mut netdev = Ini::new(format!("{stem}.netdev"), &comment)?;
        netdev.section("NetDev");
        netdev.kv("Description", &format!("volt-net VM {uuid}"))?;
        netdev.kv("Name", &self.name)?;
        netdev.kv("Kind", "macvtap")?;
        netdev.kv("MACAddress", &self.mac.to_string())?;
        netdev.section("MACVTAP");
        netdev.kv("Mode", self.mode.as_str())?;

        let mut network = Ini::new(format!("{stem}.network"), &comment)?;
        network.section("Match");
        network.kv("Name", &self.name)?;
        network.kv("Kind", "macvtap")?;
        network.section("Link");
        if self.mode == MacvtapMode::Passthru {
            network.kv("MACAddress", &self.mac.to_string())?;
        }
        network.kv("ActivationPolicy", "up")?;
        network.kv("RequiredForOnline", "no")?;
        network.section("Network");
        network.kv("LinkLocalAddressing", "no")?;
        network.kv("IPv6AcceptRA", "no")?;

        Ok(Rendered {
            files: vec![netdev.done(), network.done()],
        })
    }
}

impl ZoneBridge {
    /// Checks the name and that the address can be the zone's gateway.
    pub fn validate(&self) -> Result<()> {
        check_ifname("zone bridge", &self.name)?;
        let bad = |why| {
            Err(NetworkdError::InvalidZoneAddress {
                zone: self.name.clone(),
                address: self.address,
                prefix: self.prefix,
                why,
            })
        };
        if !(1..=30).contains(&self.prefix) {
            return bad("has no room for zone members: use a prefix length from 1 to 30, e.g. /24");
        }
        let a = self.address;
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
            return bad("is not a host address: use one like 10.0.1.1/24");
        }
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        let host = u32::from(a) & !mask;
        if host == 0 {
            return bad("is the subnet's network address: use a host address like 10.0.1.1/24");
        }
        if host == !mask {
            return bad("is the subnet's broadcast address: use a host address like 10.0.1.1/24");
        }
        Ok(())
    }

    /// The zone's `.netdev` and `.network`, with no macvtap on the bridge.
    pub fn render(&self) -> Result<Rendered> {
        self.render_with(&[])
    }

    fn render_with(&self, macvtaps: &[&str]) -> Result<Rendered> {
        self.validate()?;
        let stem = format!("25-{}", self.name);
        let comment = format!("{GENERATED}: zone bridge {}", self.name);

        let mut netdev = Ini::new(format!("{stem}.netdev"), &comment)?;
        netdev.section("NetDev");
        netdev.kv("Name", &self.name)?;
        netdev.kv("Kind", "bridge")?;

        let mut network = Ini::new(format!("{stem}.network"), &comment)?;
        network.section("Match");
        network.kv("Name", &self.name)?;
        network.kv("Kind", "bridge")?;
        network.section("Link");
        network.kv("RequiredForOnline", "no")?;
        network.section("Network");
        network.kv("Address", &format!("{}/{}", self.address, self.prefix))?;
        network.kv("ConfigureWithoutCarrier", "yes")?;
        network.kv("LinkLocalAddressing", "no")?;
        network.kv("IPv6AcceptRA", "no")?;
        network.kv("IPForward", "ipv4")?;
        network.kv("IPMasquerade", if self.masquerade { "ipv4" } else { "no" })?;
        for m in macvtaps {
            network.kv("MACVTAP", m)?;
        }
        Ok(Rendered {
            files: vec![netdev.done(), network.done()],
        })
    }
}

/// Checks a set of VM links together: each valid, UUIDs and names unique, no macvtap on a
/// macvtap, a passthru macvtap alone on its lower link.
fn check_set(zone: Option<&ZoneBridge>, vms: &[VmLink]) -> Result<()> {
    let mut uuids = HashSet::new();
    let mut names: HashSet<&str> = zone.map(|z| z.name.as_str()).into_iter().collect();
    for vm in vms {
        vm.validate()?;
        if !uuids.insert(check_uuid(&vm.uuid)?) {
            return Err(NetworkdError::Duplicate {
                what: "VM UUID",
                value: vm.uuid.clone(),
            });
        }
        if !names.insert(&vm.name) {
            return Err(NetworkdError::Duplicate {
                what: "interface name",
                value: vm.name.clone(),
            });
        }
    }
    for vm in vms {
        if vms.iter().any(|o| o.name == vm.lower) {
            return Err(NetworkdError::BadLower {
                name: vm.name.clone(),
                lower: vm.lower.clone(),
                why: "another VM's macvtap",
            });
        }
        if vm.mode == MacvtapMode::Passthru {
            if let Some(o) = vms
                .iter()
                .find(|o| o.lower == vm.lower && o.name != vm.name)
            {
                return Err(NetworkdError::PassthruShared {
                    name: vm.name.clone(),
                    lower: vm.lower.clone(),
                    other: o.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// `20-<lower>.network`: attaches every macvtap in `vms` whose lower link is `lower` (the
/// others are ignored), in their order. Not for a zone bridge: see [`render_all`].
pub fn render_lower(lower: &str, vms: &[VmLink]) -> Result<Rendered> {
    check_ifname("lower link", lower)?;
    let on: Vec<VmLink> = vms.iter().filter(|v| v.lower == lower).cloned().collect();
    if on.is_empty() {
        return Err(NetworkdError::NoVmOnLower(lower.to_string()));
    }
    check_set(None, &on)?;
    let mut network = Ini::new(
        format!("20-{lower}.network"),
        &format!("{GENERATED}: macvtaps on {lower}"),
    )?;
    network.section("Match");
    network.kv("Name", lower)?;
    network.section("Network");
    for vm in &on {
        network.kv("MACVTAP", &vm.name)?;
    }
    Ok(Rendered {
        files: vec![network.done()],
    })
}

/// Every file for a host: one `20-<lower>.network` per lower link (in order of first use),
/// the zone's two files (with the `MACVTAP=` lines of macvtaps on the bridge), and each VM's
/// two files.
pub fn render_all(zone: Option<&ZoneBridge>, vms: &[VmLink]) -> Result<Rendered> {
    if let Some(z) = zone {
        z.validate()?;
    }
    check_set(zone, vms)?;
    let zone_name = zone.map(|z| z.name.as_str());
    let mut out = Rendered::default();
    let mut lowers: Vec<&str> = Vec::new();
    for vm in vms {
        if Some(vm.lower.as_str()) != zone_name && !lowers.contains(&vm.lower.as_str()) {
            lowers.push(&vm.lower);
        }
    }
    for lower in lowers {
        out.extend(render_lower(lower, vms)?);
    }
    if let Some(z) = zone {
        let on: Vec<&str> = vms
            .iter()
            .filter(|v| v.lower == z.name)
            .map(|v| v.name.as_str())
            .collect();
        out.extend(z.render_with(&on)?);
    }
    for vm in vms {
        out.extend(vm.render()?);
    }
    Ok(out)
}

impl Rendered {
    /// The contents of file `name`, if rendered.
    pub fn file(&self, name: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_str())
    }

    /// Appends another set of files.
    pub fn extend(&mut self, other: Rendered) {
        self.files.extend(other.files);
    }

    /// Writes every file into `dir` (created if missing), each atomically: a temporary file
    /// in `dir` (named `.<name>.<pid>.<n>.tmp`, which networkd ignores), written, made
    /// `0644` (networkd reads as `systemd-network`), fsynced, renamed over the target; then
    /// `dir` is fsynced. A failed file leaves no temporary file; files written before it
    /// stay. Returns the paths written, in order. Run `networkctl reload` afterwards.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut seen = HashSet::new();
        for (name, _) in &self.files {
            check_file_name(name)?;
            if !seen.insert(name.as_str()) {
                return Err(NetworkdError::InvalidFileName {
                    name: name.clone(),
                    why: "it appears twice",
                });
            }
        }
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| NetworkdError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let mut paths = Vec::with_capacity(self.files.len());
        for (name, contents) in &self.files {
            paths.push(write_atomic(dir, name, contents.as_bytes())?);
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))?;
        Ok(paths)
    }
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let target = dir.join(name);
    let (tmp, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(NetworkdError::Io {
                    action: "create",
                    path: tmp,
                    source,
                })
            }
        }
    };
    let steps = (|| {
        file.write_all(bytes).map_err(|e| ("write", e))?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(Permissions::from_mode(0o644))
            .map_err(|e| ("chmod", e))?;
        file.sync_all().map_err(|e| ("fsync", e))?;
        fs::rename(&tmp, &target).map_err(|e| ("rename onto", e))
    })();
    if let Err((action, source)) = steps {
        if let Err(e) = fs::remove_file(&tmp) {
            log::error!("could not remove temporary file {}: {e}", tmp.display());
        }
        let path = if action == "rename onto" { target } else { tmp };
        return Err(NetworkdError::Io {
            action,
            path,
            source,
        });
    }
    log::debug!("wrote {}", target.display());
    Ok(target)
}

#[cfg(test)]
mod tests;
