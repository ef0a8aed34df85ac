//! Link events: an rtnetlink socket subscribed to `RTNLGRP_LINK`, read without blocking.

use std::os::fd::{AsFd, BorrowedFd};

use super::*;

/// What the kernel announced about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared or changed (`RTM_NEWLINK`: flags, carrier, XDP, master...).
    New(Link),
    /// A link went away (`RTM_DELLINK`).
    Del(Link),
    /// Events were lost (the socket's buffer overflowed): look the links up again.
    Overrun,
}

/// Link events of the namespace the socket was opened in (see the module). Poll its fd for
/// readability, then take what is queued with [`LinkMonitor::events`].
#[derive(Debug)]
pub struct LinkMonitor {
    socket: Socket,
    buf: Vec<u8>,
}

/// `RTNLGRP_LINK` of `linux/rtnetlink.h`.
const RTNLGRP_LINK: u32 = 1;
/// Events read in one call at most (the caller comes back while the fd is readable).
const MAX_EVENTS: usize = 256;

impl LinkMonitor {
    /// Subscribes to link events in the calling thread's network namespace.
    pub fn open() -> Result<LinkMonitor, PlumbError> {
        let io_err = |op: &str, source: io::Error| PlumbError::Io {
            op: op.to_string(),
            source,
        };
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| io_err("opening a NETLINK_ROUTE socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| io_err("binding a NETLINK_ROUTE socket", e))?;
        socket
            .add_membership(RTNLGRP_LINK)
            .map_err(|e| io_err("subscribing to link events", e))?;
        socket
            .set_non_blocking(true)
            .map_err(|e| io_err("making the link event socket non-blocking", e))?;
        Ok(LinkMonitor {
            socket,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Subscribes in the network namespace `ns`.
    pub fn open_in(ns: BorrowedFd<'_>) -> Result<LinkMonitor, PlumbError> {
        with_netns(ns, "subscribing to link events", LinkMonitor::open)
    }

    /// The events queued now (empty when none); never blocks.
    pub fn events(&mut self) -> Result<Vec<LinkEvent>, PlumbError> {
        let mut out = Vec::new();
        while out.len() < MAX_EVENTS {
            self.buf.clear();
            self.buf.reserve(RECV_BUF);
            let (len, from) = match self.socket.recv_from(&mut self.buf, libc::MSG_TRUNC) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.push(LinkEvent::Overrun);
                    continue;
                }
                Err(e) => {
                    return Err(PlumbError::Io {
                        op: "reading link events".into(),
                        source: e,
                    })
                }
            };
            if from.port_number() != 0 {
                continue;
            }
            if len > self.buf.len() {
                // Cut short: what it said is unknown.
                out.push(LinkEvent::Overrun);
                continue;
            }
            parse_events(&self.buf[..len], &mut out);
        }
        Ok(out)
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the socket's fd lives as long as `self`, which the borrow is tied to.
        unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) }
    }
}

/// The link messages of one datagram; anything else (or malformed) is skipped.
pub(super) fn parse_events(datagram: &[u8], out: &mut Vec<LinkEvent>) {
    let mut offset = 0;
    while offset < datagram.len() {
        let Ok(buf) = NetlinkBuffer::new_checked(&datagram[offset..]) else {
            return;
        };
        let len = buf.length() as usize;
        if len == 0 {
            return;
        }
        let bytes = &datagram[offset..offset + len];
        offset += align4(len);
        if buf.message_type() == NLMSG_OVERRUN {
            out.push(LinkEvent::Overrun);
            continue;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            Ok(NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)),
                ..
            }) => out.push(LinkEvent::New(Link::from_message(m))),
            Ok(NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)),
                ..
            }) => out.push(LinkEvent::Del(Link::from_message(m))),
            Ok(_) => {}
            Err(e) => log::debug!("netlink: a link event did not decode: {e}"),
        }
    }
}
