//! # net-virtio: virtio-net semantics over any volt-net backend
//!
//! The part of a virtio-net device that does not depend on the host side:
//!
//! - [`codec`]: the header in its three layouts (legacy 10 bytes, 12 with `num_buffers`,
//!   virtio 1.0 little endian), chosen by the acked features alone;
//! - [`features`]: what to offer a guest for a given backend, what acked bits mean, and the
//!   spec's feature dependencies;
//! - [`translate`]: checking every guest header against its frame, passing frames through when
//!   the backend has the offloads, and otherwise completing checksums ([`csum`]) and segmenting
//!   GSO frames ([`gso`]) in software; adjusting received headers to the guest's features;
//! - [`frame`]: the header parsing segmentation needs;
//! - [`mem`]: guest memory as a region table, and the rings as pointers checked once (the one
//!   module with `unsafe`); [`queue`]: the split virtqueue, read in bursts; [`chain`]:
//!   descriptor chains walked with bounds;
//! - [`pump`]: the transmit and receive pumps, with mergeable receive buffers, zero-copy where
//!   the backend takes iovecs, and backpressure; [`engine`]: one queue pair's pumps, budget,
//!   fairness, interrupts and watched fds, shared by the device and the vhost-user daemon;
//! - [`ctrl`]: control queue commands, bounded decoding;
//! - [`device`]: the device a VMM embeds: features, config space, status, multiqueue, the
//!   control queue, and the fds and calls of its event loop ([`irq`] for interrupts).
//!
//! Malformed input from a guest is a typed error or a counted drop, never a panic.
//!
//! ```
//! use net_api::{hdr::NEEDS_CSUM, GsoType, VirtioNetHdr, Capabilities, OffloadSet};
//! use net_virtio::{HdrLayout, TxTranslator, TxRoute, SoftFrame};
//!
//! // A guest acked VERSION_1: 12-byte little-endian headers.
//! let layout = HdrLayout::from_features(1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1);
//! let wire = [NEEDS_CSUM, GsoType::None.raw(), 0, 0, 0, 0, 34, 0, 16, 0, 0, 0];
//! let hdr = layout.decode(&wire)?;
//! // An AF_XDP-like backend: no header, no offloads.
//! let caps = Capabilities { vnet_hdr: false, tx_offloads: OffloadSet::NONE,
//!     rx_offloads: OffloadSet::NONE, rx_csum_verified: false, max_frame: 1514,
//!     max_queue_pairs: 1, mac: None, mtu: 1500 };
//! let tx = TxTranslator::new(&caps);
//! let mut frame = vec![0u8; 60];
//! assert_eq!(tx.route(&hdr, frame.len(), &frame)?, TxRoute::Software);
//! // The checksum is completed in place; the frame leaves with a plain header.
//! match tx.software(&hdr, &mut frame)? {
//!     SoftFrame::Whole(h) => assert!(h.is_plain()),
//!     SoftFrame::Segments(_) => unreachable!(),
//! }
//! assert_eq!(frame[50..52], [0xff, 0xff]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Only `mem` may use `unsafe` (guest memory and rings through pointers checked once).
#![deny(unsafe_code)]

pub mod chain;
pub mod codec;
pub mod csum;
pub mod ctrl;
pub mod device;
pub mod engine;
pub mod error;
pub mod features;
pub mod frame;
pub mod gso;
pub mod irq;
pub mod mem;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
pub mod pump;
pub mod queue;
#[cfg(any(test, feature = "test-utils"))]
pub mod reference;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod translate;

pub use codec::{HdrLayout, ShortHeader};
pub use device::{DeviceConfig, DeviceError, Event, NetDevice, Watch};
pub use engine::{PairConfig, PairEngine, RunOutcome, Side, Work};
pub use error::FrameError;
pub use gso::{Segment, Segmenter, MAX_SEGMENT_HEADERS};
pub use irq::{EventFdInterrupts, Interrupt, IrqCause};
pub use mem::GuestRegions;
pub use pump::{PumpError, PumpOutcome, PumpStats, RxPump, TxPump};
pub use queue::SplitQueue;
pub use translate::{
    RxRoute, RxTranslator, SoftFrame, TxRoute, TxTranslator, HEAD_LEN, MAX_FRAME_LEN,
};
