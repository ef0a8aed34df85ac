//! Serving frontends one after another on one socket, as `volt-net serve` does.
//!
//! One [`VhostUserDaemon`] (its handler, one worker per queue pair) lives as long as the
//! [`Server`]; each frontend that connects is relayed to it over a private connection, and
//! when the frontend goes the server resets the device (rings disabled, pumps dropped, the
//! owner released) before it takes the next one. The relay exists because vhost 0.18 handles
//! a connection in ways QEMU does not expect:
//!
//! - QEMU (7.2 and later) restores a ring's enable state before it sets the features when it
//!   reconnects (`vhost_net_start` sends `SET_VRING_ENABLE` before `vhost_dev_start`); vhost
//!   0.18 refuses that request until `PROTOCOL_FEATURES` is acked and drops the connection.
//!   The relay holds such requests back (acking them if asked) and passes them on once the
//!   features are set.
//! - The handler stays claimed (`SET_OWNER`) and its rings stay enabled after a frontend goes;
//!   the relay sends `RESET_DEVICE` and `RESET_OWNER` itself, so a frontend that went away
//!   leaves nothing the next one trips over, and no worker touches the old guest memory.
//!
//! The relay bounds what it reads as vhost does (a 12-byte header, at most 4096 bytes of
//! body) and passes attached fds on, closing its own copies; the daemon validates the rest.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use log::{debug, info, warn};
use net_api::Backend;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::stat::SFlag;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryMmap;

use crate::backend::{Mem, NetBackend, ServeError};

/// vhost-user's header: request, flags, size (little endian `u32`s).
const HDR_LEN: usize = 12;
/// The largest body vhost accepts (`MAX_MSG_SIZE`).
const MAX_BODY: usize = 0x1000;
/// The most fds one message can carry (`SCM_MAX_FD`): room for all of them, so none is lost
/// to a truncated control message.
const MAX_FDS: usize = 253;

const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const RESET_OWNER: u32 = 4;
const GET_VRING_BASE: u32 = 11;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ENABLE: u32 = 18;
const RESET_DEVICE: u32 = 34;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VHOST_USER_PROTOCOL_F_REPLY_ACK` and `VHOST_USER_PROTOCOL_F_RESET_DEVICE`.
const PROTO_REPLY_ACK: u64 = 1 << 3;
const PROTO_RESET_DEVICE: u64 = 1 << 13;

/// Ring enables held back before `SET_FEATURES`: more than any device has rings is hostile.
const MAX_HELD: usize = 64;

/// One vhost-user message.
#[derive(Debug)]
struct Msg {
    request: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    fn new(request: u32, flags: u32, body: Vec<u8>) -> Self {
        Msg {
            request,
            flags: flags | FLAG_VERSION,
            body,
            fds: Vec::new(),
        }
    }

    fn u64(request: u32, flags: u32, value: u64) -> Self {
        Msg::new(request, flags, value.to_le_bytes().to_vec())
    }

    /// The reply-ack a frontend asked for with `NEED_REPLY`.
    fn ack(request: u32) -> Self {
        Msg::u64(request, FLAG_REPLY, 0)
    }

    fn body_u64(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.body.as_slice().try_into().ok()?))
    }

    fn header(&self) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0..4].copy_from_slice(&self.request.to_le_bytes());
        h[4..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..12].copy_from_slice(&(self.body.len() as u32).to_le_bytes());
        h
    }
}

/// Reads one message; `None` at a clean end of stream (between messages).
fn recv_msg(s: &UnixStream) -> io::Result<Option<Msg>> {
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
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "request {request} says its body is {size} bytes; vhost-user allows {MAX_BODY}"
            ),
        ));
    }
    let mut body = vec![0u8; size];
    reader.read_exact(&mut body)?;
    Ok(Some(Msg {
        request,
        flags,
        body,
        fds,
    }))
}

/// Writes one message with its fds.
fn send_msg(s: &UnixStream, m: &Msg) -> io::Result<()> {
    let hdr = m.header();
    let raw: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(&hdr), IoSlice::new(&m.body)];
    let sent = sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)?;
    // A short write on a stream socket: the rest goes without the fds, which went with the
    // first byte.
    let mut writer = s;
    if sent < HDR_LEN {
        writer.write_all(&hdr[sent..])?;
        writer.write_all(&m.body)?;
    } else if sent < HDR_LEN + m.body.len() {
        writer.write_all(&m.body[sent - HDR_LEN..])?;
    }
    Ok(())
}

/// What the relay does with the requests of one frontend (the part worth a unit test).
#[derive(Debug, Default)]
struct Rewriter {
    features_set: bool,
    /// `SET_VRING_ENABLE` bodies held back until `SET_FEATURES`.
    held: Vec<Vec<u8>>,
}

impl Rewriter {
    /// What the daemon would accept but must not: a ring size that is not a power of two
    /// (vhost-user-backend leaves such a queue unusable without saying so), and a memory
    /// region that reaches past the end of its file (mmap accepts it; the first access to
    /// those pages would kill the daemon with SIGBUS).
    fn refusal(m: &Msg) -> Option<String> {
        if m.request == SET_MEM_TABLE {
            // u32 count, u32 padding, then (guest address, size, user address, offset).
            for (i, (r, fd)) in m.body.get(8..)?.chunks_exact(32).zip(&m.fds).enumerate() {
                let word = |k: usize| u64::from_le_bytes(r[k..k + 8].try_into().unwrap_or([0; 8]));
                let (size, offset) = (word(8), word(24));
                let len = match nix::sys::stat::fstat(fd) {
                    Ok(st) if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits() => {
                        st.st_size as u64
                    }
                    // Not a regular file (a device, say): mmap itself decides.
                    Ok(_) => continue,
                    Err(e) => return Some(format!("SET_MEM_TABLE region {i}: fstat: {e}")),
                };
                if offset.checked_add(size).is_none_or(|end| end > len) {
                    return Some(format!(
                        "SET_MEM_TABLE region {i}: {size} bytes at offset {offset} of a {len}-byte file"
                    ));
                }
            }
        }
        if m.request == SET_VRING_NUM && m.body.len() == 8 {
            let num = u32::from_le_bytes([m.body[4], m.body[5], m.body[6], m.body[7]]);
            if !num.is_power_of_two() || num > 32768 {
                return Some(format!(
                    "SET_VRING_NUM {num}: a ring size is a power of two up to 32768"
                ));
            }
        }
        None
    }

    /// The messages to pass to the daemon for `m`, and the reply to give the frontend
    /// directly, if any.
    fn request(&mut self, m: Msg) -> (Vec<Msg>, Option<Msg>) {
        match m.request {
            SET_VRING_ENABLE if !self.features_set && m.body.len() == 8 => {
                let index = &m.body[0..4];
                self.held.retain(|b| &b[0..4] != index);
                if self.held.len() < MAX_HELD {
                    self.held.push(m.body.clone());
                }
                debug!(
                    "holding back SET_VRING_ENABLE {:?} until SET_FEATURES",
                    m.body
                );
                let reply = (m.flags & FLAG_NEED_REPLY != 0).then(|| Msg::ack(m.request));
                (Vec::new(), reply)
            }
            // The frontend reset the device: the handler forgot the features, and so do we.
            RESET_DEVICE | RESET_OWNER => {
                self.features_set = false;
                self.held.clear();
                (vec![m], None)
            }
            SET_FEATURES => {
                self.features_set = true;
                let protocol = m.body_u64().is_some_and(|f| f & PROTOCOL_FEATURES != 0);
                let held = std::mem::take(&mut self.held);
                let mut out = vec![m];
                if protocol {
                    out.extend(held.into_iter().map(|b| Msg::new(SET_VRING_ENABLE, 0, b)));
                }
                (out, None)
            }
            _ => (vec![m], None),
        }
    }
}

/// How a frontend's connection ended.
#[derive(Debug, Clone)]
pub struct Session {
    /// Requests the frontend sent.
    pub requests: u64,
    /// Frames from the guest to the backend during the connection.
    pub from_guest: u64,
    /// Frames from the backend to the guest during the connection.
    pub to_guest: u64,
    /// Why it ended: `disconnected`, or what the daemon refused.
    pub end: String,
}

/// A vhost-user-net server on one socket: [`Server::serve_one`] serves a frontend until it goes.
pub struct Server<B: Backend>
where
    B: Send + Sync + 'static,
    B::Queue: Send,
{
    backend: Arc<NetBackend<B>>,
    daemon: VhostUserDaemon<Arc<NetBackend<B>>>,
    /// The daemon's view of guest memory (to unmap a departed guest's).
    mem: Mem,
    listener: UnixListener,
    socket: PathBuf,
    needs_reset: bool,
}

impl<B> Server<B>
where
    B: Backend + Send + Sync + 'static,
    B::Queue: Send,
{
    /// Listens on `socket` (a stale socket file there is replaced) for frontends of
    /// `backend`.
    pub fn new(socket: &Path, backend: NetBackend<B>) -> Result<Self, ServeError> {
        let backend = Arc::new(backend);
        let mem = Mem::new(GuestMemoryMmap::new());
        let daemon =
            VhostUserDaemon::new("volt-net-vhost-user".into(), backend.clone(), mem.clone())
                .map_err(|e| ServeError::Config(format!("vhost-user daemon: {e}")))?;
        let epolls: Vec<RawFd> = daemon
            .get_epoll_handlers()
            .iter()
            .map(|h| h.as_raw_fd())
            .collect();
        backend
            .set_epolls(&epolls)
            .map_err(|e| ServeError::Config(format!("the workers' epolls: {e}")))?;
        if std::fs::symlink_metadata(socket).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            let _ = std::fs::remove_file(socket);
        }
        let listener = UnixListener::bind(socket)
            .map_err(|e| ServeError::Config(format!("listening on {}: {e}", socket.display())))?;
        Ok(Server {
            backend,
            daemon,
            mem,
            listener,
            socket: socket.to_path_buf(),
            needs_reset: false,
        })
    }

    /// The socket frontends connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The device being served (its frame counts can be read while a frontend is served).
    pub fn device(&self) -> Arc<NetBackend<B>> {
        self.backend.clone()
    }

    /// Waits for a frontend, serves it until it disconnects (or sends what the daemon
    /// refuses), and resets the device for the next one.
    pub fn serve_one(&mut self) -> io::Result<Session> {
        // A reset that failed last time is retried before anyone else is let in: the handler
        // would still be owned by the frontend that left.
        if self.needs_reset {
            self.reset()?;
            self.needs_reset = false;
        }
        let (front, _) = self.listener.accept()?;
        info!("{}: frontend connected", self.socket.display());
        let before = self.backend.frames();
        let back = self.attach()?;
        let (requests, refused) = relay(&front, &back);
        let end = match (refused, ended(self.daemon.wait())) {
            (Some(why), _) => format!("refused: {why}"),
            (None, Ok(())) => "disconnected".to_string(),
            (None, Err(e)) => e.to_string(),
        };
        let after = self.backend.frames();
        self.needs_reset = true;
        self.reset()?;
        self.needs_reset = false;
        Ok(Session {
            requests,
            from_guest: after.0 - before.0,
            to_guest: after.1 - before.1,
            end,
        })
    }

    /// A fresh connection to the daemon, over a socket in a directory only we can enter,
    /// removed as soon as we are connected.
    fn attach(&mut self) -> io::Result<UnixStream> {
        let template = std::env::temp_dir().join("volt-net-vhost-user.XXXXXX");
        let dir = nix::unistd::mkdtemp(&template).map_err(io::Error::from)?;
        let path = dir.join("daemon");
        let connected = UnixListener::bind(&path).and_then(|l| {
            let s = UnixStream::connect(&path)?;
            Ok((l, s))
        });
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        let (listener, stream) = connected?;
        let mut listener = vhost::vhost_user::Listener::from(listener);
        self.daemon
            .start(&mut listener)
            .map_err(|e| io::Error::other(format!("vhost-user daemon: {e}")))?;
        Ok(stream)
    }

    /// Puts the device back as a new frontend expects it: rings disabled and unwatched, pumps
    /// dropped, no memory, no owner.
    fn reset(&mut self) -> io::Result<()> {
        let rings = self.backend.vrings() as u32;
        let back = self.attach()?;
        let res = (|| {
            send_msg(&back, &Msg::new(GET_FEATURES, 0, Vec::new()))?;
            let features = expect_reply(&back, GET_FEATURES)?;
            if features & PROTOCOL_FEATURES != 0 {
                send_msg(&back, &Msg::new(GET_PROTOCOL_FEATURES, 0, Vec::new()))?;
                let offered = expect_reply(&back, GET_PROTOCOL_FEATURES)?;
                let wanted = offered & (PROTO_REPLY_ACK | PROTO_RESET_DEVICE);
                send_msg(&back, &Msg::u64(SET_PROTOCOL_FEATURES, 0, wanted))?;
                if wanted == PROTO_REPLY_ACK | PROTO_RESET_DEVICE {
                    send_msg(&back, &Msg::new(RESET_DEVICE, FLAG_NEED_REPLY, Vec::new()))?;
                    expect_ack(&back, RESET_DEVICE)?;
                }
            }
            // Every ring stopped as a frontend stops it: not ready, its kick out of the epoll,
            // its kick and call fds closed (a frontend that died never asked).
            for index in 0..(if std::env::var_os("NORESET").is_some() {
                0
            } else {
                rings
            }) {
                let mut body = index.to_le_bytes().to_vec();
                body.extend_from_slice(&0u32.to_le_bytes());
                send_msg(&back, &Msg::new(GET_VRING_BASE, 0, body))?;
                match recv_msg(&back)? {
                    Some(m) if m.request == GET_VRING_BASE => {}
                    other => {
                        return Err(io::Error::other(format!(
                            "GET_VRING_BASE {index}: unexpected answer {other:?}"
                        )))
                    }
                }
            }
            // The last request waits for its ack when it can, so the daemon is done with
            // them all before the next frontend comes.
            send_msg(&back, &Msg::new(RESET_OWNER, 0, Vec::new()))?;
            send_msg(&back, &Msg::new(GET_FEATURES, 0, Vec::new()))?;
            expect_reply(&back, GET_FEATURES).map(drop)
        })();
        let _ = back.shutdown(std::net::Shutdown::Both);
        let waited = ended(self.daemon.wait());
        // The departed guest's memory is unmapped (the daemon's handle on it was the last).
        match self.mem.lock() {
            Ok(guard) => guard.replace(GuestMemoryMmap::new()),
            Err(e) => e.into_inner().replace(GuestMemoryMmap::new()),
        }
        res.map_err(|e| io::Error::other(format!("resetting the device: {e}")))?;
        waited.map_err(|e| io::Error::other(format!("resetting the device: {e}")))
    }
}

/// A daemon connection's end: the other side closing is not an error.
fn ended(res: vhost_user_backend::Result<()>) -> vhost_user_backend::Result<()> {
    use vhost::vhost_user::Error as E;
    match res {
        Err(vhost_user_backend::Error::HandleRequest(
            E::Disconnected | E::PartialMessage | E::SocketBroken(_),
        )) => Ok(()),
        res => res,
    }
}

fn expect_reply(s: &UnixStream, request: u32) -> io::Result<u64> {
    match recv_msg(s)? {
        Some(m) if m.request == request && m.flags & FLAG_REPLY != 0 => m
            .body_u64()
            .ok_or_else(|| io::Error::other(format!("reply to {request}: bad body"))),
        Some(m) => Err(io::Error::other(format!(
            "request {request}: got reply {} flags {:#x}",
            m.request, m.flags
        ))),
        None => Err(io::Error::other(format!("request {request}: no reply"))),
    }
}

fn expect_ack(s: &UnixStream, request: u32) -> io::Result<()> {
    match expect_reply(s, request)? {
        0 => Ok(()),
        e => Err(io::Error::other(format!("request {request} failed ({e})"))),
    }
}

/// Passes the frontend's requests to the daemon and the daemon's replies back until either
/// side closes; returns how many requests the frontend sent, and what the relay refused (and
/// hung up for), if anything.
fn relay(front: &UnixStream, back: &UnixStream) -> (u64, Option<String>) {
    use std::net::Shutdown;
    let to_front = Mutex::new(());
    std::thread::scope(|scope| {
        let requests = scope.spawn(|| {
            let mut rewriter = Rewriter::default();
            let mut n = 0u64;
            let mut refused = None;
            loop {
                let m = match recv_msg(front) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        warn!("frontend: {e}");
                        break;
                    }
                };
                n += 1;
                if let Some(why) = Rewriter::refusal(&m) {
                    warn!("frontend refused: {why}");
                    refused = Some(why);
                    break;
                }
                debug!(
                    "frontend request {} flags {:#x}, {} bytes, {} fds",
                    m.request,
                    m.flags,
                    m.body.len(),
                    m.fds.len()
                );
                let (out, reply) = rewriter.request(m);
                let sent = out
                    .iter()
                    .try_for_each(|m| send_msg(back, m))
                    .and_then(|()| {
                        let _guard = to_front.lock().unwrap_or_else(|e| e.into_inner());
                        reply.map_or(Ok(()), |r| send_msg(front, &r))
                    });
                if sent.is_err() {
                    break;
                }
            }
            let _ = back.shutdown(Shutdown::Both);
            let _ = front.shutdown(Shutdown::Both);
            (n, refused)
        });
        while let Ok(Some(m)) = recv_msg(back) {
            let _guard = to_front.lock().unwrap_or_else(|e| e.into_inner());
            if send_msg(front, &m).is_err() {
                break;
            }
        }
        let _ = front.shutdown(Shutdown::Both);
        let _ = back.shutdown(Shutdown::Both);
        requests.join().unwrap_or((0, None))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enable(index: u32, on: u32, flags: u32) -> Msg {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&on.to_le_bytes());
        Msg::new(SET_VRING_ENABLE, flags, b)
    }

    #[test]
    fn enables_before_the_features_wait_for_them() {
        let mut r = Rewriter::default();
        let (out, reply) = r.request(enable(0, 1, 0));
        assert!(out.is_empty() && reply.is_none());
        let (out, reply) = r.request(enable(1, 1, FLAG_NEED_REPLY));
        assert!(out.is_empty());
        let reply = reply.expect("an ack when asked for");
        assert_eq!(reply.request, SET_VRING_ENABLE);
        assert_eq!(reply.flags, FLAG_VERSION | FLAG_REPLY);
        assert_eq!(reply.body_u64(), Some(0));
        // Ring 0 disabled again: the last word counts.
        r.request(enable(0, 0, 0));
        let (out, _) = r.request(Msg::u64(SET_FEATURES, 0, PROTOCOL_FEATURES | 1 << 32));
        let kinds: Vec<(u32, Vec<u8>)> = out.iter().map(|m| (m.request, m.body.clone())).collect();
        assert_eq!(kinds[0].0, SET_FEATURES);
        assert_eq!(
            &kinds[1..],
            &[
                (SET_VRING_ENABLE, enable(1, 1, 0).body),
                (SET_VRING_ENABLE, enable(0, 0, 0).body)
            ]
        );
        assert!(out[1..].iter().all(|m| m.flags & FLAG_NEED_REPLY == 0));
        // Once the features are set, enables go straight through.
        let (out, reply) = r.request(enable(0, 1, FLAG_NEED_REPLY));
        assert_eq!(out.len(), 1);
        assert!(reply.is_none());
    }

    #[test]
    fn held_enables_are_bounded_and_malformed_ones_pass_to_the_daemon() {
        let mut r = Rewriter::default();
        for i in 0..10_000 {
            r.request(enable(i, 1, 0));
        }
        assert_eq!(r.held.len(), MAX_HELD);
        let (out, _) = r.request(Msg::new(SET_VRING_ENABLE, 0, vec![0; 3]));
        assert_eq!(out.len(), 1, "the daemon refuses a bad size itself");
        // Without PROTOCOL_FEATURES there is nothing to enable.
        let (out, _) = r.request(Msg::u64(SET_FEATURES, 0, 1 << 32));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn ring_sizes_that_are_not_powers_of_two_are_refused() {
        let num = |n: u32| {
            let mut b = 0u32.to_le_bytes().to_vec();
            b.extend_from_slice(&n.to_le_bytes());
            Msg::new(SET_VRING_NUM, 0, b)
        };
        for bad in [0, 3, 255, 65536, u32::MAX] {
            assert!(Rewriter::refusal(&num(bad)).is_some(), "{bad}");
        }
        for good in [1, 256, 32768] {
            assert!(Rewriter::refusal(&num(good)).is_none(), "{good}");
        }
    }

    #[test]
    fn messages_cross_a_socket_with_their_fds() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let mut m = Msg::u64(SET_FEATURES, FLAG_NEED_REPLY, 42);
        m.fds.push(OwnedFd::from(file));
        send_msg(&a, &m).expect("send");
        let got = recv_msg(&b).expect("recv").expect("a message");
        assert_eq!(
            (got.request, got.flags, got.body_u64()),
            (SET_FEATURES, FLAG_VERSION | FLAG_NEED_REPLY, Some(42))
        );
        assert_eq!(got.fds.len(), 1);
        // A header claiming more than vhost-user allows is refused before any allocation.
        let mut hdr = Msg::new(SET_FEATURES, 0, Vec::new()).header();
        hdr[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        (&a).write_all(&hdr).expect("write");
        assert_eq!(
            recv_msg(&b).expect_err("oversized").kind(),
            io::ErrorKind::InvalidData
        );
        drop(a);
        assert!(recv_msg(&b).expect("clean end").is_none());
    }
}
