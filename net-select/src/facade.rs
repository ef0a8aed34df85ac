//! Opening what [`decide`](crate::decide::decide) chose, so a VMM writes one call:
//!
//! ```no_run
//! use net_select::{decide::Requirements, facade, probe};
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let host = probe::probe(&probe::System, Some("eth0"))?;
//! let decision = net_select::decide::decide(&host, &host.interfaces[0], &Requirements::default())?;
//! match facade::open(&decision, &facade::OpenOptions::new("vm0", 2))? {
//!     facade::Opened::Datapath(backend) => { /* hand it to net_virtio::NetDevice */ }
//!     facade::Opened::External(_frontend) => { /* the queues go to the external switch */ }
//!     _ => { /* backends of cargo features added later */ }
//! }
//! # Ok(()) }
//! ```
//!
//! Backends come from cargo features: `macvtap` (TAP and macvtap, default), `vhostuser`
//! (the frontend to an external switch, default), `afxdp` (AF_XDP, native mode, zero-copy
//! when the decision saw it; needs clang and libelf to build, and the guest's MAC in
//! [`OpenOptions::mac`]). A choice whose feature is off is an error that names the feature.

use net_api::{Backend, Capabilities, MacAddr, QueuePair};

use crate::decide::{Choice, Decision};

/// How to open: the link to create (a TAP or macvtap name), queue pairs, the guest's MAC.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The name of the TAP or macvtap to create (at most 15 bytes).
    pub name: String,
    /// Queue pairs.
    pub queues: u16,
    /// The guest's MAC for a macvtap (the kernel picks one otherwise).
    pub mac: Option<MacAddr>,
}

impl OpenOptions {
    /// `queues` queue pairs on a link named `name`, no MAC given.
    pub fn new(name: &str, queues: u16) -> Self {
        OpenOptions {
            name: name.to_string(),
            queues,
            mac: None,
        }
    }
}

/// Opening failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The backend chosen was not built in.
    #[error("{backend} was chosen but net-select was built without its cargo feature: enable `{feature}`")]
    NotBuilt {
        /// The backend.
        backend: String,
        /// The feature that brings it.
        feature: &'static str,
    },
    /// The backend is built but cannot open yet.
    #[error("{0}")]
    Unavailable(String),
    /// A backend failed.
    #[error(transparent)]
    Backend(#[from] net_api::Error),
    /// Creating the link failed.
    #[cfg(feature = "macvtap")]
    #[error(transparent)]
    Plumb(#[from] net_macvtap::netlink::PlumbError),
    /// The external switch failed.
    #[cfg(feature = "vhostuser")]
    #[error(transparent)]
    Frontend(#[from] net_vhostuser::frontend::FrontendError),
}

/// A macvtap this facade created, deleted when dropped.
#[cfg(feature = "macvtap")]
#[derive(Debug)]
pub struct OwnedMacvtap {
    backend: net_macvtap::tap::Macvtap,
    link: String,
}

#[cfg(feature = "macvtap")]
impl Drop for OwnedMacvtap {
    fn drop(&mut self) {
        match net_macvtap::netlink::Netlink::open().and_then(|mut nl| nl.delete(&self.link)) {
            Ok(_) => {}
            Err(e) => log::warn!("deleting macvtap {}: {e}", self.link),
        }
    }
}

/// A backend opened by the facade, whichever it is.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyBackend {
    /// A TAP.
    #[cfg(feature = "macvtap")]
    Tap(net_macvtap::tap::Tap),
    /// A macvtap (deleted when dropped).
    #[cfg(feature = "macvtap")]
    Macvtap(OwnedMacvtap),
    /// AF_XDP sockets (the XDP program goes with the interface's last VM).
    #[cfg(feature = "afxdp")]
    Afxdp(net_afxdp::AfXdp),
}

impl Backend for AnyBackend {
    type Queue = Box<dyn QueuePair + Send>;

    fn name(&self) -> &str {
        match self {
            #[cfg(feature = "macvtap")]
            AnyBackend::Tap(b) => b.name(),
            #[cfg(feature = "macvtap")]
            AnyBackend::Macvtap(b) => b.backend.name(),
            #[cfg(feature = "afxdp")]
            AnyBackend::Afxdp(b) => b.name(),
            // No backend feature: the enum has no values.
            #[allow(unreachable_patterns)]
            _ => unreachable!(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self {
            #[cfg(feature = "macvtap")]
            AnyBackend::Tap(b) => b.capabilities(),
            #[cfg(feature = "macvtap")]
            AnyBackend::Macvtap(b) => b.backend.capabilities(),
            #[cfg(feature = "afxdp")]
            AnyBackend::Afxdp(b) => b.capabilities(),
            #[allow(unreachable_patterns)]
            _ => unreachable!(),
        }
    }

    fn open_queue_pair(&mut self, index: u16) -> net_api::Result<Self::Queue> {
        match self {
            #[cfg(feature = "macvtap")]
            AnyBackend::Tap(b) => Ok(Box::new(b.open_queue_pair(index)?)),
            #[cfg(feature = "macvtap")]
            AnyBackend::Macvtap(b) => Ok(Box::new(b.backend.open_queue_pair(index)?)),
            #[cfg(feature = "afxdp")]
            AnyBackend::Afxdp(b) => Ok(Box::new(b.open_queue_pair(index)?)),
            #[allow(unreachable_patterns)]
            _ => unreachable!("queue pair {index} of a backend that cannot exist"),
        }
    }
}

/// What [`open`] gives.
#[derive(Debug)]
#[non_exhaustive]
pub enum Opened {
    /// A datapath for `net_virtio::NetDevice` (or `volt-net serve`).
    Datapath(AnyBackend),
    /// The queues go to an external vhost-user switch through this frontend.
    #[cfg(feature = "vhostuser")]
    External(net_vhostuser::frontend::VhostUserNet),
}

/// Opens the backend `decision` chose: creates the TAP or the macvtap (in the chosen mode, on
/// the decision's interface, up), or connects to the external switch.
pub fn open(decision: &Decision, opts: &OpenOptions) -> Result<Opened, OpenError> {
    match &decision.choice {
        Choice::Tap => open_tap(opts),
        Choice::Macvtap { mode } => open_macvtap(&decision.interface, *mode, opts),
        Choice::VhostUser { socket } => open_vhost_user(socket, opts),
        Choice::Afxdp { zero_copy } => open_afxdp(decision, *zero_copy, opts),
    }
}

#[cfg(feature = "afxdp")]
fn open_afxdp(
    decision: &Decision,
    zero_copy: bool,
    opts: &OpenOptions,
) -> Result<Opened, OpenError> {
    let mac = opts.mac.ok_or_else(|| {
        OpenError::Unavailable(
            "AF_XDP steers frames by the guest's MAC: give OpenOptions::mac".into(),
        )
    })?;
    let cfg = net_afxdp::AfXdpConfig {
        queues: opts.queues,
        attach: net_afxdp::AttachMode::Native,
        // The decision saw zero-copy: insist on it; otherwise copy mode, said so.
        zero_copy: if zero_copy {
            net_afxdp::ZeroCopy::Require
        } else {
            net_afxdp::ZeroCopy::Off
        },
        ..net_afxdp::AfXdpConfig::new(&decision.interface, mac)
    };
    let backend = net_afxdp::AfXdp::open(cfg).map_err(|e| OpenError::Unavailable(e.to_string()))?;
    Ok(Opened::Datapath(AnyBackend::Afxdp(backend)))
}

#[cfg(not(feature = "afxdp"))]
fn open_afxdp(decision: &Decision, _: bool, _: &OpenOptions) -> Result<Opened, OpenError> {
    Err(OpenError::NotBuilt {
        backend: decision.choice.label(),
        feature: "afxdp",
    })
}

#[cfg(feature = "macvtap")]
fn open_tap(opts: &OpenOptions) -> Result<Opened, OpenError> {
    let tap = net_macvtap::tap::Tap::create(&opts.name, opts.queues)?;
    Ok(Opened::Datapath(AnyBackend::Tap(tap)))
}

#[cfg(not(feature = "macvtap"))]
fn open_tap(_: &OpenOptions) -> Result<Opened, OpenError> {
    Err(OpenError::NotBuilt {
        backend: "tap".into(),
        feature: "macvtap",
    })
}

#[cfg(feature = "macvtap")]
fn open_macvtap(
    lower: &str,
    mode: crate::decide::MacvtapMode,
    opts: &OpenOptions,
) -> Result<Opened, OpenError> {
    use net_macvtap::netlink::Netlink;
    let mut nl = Netlink::open()?;
    nl.create_macvtap(&opts.name, lower, mode, opts.mac, opts.queues)?;
    // From here the link is ours: deleted if anything below fails.
    let cleanup = |e: OpenError, nl: &mut Netlink| {
        let _ = nl.delete(&opts.name);
        e
    };
    nl.set_up(&opts.name, true)
        .map_err(|e| cleanup(e.into(), &mut nl))?;
    let backend = net_macvtap::tap::Macvtap::open(&opts.name, opts.queues)
        .map_err(|e| cleanup(e.into(), &mut nl))?;
    Ok(Opened::Datapath(AnyBackend::Macvtap(OwnedMacvtap {
        backend,
        link: opts.name.clone(),
    })))
}

#[cfg(not(feature = "macvtap"))]
fn open_macvtap(
    _: &str,
    mode: crate::decide::MacvtapMode,
    _: &OpenOptions,
) -> Result<Opened, OpenError> {
    Err(OpenError::NotBuilt {
        backend: format!("macvtap ({})", mode.as_str()),
        feature: "macvtap",
    })
}

#[cfg(feature = "vhostuser")]
fn open_vhost_user(socket: &str, opts: &OpenOptions) -> Result<Opened, OpenError> {
    let fe = net_vhostuser::frontend::VhostUserNet::connect(socket, opts.queues)?;
    Ok(Opened::External(fe))
}

#[cfg(not(feature = "vhostuser"))]
fn open_vhost_user(_: &str, _: &OpenOptions) -> Result<Opened, OpenError> {
    Err(OpenError::NotBuilt {
        backend: "vhost-user".into(),
        feature: "vhostuser",
    })
}
