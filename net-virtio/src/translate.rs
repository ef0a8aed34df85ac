//! Between what the guest negotiated and what the backend accepts.
//!
//! Transmit ([`TxTranslator`]): every guest header is checked against its frame. When the
//! backend takes the frame as it is (it speaks the header and has the offloads the frame needs),
//! the frame goes through untouched, straight from guest memory. Otherwise the device copies the
//! frame into a buffer of its own and the translator completes the partial checksum or cuts the
//! GSO frame into segments ([`crate::gso`]).
//!
//! Receive ([`RxTranslator`]): the backend's header is adjusted to what the guest accepts:
//! `DATA_VALID` only for a guest with `GUEST_CSUM`, partial checksums completed and GSO frames
//! segmented in software for a guest without the matching `GUEST_*` feature.

use net_api::hdr::{DATA_VALID, NEEDS_CSUM, RSC_INFO};
use net_api::{Capabilities, GsoType, OffloadSet, VirtioNetHdr};

use crate::csum::{check_partial, complete_partial};
use crate::error::FrameError;
use crate::frame::{check_ip_length, is_ipv6, parse_for_gso, ETH_HLEN};
use crate::gso::{Segmenter, MAX_SEGMENT_HEADERS};

/// The largest frame (virtio-net header excluded) a guest may send: the 65562-byte buffer
/// virtio-net devices size for a 64 KiB GSO frame, less the 12-byte header.
pub const MAX_FRAME_LEN: usize = 65562 - 12;

/// How many leading bytes of a frame [`TxTranslator::route`] and [`RxTranslator::route`] read:
/// enough for every header a segment carries. Gather this much (or the whole frame if
/// shorter) into a contiguous buffer when the frame is scattered.
pub const HEAD_LEN: usize = MAX_SEGMENT_HEADERS;

/// Where a transmitted frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxRoute {
    /// Hand the frame's slices to the backend unchanged, with this header.
    Direct(VirtioNetHdr),
    /// Copy the frame into a buffer and call [`TxTranslator::software`].
    Software,
}

/// What the software path made of a frame.
#[derive(Debug, Clone)]
pub enum SoftFrame {
    /// The buffer is one frame to send with this header (checksum completed in place).
    Whole(VirtioNetHdr),
    /// The buffer is cut into segments.
    Segments(Segmenter),
}

impl SoftFrame {
    /// Every frame the software path produced, each with its header, as owned buffers.
    ///
    /// A convenience for tests, examples and rare slow paths: it allocates one buffer per
    /// segment. `frame` is the buffer given to `software`.
    pub fn to_frames(&self, frame: &[u8]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        match self {
            SoftFrame::Whole(h) => vec![(*h, frame.to_vec())],
            SoftFrame::Segments(seg) => (0..seg.count())
                .map(|k| seg.segment_to_vec(k, frame))
                .collect(),
        }
    }
}

const KNOWN_FLAGS: u8 = NEEDS_CSUM | DATA_VALID | RSC_INFO;

/// Checks a header against a frame of `len` bytes whose first bytes are `head`, and returns
/// its segmentation type. Used by both directions' `route`.
fn check(hdr: &VirtioNetHdr, len: usize, head: &[u8]) -> Result<GsoType, FrameError> {
    let gso = check_header(hdr, len)?;
    if gso != GsoType::None {
        // The frame's own headers must be there and match the GSO type; a frame shorter
        // than `head` is all in `head`.
        let n = head.len().min(len);
        let layers = parse_for_gso(&head[..n], gso).map_err(|e| match e {
            FrameError::Truncated { what, need, .. } if n < len => {
                FrameError::Truncated { what, need, len: n }
            }
            e => e,
        })?;
        check_ip_length(&layers, len)?;
    }
    Ok(gso)
}

/// The checks of [`check`] that need only the header and the frame's length. The software
/// paths use it alone: for a GSO frame, [`Segmenter::new`] then parses the frame's headers
/// (once) with the same checks.
fn check_header(hdr: &VirtioNetHdr, len: usize) -> Result<GsoType, FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len < ETH_HLEN {
        return Err(FrameError::Truncated {
            what: "Ethernet",
            need: ETH_HLEN,
            len,
        });
    }
    if hdr.flags & !KNOWN_FLAGS != 0 {
        return Err(FrameError::UnknownFlags { flags: hdr.flags });
    }
    let gso = hdr.gso().ok_or(FrameError::UnknownGsoType {
        gso_type: hdr.gso_type,
    })?;
    if hdr.ecn() && !gso.is_tcp() {
        return Err(FrameError::EcnWithoutTso { gso });
    }
    if gso != GsoType::None {
        if hdr.gso_size == 0 {
            return Err(FrameError::GsoSizeZero { gso });
        }
        if gso == GsoType::Udp && hdr.gso_size < 8 {
            return Err(FrameError::UfoFragmentTooSmall {
                gso_size: hdr.gso_size,
            });
        }
    }
    if usize::from(hdr.hdr_len) > len {
        return Err(FrameError::HdrLenBeyondFrame {
            hdr_len: hdr.hdr_len,
            len,
        });
    }
    if hdr.needs_csum() {
        check_partial(
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_offset),
            len,
        )?;
    }
    Ok(gso)
}

/// Decides, per transmitted frame, between the backend's offloads and the software fallback.
#[derive(Debug, Clone, Copy)]
pub struct TxTranslator {
    accept: OffloadSet,
}

impl TxTranslator {
    /// For a backend with these capabilities.
    pub fn new(caps: &Capabilities) -> TxTranslator {
        TxTranslator {
            accept: if caps.vnet_hdr {
                caps.tx_offloads
            } else {
                OffloadSet::NONE
            },
        }
    }

    /// The offloads frames may keep on their way to the backend.
    pub fn backend_offloads(&self) -> OffloadSet {
        self.accept
    }

    /// Checks the guest's header against the frame (`len` bytes, starting with `head`, which
    /// holds [`HEAD_LEN`] bytes or the whole frame) and picks the path.
    pub fn route(
        &self,
        hdr: &VirtioNetHdr,
        len: usize,
        head: &[u8],
    ) -> Result<TxRoute, FrameError> {
        check(hdr, len, head)?;
        // DATA_VALID and RSC_INFO mean nothing on transmit: drop them.
        let clean = VirtioNetHdr {
            flags: hdr.flags & NEEDS_CSUM,
            num_buffers: 0,
            ..*hdr
        };
        let need = OffloadSet::required_by(&clean, is_ipv6(head)).unwrap_or(OffloadSet::ALL);
        if self.accept.contains(need) {
            Ok(TxRoute::Direct(clean))
        } else {
            Ok(TxRoute::Software)
        }
    }

    /// Completes or segments a frame the backend cannot take as it is. `frame` is the device's
    /// own copy of the whole frame; it is modified in place (checksums).
    pub fn software(&self, hdr: &VirtioNetHdr, frame: &mut [u8]) -> Result<SoftFrame, FrameError> {
        let gso = check_header(hdr, frame.len())?;
        if gso != GsoType::None {
            let partial = self.accept.contains(OffloadSet::CSUM);
            return Ok(SoftFrame::Segments(Segmenter::new(hdr, frame, partial)?));
        }
        if hdr.needs_csum() {
            if self.accept.contains(OffloadSet::CSUM) {
                return Ok(SoftFrame::Whole(VirtioNetHdr {
                    flags: NEEDS_CSUM,
                    csum_start: hdr.csum_start,
                    csum_offset: hdr.csum_offset,
                    ..VirtioNetHdr::PLAIN
                }));
            }
            complete_partial(
                frame,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )?;
        }
        Ok(SoftFrame::Whole(VirtioNetHdr::PLAIN))
    }
}

/// Where a received frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxRoute {
    /// Give the frame to the guest as it is, with this header (`num_buffers` left to the
    /// device).
    Deliver(VirtioNetHdr),
    /// The guest cannot take it as it is: call [`RxTranslator::software`] on the frame.
    Software,
}

/// Adjusts received frames to the guest's `GUEST_*` features.
#[derive(Debug, Clone, Copy)]
pub struct RxTranslator {
    guest: OffloadSet,
}

impl RxTranslator {
    /// For a guest that accepts these offloads (see [`crate::features::guest_offloads`]).
    pub fn new(guest: OffloadSet) -> RxTranslator {
        RxTranslator { guest }
    }

    /// The header for a frame whose checksums are complete and correct (a software segment,
    /// a completed checksum): `DATA_VALID` for a guest with `GUEST_CSUM`, else plain.
    pub fn complete_hdr(&self) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: self.valid_flag(),
            ..VirtioNetHdr::PLAIN
        }
    }

    /// The header for the segments of a software-segmented frame: [`Self::complete_hdr`],
    /// except for IP fragments (UFO), whose checksum only the reassembled datagram carries.
    pub fn segment_hdr(&self, seg: &Segmenter) -> VirtioNetHdr {
        if seg.fragments() {
            VirtioNetHdr::PLAIN
        } else {
            self.complete_hdr()
        }
    }

    fn valid_flag(&self) -> u8 {
        if self.guest.contains(OffloadSet::CSUM) {
            DATA_VALID
        } else {
            0
        }
    }

    /// Checks the backend's header against the frame and picks the path.
    pub fn route(
        &self,
        hdr: &VirtioNetHdr,
        len: usize,
        head: &[u8],
    ) -> Result<RxRoute, FrameError> {
        check(hdr, len, head)?;
        let need = OffloadSet::required_by(hdr, is_ipv6(head)).unwrap_or(OffloadSet::ALL);
        if !self.guest.contains(need) {
            return Ok(RxRoute::Software);
        }
        // RSC_INFO is never offered; DATA_VALID only means something with GUEST_CSUM.
        // A partial checksum is not a verified one: DATA_VALID goes with NEEDS_CSUM clear.
        let flags = if hdr.needs_csum() {
            NEEDS_CSUM
        } else if hdr.flags & DATA_VALID != 0 {
            self.valid_flag()
        } else {
            0
        };
        Ok(RxRoute::Deliver(VirtioNetHdr {
            flags,
            num_buffers: 0,
            ..*hdr
        }))
    }

    /// Completes the checksum of, or segments, a received frame the guest cannot take as it
    /// is. `frame` is a contiguous copy the device may modify. Segments come with complete
    /// checksums: deliver each with [`RxTranslator::segment_hdr`].
    pub fn software(&self, hdr: &VirtioNetHdr, frame: &mut [u8]) -> Result<SoftFrame, FrameError> {
        let gso = check_header(hdr, frame.len())?;
        if gso != GsoType::None {
            return Ok(SoftFrame::Segments(Segmenter::new(hdr, frame, false)?));
        }
        if hdr.needs_csum() {
            complete_partial(
                frame,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )?;
            return Ok(SoftFrame::Whole(self.complete_hdr()));
        }
        Ok(SoftFrame::Whole(VirtioNetHdr {
            flags: if hdr.flags & DATA_VALID != 0 {
                self.valid_flag()
            } else {
                0
            },
            ..VirtioNetHdr::PLAIN
        }))
    }
}
