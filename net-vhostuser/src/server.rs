//! One socket, one daemon, one frontend at a time: what `volt-net serve` runs.
//!
//! A [`Server`] owns the backend's queue pairs for its whole life and lends them to one
//! session at a time ([`Server::serve_one`]): the session's workers (one thread per queue
//! pair) and its protocol live from the frontend's connect to its disconnect, and everything
//! per frontend (workers, memory mappings, rings, fds) goes with them. Between sessions the
//! backend's queues are flushed, so frames meant for one frontend never reach the next.
//!
//! One daemon serves one VM: a second frontend that connects while one is served is refused
//! (its connection closed, with a log line). A frontend that connects and does not start a
//! owner and ask for the features within the handshake timeout is disconnected (a frontend that
//! did may wait as long as it likes for its guest), and a message it leaves half-sent
//! stalls its session for at most [`MESSAGE_TIMEOUT`].
//!
//! The socket is made with mode 0600 whatever the umask (bound inside a private directory,
//! then renamed into place), and a socket a live daemon listens on is never replaced.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use log::{info, warn};
use net_api::{Backend, IoBufMut, QueuePair};
use net_virtio::engine::PairEngine;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{Device, ServeConfig, ServeError};
use crate::session::{End, Session, WorkerLink};
use crate::worker::{Ctl, Report, Worker};

/// How long one message may take to arrive once its first byte has.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most frames dropped from a backend queue between sessions.
const FLUSH_LIMIT: usize = 65536;

/// How a frontend's session went.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// Requests the frontend sent.
    pub requests: u64,
    /// Frames from the guest to the backend.
    pub from_guest: u64,
    /// Frames from the backend to the guest.
    pub to_guest: u64,
    /// Descriptor chains refused (bad chains, headers, addresses, sizes).
    pub refused_chains: u64,
    /// Why it ended.
    pub end: End,
}

/// A vhost-user-net server on one socket (see the module).
pub struct Server<B: Backend> {
    device: Device,
    engines: Vec<Option<PairEngine<B::Queue>>>,
    listener: UnixListener,
    socket: PathBuf,
    socket_ino: u64,
    worker_start: Option<WorkerStart>,
    // Last: dropped after the queue pairs it opened.
    backend: B,
}

/// What each worker thread runs first (see [`Server::on_worker_start`]).
pub type WorkerStart = Arc<dyn Fn(u16) -> Result<(), String> + Send + Sync>;

/// Binds `path` with `mode` (and `group`) whatever the umask, refusing a path a live daemon
/// listens on. The socket is made in a private directory and renamed into place: nobody can
/// connect before it has its mode.
fn bind_socket(
    path: &Path,
    mode: u32,
    group: Option<u32>,
) -> Result<(UnixListener, u64), ServeError> {
    let err = |what: String| ServeError::Socket(what);
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(err(format!(
                    "{} exists and is not a socket: remove it or choose another path",
                    path.display()
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(err(format!(
                    "a daemon is serving on {} already: stop it first, or choose another socket",
                    path.display()
                )));
            }
            // Stale: replaced by the rename below.
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format!("{}: {e}", path.display()))),
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = nix::unistd::mkdtemp(&parent.join(".volt-net-bind.XXXXXX"))
        .map_err(|e| err(format!("a private directory in {}: {e}", parent.display())))?;
    let tmp = dir.join("socket");
    let bound = UnixListener::bind(&tmp)
        .and_then(|l| {
            if let Some(gid) = group {
                std::os::unix::fs::chown(&tmp, None, Some(gid))?;
            }
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))?;
            std::fs::rename(&tmp, path)?;
            Ok(l)
        })
        .map_err(|e| err(format!("listening on {}: {e}", path.display())));
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&dir);
    let listener = bound?;
    let ino = std::fs::symlink_metadata(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .ino();
    Ok((listener, ino))
}

impl<B: Backend> Server<B>
where
    B::Queue: Send,
{
    /// Opens the backend's queue pairs and listens on `socket` (`cfg.socket_mode`, 0600 by
    /// default). Installs the
    /// handler that contains a frontend shrinking its memory files
    /// ([`crate::memory::contain_sigbus`]).
    pub fn new(socket: &Path, mut backend: B, cfg: ServeConfig) -> Result<Self, ServeError> {
        crate::memory::contain_sigbus()
            .map_err(|e| ServeError::Process(format!("installing the SIGBUS handler: {e}")))?;
        let (mode, group) = (cfg.socket_mode, cfg.socket_group);
        let device = Device::new(backend.name(), backend.capabilities(), cfg)?;
        let mut engines = Vec::new();
        for i in 0..device.cfg.queue_pairs {
            engines.push(Some(PairEngine::new(backend.open_queue_pair(i)?, true)));
        }
        let (listener, socket_ino) = bind_socket(socket, mode, group)?;
        Ok(Server {
            device,
            engines,
            listener,
            socket: socket.to_path_buf(),
            socket_ino,
            worker_start: None,
            backend,
        })
    }

    /// Runs `f` in each worker thread before it touches a ring (with the queue pair's
    /// index): a daemon narrows the thread's seccomp filter there. An error ends the session
    /// with that queue pair's fault; the worker never runs.
    pub fn on_worker_start(&mut self, f: WorkerStart) {
        self.worker_start = Some(f);
    }

    /// The socket frontends connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What frontends are offered.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Serves frontends, one after another, until `stop` is readable.
    pub fn run(&mut self, stop: BorrowedFd<'_>) -> io::Result<()> {
        info!(
            "serving {} on {} ({} queue pair(s), rings up to {})",
            self.device.name,
            self.socket.display(),
            self.device.cfg.queue_pairs,
            self.device.cfg.queue_size
        );
        while let Some(r) = self.serve_one(Some(stop))? {
            info!(
                "frontend gone ({}) after {} requests: {} frames from the guest, {} to it, {} chains refused",
                r.end, r.requests, r.from_guest, r.to_guest, r.refused_chains
            );
            if r.end == End::Shutdown {
                break;
            }
        }
        Ok(())
    }

    /// Waits for a frontend and serves it until it goes; `None` when `stop` became readable
    /// first.
    pub fn serve_one(&mut self, stop: Option<BorrowedFd<'_>>) -> io::Result<Option<SessionReport>> {
        loop {
            let mut fds = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            if let Some(s) = stop {
                fds.push(PollFd::new(s, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
            {
                return Ok(None);
            }
            match self.listener.accept() {
                Ok((stream, _)) => return self.session(stream, stop).map(Some),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of fds, say: the next connection may do better.
                Err(e) => return Err(e),
            }
        }
    }

    /// Drops what waits in the backend's queues (frames for nobody).
    fn flush(&mut self) {
        let mut buf = vec![0u8; 65550 + 64];
        for e in self.engines.iter_mut().flatten() {
            let mut n = 0;
            while n < FLUSH_LIMIT {
                match e.backend_mut().recv(&[IoBufMut::from_mut_slice(&mut buf)]) {
                    Ok(Some(_)) => n += 1,
                    _ => break,
                }
            }
            if n > 0 {
                info!(
                    "{}: dropped {n} frames queued for no frontend",
                    self.device.name
                );
            }
        }
    }

    fn session(
        &mut self,
        stream: UnixStream,
        stop: Option<BorrowedFd<'_>>,
    ) -> io::Result<SessionReport> {
        info!("{}: frontend connected", self.socket.display());
        stream.set_read_timeout(Some(MESSAGE_TIMEOUT))?;
        stream.set_write_timeout(Some(MESSAGE_TIMEOUT))?;
        self.flush();
        let before = self.counts();
        let session_wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let (report_tx, report_rx) = mpsc::channel::<Report>();
        let mut engines: Vec<PairEngine<B::Queue>> = Vec::new();
        for (i, e) in self.engines.iter_mut().enumerate() {
            match e.take() {
                Some(e) => engines.push(e),
                None => {
                    let q = self
                        .backend
                        .open_queue_pair(i as u16)
                        .map_err(io::Error::other)?;
                    engines.push(PairEngine::new(q, true));
                }
            }
        }
        let device = &self.device;
        let worker_start = &self.worker_start;
        let listener = &self.listener;
        let socket = &self.socket;
        let (end, requests, back) = std::thread::scope(|s| {
            let mut links = Vec::new();
            let mut handles = Vec::new();
            for (i, engine) in engines.into_iter().enumerate() {
                let wake = match EventFd::new(EFD_NONBLOCK) {
                    Ok(w) => Arc::new(w),
                    Err(e) => {
                        warn!("{}: an eventfd for a worker: {e}", device.name);
                        handles.push(Err(engine));
                        continue;
                    }
                };
                let (tx, rx) = mpsc::channel();
                let worker = Worker::new(
                    i as u16,
                    device.name.clone(),
                    engine,
                    wake.clone(),
                    rx,
                    report_tx.clone(),
                    session_wake.clone(),
                    device.cfg.busy_poll,
                );
                match worker {
                    Ok(w) => {
                        let h = std::thread::Builder::new()
                            .name(format!("vhost-user-q{i}"))
                            .spawn_scoped(s, move || {
                                match worker_start.as_ref().map(|f| f(i as u16)) {
                                    Some(Err(why)) => w.refuse(why),
                                    _ => w.run(),
                                }
                            });
                        match h {
                            Ok(h) => {
                                handles.push(Ok(h));
                                links.push(WorkerLink { ctl: tx, wake });
                            }
                            Err(e) => {
                                warn!("{}: starting worker {i}: {e}", device.name);
                            }
                        }
                    }
                    Err(e) => warn!("{}: worker {i}: {e}", device.name),
                }
            }
            let mut session = Session::new(device, links);
            let end = if handles.iter().any(|h| h.is_err())
                || session_workers(&session) < device.cfg.queue_pairs as usize
            {
                End::Fault("could not start a worker per queue pair".into())
            } else {
                drive(
                    &mut session,
                    &stream,
                    listener,
                    socket,
                    &session_wake,
                    &report_rx,
                    stop,
                    device.cfg.handshake_timeout,
                )
            };
            // Buffers held go back to the guest, memory is unmapped, the workers stop.
            session.reset();
            let requests = session.requests;
            for l in session.links() {
                let _ = l.ctl.send(Ctl::Exit);
                let _ = l.wake.write(1);
            }
            let back: Vec<Option<PairEngine<B::Queue>>> = handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h
                        .join()
                        .map_err(|_| {
                            warn!(
                                "{}: a worker panicked; its queue pair is opened again",
                                device.name
                            )
                        })
                        .ok(),
                    Err(engine) => Some(engine),
                })
                .collect();
            (end, requests, back)
        });
        let _ = stream.shutdown(std::net::Shutdown::Both);
        for (slot, e) in self.engines.iter_mut().zip(back) {
            *slot = e;
        }
        let after = self.counts();
        Ok(SessionReport {
            requests,
            from_guest: after.0 - before.0,
            to_guest: after.1 - before.1,
            refused_chains: after.2 - before.2,
            end,
        })
    }

    /// Frames from and to the guest and chains refused, over every queue pair, so far.
    fn counts(&self) -> (u64, u64, u64) {
        self.engines
            .iter()
            .flatten()
            .fold((0, 0, 0), |(t, r, bad), e| {
                let (rx, tx, _) = e.stats();
                (
                    t + tx.frames,
                    r + rx.frames,
                    bad + rx.refused() + tx.refused(),
                )
            })
    }
}

fn session_workers(s: &Session<'_>) -> usize {
    s.links().len()
}

/// The session's loop: requests, reports, refusals of other frontends, the handshake deadline
/// and the stop fd.
#[allow(clippy::too_many_arguments)]
fn drive(
    session: &mut Session<'_>,
    stream: &UnixStream,
    listener: &UnixListener,
    socket: &Path,
    wake: &EventFd,
    reports: &mpsc::Receiver<Report>,
    stop: Option<BorrowedFd<'_>>,
    handshake: Duration,
) -> End {
    let started = Instant::now();
    loop {
        // SAFETY: the eventfd lives in `wake`, borrowed for this iteration.
        let wake_fd = unsafe { BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(wake)) };
        let mut fds = vec![
            PollFd::new(stream.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake_fd, PollFlags::POLLIN),
        ];
        if let Some(s) = stop {
            fds.push(PollFd::new(s, PollFlags::POLLIN));
        }
        let timeout = if session.running {
            PollTimeout::NONE
        } else {
            let left = handshake.saturating_sub(started.elapsed());
            if left.is_zero() {
                return End::Stalled;
            }
            PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32 + 1)
                .unwrap_or(PollTimeout::MAX)
        };
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return End::Fault(format!("poll: {e}")),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (msg, other, report, stopping) = (ready(0), ready(1), ready(2), ready(3));
        drop(fds);
        if stopping {
            return End::Shutdown;
        }
        if report {
            let _ = wake.read();
            if let Ok(r) = reports.try_recv() {
                return End::Fault(format!("queue pair {}: {}", r.pair, r.why));
            }
        }
        if msg {
            match crate::wire::recv(stream) {
                Ok(None) => return End::Disconnected,
                Ok(Some(m)) => {
                    if let Err(end) = session.handle(stream, m) {
                        warn!("{}: {end}", socket.display());
                        return end;
                    }
                }
                Err(crate::wire::WireError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return End::Disconnected
                }
                Err(e) => {
                    let end = End::Refused(e.to_string());
                    warn!("{}: {end}", socket.display());
                    return end;
                }
            }
        }
        // After the request: a frontend that just left makes room for the one connecting.
        if other && !msg {
            if let Ok((s, _)) = listener.accept() {
                warn!(
                    "{}: refused a second frontend: one daemon serves one VM, and a frontend is being served",
                    socket.display()
                );
                drop(s);
            }
        }
    }
}

impl<B: Backend> Drop for Server<B> {
    fn drop(&mut self) {
        // Only our own socket: another daemon may have taken the path since.
        if std::fs::symlink_metadata(&self.socket).is_ok_and(|m| m.ino() == self.socket_ino) {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}
