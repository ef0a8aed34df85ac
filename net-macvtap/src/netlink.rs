//! Link plumbing over rtnetlink, synchronous.
//!
//! [`Netlink`] owns one `NETLINK_ROUTE` socket and sends one request at a time: each request
//! gets the next sequence number and asks for an ACK, and the reply loop reads until that ACK
//! (or the `NLMSG_DONE` ending a dump), skipping replies to older requests and messages that
//! do not come from the kernel. Every loop is bounded: a receive timeout on the socket, a
//! deadline per request and a maximum number of datagrams. Extended ACKs are switched on, so
//! a refusal carries the kernel's own explanation when it gives one.
//!
//! The socket belongs to the network namespace of the thread that opened it, and keeps
//! working there whichever thread uses it later. [`Netlink::open_in`] opens one in another
//! namespace (a helper thread enters it with `setns`, opens the socket and ends), and
//! [`with_netns`] runs any closure there the same way.
//!
//! Messages are built and parsed with `netlink-packet-route`; the socket is `netlink-sys`'s
//! plain blocking one. There is no async runtime: a VMM calls this from wherever it likes.
//!
//! ```no_run
//! use net_macvtap::netlink::{MacvtapMode, Netlink};
//!
//! # fn main() -> Result<(), net_macvtap::netlink::PlumbError> {
//! let mut nl = Netlink::open()?;
//! let mac = "52:54:00:12:34:56".parse().expect("a valid MAC");
//! let vtap = nl.create_macvtap("vm0", "eth0", MacvtapMode::Bridge, Some(mac), 4)?;
//! nl.set_up("vm0", true)?;
//! println!("/dev/tap{} is vm0's queue device", vtap.index);
//! nl.delete("vm0")?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::str::FromStr;
use std::time::{Duration, Instant};

use net_api::MacAddr;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLMSG_DONE,
    NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVtap, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    MacVlanMode, State,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::libc;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// The longest interface name the kernel takes, in bytes (`IFNAMSIZ` less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Most queues the kernel gives a link (`IFLA_NUM_TX_QUEUES`, `IFLA_NUM_RX_QUEUES`).
pub const MAX_QUEUES: u16 = 4096;

/// `NLMSGERR_ATTR_MSG` of `linux/netlink.h` (the extended ACK's text); `libc` lacks it.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// How long one `recv` waits for the kernel.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request (a whole dump included) may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Most datagrams read for one request.
const MAX_DATAGRAMS: usize = 1 << 16;
/// Receive buffer: a dump datagram is at most 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// Dumps interrupted by a concurrent change (`NLM_F_DUMP_INTR`) are retried this often.
const DUMP_ATTEMPTS: usize = 3;

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

fn kernel_says(kernel: &Option<String>) -> String {
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

    fn to_netlink(self) -> MacVlanMode {
        match self {
            MacvtapMode::Private => MacVlanMode::Private,
            MacvtapMode::Vepa => MacVlanMode::Vepa,
            MacvtapMode::Bridge => MacVlanMode::Bridge,
            MacvtapMode::Passthru => MacVlanMode::Passthrough,
        }
    }

    fn from_netlink(mode: MacVlanMode) -> Option<MacvtapMode> {
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
    fn from_message(msg: LinkMessage) -> Link {
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

/// Why one request failed, before the caller names the operation.
#[derive(Debug)]
enum Failure {
    Kernel {
        source: io::Error,
        kernel: Option<String>,
    },
    Socket(io::Error),
    Protocol(String),
}

impl Failure {
    fn errno(&self) -> Option<i32> {
        match self {
            Failure::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    fn into_error(self, op: impl Into<String>) -> PlumbError {
        let op = op.into();
        match self {
            Failure::Kernel { source, kernel } => PlumbError::Netlink { op, source, kernel },
            Failure::Socket(source) => PlumbError::Netlink {
                op,
                source,
                kernel: None,
            },
            Failure::Protocol(detail) => PlumbError::Protocol { op, detail },
        }
    }
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The text of an extended ACK (`NLMSGERR_ATTR_MSG`), from what follows an error's code:
/// the request's header (and its payload unless the error is `NLM_F_CAPPED`), then TLVs.
fn ext_ack_message(flags: u16, rest: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let hdr_len = std::mem::size_of::<libc::nlmsghdr>();
    let request_len = if flags & NLM_F_CAPPED != 0 {
        hdr_len
    } else {
        let len: [u8; 4] = rest.get(0..4)?.try_into().ok()?;
        (u32::from_ne_bytes(len) as usize).max(hdr_len)
    };
    let tlvs = rest.get(align4(request_len)..)?;
    for nla in NlasIterator::new(tlvs) {
        let nla = nla.ok()?;
        if nla.kind() == NLMSGERR_ATTR_MSG {
            let text = String::from_utf8_lossy(nla.value());
            let text = text.trim_end_matches('\0').trim();
            if !text.is_empty() {
                return Some(text.to_string());
            }
        }
    }
    None
}

/// The replies to one request, fed datagram by datagram.
struct Replies {
    seq: u32,
    port: u32,
    dump: bool,
    interrupted: bool,
    messages: Vec<RouteNetlinkMessage>,
}

impl Replies {
    fn new(seq: u32, port: u32, dump: bool) -> Replies {
        Replies {
            seq,
            port,
            dump,
            interrupted: false,
            messages: Vec::new(),
        }
    }

    /// Takes one datagram; `Ok(true)` once the request is answered completely.
    fn feed(&mut self, datagram: &[u8]) -> Result<bool, Failure> {
        let mut offset = 0;
        while offset < datagram.len() {
            let rest = &datagram[offset..];
            let buf = NetlinkBuffer::new_checked(rest)
                .map_err(|e| Failure::Protocol(format!("malformed netlink message: {e}")))?;
            let len = buf.length() as usize;
            let (seq, port, flags, kind) = (
                buf.sequence_number(),
                buf.port_number(),
                buf.flags(),
                buf.message_type(),
            );
            let bytes = &rest[..len];
            offset += align4(len);
            if seq != self.seq || port != self.port {
                log::debug!(
                    "netlink: skipping a message of type {kind} for sequence {seq} port {port} \
                     (waiting for sequence {} port {})",
                    self.seq,
                    self.port
                );
                continue;
            }
            if flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match kind {
                NLMSG_NOOP => continue,
                NLMSG_OVERRUN => {
                    return Err(Failure::Protocol("the kernel reported an overrun".into()))
                }
                NLMSG_ERROR | NLMSG_DONE => return self.end(bytes, flags).map(|()| true),
                _ => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                    Ok(NetlinkMessage {
                        payload: NetlinkPayload::InnerMessage(msg),
                        ..
                    }) => self.messages.push(msg),
                    Ok(_) => {}
                    Err(e) if self.dump => {
                        log::warn!("netlink: skipping a dump entry of type {kind} that did not decode: {e}");
                    }
                    Err(e) => {
                        return Err(Failure::Protocol(format!(
                            "a message of type {kind} did not decode: {e}"
                        )))
                    }
                },
            }
        }
        Ok(false)
    }

    /// An `NLMSG_ERROR` (an ACK when its code is 0) or an `NLMSG_DONE` ending a dump.
    fn end(&mut self, bytes: &[u8], flags: u16) -> Result<(), Failure> {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
            Failure::Protocol(format!("an error or done message did not decode: {e}"))
        })?;
        match msg.payload {
            NetlinkPayload::Error(err) => match err.code {
                None => Ok(()),
                Some(_) => Err(Failure::Kernel {
                    source: err.to_io(),
                    kernel: ext_ack_message(flags, &err.header),
                }),
            },
            NetlinkPayload::Done(done) if done.code < 0 => Err(Failure::Kernel {
                source: io::Error::from_raw_os_error(-done.code),
                kernel: None,
            }),
            NetlinkPayload::Done(_) => Ok(()),
            _ => Err(Failure::Protocol("an unexpected end message".into())),
        }
    }
}

/// One `NETLINK_ROUTE` socket: sequence numbers, ACKs, multi-part dumps.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    port: u32,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, PlumbError> {
        let io_err = |op: &str, source: io::Error| PlumbError::Io {
            op: op.to_string(),
            source,
        };
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| io_err("opening a NETLINK_ROUTE socket", e))?;
        let addr = socket
            .bind_auto()
            .map_err(|e| io_err("binding a NETLINK_ROUTE socket", e))?;
        // Both are optimisations (the kernel's explanation in errors, short error replies);
        // an old kernel without them still works.
        if let Err(e) = socket.set_ext_ack(true) {
            log::debug!("netlink: no extended ACKs: {e}");
        }
        if let Err(e) = socket.set_cap_ack(true) {
            log::debug!("netlink: errors will echo whole requests: {e}");
        }
        let timeout = TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
        setsockopt(&socket, sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| io_err("setting a receive timeout on the netlink socket", e.into()))?;
        Ok(Netlink {
            socket,
            port: addr.port_number(),
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Opens a socket in the network namespace `ns` (a helper thread enters it).
    pub fn open_in(ns: BorrowedFd<'_>) -> Result<Netlink, PlumbError> {
        with_netns(ns, "opening a netlink socket", Netlink::open)
    }

    /// Sends one request and reads every reply to it.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), Failure> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let kernel = SocketAddr::new(0, 0);
        let sent = self
            .socket
            .send_to(&bytes, &kernel, 0)
            .map_err(Failure::Socket)?;
        if sent != bytes.len() {
            return Err(Failure::Protocol(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            )));
        }

        let mut replies = Replies::new(self.seq, self.port, flags & NLM_F_DUMP == NLM_F_DUMP);
        let deadline = Instant::now() + REQUEST_DEADLINE;
        for _ in 0..MAX_DATAGRAMS {
            if Instant::now() > deadline {
                return Err(Failure::Socket(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no complete reply within {} s", REQUEST_DEADLINE.as_secs()),
                )));
            }
            self.buf.clear();
            self.buf.reserve(RECV_BUF);
            let (len, from) = match self.socket.recv_from(&mut self.buf, libc::MSG_TRUNC) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Failure::Socket(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no reply from the kernel within {} s",
                            RECV_TIMEOUT.as_secs()
                        ),
                    )))
                }
                Err(e) => return Err(Failure::Socket(e)),
            };
            if from.port_number() != 0 {
                log::debug!(
                    "netlink: ignoring a datagram from port {}",
                    from.port_number()
                );
                continue;
            }
            if len > self.buf.len() {
                return Err(Failure::Protocol(format!(
                    "a reply of {len} bytes did not fit the {}-byte buffer",
                    self.buf.len()
                )));
            }
            let datagram = std::mem::take(&mut self.buf);
            let done = replies.feed(&datagram[..len]);
            self.buf = datagram;
            if done? {
                return Ok((replies.messages, replies.interrupted));
            }
        }
        Err(Failure::Protocol(format!(
            "no end of the reply after {MAX_DATAGRAMS} datagrams"
        )))
    }

    /// A request answered by an ACK (and possibly data first).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        self.exchange(msg, flags | NLM_F_ACK).map(|(m, _)| m)
    }

    /// A dump, repeated when a concurrent change interrupted it.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        for _ in 0..DUMP_ATTEMPTS {
            let (messages, interrupted) = self.exchange(msg.clone(), NLM_F_DUMP)?;
            if !interrupted {
                return Ok(messages);
            }
            log::debug!("netlink: dump interrupted by a concurrent change, dumping again");
        }
        Err(Failure::Protocol(format!(
            "the table changed during each of {DUMP_ATTEMPTS} dumps"
        )))
    }

    /// The link called `name`, or `None`.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, PlumbError> {
        validate_name(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let op = || format!("looking up link '{name}'");
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })),
            Err(f) if f.errno() == Some(libc::ENODEV) => Ok(None),
            Err(f) => Err(f.into_error(op())),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, PlumbError> {
        let replies = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(|f| f.into_error("listing links"))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })
            .collect())
    }

    /// Waits until `name` is operationally up ([`Link::oper_up`]), at most `timeout`;
    /// `false` when it is not by then. Polls every 10 ms.
    pub fn wait_oper_up(&mut self, name: &str, timeout: Duration) -> Result<bool, PlumbError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.link(name)? {
                Some(link) if link.oper_up => return Ok(true),
                Some(_) => {}
                None => {
                    return Err(PlumbError::MissingLink {
                        op: format!("waiting for '{name}' to come up"),
                        name: name.to_string(),
                    })
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The index of the link called `name`; [`PlumbError::NoSuchLink`] when there is none.
    pub fn index(&mut self, name: &str) -> Result<u32, PlumbError> {
        match self.link(name)? {
            Some(link) => Ok(link.index),
            None => Err(PlumbError::NoSuchLink {
                name: name.to_string(),
            }),
        }
    }

    /// The index of `name`, or [`PlumbError::MissingLink`] naming `op`.
    fn index_for(&mut self, op: &dyn Fn() -> String, name: &str) -> Result<u32, PlumbError> {
        match self.index(name) {
            Err(PlumbError::NoSuchLink { name }) => Err(PlumbError::MissingLink { op: op(), name }),
            other => other,
        }
    }

    /// Creates a link (`NLM_F_CREATE | NLM_F_EXCL`).
    fn create(&mut self, msg: LinkMessage, op: &dyn Fn() -> String) -> Result<(), PlumbError> {
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
            .map_err(|f| f.into_error(op()))
    }

    /// Changes the link called `name` (`RTM_SETLINK` by name).
    fn set(
        &mut self,
        name: &str,
        mut msg: LinkMessage,
        op: &dyn Fn() -> String,
    ) -> Result<(), PlumbError> {
        validate_name(name)?;
        if msg.header.index == 0 {
            msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        }
        match self.request(RouteNetlinkMessage::SetLink(msg), 0) {
            Ok(_) => Ok(()),
            Err(f) if f.errno() == Some(libc::ENODEV) => Err(PlumbError::MissingLink {
                op: op(),
                name: name.to_string(),
            }),
            Err(f) => Err(f.into_error(op())),
        }
    }

    /// Creates a macvtap on `lower` with `queues` transmit and receive queues, and returns it
    /// as the kernel describes it. It is left down.
    pub fn create_macvtap(
        &mut self,
        name: &str,
        lower: &str,
        mode: MacvtapMode,
        mac: Option<MacAddr>,
        queues: u16,
    ) -> Result<Link, PlumbError> {
        validate_name(name)?;
        validate_name(lower)?;
        if queues == 0 || queues > MAX_QUEUES {
            return Err(PlumbError::InvalidConfig {
                what: "macvtap queue count",
                why: format!("{queues} for '{name}': give 1 to {MAX_QUEUES}"),
            });
        }
        let op = || format!("creating macvtap '{name}' on '{lower}'");
        let lower_index = self.index_for(&op, lower)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Link(lower_index));
        if let Some(mac) = mac {
            msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        msg.attributes
            .push(LinkAttribute::NumTxQueues(u32::from(queues)));
        msg.attributes
            .push(LinkAttribute::NumRxQueues(u32::from(queues)));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVtap),
            LinkInfo::Data(InfoData::MacVtap(vec![InfoMacVtap::Mode(
                mode.to_netlink(),
            )])),
        ]));
        self.create(msg, &op)?;
        match self.link(name)? {
            Some(link) => Ok(link),
            None => Err(PlumbError::MissingLink {
                op: format!("reading back macvtap '{name}' after creating it"),
                name: name.to_string(),
            }),
        }
    }

    /// Creates a veth pair `name` - `peer`, both down.
    pub fn create_veth(&mut self, name: &str, peer: &str) -> Result<(), PlumbError> {
        validate_name(name)?;
        validate_name(peer)?;
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.create(msg, &|| {
            format!("creating veth '{name}' with peer '{peer}'")
        })
    }

    /// Creates a bridge, down.
    pub fn create_bridge(&mut self, name: &str) -> Result<(), PlumbError> {
        validate_name(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.create(msg, &|| format!("creating bridge '{name}'"))
    }

    /// Enslaves `name` to `master` (a bridge), or releases it with `None`.
    pub fn set_master(&mut self, name: &str, master: Option<&str>) -> Result<(), PlumbError> {
        validate_name(name)?;
        let op = || match master {
            Some(m) => format!("enslaving '{name}' to '{m}'"),
            None => format!("releasing '{name}' from its master"),
        };
        let master_index = match master {
            Some(m) => {
                validate_name(m)?;
                self.index_for(&op, m)?
            }
            None => 0,
        };
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Controller(master_index));
        self.set(name, msg, &op)
    }

    /// Sets `name` administratively up or down.
    pub fn set_up(&mut self, name: &str, up: bool) -> Result<(), PlumbError> {
        let mut msg = LinkMessage::default();
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        let state = if up { "up" } else { "down" };
        self.set(name, msg, &|| format!("setting '{name}' {state}"))
    }

    /// Sets the MTU of `name`.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), PlumbError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set(name, msg, &|| {
            format!("setting the MTU of '{name}' to {mtu}")
        })
    }

    /// Sets the hardware address of `name`.
    pub fn set_mac(&mut self, name: &str, mac: MacAddr) -> Result<(), PlumbError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        self.set(name, msg, &|| {
            format!("setting the MAC of '{name}' to {mac}")
        })
    }

    fn address_message(
        &mut self,
        name: &str,
        addr: IpAddr,
        prefix: u8,
        op: &dyn Fn() -> String,
    ) -> Result<AddressMessage, PlumbError> {
        validate_name(name)?;
        let (family, max) = match addr {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        if prefix > max {
            return Err(PlumbError::InvalidConfig {
                what: "prefix length",
                why: format!("/{prefix} for {addr} on '{name}': at most /{max}"),
            });
        }
        let index = self.index_for(op, name)?;
        let mut msg = AddressMessage::default();
        msg.header.family = family;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        // As `ip addr add`: IFA_LOCAL is the address, IFA_ADDRESS the peer (the same here).
        if addr.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr));
        }
        msg.attributes.push(AddressAttribute::Address(addr));
        Ok(msg)
    }

    /// Adds `addr/prefix` to `name`.
    pub fn add_address(&mut self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), PlumbError> {
        let op = || format!("adding {addr}/{prefix} to '{name}'");
        let msg = self.address_message(name, addr, prefix, &op)?;
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
        .map_err(|f| f.into_error(op()))
    }

    /// Removes `addr/prefix` from `name`; `false` when it was not there.
    pub fn del_address(
        &mut self,
        name: &str,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<bool, PlumbError> {
        let op = || format!("removing {addr}/{prefix} from '{name}'");
        let msg = self.address_message(name, addr, prefix, &op)?;
        match self.request(RouteNetlinkMessage::DelAddress(msg), 0) {
            Ok(_) => Ok(true),
            Err(f) if f.errno() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(f) => Err(f.into_error(op())),
        }
    }

    /// Adds a default route via `gateway` out of `name` (main table).
    pub fn add_default_route(&mut self, name: &str, gateway: IpAddr) -> Result<(), PlumbError> {
        validate_name(name)?;
        let op = || format!("adding a default route via {gateway} on '{name}'");
        let index = self.index_for(&op, name)?;
        let mut msg = RouteMessage::default();
        msg.header.address_family = match gateway {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
        .map_err(|f| f.into_error(op()))
    }

    /// Moves `name` into the network namespace `ns` (an open `/proc/<pid>/ns/net` or
    /// `/run/netns/<name>`), keeping its name.
    pub fn move_to_netns(&mut self, name: &str, ns: BorrowedFd<'_>) -> Result<(), PlumbError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        self.set(name, msg, &|| {
            format!(
                "moving '{name}' to the network namespace of fd {}",
                ns.as_raw_fd()
            )
        })
    }

    /// Moves `name` into the network namespace `ns` and renames it `new_name` there (the
    /// name may be taken in this namespace and free in the other).
    pub fn move_to_netns_as(
        &mut self,
        name: &str,
        ns: BorrowedFd<'_>,
        new_name: &str,
    ) -> Result<(), PlumbError> {
        validate_name(name)?;
        validate_name(new_name)?;
        let op = || {
            format!(
                "moving '{name}' to the network namespace of fd {} as '{new_name}'",
                ns.as_raw_fd()
            )
        };
        let index = self.index_for(&op, name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        msg.attributes
            .push(LinkAttribute::IfName(new_name.to_string()));
        self.set(name, msg, &op)
    }

    /// Deletes `name` (a veth's peer goes with it); `false` when it did not exist.
    pub fn delete(&mut self, name: &str) -> Result<bool, PlumbError> {
        validate_name(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(_) => Ok(true),
            Err(f) if f.errno() == Some(libc::ENODEV) => Ok(false),
            Err(f) => Err(f.into_error(format!("deleting '{name}'"))),
        }
    }
}

/// Runs `f` on a helper thread inside the network namespace `ns` and returns its result.
///
/// Only that thread changes namespace (`setns(CLONE_NEWNET)`); the caller stays where it is.
/// Sockets `f` opens belong to `ns` for their whole life, and a child process it spawns
/// starts in `ns`.
pub fn with_netns<T, F>(ns: BorrowedFd<'_>, what: &str, f: F) -> Result<T, PlumbError>
where
    T: Send,
    F: FnOnce() -> Result<T, PlumbError> + Send,
{
    std::thread::scope(|scope| {
        let helper = scope.spawn(move || {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| PlumbError::Io {
                op: format!("entering a network namespace for {what}"),
                source: e.into(),
            })?;
            f()
        });
        helper.join().unwrap_or_else(|_| {
            Err(PlumbError::Io {
                op: what.to_string(),
                source: io::Error::other("the helper thread panicked"),
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        for ok in ["eth0", "vm-0", "a", "123456789012345", "br.10", "zone_0@x"] {
            validate_name(ok).expect(ok);
        }
        let cases = [
            ("", "empty"),
            ("1234567890123456", "15 bytes"),
            (".", "reserved"),
            ("..", "reserved"),
            ("a/b", "'/'"),
            ("eth0:1", "':'"),
            ("a b", "whitespace"),
            ("a\tb", "whitespace"),
            ("a\0", "NUL"),
        ];
        for (bad, why) in cases {
            let e = validate_name(bad).expect_err(bad);
            let text = e.to_string();
            assert!(text.contains(why), "{text:?} should say {why}");
            assert!(
                text.contains(&format!("'{bad}'")),
                "{text:?} names the link"
            );
        }
        // 15 bytes, counted in bytes rather than characters.
        validate_name("ééééééé").expect("14 bytes");
        validate_name("éééééééé").expect_err("16 bytes");
    }

    #[test]
    fn modes_map_to_the_kernel_values() {
        // MACVLAN_MODE_* of linux/if_link.h: the ABI, checked here rather than trusted.
        let expected = [
            (MacvtapMode::Private, 1, "private"),
            (MacvtapMode::Vepa, 2, "vepa"),
            (MacvtapMode::Bridge, 4, "bridge"),
            (MacvtapMode::Passthru, 8, "passthru"),
        ];
        for (mode, value, name) in expected {
            assert_eq!(mode.kernel_value(), value);
            assert_eq!(MacvtapMode::from_kernel_value(value), Some(mode));
            assert_eq!(mode.to_string(), name);
            assert_eq!(name.parse::<MacvtapMode>(), Ok(mode));
            assert_eq!(MacvtapMode::from_netlink(mode.to_netlink()), Some(mode));
        }
        assert_eq!(MacvtapMode::from_kernel_value(16), None, "source mode");
        assert_eq!(MacvtapMode::from_kernel_value(0), None);
        let e = "passthrough"
            .parse::<MacvtapMode>()
            .expect_err("not a mode");
        assert_eq!(
            e.to_string(),
            "'passthrough' is not a macvtap mode: write private, vepa, bridge or passthru"
        );
    }

    #[test]
    fn error_text_names_the_operation_and_the_link() {
        let e = Failure::Kernel {
            source: io::Error::from_raw_os_error(libc::EEXIST),
            kernel: None,
        }
        .into_error("creating macvtap 'vm0' on 'eth0'");
        assert_eq!(
            e.to_string(),
            "creating macvtap 'vm0' on 'eth0' failed: File exists (os error 17)"
        );
        assert_eq!(e.os_error(), Some(libc::EEXIST));
        let e = Failure::Kernel {
            source: io::Error::from_raw_os_error(libc::EINVAL),
            kernel: Some("Unknown device type".into()),
        }
        .into_error("creating bridge 'br0'");
        assert_eq!(
            e.to_string(),
            "creating bridge 'br0' failed: Invalid argument (os error 22) (kernel: Unknown device type)"
        );
        let e = PlumbError::NoSuchLink { name: "x".into() };
        assert_eq!(e.to_string(), "no link named 'x' in this network namespace");
        assert_eq!(e.missing_link(), Some("x"));
        let e = PlumbError::MissingLink {
            op: "creating macvtap 'vm0' on 'eth9'".into(),
            name: "eth9".into(),
        };
        assert_eq!(
            e.to_string(),
            "creating macvtap 'vm0' on 'eth9' failed: no link named 'eth9' in this network namespace"
        );
    }

    /// One netlink message: header then payload, padded to 4 bytes.
    fn message(kind: u16, flags: u16, seq: u32, port: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&port.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(len), 0);
        out
    }

    /// An `NLMSG_ERROR` payload: the code, the request's header (capped), then TLVs.
    fn error_payload(code: i32, seq: u32, tlvs: &[u8]) -> Vec<u8> {
        let mut out = code.to_ne_bytes().to_vec();
        out.extend_from_slice(&message(16, 0x405, seq, 0, &[])[..16]);
        out.extend_from_slice(tlvs);
        out
    }

    fn msg_tlv(text: &str) -> Vec<u8> {
        let mut value = text.as_bytes().to_vec();
        value.push(0);
        let len = 4 + value.len();
        let mut out = (len as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        out.extend_from_slice(&value);
        out.resize(align4(len), 0);
        out
    }

    fn link_payload(index: u32, name: &str) -> Vec<u8> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let mut out = vec![0u8; netlink_packet_core::Emitable::buffer_len(&msg)];
        netlink_packet_core::Emitable::emit(&msg, &mut out);
        out
    }

    const RTM_NEWLINK: u16 = libc::RTM_NEWLINK;

    #[test]
    fn an_ack_ends_a_request_and_stale_replies_are_skipped() {
        let mut r = Replies::new(7, 42, false);
        // A reply to sequence 6 (a request that timed out) and one for another port.
        let mut d = message(NLMSG_ERROR, 0, 6, 42, &error_payload(-libc::EEXIST, 6, &[]));
        d.extend(message(NLMSG_ERROR, 0, 7, 41, &error_payload(0, 7, &[])));
        assert!(!r.feed(&d).expect("stale replies are not errors"));
        let mut d = message(RTM_NEWLINK, 0, 7, 42, &link_payload(3, "vm0"));
        d.extend(message(NLMSG_ERROR, 0, 7, 42, &error_payload(0, 7, &[])));
        assert!(r.feed(&d).expect("data then ACK"));
        assert_eq!(r.messages.len(), 1);
        match &r.messages[0] {
            RouteNetlinkMessage::NewLink(m) => {
                let link = Link::from_message(m.clone());
                assert_eq!((link.index, link.name.as_str()), (3, "vm0"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_error_carries_the_errno_and_the_kernel_message() {
        let mut r = Replies::new(1, 9, false);
        let tlvs = msg_tlv("Unknown device type");
        let d = message(
            NLMSG_ERROR,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            1,
            9,
            &error_payload(-libc::EOPNOTSUPP, 1, &tlvs),
        );
        let f = r.feed(&d).expect_err("a refusal");
        let e = f.into_error("creating macvtap 'vm0' on 'lo'");
        assert_eq!(e.os_error(), Some(libc::EOPNOTSUPP));
        let text = e.to_string();
        assert!(
            text.starts_with("creating macvtap 'vm0' on 'lo' failed: "),
            "{text}"
        );
        assert!(text.ends_with("(kernel: Unknown device type)"), "{text}");
    }

    #[test]
    fn the_extended_ack_is_found_after_an_uncapped_request() {
        // Not capped: the whole request (header + 8 payload bytes) is echoed before the TLVs.
        let mut rest = message(16, 0x405, 1, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        rest.extend(msg_tlv("bad thing"));
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &rest).as_deref(),
            Some("bad thing")
        );
        assert_eq!(ext_ack_message(0, &rest), None, "no TLVs flagged");
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &rest[..3]),
            None,
            "truncated"
        );
    }

    #[test]
    fn a_multipart_dump_ends_with_done() {
        let mut r = Replies::new(5, 1, true);
        let f = netlink_packet_core::NLM_F_MULTIPART;
        let mut d = message(RTM_NEWLINK, f, 5, 1, &link_payload(1, "lo"));
        d.extend(message(RTM_NEWLINK, f, 5, 1, &link_payload(2, "eth0")));
        assert!(!r.feed(&d).expect("first part"));
        let d = message(
            RTM_NEWLINK,
            f | NLM_F_DUMP_INTR,
            5,
            1,
            &link_payload(3, "br0"),
        );
        assert!(!r.feed(&d).expect("second part"));
        let d = message(NLMSG_DONE, f, 5, 1, &0i32.to_ne_bytes());
        assert!(r.feed(&d).expect("done"));
        assert_eq!(r.messages.len(), 3);
        assert!(r.interrupted);
        // A dump that ends with an error code in NLMSG_DONE.
        let mut r = Replies::new(6, 1, true);
        let d = message(NLMSG_DONE, f, 6, 1, &(-libc::EMSGSIZE).to_ne_bytes());
        let e = r
            .feed(&d)
            .expect_err("failed dump")
            .into_error("listing links");
        assert_eq!(e.os_error(), Some(libc::EMSGSIZE));
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        let mut r = Replies::new(1, 1, false);
        for bad in [&[1u8, 2, 3][..], &[0xff; 16][..], &[16, 0, 0, 0, 2, 0][..]] {
            assert!(matches!(r.feed(bad), Err(Failure::Protocol(_))), "{bad:?}");
        }
        // A length field shorter than the header.
        let mut d = message(NLMSG_ERROR, 0, 1, 1, &error_payload(0, 1, &[]));
        d[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(r.feed(&d), Err(Failure::Protocol(_))));
    }
}
