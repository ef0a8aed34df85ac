//! What the daemon offers a frontend for a given backend: virtio features, vhost-user
//! protocol features, queue pairs and ring sizes.

use net_api::Capabilities;
use net_virtio::features::{bit, offload_features};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config as vc;
use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring as vr;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const PROTOCOL_FEATURES: u64 = 1 << 30;

/// The most queue pairs a daemon serves.
pub const MAX_PAIRS: u16 = 32;

/// The default busy-poll window, in microseconds.
pub const DEFAULT_BUSY_POLL_US: u64 = 100;

/// How the backend is served.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Queue pairs (at most the backend's, and [`MAX_PAIRS`]).
    pub queue_pairs: u16,
    /// The largest vring size (a power of two).
    pub queue_size: u16,
    /// Offer `VIRTIO_NET_F_MRG_RXBUF`.
    pub mergeable_rx: bool,
    /// How long a frontend may take from connecting to identifying itself (`SET_OWNER` and
    /// `GET_FEATURES`); afterwards it may wait for its guest as long as it likes.
    pub handshake_timeout: std::time::Duration,
    /// How long a worker keeps polling its rings after frames last moved, instead of
    /// sleeping until the frontend kicks (which costs both sides a system call and a wake-up
    /// per burst); zero never polls. An idle session sleeps after this long.
    pub busy_poll: std::time::Duration,
    /// The socket's mode (0600 by default: only the daemon's user may connect), whatever the
    /// umask.
    pub socket_mode: u32,
    /// The socket's group (with a mode such as 0660, a VMM running in that group may
    /// connect); `None` keeps the daemon's.
    pub socket_group: Option<u32>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            queue_pairs: 1,
            queue_size: 256,
            mergeable_rx: true,
            handshake_timeout: std::time::Duration::from_secs(10),
            busy_poll: std::time::Duration::from_micros(DEFAULT_BUSY_POLL_US),
            socket_mode: 0o600,
            socket_group: None,
        }
    }
}

/// A failure to set the daemon up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration does not fit the backend.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The socket.
    #[error("{0}")]
    Socket(String),
    /// The process could not be set up (a signal handler).
    #[error("{0}")]
    Process(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] net_api::Error),
}

/// The device a frontend sees (see the module).
#[derive(Debug, Clone)]
pub struct Device {
    /// The backend's name, for logs.
    pub name: String,
    /// The backend's capabilities.
    pub caps: Capabilities,
    /// How it is served.
    pub cfg: ServeConfig,
    /// The virtio features offered.
    pub features: u64,
}

impl Device {
    /// The device for a backend `name` with `caps`.
    pub fn new(name: &str, caps: Capabilities, cfg: ServeConfig) -> Result<Device, ServeError> {
        if cfg.queue_pairs == 0 || cfg.queue_pairs > caps.max_queue_pairs.min(MAX_PAIRS) {
            return Err(ServeError::Config(format!(
                "{} queue pairs asked for; {name} has 1 to {}",
                cfg.queue_pairs,
                caps.max_queue_pairs.min(MAX_PAIRS)
            )));
        }
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size > 32768 {
            return Err(ServeError::Config(format!(
                "queue size {}: use a power of two up to 32768",
                cfg.queue_size
            )));
        }
        let mut features = bit(vc::VIRTIO_F_VERSION_1)
            | bit(vr::VIRTIO_RING_F_EVENT_IDX)
            | bit(vr::VIRTIO_RING_F_INDIRECT_DESC)
            | bit(vn::VIRTIO_NET_F_MTU)
            | offload_features(&caps)
            | PROTOCOL_FEATURES;
        if caps.mac.is_some() {
            features |= bit(vn::VIRTIO_NET_F_MAC);
        }
        if cfg.mergeable_rx {
            features |= bit(vn::VIRTIO_NET_F_MRG_RXBUF);
        }
        if cfg.queue_pairs > 1 {
            features |= bit(vn::VIRTIO_NET_F_MQ);
        }
        Ok(Device {
            name: name.to_string(),
            caps,
            cfg,
            features,
        })
    }

    /// The protocol features offered: MQ, REPLY_ACK, RESET_DEVICE. No CONFIG (QEMU's
    /// vhost-user-net keeps the config space itself), no LOG_SHMFD (no migration log yet).
    pub fn protocol_features(&self) -> u64 {
        (VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE)
            .bits()
    }

    /// Rings the device has (two per queue pair).
    pub fn rings(&self) -> usize {
        2 * usize::from(self.cfg.queue_pairs)
    }
}
