//! A hostile vhost-user frontend: malformed messages get the connection refused, and the
//! daemon serves the next client; surplus fds are closed. Needs no privileges (loopback).

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

const VERSION: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;
const GET_FEATURES: u32 = 1;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const GET_VRING_BASE: u32 = 11;

struct Daemon {
    child: std::process::Child,
    sock: PathBuf,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn daemon(tag: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("volt-hostile-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("vu.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_volt-net-serve"))
        .args([
            "--socket",
            sock.to_str().expect("utf-8"),
            "--backend",
            "loopback",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("volt-net-serve");
    let d = Daemon { child, sock, dir };
    wait_for(&d.sock);
    d
}

fn wait_for(sock: &Path) {
    let end = Instant::now() + Duration::from_secs(5);
    while UnixStream::connect(sock).is_err() {
        assert!(
            Instant::now() < end,
            "the daemon listens on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // That probe connection counts as a (short) client; let the daemon come back.
    std::thread::sleep(Duration::from_millis(100));
}

fn connect(sock: &Path) -> UnixStream {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            return s;
        }
        assert!(Instant::now() < end, "the daemon is back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn header(req: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut h = req.to_le_bytes().to_vec();
    h.extend_from_slice(&(VERSION | flags).to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h
}

fn send(s: &UnixStream, bytes: &[u8], fds: &[i32]) {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let _ = sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None);
}

/// A well-behaved client: GET_FEATURES answers with the offer. A connection that lands on
/// the previous client's listener while the daemon replaces it is reset: try again, as
/// QEMU's `reconnect=1` does.
fn healthy(sock: &Path) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect(sock);
        let mut reply = [0u8; 20];
        let ok =
            s.write_all(&header(GET_FEATURES, 0, 0)).is_ok() && s.read_exact(&mut reply).is_ok();
        if ok {
            let features = u64::from_le_bytes(reply[12..20].try_into().expect("8 bytes"));
            assert_ne!(features & (1 << 32), 0, "VERSION_1 offered");
            return;
        }
        assert!(
            Instant::now() < end,
            "the daemon answers a well-formed client again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the daemon hung up on this client (end of stream within the read timeout).
fn refused(mut s: &UnixStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A reply to an earlier request; keep reading.
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn memfd(len: u64) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create("volt-hostile", nix::sys::memfd::MFdFlags::empty())
        .expect("memfd");
    nix::unistd::ftruncate(&fd, len as i64).expect("ftruncate");
    fd
}

fn region(gpa: u64, size: u64, uaddr: u64, offset: u64) -> Vec<u8> {
    [gpa, size, uaddr, offset]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn mem_table(regions: &[Vec<u8>]) -> Vec<u8> {
    let mut body = (regions.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    for r in regions {
        body.extend_from_slice(r);
    }
    let mut m = header(SET_MEM_TABLE, NEED_REPLY, body.len() as u32);
    m.extend_from_slice(&body);
    m
}

#[test]
fn malformed_messages_are_refused_and_the_daemon_serves_the_next_client() {
    let mut d = daemon("msgs");
    healthy(&d.sock);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown request code", header(9999, 0, 0)),
        ("truncated header", vec![1, 0, 0, 0, 1]),
        ("size larger than sent", header(GET_FEATURES, 0, 4096)),
        ("size mismatch for SET_VRING_NUM", {
            let mut m = header(SET_VRING_NUM, 0, 2);
            m.extend_from_slice(&[0, 0]);
            m
        }),
        ("vring index out of range", {
            let mut m = header(SET_VRING_NUM, NEED_REPLY, 8);
            m.extend_from_slice(&999u32.to_le_bytes());
            m.extend_from_slice(&256u32.to_le_bytes());
            m
        }),
        ("vring index truncating into range", {
            let mut m = header(GET_VRING_BASE, 0, 8);
            m.extend_from_slice(&0x1_0000u32.to_le_bytes());
            m.extend_from_slice(&0u32.to_le_bytes());
            m
        }),
        ("bad SET_VRING_NUM", {
            let mut m = header(SET_VRING_NUM, NEED_REPLY, 8);
            m.extend_from_slice(&0u32.to_le_bytes());
            m.extend_from_slice(&3u32.to_le_bytes());
            m
        }),
    ];
    for (what, msg) in &cases {
        let s = connect(&d.sock);
        send(&s, &header(SET_OWNER, 0, 0), &[]);
        send(&s, msg, &[]);
        // A message cut short leaves the daemon waiting for the rest: only the client can end
        // that. Every complete one is refused: the daemon hangs up.
        if !what.starts_with("truncated") && !what.starts_with("size larger") {
            assert!(refused(&s), "{what}: the daemon hangs up");
        }
        drop(s);
        healthy(&d.sock);
        assert!(
            d.child.try_wait().expect("waiting on the daemon").is_none(),
            "{what}: the daemon is still running"
        );
    }
    // Memory tables: zero-sized, overlapping, address overflow, offset beyond the file, too
    // many regions. Each is refused; the daemon stays up.
    let tables: Vec<(&str, Vec<Vec<u8>>, usize)> = vec![
        ("zero-sized region", vec![region(0, 0, 0x7000_0000, 0)], 1),
        (
            "overlapping regions",
            vec![
                region(0, 1 << 20, 0x7000_0000, 0),
                region(1 << 19, 1 << 20, 0x7100_0000, 0),
            ],
            2,
        ),
        (
            "guest address overflow",
            vec![region(u64::MAX - 4095, 1 << 20, 0x7000_0000, 0)],
            1,
        ),
        (
            "mmap offset beyond the file",
            vec![region(0, 1 << 20, 0x7000_0000, 1 << 40)],
            1,
        ),
        (
            "too many regions",
            (0..40u64)
                .map(|i| region(i << 20, 1 << 20, 0x7000_0000 + (i << 20), 0))
                .collect(),
            40,
        ),
    ];
    for (what, regions, nfds) in tables {
        let s = connect(&d.sock);
        send(&s, &header(SET_OWNER, 0, 0), &[]);
        let files: Vec<OwnedFd> = (0..nfds.min(8)).map(|_| memfd(1 << 20)).collect();
        let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        send(&s, &mem_table(&regions), &raw);
        assert!(refused(&s), "{what}: the daemon hangs up");
        drop(s);
        healthy(&d.sock);
    }
}

#[test]
fn surplus_fds_are_closed() {
    let d = daemon("fds");
    healthy(&d.sock);
    std::thread::sleep(Duration::from_millis(200));
    let before = open_fds(d.child.id());
    let spare = memfd(4096);
    let mut answered = 0;
    // The daemon drops a client whose message carries fds it does not expect: a thousand
    // clients, each with a message and four surplus fds (a well-formed client now and then),
    // then messages on one connection until the daemon hangs up.
    for i in 0..1000 {
        let s = connect(&d.sock);
        send(&s, &header(GET_FEATURES, 0, 0), &[spare.as_raw_fd(); 4]);
        let mut reply = [0u8; 20];
        if (&s).read_exact(&mut reply).is_ok() {
            answered += 1;
        }
        drop(s);
        if i % 100 == 0 {
            healthy(&d.sock);
        }
    }
    let s = connect(&d.sock);
    for _ in 0..2000 {
        send(&s, &header(GET_FEATURES, 0, 0), &[spare.as_raw_fd(); 4]);
        let mut reply = [0u8; 20];
        if (&s).read_exact(&mut reply).is_err() {
            break;
        }
        answered += 1;
    }
    drop(s);
    println!("{answered} messages with surplus fds were answered");
    healthy(&d.sock);
    std::thread::sleep(Duration::from_millis(200));
    let after = open_fds(d.child.id());
    assert!(
        after <= before + 2,
        "open fds {before} before, {after} after thousands of surplus fds"
    );
}
