//! vhost-user messages on the wire: reading one with its fds, checking it, and replying.
//!
//! The message layouts and request codes are the `vhost` crate's
//! (`vhost::vhost_user::message`); this module reads them off a stream socket with bounds
//! (a 12-byte header, at most [`MAX_BODY`] bytes of body, at most [`MAX_FDS`] fds, which are
//! all taken into our ownership so none leaks) and turns them into a [`Request`] only when
//! every field is what the spec allows for it: the body exactly the request's size, fds
//! exactly where the request carries them, vring indexes and fd flags checked before any
//! narrowing (`0x201` is not ring 1). A frontend is a peer, not a friend: anything else is a
//! [`WireError`] naming the request and what is wrong, and the session ends.
//!
//! [`parse`] is a pure function of the bytes and the fd count, so the `vhost_user_messages`
//! fuzz target runs it without sockets.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserMemory, VhostUserMemoryRegion, VhostUserMsgValidator, VhostUserU64,
    VhostUserVringAddr, VhostUserVringState, MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE,
};
use vm_memory::ByteValued;

/// The header: request, flags, size (little-endian `u32`s).
pub const HDR_LEN: usize = 12;
/// The largest body a request may have (`MAX_MSG_SIZE`).
pub const MAX_BODY: usize = MAX_MSG_SIZE;
/// The most fds one message can carry (`SCM_MAX_FD`): room for all of them, so none is lost
/// to a truncated control message (and all are closed when the message is refused).
pub const MAX_FDS: usize = 253;

/// `VHOST_USER_VERSION`, in the low two bits of the flags.
const FLAG_VERSION: u32 = 0x1;
const FLAG_VERSION_MASK: u32 = 0x3;
/// A reply.
pub const FLAG_REPLY: u32 = 0x4;
/// The frontend wants a reply-ack.
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// The index field of the fd requests: the ring in bits 0-7, "no fd" in bit 8.
const VRING_IDX_MASK: u64 = 0xff;
const VRING_NOFD: u64 = 0x100;

/// A message as read: header fields, body and fds.
#[derive(Debug)]
pub struct RawMsg {
    /// The request code.
    pub request: u32,
    /// The header flags.
    pub flags: u32,
    /// The body.
    pub body: Vec<u8>,
    /// Attached fds, ours.
    pub fds: Vec<OwnedFd>,
}

/// Why a message is refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection ended in the middle of a message, or failed.
    #[error("reading a message: {0}")]
    Io(#[from] io::Error),
    /// The header's size field is above what vhost-user allows.
    #[error("request {request} says its body is {size} bytes; vhost-user allows {MAX_BODY}")]
    TooLong {
        /// The request code.
        request: u32,
        /// The size it claims.
        size: usize,
    },
    /// A field the spec constrains has another value.
    #[error("{request}: {why}")]
    Invalid {
        /// The request's name.
        request: String,
        /// What is wrong.
        why: String,
    },
}

/// Reads one message; `Ok(None)` at a clean end of stream (between messages). The socket's
/// receive timeout bounds how long a half-sent message can stall the read.
pub fn recv(s: &UnixStream) -> Result<Option<RawMsg>, WireError> {
    let mut hdr = [0u8; HDR_LEN];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut fds = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut hdr)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS just installed these fds in this process; nothing else
                // owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        msg.bytes
    };
    if got == 0 {
        return Ok(None);
    }
    let mut reader = s;
    reader.read_exact(&mut hdr[got..])?;
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8) as usize);
    if size > MAX_BODY {
        return Err(WireError::TooLong { request, size });
    }
    let mut body = vec![0u8; size];
    reader.read_exact(&mut body)?;
    Ok(Some(RawMsg {
        request,
        flags,
        body,
        fds,
    }))
}

/// Writes a reply to `request` with `body`.
pub fn reply(s: &UnixStream, request: u32, body: &[u8]) -> io::Result<()> {
    send(s, request, FLAG_VERSION | FLAG_REPLY, body, &[])
}

/// Writes one message with its fds (for frontends in tests, and for replies).
pub fn send(
    s: &UnixStream,
    request: u32,
    flags: u32,
    body: &[u8],
    fds: &[RawFd],
) -> io::Result<()> {
    let mut hdr = [0u8; HDR_LEN];
    hdr[0..4].copy_from_slice(&request.to_le_bytes());
    hdr[4..8].copy_from_slice(&flags.to_le_bytes());
    hdr[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(&hdr), IoSlice::new(body)];
    let sent = sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)?;
    // A short write on a stream socket: the rest goes without the fds, which went with the
    // first byte.
    let mut writer = s;
    if sent < HDR_LEN {
        writer.write_all(&hdr[sent..])?;
        writer.write_all(body)?;
    } else if sent < HDR_LEN + body.len() {
        writer.write_all(&body[sent - HDR_LEN..])?;
    }
    Ok(())
}

/// One memory region of `SET_MEM_TABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    /// Where the guest sees it.
    pub guest_addr: u64,
    /// Its size.
    pub size: u64,
    /// Where the frontend maps it (ring addresses are given in these).
    pub user_addr: u64,
    /// Its offset in the fd.
    pub mmap_offset: u64,
}

/// A request, checked (see the module).
#[derive(Debug)]
pub enum Request {
    /// `GET_FEATURES`.
    GetFeatures,
    /// `SET_FEATURES`.
    SetFeatures(u64),
    /// `SET_OWNER`.
    SetOwner,
    /// `RESET_OWNER` (deprecated: a reset).
    ResetOwner,
    /// `RESET_DEVICE`.
    ResetDevice,
    /// `SET_MEM_TABLE`: regions with one fd each.
    SetMemTable(Vec<(MemRegion, OwnedFd)>),
    /// `SET_VRING_NUM`.
    SetVringNum {
        /// The ring.
        index: u32,
        /// Its size.
        num: u32,
    },
    /// `SET_VRING_ADDR`: frontend addresses.
    SetVringAddr {
        /// The ring.
        index: u32,
        /// `VHOST_VRING_F_LOG`.
        log: bool,
        /// Descriptor table.
        desc: u64,
        /// Used ring.
        used: u64,
        /// Available ring.
        avail: u64,
    },
    /// `SET_VRING_BASE`.
    SetVringBase {
        /// The ring.
        index: u32,
        /// Where the device starts.
        base: u32,
    },
    /// `GET_VRING_BASE` (stops the ring).
    GetVringBase {
        /// The ring.
        index: u32,
    },
    /// `SET_VRING_KICK`: `None` means polling (no fd).
    SetVringKick {
        /// The ring.
        index: u8,
        /// The eventfd.
        fd: Option<OwnedFd>,
    },
    /// `SET_VRING_CALL`.
    SetVringCall {
        /// The ring.
        index: u8,
        /// The eventfd.
        fd: Option<OwnedFd>,
    },
    /// `SET_VRING_ERR`.
    SetVringErr {
        /// The ring.
        index: u8,
        /// The eventfd.
        fd: Option<OwnedFd>,
    },
    /// `GET_PROTOCOL_FEATURES`.
    GetProtocolFeatures,
    /// `SET_PROTOCOL_FEATURES`.
    SetProtocolFeatures(u64),
    /// `GET_QUEUE_NUM`.
    GetQueueNum,
    /// `SET_VRING_ENABLE`.
    SetVringEnable {
        /// The ring.
        index: u32,
        /// On or off.
        on: bool,
    },
    /// A request this daemon does not offer (named for the log).
    Unsupported(String),
}

/// A request's name for logs: the `vhost` crate's, or its number.
pub fn name(request: u32) -> String {
    match FrontendReq::try_from(request) {
        Ok(r) => format!("{r:?}"),
        Err(_) => format!("request {request}"),
    }
}

fn invalid(request: u32, why: impl Into<String>) -> WireError {
    WireError::Invalid {
        request: name(request),
        why: why.into(),
    }
}

/// The body as `T`: exactly its size, and valid by the `vhost` crate's rules.
fn body<T: ByteValued + VhostUserMsgValidator + Default>(m: &RawMsg) -> Result<T, WireError> {
    let mut v = T::default();
    if m.body.len() != std::mem::size_of::<T>() {
        return Err(invalid(
            m.request,
            format!(
                "a {}-byte body where {} bytes belong",
                m.body.len(),
                std::mem::size_of::<T>()
            ),
        ));
    }
    v.as_mut_slice().copy_from_slice(&m.body);
    if !v.is_valid() {
        return Err(invalid(
            m.request,
            "a field has a value the spec does not allow",
        ));
    }
    Ok(v)
}

fn no_body(m: &RawMsg) -> Result<(), WireError> {
    if !m.body.is_empty() {
        return Err(invalid(
            m.request,
            format!("a {}-byte body where none belongs", m.body.len()),
        ));
    }
    Ok(())
}

/// The u64 of a body (packed: read it by value).
fn u64_body(m: &RawMsg) -> Result<u64, WireError> {
    let v: VhostUserU64 = body(m)?;
    let value = v.value;
    Ok(value)
}

/// The ring index and fd of `SET_VRING_KICK`/`CALL`/`ERR`: bits 0-7 the ring, bit 8 "no fd",
/// nothing else; exactly one fd unless bit 8 says none.
fn vring_fd(m: &mut RawMsg) -> Result<(u8, Option<OwnedFd>), WireError> {
    let v = u64_body(m)?;
    if v & !(VRING_IDX_MASK | VRING_NOFD) != 0 {
        return Err(invalid(
            m.request,
            format!("index field {v:#x} has bits above the ring index and the no-fd flag"),
        ));
    }
    let index = (v & VRING_IDX_MASK) as u8;
    let nofd = v & VRING_NOFD != 0;
    match (nofd, m.fds.len()) {
        (true, 0) => Ok((index, None)),
        (false, 1) => Ok((index, m.fds.pop())),
        (nofd, n) => Err(invalid(
            m.request,
            format!(
                "{n} fds with the no-fd flag {}",
                if nofd { "set" } else { "clear" }
            ),
        )),
    }
}

/// Checks a message and makes it a [`Request`] (see the module). The header's flags must
/// carry version 1 and no reply bit.
pub fn parse(mut m: RawMsg) -> Result<Request, WireError> {
    if m.flags & FLAG_VERSION_MASK != FLAG_VERSION || m.flags & FLAG_REPLY != 0 {
        return Err(invalid(
            m.request,
            format!("header flags {:#x}: version 1, not a reply", m.flags),
        ));
    }
    let code = FrontendReq::try_from(m.request).ok();
    // Only these carry fds.
    let fds_allowed = matches!(
        code,
        Some(
            FrontendReq::SET_MEM_TABLE
                | FrontendReq::SET_VRING_KICK
                | FrontendReq::SET_VRING_CALL
                | FrontendReq::SET_VRING_ERR
        )
    );
    if !fds_allowed && !m.fds.is_empty() {
        return Err(invalid(
            m.request,
            format!("{} fds attached to a request that takes none", m.fds.len()),
        ));
    }
    let req = match code {
        Some(FrontendReq::GET_FEATURES) => no_body(&m).map(|()| Request::GetFeatures)?,
        Some(FrontendReq::SET_FEATURES) => Request::SetFeatures(u64_body(&m)?),
        Some(FrontendReq::SET_OWNER) => no_body(&m).map(|()| Request::SetOwner)?,
        Some(FrontendReq::RESET_OWNER) => no_body(&m).map(|()| Request::ResetOwner)?,
        Some(FrontendReq::RESET_DEVICE) => no_body(&m).map(|()| Request::ResetDevice)?,
        Some(FrontendReq::GET_PROTOCOL_FEATURES) => {
            no_body(&m).map(|()| Request::GetProtocolFeatures)?
        }
        Some(FrontendReq::SET_PROTOCOL_FEATURES) => Request::SetProtocolFeatures(u64_body(&m)?),
        Some(FrontendReq::GET_QUEUE_NUM) => no_body(&m).map(|()| Request::GetQueueNum)?,
        Some(FrontendReq::SET_MEM_TABLE) => mem_table(m)?,
        Some(FrontendReq::SET_VRING_NUM) => {
            let s: VhostUserVringState = body(&m)?;
            Request::SetVringNum {
                index: s.index,
                num: s.num,
            }
        }
        Some(FrontendReq::SET_VRING_BASE) => {
            let s: VhostUserVringState = body(&m)?;
            Request::SetVringBase {
                index: s.index,
                base: s.num,
            }
        }
        Some(FrontendReq::GET_VRING_BASE) => {
            let s: VhostUserVringState = body(&m)?;
            Request::GetVringBase { index: s.index }
        }
        Some(FrontendReq::SET_VRING_ENABLE) => {
            let s: VhostUserVringState = body(&m)?;
            let on = match s.num {
                0 => false,
                1 => true,
                n => return Err(invalid(m.request, format!("enable value {n}: 0 or 1"))),
            };
            Request::SetVringEnable { index: s.index, on }
        }
        Some(FrontendReq::SET_VRING_ADDR) => {
            let a: VhostUserVringAddr = body(&m)?;
            Request::SetVringAddr {
                index: a.index,
                log: a.flags & 1 != 0,
                desc: a.descriptor,
                used: a.used,
                avail: a.available,
            }
        }
        Some(FrontendReq::SET_VRING_KICK) => {
            let (index, fd) = vring_fd(&mut m)?;
            Request::SetVringKick { index, fd }
        }
        Some(FrontendReq::SET_VRING_CALL) => {
            let (index, fd) = vring_fd(&mut m)?;
            Request::SetVringCall { index, fd }
        }
        Some(FrontendReq::SET_VRING_ERR) => {
            let (index, fd) = vring_fd(&mut m)?;
            Request::SetVringErr { index, fd }
        }
        _ => Request::Unsupported(name(m.request)),
    };
    Ok(req)
}

/// `SET_MEM_TABLE`: a count, padding, then that many regions, with as many fds.
fn mem_table(m: RawMsg) -> Result<Request, WireError> {
    let hdr_len = std::mem::size_of::<VhostUserMemory>();
    let reg_len = std::mem::size_of::<VhostUserMemoryRegion>();
    let Some(head) = m.body.get(..hdr_len) else {
        return Err(invalid(m.request, "shorter than its region count"));
    };
    let mut h = VhostUserMemory::default();
    h.as_mut_slice().copy_from_slice(head);
    let n = { h.num_regions } as usize;
    if !h.is_valid() || n > MAX_ATTACHED_FD_ENTRIES {
        return Err(invalid(
            m.request,
            format!("{n} regions (1 to {MAX_ATTACHED_FD_ENTRIES}) or non-zero padding"),
        ));
    }
    if m.body.len() != hdr_len + n * reg_len {
        return Err(invalid(
            m.request,
            format!(
                "{} bytes for {n} regions (that is {} bytes)",
                m.body.len(),
                hdr_len + n * reg_len
            ),
        ));
    }
    if m.fds.len() != n {
        return Err(invalid(
            m.request,
            format!("{} fds for {n} regions", m.fds.len()),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for (chunk, fd) in m.body[hdr_len..].chunks_exact(reg_len).zip(m.fds) {
        let mut r = VhostUserMemoryRegion::default();
        r.as_mut_slice().copy_from_slice(chunk);
        if !VhostUserMsgValidator::is_valid(&r) {
            return Err(invalid(
                m.request,
                "a region is empty or wraps around the address space",
            ));
        }
        out.push((
            MemRegion {
                guest_addr: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            },
            fd,
        ));
    }
    Ok(Request::SetMemTable(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(request: FrontendReq, body: &[u8], nfds: usize) -> RawMsg {
        let fds = (0..nfds)
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null")))
            .collect();
        RawMsg {
            request: request as u32,
            flags: FLAG_VERSION,
            body: body.to_vec(),
            fds,
        }
    }

    #[test]
    fn vring_indexes_are_checked_before_narrowing() {
        for (v, ok) in [
            (0x0u64, true),
            (0x1, true),
            (0xff, true),
            (0x101, true),
            (0x201, false),
            (0x1_0000, false),
            (0x1_0001, false),
            (u64::MAX, false),
        ] {
            let nfds = usize::from(v & VRING_NOFD == 0);
            let r = parse(msg(FrontendReq::SET_VRING_KICK, &v.to_le_bytes(), nfds));
            assert_eq!(r.is_ok(), ok, "{v:#x}: {r:?}");
        }
    }

    #[test]
    fn fds_only_where_they_belong() {
        let one = 1u64.to_le_bytes();
        assert!(
            parse(msg(FrontendReq::SET_VRING_CALL, &one, 0)).is_err(),
            "missing fd"
        );
        assert!(
            parse(msg(FrontendReq::SET_VRING_CALL, &one, 2)).is_err(),
            "two fds"
        );
        let nofd = (1u64 | VRING_NOFD).to_le_bytes();
        assert!(
            parse(msg(FrontendReq::SET_VRING_CALL, &nofd, 1)).is_err(),
            "fd and no-fd"
        );
        assert!(matches!(
            parse(msg(FrontendReq::SET_VRING_CALL, &nofd, 0)),
            Ok(Request::SetVringCall { index: 1, fd: None })
        ));
        assert!(
            parse(msg(FrontendReq::SET_FEATURES, &one, 1)).is_err(),
            "fd on SET_FEATURES"
        );
        assert!(
            parse(msg(FrontendReq::GET_FEATURES, &[0], 0)).is_err(),
            "a body"
        );
        assert!(
            parse(msg(FrontendReq::SET_FEATURES, &[0; 7], 0)).is_err(),
            "short"
        );
        assert!(
            parse(msg(FrontendReq::SET_FEATURES, &[0; 9], 0)).is_err(),
            "long"
        );
    }

    #[test]
    fn a_memory_table_has_as_many_regions_and_fds_as_it_says() {
        let region = |gpa: u64, size: u64| {
            let mut b = Vec::new();
            for v in [gpa, size, 0x7f00_0000_0000u64, 0] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b
        };
        let table = |n: u32, regions: &[Vec<u8>]| {
            let mut b = n.to_le_bytes().to_vec();
            b.extend_from_slice(&[0; 4]);
            for r in regions {
                b.extend_from_slice(r);
            }
            b
        };
        let good = table(2, &[region(0, 0x1000), region(0x1000, 0x1000)]);
        assert!(matches!(
            parse(msg(FrontendReq::SET_MEM_TABLE, &good, 2)),
            Ok(Request::SetMemTable(v)) if v.len() == 2
        ));
        assert!(parse(msg(FrontendReq::SET_MEM_TABLE, &good, 1)).is_err());
        assert!(parse(msg(FrontendReq::SET_MEM_TABLE, &good, 3)).is_err());
        let short = table(3, &[region(0, 0x1000), region(0x1000, 0x1000)]);
        assert!(parse(msg(FrontendReq::SET_MEM_TABLE, &short, 3)).is_err());
        let empty = table(1, &[region(0, 0)]);
        assert!(parse(msg(FrontendReq::SET_MEM_TABLE, &empty, 1)).is_err());
        let wraps = table(1, &[region(u64::MAX - 10, 0x1000)]);
        assert!(parse(msg(FrontendReq::SET_MEM_TABLE, &wraps, 1)).is_err());
        assert!(parse(msg(FrontendReq::SET_MEM_TABLE, &table(0, &[]), 0)).is_err());
        assert!(parse(msg(FrontendReq::SET_MEM_TABLE, &[1, 0], 0)).is_err());
    }

    #[test]
    fn header_flags_and_enable_values_are_checked() {
        let mut m = msg(FrontendReq::GET_FEATURES, &[], 0);
        m.flags = FLAG_VERSION | FLAG_REPLY;
        assert!(parse(m).is_err());
        let mut m = msg(FrontendReq::GET_FEATURES, &[], 0);
        m.flags = 2;
        assert!(parse(m).is_err());
        let mut b = 0u32.to_le_bytes().to_vec();
        b.extend_from_slice(&2u32.to_le_bytes());
        assert!(parse(msg(FrontendReq::SET_VRING_ENABLE, &b, 0)).is_err());
        assert!(matches!(
            parse(msg(FrontendReq::SEND_RARP, &[0; 8], 0)),
            Ok(Request::Unsupported(_))
        ));
        let unknown = RawMsg {
            request: 9999,
            flags: FLAG_VERSION,
            body: Vec::new(),
            fds: Vec::new(),
        };
        assert!(matches!(parse(unknown), Ok(Request::Unsupported(n)) if n == "request 9999"));
    }

    #[test]
    fn messages_cross_a_socket_with_their_fds() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        send(
            &a,
            FrontendReq::SET_VRING_KICK as u32,
            FLAG_VERSION | FLAG_NEED_REPLY,
            &3u64.to_le_bytes(),
            &[file.as_raw_fd()],
        )
        .expect("send");
        let got = recv(&b).expect("recv").expect("a message");
        assert_eq!(got.fds.len(), 1);
        assert!(matches!(
            parse(got),
            Ok(Request::SetVringKick {
                index: 3,
                fd: Some(_)
            })
        ));
        // A header claiming more than vhost-user allows is refused before any allocation.
        let mut hdr = [0u8; HDR_LEN];
        hdr[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        (&a).write_all(&hdr).expect("write");
        assert!(matches!(recv(&b), Err(WireError::TooLong { .. })));
        drop(a);
        assert!(recv(&b).expect("clean end").is_none());
    }
}
