//! # net-vhostuser: vhost-user-net, both ways
//!
//! Serving any [`net_api::Backend`] to a vhost-user frontend (QEMU, Cloud Hypervisor, DPDK's
//! virtio_user) over a unix socket, with `net-virtio`'s queue-pair engine on the guest memory
//! the frontend shares:
//!
//! - [`server`]: one socket, one frontend at a time, a session per frontend; the socket made
//!   0600, a live daemon's socket never replaced;
//! - [`session`]: the vhost-user protocol of one frontend (the `vhost` crate's message types,
//!   our own state machine and event loop), with one worker thread per queue pair (the
//!   engine, the rings, kick and call eventfds);
//! - [`wire`]: messages read with bounds and checked into typed requests;
//! - [`memory`]: the frontend's memory table, mapped;
//! - [`device`]: what a backend is offered as (features, queue pairs, ring sizes).
//!
//! The daemon's command line (`volt-net serve`, `volt-net-serve`), which opens the host side,
//! lives in `net-select`: this crate only serves the `net_api::Backend` it is given.
//!
//! And the other way round, [`frontend`]: a VMM hands its virtio-net queues and memfd-backed
//! guest memory to an external vhost-user backend (DPDK, OVS-DPDK), and recovers when that
//! backend restarts.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use std::os::unix::net::UnixStream;
//! use net_api::null::{Null, NullMode};
//! use net_vhostuser::device::ServeConfig;
//! use net_vhostuser::server::Server;
//!
//! // A sink behind a vhost-user socket, until `stop` becomes readable (a byte written to
//! // `trigger`, or `trigger` closed).
//! let (stop, trigger) = UnixStream::pair()?;
//! let backend = Null::new(NullMode::Sink, 1)?;
//! let mut server = Server::new("/run/vm0.sock".as_ref(), backend, ServeConfig::default())?;
//! server.run(stop.as_fd())?;
//! # drop(trigger);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod device;
pub mod frontend;
#[cfg(feature = "test-utils")]
pub mod harness;
pub mod memory;
pub mod server;
pub mod session;
pub mod wire;
mod worker;
