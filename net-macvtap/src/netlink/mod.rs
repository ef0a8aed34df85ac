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

mod monitor;
mod reply;
#[cfg(test)]
mod tests;
mod types;

pub use monitor::{LinkEvent, LinkMonitor};
use reply::*;
pub use types::*;

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
