//! Errors, names, modes and links.

use super::*;

/// A failure of link plumbing; each names the operation and the link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlumbError {
    /// A link name the kernel would refuse; checked before anything is sent.
    #[error("invalid link name '{name}': {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`Netlink::index`] found no link of that name.
    #[error("no link named '{name}' in this network namespace")]
    NoSuchLink {
        /// The name looked up.
        name: String,
    },
    /// An operation needed a link (its subject, lower link or master) that does not exist.
    #[error("{op} failed: no link named '{name}' in this network namespace")]
    MissingLink {
        /// What was being done.
        op: String,
        /// The link that is missing.
        name: String,
    },
    /// The kernel refused a request, or the socket failed.
    #[error("{op} failed: {source}{}", kernel_says(.kernel))]
    Netlink {
        /// What was being done (`creating macvtap 'vm0' on 'eth0'`).
        op: String,
        /// The error number in words.
        #[source]
        source: io::Error,
        /// The kernel's extended ACK message, when it sent one.
        kernel: Option<String>,
    },
    /// A reply that does not follow the netlink protocol.
    #[error("{op} failed: the kernel's reply could not be read: {detail}")]
    Protocol {
        /// What was being done.
        op: String,
        /// What was wrong with the reply.
        detail: String,
    },
    /// A parameter out of range (queue count, prefix length, zone settings).
    #[error("invalid {what}: {why}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// Why it is invalid and what would be valid.
        why: String,
    },
    /// A system call or file outside netlink failed (`setns`, a sysctl file).
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A helper program (`nft`) failed.
    #[error("{op} failed: {program} said: {detail}")]
    Command {
        /// What was being done.
        op: String,
        /// The program run.
        program: &'static str,
        /// Its error output, or how it ended.
        detail: String,
    },
}

pub(super) fn kernel_says(kernel: &Option<String>) -> String {
    match kernel {
        Some(msg) => format!(" (kernel: {msg})"),
        None => String::new(),
    }
}

impl PlumbError {
    /// The error number of a kernel refusal or socket failure (`libc::EEXIST`...).
    pub fn os_error(&self) -> Option<i32> {
        match self {
            PlumbError::Netlink { source, .. } | PlumbError::Io { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }

    /// The missing link's name, for [`PlumbError::NoSuchLink`] and [`PlumbError::MissingLink`].
    pub fn missing_link(&self) -> Option<&str> {
        match self {
            PlumbError::NoSuchLink { name } | PlumbError::MissingLink { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Checks a link name the way the kernel does (`dev_valid_name`), before it is sent.
pub fn validate_name(name: &str) -> Result<(), PlumbError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 15 bytes (IFNAMSIZ)")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are reserved")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains(':') {
        Some("it contains ':'")
    } else if name.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.contains('%') {
        Some("it contains '%', which the kernel takes as a name template")
    } else if name.contains('*') {
        Some("it contains '*', which nftables takes as a wildcard")
    } else if !name.is_ascii() {
        Some("it is not ASCII")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PlumbError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// How a macvtap shares its lower link with its siblings (the kernel's `MACVLAN_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacvtapMode {
    /// No traffic between siblings at all (`MACVLAN_MODE_PRIVATE`).
    Private,
    /// Sibling traffic goes out to the switch and back (`MACVLAN_MODE_VEPA`).
    Vepa,
    /// Siblings talk directly inside the kernel (`MACVLAN_MODE_BRIDGE`).
    Bridge,
    /// One macvtap owns the lower link (`MACVLAN_MODE_PASSTHRU`).
    Passthru,
}

impl MacvtapMode {
    /// Every mode.
    pub const ALL: [MacvtapMode; 4] = [
        MacvtapMode::Private,
        MacvtapMode::Vepa,
        MacvtapMode::Bridge,
        MacvtapMode::Passthru,
    ];

    pub(super) fn to_netlink(self) -> MacVlanMode {
        match self {
            MacvtapMode::Private => MacVlanMode::Private,
            MacvtapMode::Vepa => MacVlanMode::Vepa,
            MacvtapMode::Bridge => MacVlanMode::Bridge,
            MacvtapMode::Passthru => MacVlanMode::Passthrough,
        }
    }

    pub(super) fn from_netlink(mode: MacVlanMode) -> Option<MacvtapMode> {
        match mode {
            MacVlanMode::Private => Some(MacvtapMode::Private),
            MacVlanMode::Vepa => Some(MacvtapMode::Vepa),
            MacVlanMode::Bridge => Some(MacvtapMode::Bridge),
            MacVlanMode::Passthrough => Some(MacvtapMode::Passthru),
            _ => None,
        }
    }

    /// The kernel's `MACVLAN_MODE_*` value (`IFLA_MACVLAN_MODE`).
    pub fn kernel_value(self) -> u32 {
        self.to_netlink().into()
    }

    /// The mode of a kernel `MACVLAN_MODE_*` value; `None` for `source` and unknown values.
    pub fn from_kernel_value(value: u32) -> Option<MacvtapMode> {
        Self::ALL.into_iter().find(|m| m.kernel_value() == value)
    }

    /// The name `ip link` and networkd use.
    pub fn as_str(self) -> &'static str {
        match self {
            MacvtapMode::Private => "private",
            MacvtapMode::Vepa => "vepa",
            MacvtapMode::Bridge => "bridge",
            MacvtapMode::Passthru => "passthru",
        }
    }
}

impl fmt::Display for MacvtapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no macvtap mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a macvtap mode: write private, vepa, bridge or passthru")]
pub struct ParseModeError(pub String);

impl FromStr for MacvtapMode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ParseModeError(s.to_string()))
    }
}

/// A link as the kernel describes it (`RTM_NEWLINK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index (a macvtap's queue device is `/dev/tap<index>`).
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, when the link has a 6-byte one.
    pub mac: Option<MacAddr>,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `macvtap`...); `None` for physical links.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Operationally up (`IF_OPER_UP`): the link has carrier and the kernel lets it pass
    /// traffic. It follows `up` with a short delay (the kernel's link watch).
    pub oper_up: bool,
    /// Index of the master (the bridge a port is enslaved to).
    pub master: Option<u32>,
    /// `IFLA_LINK`: a macvtap's lower link, a veth's peer (possibly in another namespace).
    pub link: Option<u32>,
    /// A macvtap's mode.
    pub macvtap_mode: Option<MacvtapMode>,
    /// Transmit queues (`IFLA_NUM_TX_QUEUES`).
    pub tx_queues: Option<u32>,
}

impl Link {
    pub(super) fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            kind: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            oper_up: false,
            master: None,
            link: None,
            macvtap_mode: None,
            tx_queues: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::OperState(state) => link.oper_up = state == State::Up,
                LinkAttribute::Address(bytes) => {
                    link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr);
                }
                LinkAttribute::Controller(master) => link.master = Some(master),
                LinkAttribute::Link(lower) => link.link = Some(lower),
                LinkAttribute::NumTxQueues(n) => link.tx_queues = Some(n),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                            LinkInfo::Data(InfoData::MacVtap(data)) => {
                                for item in data {
                                    if let InfoMacVtap::Mode(mode) = item {
                                        link.macvtap_mode = MacvtapMode::from_netlink(mode);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}
