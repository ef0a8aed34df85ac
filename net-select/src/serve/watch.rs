//! The daemon's link supervisor: a thread that follows the host-side link in rtnetlink's link
//! events (and the reports of queue pairs that found their device gone), takes the backend
//! away from the queue pairs when the link goes ([`Handle::lose`]), and hands them a new one
//! when it can ([`Handle::restore`]): a TAP the daemon created is created again at once, a
//! named TAP or a macvtap is opened again when a link of that name (and kind) reappears, an
//! AF_XDP interface likewise; while the link is there, AF_XDP's XDP program is checked every
//! second and attached again if someone detached or replaced it. Every step is logged. The
//! thread sleeps in `poll` (events, reports, a stop eventfd, a one-second tick): no busy
//! loop in any state.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use net_api::Backend;
use net_macvtap::netlink::{LinkEvent, LinkMonitor, Netlink};
use net_macvtap::tap::{Macvtap, Tap};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::relink::Handle;

/// How often the supervisor looks without an event.
const TICK: Duration = Duration::from_secs(1);

/// What one backend kind does when its link goes and comes back.
pub(crate) trait Policy: Send + 'static {
    type B: Backend + Send + 'static;

    /// The interface, for log lines.
    fn iface(&self) -> &str;

    /// Whether these events (one batch, in order) mean the link is gone now (why, for the
    /// log).
    fn gone(&mut self, events: &[LinkEvent]) -> Option<String>;

    /// A queue pair found the device gone (before the link events say so, maybe): why.
    fn lost_by_queue(&mut self) -> String {
        "a queue pair found the device gone".into()
    }

    /// While the link is gone, at every event and tick: the backend, once it can be opened
    /// again (`None`: not yet).
    fn reopen(&mut self) -> Option<Result<Self::B, String>>;

    /// While the link is there, at every tick and event.
    fn check(&mut self, _backend: &mut Self::B) {}

    /// Whether opening the backend again mounts file systems (then Landlock cannot apply).
    fn mounts(&self) -> bool {
        false
    }
}

/// The supervisor thread; stopped and joined when dropped (then the backend it holds goes).
pub(crate) struct Supervisor {
    stop: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the supervisor of `handle`'s backend (link events of the calling thread's network
/// namespace).
pub(crate) fn spawn<P: Policy>(
    handle: Handle<P::B>,
    policy: P,
    sandbox: super::sandbox::Sandbox,
    socket: &std::path::Path,
) -> Result<Supervisor, String> {
    let socket = socket.to_path_buf();
    let monitor = LinkMonitor::open().map_err(|e| format!("following link events: {e}"))?;
    let stop = Arc::new(
        EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| format!("an eventfd: {e}"))?,
    );
    let s = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("volt-link-watch".into())
        .spawn(move || {
            let mut sandbox = sandbox;
            if sandbox.landlock && policy.mounts() {
                info!(
                    "{}: no Landlock for the link supervisor: finding a macvtap's device \
                     again takes a private sysfs mount, which Landlock forbids (its seccomp \
                     filter applies)",
                    policy.iface()
                );
                sandbox.landlock = false;
            }
            if let Err(e) = sandbox.enter(super::sandbox::Kind::Watch, &socket) {
                // Without its filter it does not run: links are no longer followed.
                warn!(
                    "{}: link supervisor: {e}; links are not followed",
                    policy.iface()
                );
                return;
            }
            run(handle, policy, monitor, &s)
        })
        .map_err(|e| format!("starting the link supervisor: {e}"))?;
    Ok(Supervisor {
        stop,
        thread: Some(thread),
    })
}

fn run<P: Policy>(handle: Handle<P::B>, mut policy: P, mut monitor: LinkMonitor, stop: &EventFd) {
    let mut next_tick = Instant::now() + TICK;
    // When the link went (for the log), and whether to try to reopen at once.
    let mut lost_since: Option<Instant> = None;
    let mut just_lost = false;
    let mut last_error = String::new();
    loop {
        let left = next_tick.saturating_duration_since(Instant::now());
        let (events_ready, lost_ready, stopping) = {
            let mut fds = [
                PollFd::new(monitor.as_fd(), PollFlags::POLLIN),
                PollFd::new(handle.lost_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => {
                    warn!("{}: link supervisor: poll: {e}; it stops", policy.iface());
                    return;
                }
            }
            let r = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            (r(0), r(1), r(2))
        };
        if stopping {
            return;
        }
        let tick = Instant::now() >= next_tick;
        if tick {
            next_tick = Instant::now() + TICK;
        }
        let events = if events_ready {
            monitor.events().unwrap_or_else(|e| {
                warn!("{}: link events: {e}", policy.iface());
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let queue_lost = lost_ready && handle.take_lost();
        if handle.is_up() {
            let mut why = policy.gone(&events);
            if queue_lost && why.is_none() {
                why = Some(policy.lost_by_queue());
            }
            match why {
                Some(why) => {
                    warn!(
                        "{}: {why}; frames from the guest are dropped until it is back",
                        policy.iface()
                    );
                    drop(handle.lose());
                    lost_since = Some(Instant::now());
                    just_lost = true;
                }
                None if tick || !events.is_empty() => {
                    let _ = handle.with(|b| policy.check(b));
                }
                None => {}
            }
        }
        if !handle.is_up() && (tick || !events.is_empty() || just_lost) {
            just_lost = false;
            match policy.reopen() {
                Some(Ok(b)) => {
                    let after = lost_since.take().map_or(Duration::ZERO, |t| t.elapsed());
                    handle.restore(b);
                    info!(
                        "{}: the link is back after {:.1} s; the guest's queue pairs use it again",
                        policy.iface(),
                        after.as_secs_f64()
                    );
                    last_error.clear();
                }
                Some(Err(e)) if e != last_error => {
                    warn!(
                        "{}: opening it again: {e} (retried every second)",
                        policy.iface()
                    );
                    last_error = e;
                }
                Some(Err(_)) => {}
                None => {}
            }
        }
    }
}

fn index_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// A TAP: created again at once when the daemon created it, opened again when it reappears
/// otherwise.
pub(crate) struct TapPolicy {
    name: String,
    queues: u16,
    index: Option<u32>,
    created: bool,
    /// Whether it is up, and when it last went down: a TAP created again is brought up if
    /// it was up when it went (deleting a link takes it down first, with an event of its
    /// own, a moment before).
    up: bool,
    down_at: Option<Instant>,
}

impl TapPolicy {
    pub(crate) fn new(name: &str, queues: u16, created: bool) -> TapPolicy {
        let up = Netlink::open()
            .ok()
            .and_then(|mut nl| nl.link(name).ok().flatten())
            .is_some_and(|l| l.up);
        TapPolicy {
            name: name.to_string(),
            queues,
            index: index_of(name),
            created,
            up,
            down_at: None,
        }
    }
}

impl Policy for TapPolicy {
    type B = Tap;

    fn iface(&self) -> &str {
        &self.name
    }

    fn gone(&mut self, events: &[LinkEvent]) -> Option<String> {
        let mut why = None;
        for ev in events {
            match ev {
                LinkEvent::Del(l) if Some(l.index) == self.index => {
                    why = Some(self.lost_by_queue());
                }
                LinkEvent::New(l) if Some(l.index) == self.index => {
                    if self.up && !l.up {
                        self.down_at = Some(Instant::now());
                    }
                    self.up = l.up;
                }
                LinkEvent::Overrun if index_of(&self.name) != self.index => {
                    why = Some(self.lost_by_queue());
                }
                _ => {}
            }
        }
        why
    }

    fn lost_by_queue(&mut self) -> String {
        // Down within the last second: by the deletion.
        if self.down_at.is_some_and(|t| t.elapsed() < TICK) {
            self.up = true;
        }
        "the TAP was deleted".into()
    }

    fn reopen(&mut self) -> Option<Result<Tap, String>> {
        let now = index_of(&self.name);
        // The old device may still be unregistering (its queues see it gone first): opening
        // the name now would attach to it.
        if now.is_some() && now == self.index {
            return None;
        }
        if !self.created && now.is_none() {
            return None;
        }
        let tap = match Tap::create(&self.name, self.queues) {
            Ok(t) => t,
            Err(e) => return Some(Err(e.to_string())),
        };
        self.index = index_of(&self.name);
        self.down_at = None;
        if self.created {
            let mut up = "";
            if self.up {
                match Netlink::open().and_then(|mut nl| nl.set_up(&self.name, true)) {
                    Ok(()) => up = ", up",
                    Err(e) => warn!("{}: setting the TAP up again: {e}", self.name),
                }
            }
            info!(
                "{}: created the TAP again (index {}{up}); addresses and bridge port are not \
                 restored here: whoever configured them does it again (networkd matches it by name)",
                self.name,
                self.index.unwrap_or(0)
            );
        } else {
            info!("{}: the TAP reappeared; opened it again", self.name);
        }
        Some(Ok(tap))
    }
}

/// A macvtap: gone with its lower link; opened again when a macvtap of that name reappears.
pub(crate) struct MacvtapPolicy {
    name: String,
    queues: u16,
    index: Option<u32>,
    /// The lower link: index and name.
    lower: Option<(u32, String)>,
}

impl MacvtapPolicy {
    pub(crate) fn new(name: &str, queues: u16) -> MacvtapPolicy {
        let mut p = MacvtapPolicy {
            name: name.to_string(),
            queues,
            index: None,
            lower: None,
        };
        p.look();
        p
    }

    /// Reads the macvtap's index and lower link; whether it is there.
    fn look(&mut self) -> bool {
        let link = Netlink::open()
            .ok()
            .and_then(|mut nl| nl.link(&self.name).ok().flatten());
        match link {
            Some(l) if l.kind.as_deref() == Some("macvtap") => {
                self.index = Some(l.index);
                self.lower = l.link.map(|i| {
                    let name = nix::net::if_::if_indextoname(i)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| format!("index {i}"));
                    (i, name)
                });
                true
            }
            _ => false,
        }
    }
}

impl Policy for MacvtapPolicy {
    type B = Macvtap;

    fn mounts(&self) -> bool {
        true
    }

    fn iface(&self) -> &str {
        &self.name
    }

    fn gone(&mut self, events: &[LinkEvent]) -> Option<String> {
        let lower = self.lower.as_ref().map(|l| l.0);
        let deleted = |i: Option<u32>| {
            events
                .iter()
                .any(|e| matches!(e, LinkEvent::Del(l) if Some(l.index) == i))
        };
        let overrun = events.iter().any(|e| matches!(e, LinkEvent::Overrun));
        let renamed_away = overrun && index_of(&self.name) != self.index;
        if !(deleted(self.index) || deleted(lower) || renamed_away) {
            return None;
        }
        // The kernel deletes a macvtap with its lower link, in either order: the lower link
        // is looked up rather than waited for.
        let lower_gone = match &self.lower {
            Some((i, name)) => {
                let now = nix::net::if_::if_indextoname(*i)
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok();
                (deleted(lower) || now.as_deref() != Some(name.as_str())).then(|| name.clone())
            }
            None => None,
        };
        Some(match lower_gone {
            Some(name) => format!("its lower link {name} was deleted (and the macvtap with it)"),
            None => "the macvtap was deleted".into(),
        })
    }

    fn reopen(&mut self) -> Option<Result<Macvtap, String>> {
        if !self.look() {
            return None;
        }
        let r = Macvtap::open(&self.name, self.queues).map_err(|e| e.to_string());
        if r.is_ok() {
            info!(
                "{}: a macvtap of that name reappeared (index {}); opened it again",
                self.name,
                self.index.unwrap_or(0)
            );
        }
        Some(r)
    }
}

/// AF_XDP: the interface deleted and back (opened again); the XDP program detached or
/// replaced by someone else (attached again).
#[cfg(feature = "afxdp")]
pub(crate) struct AfXdpPolicy {
    cfg: net_afxdp::AfXdpConfig,
    index: Option<u32>,
    last_error: String,
}

#[cfg(feature = "afxdp")]
impl AfXdpPolicy {
    pub(crate) fn new(cfg: net_afxdp::AfXdpConfig) -> AfXdpPolicy {
        AfXdpPolicy {
            index: index_of(&cfg.iface),
            cfg,
            last_error: String::new(),
        }
    }
}

#[cfg(feature = "afxdp")]
impl Policy for AfXdpPolicy {
    type B = net_afxdp::AfXdp;

    fn iface(&self) -> &str {
        &self.cfg.iface
    }

    fn gone(&mut self, events: &[LinkEvent]) -> Option<String> {
        events.iter().find_map(|ev| match ev {
            LinkEvent::Del(l) if Some(l.index) == self.index => {
                Some("the interface was deleted".into())
            }
            LinkEvent::Overrun if index_of(&self.cfg.iface) != self.index => {
                Some("the interface is gone".into())
            }
            _ => None,
        })
    }

    fn reopen(&mut self) -> Option<Result<net_afxdp::AfXdp, String>> {
        index_of(&self.cfg.iface)?;
        let r = net_afxdp::AfXdp::open(self.cfg.clone()).map_err(|e| e.to_string());
        if r.is_ok() {
            self.index = index_of(&self.cfg.iface);
            info!(
                "{}: the interface reappeared; opened it again",
                self.cfg.iface
            );
        }
        Some(r)
    }

    fn check(&mut self, b: &mut net_afxdp::AfXdp) {
        if index_of(&self.cfg.iface) != self.index {
            // Going or gone: the link events say so next; nothing to attach to.
            return;
        }
        match b.ensure_attached() {
            Ok(Some(what)) => {
                warn!("{}: {what}", self.cfg.iface);
                self.last_error.clear();
            }
            Ok(None) => self.last_error.clear(),
            Err(e) => {
                let e = e.to_string();
                if e != self.last_error {
                    warn!(
                        "{}: the XDP program could not be attached again: {e} (retried every second)",
                        self.cfg.iface
                    );
                    self.last_error = e;
                }
            }
        }
    }
}
