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
//! - [`frame`]: the header parsing segmentation needs.
//!
//! Later work adds the virtqueue pumps, mergeable receive buffers, multiqueue and the control
//! queue on top of these. Malformed input is a typed [`FrameError`], never a panic.
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

#![forbid(unsafe_code)]

pub mod codec;
pub mod csum;
pub mod error;
pub mod features;
pub mod frame;
pub mod gso;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod translate;

pub use codec::{HdrLayout, ShortHeader};
pub use error::FrameError;
pub use gso::{Segment, Segmenter, MAX_SEGMENT_HEADERS};
pub use translate::{
    RxRoute, RxTranslator, SoftFrame, TxRoute, TxTranslator, HEAD_LEN, MAX_FRAME_LEN,
};
