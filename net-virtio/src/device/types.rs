//! The device's configuration, errors, events and counters.

use std::io;
use std::os::fd::BorrowedFd;

use net_api::{Interest, MacAddr};

use crate::features::MissingDependency;
use crate::pump::PumpStats;

/// How to build a device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Queue pairs (1 ..= the backend's); `VIRTIO_NET_F_MQ` is offered above 1.
    pub queue_pairs: u16,
    /// The largest queue size the driver may choose (a power of two, at most 32768).
    pub max_queue_size: u16,
    /// The MAC address; `None` uses the backend's, if it has one (else `F_MAC` is not offered).
    pub mac: Option<MacAddr>,
    /// The MTU to report (`F_MTU`); `None` reports the backend's.
    pub mtu: Option<u16>,
    /// Link speed in Mb/s for `F_SPEED_DUPLEX`; `None` means unknown.
    pub speed_mbps: Option<u32>,
    /// Full duplex for `F_SPEED_DUPLEX`; `None` means unknown.
    pub full_duplex: Option<bool>,
    /// Offer `VIRTIO_NET_F_MRG_RXBUF`.
    pub mergeable_rx: bool,
    /// Offer the control queue (and the features that use it).
    pub ctrl_queue: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            queue_pairs: 1,
            max_queue_size: 256,
            mac: None,
            mtu: None,
            speed_mbps: None,
            full_duplex: None,
            mergeable_rx: true,
            ctrl_queue: true,
        }
    }
}

/// A device-level failure: what the driver or the VMM did wrong, or the backend.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A queue index the device does not have.
    #[error("virtio-net has no queue {index}: it has {count} queues (0..{count})")]
    NoSuchQueue {
        /// The index.
        index: u16,
        /// How many queues there are.
        count: u16,
    },
    /// A queue setting changed while the driver runs (after `DRIVER_OK`).
    #[error("cannot change {what} after DRIVER_OK: the driver must reset the device first")]
    Running {
        /// The setting.
        what: &'static str,
    },
    /// A queue size of 0, not a power of two, or above the maximum.
    #[error("queue {index}: size {size} refused; use a power of two from 1 to {max}")]
    InvalidQueueSize {
        /// The queue.
        index: u16,
        /// The size asked for.
        size: u16,
        /// The maximum.
        max: u16,
    },
    /// A ring address with the wrong alignment.
    #[error("queue {index}: {what} address {addr:#x} is misaligned")]
    InvalidQueueAddress {
        /// The queue.
        index: u16,
        /// Which ring.
        what: &'static str,
        /// The address.
        addr: u64,
    },
    /// At `DRIVER_OK`, a queue that must work is not ready or its rings are not in guest
    /// memory. The device is marked `NEEDS_RESET`.
    #[error("queue {index} is not usable at DRIVER_OK (not ready, or rings outside guest memory)")]
    QueueNotUsable {
        /// The queue.
        index: u16,
    },
    /// `DRIVER_OK` without `FEATURES_OK` from a virtio 1.0 driver.
    #[error(
        "DRIVER_OK was set before FEATURES_OK: a virtio 1.0 driver must set FEATURES_OK first"
    )]
    FeaturesNotOk,
    /// Features acked after `FEATURES_OK`.
    #[error("features can only be acked before FEATURES_OK")]
    FeaturesLocked,
    /// The acked features miss a dependency: `FEATURES_OK` is not set.
    #[error(transparent)]
    Features(#[from] MissingDependency),
    /// The configuration is not usable with this backend.
    #[error("invalid device configuration: {0}")]
    Config(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] net_api::Error),
    /// An eventfd could not be created or used.
    #[error("eventfd: {0}")]
    Io(#[from] io::Error),
    /// The VMM's guest memory cannot be used directly (a region without a host mapping).
    #[error("guest memory: {0}")]
    Memory(#[from] crate::mem::MemError),
}

/// Something to poll for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The driver notified this queue (transport index).
    Kick(u16),
    /// The backend has frames for this queue pair.
    BackendRx(u16),
    /// The backend has room again for this queue pair.
    BackendTx(u16),
}

/// An fd to poll, what to wait for, and what to tell [`NetDevice::handle`] when it fires.
#[derive(Debug, Clone, Copy)]
pub struct Watch<'a> {
    /// The fd.
    pub fd: BorrowedFd<'a>,
    /// The interest.
    pub interest: Interest,
    /// The event.
    pub event: Event,
}

/// Counters of the control queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CtrlStats {
    /// Commands answered OK.
    pub ok: u64,
    /// Commands answered ERR.
    pub err: u64,
    /// Chains that could not carry a command or an ack (completed with length 0).
    pub bad_chains: u64,
}

/// Counters of the device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    /// Per queue pair: receive pump, transmit pump, backend.
    pub pairs: Vec<(PumpStats, PumpStats, net_api::QueueStats)>,
    /// The control queue.
    pub ctrl: CtrlStats,
    /// Times the device entered `NEEDS_RESET`.
    pub needs_reset: u64,
}
