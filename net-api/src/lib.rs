//! # net-api: the contract between a virtio-net device and the host side
//!
//! A VMM's virtio-net device (see `net-virtio`) talks to every volt-net backend (TAP and
//! macvtap, AF_XDP, vhost-user, the loopback here) through the types of this crate:
//!
//! - [`VirtioNetHdr`]: the virtio-net header, decoded, with its flag and GSO constants taken
//!   from `virtio-bindings`;
//! - [`OffloadSet`] and [`Capabilities`]: what a backend accepts on transmit, can deliver on
//!   receive, whether it speaks the virtio-net header itself, its frame size, queues, MAC, MTU;
//! - [`Backend`] and [`QueuePair`]: open N queue pairs, send batches of scatter-gather frames,
//!   receive into scatter-gather buffers, readiness fds for the VMM's event loop, would-block
//!   as a normal outcome, counters ([`QueueStats`]) with drops by [`DropReason`];
//! - [`Error`]: what failed, where, and what to do;
//! - [`RxFilter`]: the receive filter a guest programs (RX mode, MAC and VLAN tables);
//! - [`loopback`]: two ends joined in memory, for tests, benchmarks and examples; [`null`]: a
//!   sink or a source in the calling thread, for benchmarks.
//!
//! The rules of buffer ownership, backpressure and errors are in the [`queue`] module.
//!
//! ```
//! use net_api::{loopback, Backend, IoBuf, IoBufMut, OffloadSet, QueuePair, TxFrame, VirtioNetHdr};
//!
//! // A device programs against any Backend; the loopback needs no privileges.
//! let cfg = loopback::LoopbackConfig { queue_pairs: 2, ..Default::default() };
//! let (mut host, mut peer) = loopback::pair(cfg)?;
//! let caps = host.capabilities();
//! assert!(!caps.vnet_hdr && caps.tx_offloads == OffloadSet::NONE);
//! let (mut q1, mut p1) = (host.open_queue_pair(1)?, peer.open_queue_pair(1)?);
//! let frame = [0u8; 64];
//! let sent = q1.send(&[TxFrame { hdr: VirtioNetHdr::PLAIN, data: &[IoBuf::from_slice(&frame)] }])?;
//! assert_eq!(sent, 1); // fewer than offered would mean: wait for q1.tx_readiness()
//! let mut buf = [0u8; 1518];
//! assert_eq!(p1.recv(&[IoBufMut::from_mut_slice(&mut buf)])?.map(|f| f.len), Some(64));
//! assert_eq!(q1.stats().tx_packets, 1);
//! # Ok::<(), net_api::Error>(())
//! ```
//! This crate does no I/O of its own beyond the loopback's doorbells, has `unsafe` in one
//! module only ([`iovec`]: buffers over guest memory), and depends only on `thiserror` and
//! `virtio-bindings`.

// Only `iovec` may use `unsafe` (buffers over guest memory, with the layout of `iovec`).
#![deny(unsafe_code)]

pub mod error;
pub mod ether;
pub mod filter;
pub mod hdr;
pub mod iovec;
pub mod loopback;
pub mod mac;
pub mod null;
pub mod offload;
pub mod queue;
pub mod stats;

pub use error::{Error, Result};
pub use filter::RxFilter;
pub use hdr::{GsoType, VirtioNetHdr};
pub use iovec::{IoBuf, IoBufMut};
pub use mac::{MacAddr, ParseMacError};
pub use offload::{Capabilities, OffloadSet};
pub use queue::{Backend, Interest, QueuePair, Readiness, RxFrame, TxFrame, MAX_IOVECS};
pub use stats::{DropReason, Drops, QueueStats};
