//! Reading the kernel's replies to one request: ACKs, errors with their text, dumps.

use super::*;

/// Why one request failed, before the caller names the operation.
#[derive(Debug)]
pub(super) enum Failure {
    Kernel {
        source: io::Error,
        kernel: Option<String>,
    },
    Socket(io::Error),
    Protocol(String),
}

impl Failure {
    pub(super) fn errno(&self) -> Option<i32> {
        match self {
            Failure::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(super) fn into_error(self, op: impl Into<String>) -> PlumbError {
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

pub(super) fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The text of an extended ACK (`NLMSGERR_ATTR_MSG`), from what follows an error's code:
/// the request's header (and its payload unless the error is `NLM_F_CAPPED`), then TLVs.
pub(super) fn ext_ack_message(flags: u16, rest: &[u8]) -> Option<String> {
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
pub(super) struct Replies {
    pub(super) seq: u32,
    pub(super) port: u32,
    pub(super) dump: bool,
    pub(super) interrupted: bool,
    pub(super) messages: Vec<RouteNetlinkMessage>,
}

impl Replies {
    pub(super) fn new(seq: u32, port: u32, dump: bool) -> Replies {
        Replies {
            seq,
            port,
            dump,
            interrupted: false,
            messages: Vec::new(),
        }
    }

    /// Takes one datagram; `Ok(true)` once the request is answered completely.
    pub(super) fn feed(&mut self, datagram: &[u8]) -> Result<bool, Failure> {
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
    pub(super) fn end(&mut self, bytes: &[u8], flags: u16) -> Result<(), Failure> {
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
