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
//! - [`pump`]: the transmit and receive virtqueue pumps (virtio-queue over vm-memory), with
//!   mergeable receive buffers, zero-copy where the backend takes iovecs, and backpressure;
//! - [`ctrl`]: control queue commands, bounded decoding;
//! - [`device`]: the device a VMM embeds: features, config space, status, multiqueue, the
//!   control queue, and the fds and calls of its event loop ([`irq`] for interrupts);
//! - [`guest`]: descriptor chains walked with bounds, and guest memory as `IoSlice`s.
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

// Only `guest` may use `unsafe` (guest memory as `IoSlice`s for the backends).
#![deny(unsafe_code)]

pub mod codec;
pub mod csum;
pub mod ctrl;
pub mod device;
pub mod error;
pub mod features;
pub mod frame;
pub mod gso;
#[allow(unsafe_code)]
pub mod guest;
pub mod irq;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
pub mod pump;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod translate;

pub use codec::{HdrLayout, ShortHeader};
pub use device::{DeviceConfig, DeviceError, Event, NetDevice, Watch};
pub use error::FrameError;
pub use gso::{Segment, Segmenter, MAX_SEGMENT_HEADERS};
pub use irq::{EventFdInterrupts, Interrupt, IrqCause};
pub use pump::{PumpError, PumpOutcome, PumpStats, RxPump, TxPump};
pub use translate::{
    RxRoute, RxTranslator, SoftFrame, TxRoute, TxTranslator, HEAD_LEN, MAX_FRAME_LEN,
};
