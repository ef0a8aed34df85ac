//! A vhost-user frontend for the daemon's tests: guest memory in a memfd, two rings
//! (`net_virtio::mock::MockQueue`), a session set up by hand in QEMU's order (any kick or
//! call fd can be swapped for a hostile one), frames sent and echoed; and the daemon
//! (`volt-net-serve`) as a child whose log is kept.

#![allow(dead_code)]

use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use net_virtio::mock::{Desc, MockQueue};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

pub const MEM: usize = 16 << 20;
pub const RING: u16 = 256;
/// A 12-byte virtio-net header (VERSION_1) and a 60-byte frame, one descriptor each.
pub const FRAME: usize = 72;
pub const BUFFERS: u64 = 0x10_0000;

/// A directory under the temp dir, removed when dropped (also when a test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The value of `key` (such as `Seccomp:`) in a `/proc/.../status` file, trimmed (empty when
/// the file or the field is missing).
pub fn status_field(path: impl AsRef<Path>, key: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// Guest memory in a memfd, as a VMM shares it.
pub fn shared_memory() -> GuestMemoryMmap {
    let fd = nix::sys::memfd::memfd_create(c"volt-guest", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd");
    let file = std::fs::File::from(fd);
    file.set_len(MEM as u64).expect("memfd size");
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEM,
        Some(FileOffset::new(file, 0)),
    )])
    .expect("guest memory")
}

/// The memory file behind `shared_memory()`.
pub fn memory_file(mem: &GuestMemoryMmap) -> &std::fs::File {
    mem.iter()
        .next()
        .and_then(|r| r.file_offset())
        .expect("file-backed memory")
        .file()
}

/// Both rings, their kick eventfds, and (for a session set up by hand) the connection and
/// the call eventfds, which live as long as the rings.
pub struct Rings {
    pub rx: MockQueue,
    pub tx: MockQueue,
    pub rx_kick: EventFd,
    pub tx_kick: EventFd,
    pub conn: Option<UnixStream>,
    pub calls: Vec<EventFd>,
}

pub fn nonblocking_eventfd() -> EventFd {
    EventFd::new(nix::fcntl::OFlag::O_NONBLOCK.bits()).expect("eventfd")
}

/// The 60-byte test frame after its header: broadcast, ethertype 0x88b5, `seq` at byte 14.
pub fn frame(seq: u64) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[12..18].copy_from_slice(&[0xff; 6]);
    f[18..24].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[24..26].copy_from_slice(&[0x88, 0xb5]);
    f[26..34].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Sends `n` frames (sequence numbers from `first`) through the transmit ring, reusing
/// descriptors as the backend completes them; returns how many it completed (within 20 s).
pub fn send_from(mem: &GuestMemoryMmap, rings: &mut Rings, first: u64, n: u64) -> u64 {
    let (mut sent, mut done) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    while done < n && Instant::now() < deadline {
        while sent < n && rings.tx.free_descriptors() > 0 {
            let addr = BUFFERS + (sent % u64::from(RING)) * 2048;
            mem.write_slice(&frame(first + sent), GuestAddress(addr))
                .expect("frame");
            rings
                .tx
                .add_chain(
                    mem,
                    &[Desc {
                        addr,
                        len: FRAME as u32,
                        write: false,
                    }],
                )
                .expect("a free descriptor");
            sent += 1;
        }
        let _ = rings.tx_kick.write(1);
        let used = rings.tx.take_used(mem).len() as u64;
        done += used;
        if used == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    done
}

pub fn send(mem: &GuestMemoryMmap, rings: &mut Rings, n: u64) -> u64 {
    send_from(mem, rings, 0, n)
}

/// Posts `n` 2048-byte receive buffers and kicks.
pub fn post_rx(mem: &GuestMemoryMmap, rings: &mut Rings, n: u64) {
    for i in 0..n {
        rings
            .rx
            .add_chain(
                mem,
                &[Desc {
                    addr: BUFFERS + 0x80_0000 + i * 2048,
                    len: 2048,
                    write: true,
                }],
            )
            .expect("a receive buffer");
    }
    let _ = rings.rx_kick.write(1);
}

/// The sequence numbers of the test frames (ethertype 0x88b5; others, such as a host's
/// IPv6 chatter, are skipped) in the receive buffers used so far, waiting up to `wait` for
/// `want` of them.
pub fn received(mem: &GuestMemoryMmap, rings: &mut Rings, want: usize, wait: Duration) -> Vec<u64> {
    let mut back = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        for (_, len, descs) in rings.rx.take_used(mem) {
            let bytes = net_virtio::mock::gather(mem, &descs, len as usize);
            if bytes.get(24..26) != Some(&[0x88, 0xb5][..]) {
                continue;
            }
            assert_eq!(bytes.len(), FRAME, "header and frame, whole");
            back.push(u64::from_be_bytes(bytes[26..34].try_into().expect("8")));
        }
        if back.len() >= want || Instant::now() >= deadline {
            return back;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Posts receive buffers, sends 100 frames (sequence numbers from `first`), and checks that
/// exactly those come back into the buffers.
pub fn echo_from(mem: &GuestMemoryMmap, rings: &mut Rings, first: u64, who: &str) {
    post_rx(mem, rings, u64::from(RING));
    assert_eq!(
        send_from(mem, rings, first, 100),
        100,
        "{who}: the server took every frame"
    );
    let back = received(mem, rings, 100, Duration::from_secs(10));
    assert_eq!(back.len(), 100, "{who}: every frame came back");
    let want: Vec<u64> = (first..first + 100).collect();
    assert_eq!(back, want, "{who}: the frames sent, in order, and no other");
}

pub fn echo(mem: &GuestMemoryMmap, rings: &mut Rings, who: &str) {
    echo_from(mem, rings, 0, who);
}

/// One vhost-user request written by hand, with its fds.
pub fn raw(s: &UnixStream, req: u32, body: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut hdr = req.to_le_bytes().to_vec();
    hdr.extend_from_slice(&1u32.to_le_bytes());
    hdr.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let iov = [IoSlice::new(&hdr), IoSlice::new(body)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if n != hdr.len() + body.len() {
        return Err(std::io::Error::other("short sendmsg"));
    }
    Ok(())
}

/// A request with a `u64` answer.
pub fn raw_get(s: &UnixStream, req: u32) -> std::io::Result<u64> {
    raw(s, req, &[], &[])?;
    let mut reply = [0u8; 20];
    (&*s).read_exact(&mut reply)?;
    Ok(u64::from_le_bytes(
        reply[12..20].try_into().expect("8 bytes"),
    ))
}

pub fn u64s(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

pub fn ring_state(index: u32, num: u32) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&num.to_le_bytes());
    b
}

/// Fds to hand over instead of the well-behaved eventfds (receive ring first).
#[derive(Default, Clone, Copy)]
pub struct Swap {
    pub kick: [Option<RawFd>; 2],
    pub call: [Option<RawFd>; 2],
}

pub const SET_OWNER: u32 = 3;
pub const GET_FEATURES: u32 = 1;
pub const SET_VRING_KICK: u32 = 12;

/// A session set up as QEMU 7.2 sets one up when it (re)connects: calls and ring enables
/// before SET_FEATURES, then the memory table and the rings, and no enable after the kicks.
pub fn qemu_ordered_session(sock: &Path, mem: &GuestMemoryMmap) -> Rings {
    session(sock, mem, Swap::default()).expect("a session in QEMU's order")
}

/// As [`qemu_ordered_session`], with the fds of `swap` handed over; an error when the daemon
/// hangs up before the final round trip.
pub fn session(sock: &Path, mem: &GuestMemoryMmap, swap: Swap) -> std::io::Result<Rings> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    raw(&s, SET_OWNER, &[], &[])?;
    let offered = raw_get(&s, GET_FEATURES)?;
    let proto = raw_get(&s, 15)?; // GET_PROTOCOL_FEATURES
    raw(&s, 16, &u64s(&[proto & 1]), &[])?; // SET_PROTOCOL_FEATURES: MQ, no REPLY_ACK
    let calls = vec![nonblocking_eventfd(), nonblocking_eventfd()];
    let call_fd = |i: usize| swap.call[i].unwrap_or(calls[i].as_raw_fd());
    for i in 0..2 {
        raw(&s, 13, &u64s(&[i as u64]), &[call_fd(i)])?; // SET_VRING_CALL
        raw(&s, 18, &ring_state(i as u32, 1), &[])?; // SET_VRING_ENABLE, early
    }
    raw(&s, 2, &u64s(&[(1 << 32) | (offered & (1 << 30))]), &[])?; // SET_FEATURES
    let region = mem.iter().next().expect("a region");
    let file = region.file_offset().expect("file-backed");
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend(u64s(&[
        0,
        region.len(),
        region.as_ptr() as u64,
        file.start(),
    ]));
    raw(&s, 5, &table, &[file.file().as_raw_fd()])?; // SET_MEM_TABLE
    let rx = MockQueue::new(mem, GuestAddress(0x1_0000), RING);
    let tx = MockQueue::new(mem, GuestAddress(0x2_0000), RING);
    let (rx_kick, tx_kick) = (nonblocking_eventfd(), nonblocking_eventfd());
    for (i, q, kick) in [(0u32, &rx, &rx_kick), (1, &tx, &tx_kick)] {
        let host = |a: GuestAddress| mem.get_host_address(a).expect("in memory") as u64;
        raw(&s, 8, &ring_state(i, u32::from(q.size)), &[])?; // SET_VRING_NUM
        let mut addr = ring_state(i, 0);
        addr.extend(u64s(&[host(q.desc), host(q.used), host(q.avail), 0]));
        raw(&s, 9, &addr, &[])?; // SET_VRING_ADDR
        raw(&s, 10, &ring_state(i, 0), &[])?; // SET_VRING_BASE
        let kick = swap.kick[i as usize].unwrap_or(kick.as_raw_fd());
        raw(&s, SET_VRING_KICK, &u64s(&[u64::from(i)]), &[kick])?;
        raw(&s, 13, &u64s(&[u64::from(i)]), &[call_fd(i as usize)])?;
    }
    // A round trip: everything above is handled.
    raw_get(&s, GET_FEATURES)?;
    Ok(Rings {
        rx,
        tx,
        rx_kick,
        tx_kick,
        conn: Some(s),
        calls,
    })
}

/// Whether the daemon hung up on this connection (end of stream within `wait`).
pub fn hung_up(s: &UnixStream, wait: Duration) -> bool {
    let _ = s.set_read_timeout(Some(wait));
    let mut buf = [0u8; 64];
    loop {
        match (&*s).read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// `volt-net-serve` as a child, its log (stderr) in a file; killed and its directory removed
/// when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub sock: PathBuf,
    pub log: PathBuf,
    pub dir: TempDir,
}

impl Daemon {
    /// Starts `volt-net-serve --socket DIR/vu.sock ARGS` (through `wrap`, e.g. `ip netns
    /// exec NS`, when not empty) and waits for the socket.
    pub fn start(tag: &str, wrap: &[&str], args: &[&str]) -> Daemon {
        let dir = TempDir::new(&format!("volt-{tag}-{}", std::process::id()));
        let sock = dir.0.join("vu.sock");
        let log = dir.0.join("serve.log");
        // A daemon that becomes another user makes its socket as that user.
        if let Some(w) = args.windows(2).find(|w| w[0] == "--user") {
            let u = nix::unistd::User::from_name(w[1])
                .expect("user lookup")
                .expect("the user exists");
            nix::unistd::chown(&dir.0, Some(u.uid), None).expect("chown");
        }
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_volt-net-serve"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_volt-net-serve")),
        };
        let child = cmd
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("volt-net-serve");
        let d = Daemon {
            child,
            sock,
            log,
            dir,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while !d.sock.exists() {
            assert!(
                Instant::now() < end,
                "the daemon listens on {}:\n{}",
                d.sock.display(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 10 s for a log line containing `what`, after the first `from` bytes.
    pub fn expect_log(&self, from: usize, what: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.get(from..).is_some_and(|l| l.contains(what)) {
                return;
            }
            assert!(
                Instant::now() < end,
                "the log says {what:?} (after byte {from}):\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log's length: where a step's lines start.
    pub fn mark(&self) -> usize {
        self.log().len()
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("waiting on the daemon")
            .is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open fds.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// Threads.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid())).map_or(0, |d| d.count())
    }

    /// A field of the process's `/proc/PID/status` (empty when missing).
    pub fn status(&self, key: &str) -> String {
        status_field(format!("/proc/{}/status", self.pid()), key)
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status("VmRSS:")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command's closing parenthesis: utime and stime are 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        n(11) + n(12)
    }

    /// CPU ticks per thread (name, ticks).
    pub fn thread_ticks(&self) -> Vec<(String, u64)> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .map(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                let name = stat
                    .split_once('(')
                    .and_then(|(_, r)| r.rsplit_once(')'))
                    .map_or("?", |(n, _)| n)
                    .to_string();
                let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                let f: Vec<&str> = rest.split_whitespace().collect();
                let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                (name, n(11) + n(12))
            })
            .collect()
    }

    /// Asserts the daemon burns (almost) no CPU over a second: no loop spins while idle.
    pub fn assert_idle(&self, what: &str) {
        let before = self.cpu_ticks();
        let threads = self.thread_ticks();
        std::thread::sleep(Duration::from_secs(1));
        let used = self.cpu_ticks() - before;
        // 100 ticks per second: more than 10 is a loop that does not sleep.
        if used > 10 {
            let after = self.thread_ticks();
            let busy: Vec<String> = after
                .iter()
                .map(|(n, t)| {
                    let was = threads.iter().find(|(m, _)| m == n).map_or(0, |x| x.1);
                    format!("{n}: {}", t.saturating_sub(was))
                })
                .collect();
            panic!(
                "{what}: the daemon used {used} ticks in an idle second ({}):\n{}",
                busy.join(", "),
                self.log()
            );
        }
    }

    /// A fresh frontend gets frames both ways (the loopback echoes them).
    pub fn serves_a_fresh_frontend(&mut self, who: &str) {
        assert!(
            self.alive(),
            "{who}: the daemon is running:\n{}",
            self.log()
        );
        let mem = shared_memory();
        let end = Instant::now() + Duration::from_secs(10);
        // The daemon may still be tearing the previous session down: it refuses a frontend
        // until then; try again, as QEMU's reconnect does.
        let mut rings = loop {
            match session(&self.sock, &mem, Swap::default()) {
                Ok(r) => break r,
                Err(e) => assert!(
                    Instant::now() < end,
                    "{who}: a fresh frontend is served: {e}\n{}",
                    self.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        echo_from(&mem, &mut rings, 1_000_000, who);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
