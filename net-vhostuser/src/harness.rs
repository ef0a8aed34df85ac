//! A hostile frontend's messages through the real parser and session, without a socket
//! server or worker threads (cargo feature `test-utils`): what the `vhost_user_messages` fuzz
//! target and the seed tests run.
//!
//! [`drive`] reads messages from bytes (header, a byte choosing the fds attached, the body),
//! hands each to [`crate::wire::parse`] and the session's state machine, and stops at the
//! first refusal, as the daemon does. Workers are stand-ins that answer a ring stop at once,
//! so every request the session makes of them is exercised; memory tables are mapped for
//! real (memfds of a few pages, some shorter than their regions claim).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;

use net_api::Capabilities;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{Device, ServeConfig};
use crate::session::{End, Session, WorkerLink};
use crate::wire::{RawMsg, HDR_LEN};
use crate::worker::Ctl;

/// The device the harness serves: two queue pairs, every offload, rings up to 256.
pub fn device() -> Device {
    let caps = Capabilities {
        vnet_hdr: true,
        tx_offloads: net_api::OffloadSet::ALL,
        rx_offloads: net_api::OffloadSet::ALL,
        rx_csum_verified: false,
        max_frame: 65550,
        max_queue_pairs: 2,
        mac: None,
        mtu: 1500,
    };
    Device::new(
        "harness",
        caps,
        ServeConfig {
            queue_pairs: 2,
            ..ServeConfig::default()
        },
    )
    .unwrap_or_else(|e| unreachable!("a valid configuration: {e}"))
}

/// An fd of the kind `sel` picks: an eventfd, a memfd of a few pages, `/dev/null`, a socket.
fn fd(sel: u8) -> Option<OwnedFd> {
    match sel % 4 {
        0 => nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_NONBLOCK)
            .ok()
            .map(OwnedFd::from),
        1 => {
            let fd =
                nix::sys::memfd::memfd_create(c"volt-harness", nix::sys::memfd::MFdFlags::empty())
                    .ok()?;
            nix::unistd::ftruncate(&fd, i64::from(sel / 4 % 8) * 4096).ok()?;
            Some(fd)
        }
        2 => std::fs::File::open("/dev/null").ok().map(OwnedFd::from),
        _ => UnixStream::pair().ok().map(|(a, _)| OwnedFd::from(a)),
    }
}

/// Messages from bytes: a 12-byte header (its size field is taken modulo what is left), a
/// byte whose low 3 bits are the fd count and the rest the fds' kinds, then the body.
pub fn messages(mut data: &[u8]) -> Vec<RawMsg> {
    let mut out = Vec::new();
    while data.len() > HDR_LEN && out.len() < 64 {
        let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8) as usize);
        let fdsel = data[HDR_LEN];
        data = &data[HDR_LEN + 1..];
        let size = size.min(data.len()).min(crate::wire::MAX_BODY);
        let body = data[..size].to_vec();
        data = &data[size..];
        let fds = (0..fdsel & 7).filter_map(|i| fd(fdsel >> 3 ^ i)).collect();
        out.push(RawMsg {
            request,
            flags,
            body,
            fds,
        });
    }
    out
}

/// Runs the messages through a session until the first refusal; returns how it ended
/// (`None`: every message was taken).
pub fn drive(data: &[u8]) -> Option<End> {
    let device = device();
    let (sock, peer) = UnixStream::pair().ok()?;
    // Replies go nowhere; the socket must not fill.
    let _ = peer.set_nonblocking(true);
    let _ = sock.set_write_timeout(Some(std::time::Duration::from_millis(100)));
    let mut links = Vec::new();
    let mut stand_ins = Vec::new();
    for _ in 0..device.cfg.queue_pairs {
        let (tx, rx) = mpsc::channel::<Ctl>();
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK).ok()?);
        links.push(WorkerLink { ctl: tx, wake });
        stand_ins.push(std::thread::spawn(move || {
            while let Ok(c) = rx.recv() {
                match c {
                    Ctl::Stop { reply, .. } => {
                        let _ = reply.send(Some(0));
                    }
                    Ctl::Exit => break,
                    _ => {}
                }
            }
        }));
    }
    let mut session = Session::new(&device, links);
    let mut end = None;
    let mut sink = [0u8; 4096];
    for m in messages(data) {
        let r = session.handle(&sock, m);
        while std::io::Read::read(&mut &peer, &mut sink).is_ok_and(|n| n > 0) {}
        if let Err(e) = r {
            end = Some(e);
            break;
        }
    }
    session.reset();
    for l in session.links() {
        let _ = l.ctl.send(Ctl::Exit);
    }
    drop(session);
    for h in stand_ins {
        let _ = h.join();
    }
    end
}
