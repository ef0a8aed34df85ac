//! Software segmentation of GSO super-frames, as the kernel's `skb_segment` family does it.
//!
//! - TCP (TSO4/TSO6, with ECN): one segment per `gso_size` bytes of payload; sequence numbers
//!   advance by the payload sent; FIN and PSH stay on the last segment only, CWR on the first
//!   only; IPv4 ids increase by one per segment; lengths and checksums are rewritten.
//! - UDP segmentation (USO): one UDP datagram per `gso_size` bytes of payload, each with its
//!   own length and checksum.
//! - UDP fragmentation (UFO): the UDP checksum is computed over the whole datagram, then the IP
//!   payload is cut into fragments of `gso_size` rounded down to a multiple of 8 bytes. IPv4
//!   fragments share the original id, with MF and the offset set; IPv6 fragments get a
//!   fragment header with one identification per datagram.
//!
//! Segments are computed one at a time by index, so a caller that could send only part of them
//! resumes at the next index without keeping anything else. Each segment is a rewritten header
//! block (at most [`MAX_SEGMENT_HEADERS`] bytes, in the caller's buffer) followed by an
//! unmodified range of the original frame: the payload is never copied here.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use net_api::hdr::NEEDS_CSUM;
use net_api::{GsoType, VirtioNetHdr};

use crate::csum::{add_pseudo_header, Checksum};
use crate::error::FrameError;
use crate::frame::{
    check_ip_length, parse_for_gso, Layers, ETH_HLEN, IPPROTO_FRAGMENT, IPV6_FRAG_HLEN, IPV6_HLEN,
    MAX_VLAN_TAGS, TCP_MAX_HLEN, VLAN_HLEN,
};

/// The longest header block of one segment: Ethernet, two VLAN tags, IPv6, an IPv6 fragment
/// header and the longest TCP header.
pub const MAX_SEGMENT_HEADERS: usize =
    ETH_HLEN + MAX_VLAN_TAGS * VLAN_HLEN + IPV6_HLEN + IPV6_FRAG_HLEN + TCP_MAX_HLEN;

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_PSH: u8 = 0x08;
const TCP_FLAG_CWR: u8 = 0x80;
const TCP_CSUM_OFFSET: u16 = 16;
const UDP_CSUM_OFFSET: u16 = 6;
const IPV4_MF: u16 = 0x2000;

/// One segment: `headers[..header_len]` then `frame[payload]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The header to send the segment with: plain, or `NEEDS_CSUM` when partial checksums were
    /// asked for.
    pub hdr: VirtioNetHdr,
    /// Bytes of the header block written into the caller's buffer.
    pub header_len: usize,
    /// The range of the original frame that follows the header block.
    pub payload: Range<usize>,
}

impl Segment {
    /// The segment's total length.
    pub fn len(&self) -> usize {
        self.header_len + self.payload.len()
    }

    /// Whether the segment is empty (never, for a segment from [`Segmenter`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Uso,
    Ufo,
}

/// The plan for segmenting one frame; see the module documentation.
#[derive(Debug, Clone)]
pub struct Segmenter {
    kind: Kind,
    layers: Layers,
    /// Where the data that is cut starts (the TCP/UDP payload, or the IP payload for UFO).
    data_off: usize,
    /// Bytes of data per segment.
    unit: usize,
    frame_len: usize,
    count: usize,
    partial: bool,
    ipv4_id: u16,
    tcp_seq: u32,
    frag_ident: u32,
}

impl Segmenter {
    /// Checks a GSO frame against its header and plans its segments.
    ///
    /// `frame` is the whole frame, Ethernet header first. For UFO the UDP checksum and length
    /// of the datagram are written into it (the only change made to `frame`). With
    /// `partial_csum`, TCP and USO segments keep a partial checksum (`NEEDS_CSUM`, seeded with
    /// the pseudo-header) for a backend that completes checksums; otherwise every checksum is
    /// complete.
    pub fn new(
        hdr: &VirtioNetHdr,
        frame: &mut [u8],
        partial_csum: bool,
    ) -> Result<Segmenter, FrameError> {
        let gso = hdr.gso().ok_or(FrameError::UnknownGsoType {
            gso_type: hdr.gso_type,
        })?;
        let kind = match gso {
            GsoType::TcpV4 | GsoType::TcpV6 => Kind::Tcp,
            GsoType::UdpL4 => Kind::Uso,
            GsoType::Udp => Kind::Ufo,
            GsoType::None => {
                return Err(FrameError::GsoMismatch {
                    gso,
                    ip: 0,
                    proto: 0,
                })
            }
        };
        if hdr.gso_size == 0 {
            return Err(FrameError::GsoSizeZero { gso });
        }
        if hdr.ecn() && kind != Kind::Tcp {
            return Err(FrameError::EcnWithoutTso { gso });
        }
        let layers = parse_for_gso(frame, gso)?;
        check_ip_length(&layers, frame.len())?;
        let (data_off, unit) = match kind {
            Kind::Ufo => {
                if hdr.gso_size < 8 {
                    return Err(FrameError::UfoFragmentTooSmall {
                        gso_size: hdr.gso_size,
                    });
                }
                // An IPv6 fragment's payload length also covers its 8-byte fragment header.
                let max = if layers.ipv6 {
                    usize::from(u16::MAX) - IPV6_FRAG_HLEN
                } else {
                    usize::from(u16::MAX)
                };
                (layers.l4, usize::from(hdr.gso_size).min(max) & !7)
            }
            Kind::Tcp | Kind::Uso => (layers.payload, usize::from(hdr.gso_size)),
        };
        let data_len = frame.len() - data_off;
        let count = data_len.div_ceil(unit).max(1);
        let ipv4_id = if layers.ipv6 {
            0
        } else {
            u16::from_be_bytes([frame[layers.l3 + 4], frame[layers.l3 + 5]])
        };
        let tcp_seq = if kind == Kind::Tcp {
            let s = layers.l4 + 4;
            u32::from_be_bytes([frame[s], frame[s + 1], frame[s + 2], frame[s + 3]])
        } else {
            0
        };
        let mut seg = Segmenter {
            kind,
            layers,
            data_off,
            unit,
            frame_len: frame.len(),
            count,
            partial: partial_csum && kind != Kind::Ufo,
            ipv4_id,
            tcp_seq,
            frag_ident: 0,
        };
        if kind == Kind::Ufo {
            seg.prepare_ufo(frame);
        }
        Ok(seg)
    }

    /// How many segments the frame makes (at least 1).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether the segments are IP fragments (UFO over more than one fragment).
    pub fn fragments(&self) -> bool {
        self.kind == Kind::Ufo && self.count > 1
    }

    /// The parsed layers of the frame.
    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// Writes segment `k`'s header block into `headers` and says which part of `frame`
    /// follows it. `frame` must be the frame given to [`Segmenter::new`].
    ///
    /// # Panics
    /// If `k >= self.count()` or `frame` is not the planned frame's length: both are the
    /// caller's bugs, not the guest's.
    pub fn segment(
        &self,
        k: usize,
        frame: &[u8],
        headers: &mut [u8; MAX_SEGMENT_HEADERS],
    ) -> Segment {
        assert!(k < self.count, "segment {k} of {}", self.count);
        assert_eq!(frame.len(), self.frame_len, "frame changed since planning");
        let start = self.data_off + k * self.unit;
        let end = (start + self.unit).min(self.frame_len);
        let last = k + 1 == self.count;
        let ly = self.layers;
        if self.kind == Kind::Ufo && self.count > 1 {
            return self.fragment(start, end, last, frame, headers);
        }
        let hl = self.data_off;
        headers[..hl].copy_from_slice(&frame[..hl]);
        let seg_len = end - start;
        let l4_len = hl - ly.l4 + seg_len;
        self.set_ip_lengths(headers, l4_len, k);
        let csum_offset = if self.kind == Kind::Tcp {
            let th = &mut headers[ly.l4..];
            th[4..8].copy_from_slice(
                &self
                    .tcp_seq
                    .wrapping_add((k * self.unit) as u32)
                    .to_be_bytes(),
            );
            if !last {
                th[13] &= !(TCP_FLAG_FIN | TCP_FLAG_PSH);
            }
            if k > 0 {
                th[13] &= !TCP_FLAG_CWR;
            }
            TCP_CSUM_OFFSET
        } else {
            // USO, or UFO that fits one fragment: the UDP length covers this datagram.
            headers[ly.l4 + 4..ly.l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            UDP_CSUM_OFFSET
        };
        let field = ly.l4 + usize::from(csum_offset);
        if self.kind == Kind::Ufo {
            // The UDP checksum of the datagram was completed in `new`; nothing to redo.
            return Segment {
                hdr: VirtioNetHdr::PLAIN,
                header_len: hl,
                payload: start..end,
            };
        }
        headers[field..field + 2].fill(0);
        let mut c = Checksum::new();
        self.add_pseudo(&mut c, headers, l4_len);
        let hdr = if self.partial {
            headers[field..field + 2].copy_from_slice(&c.folded());
            VirtioNetHdr {
                flags: NEEDS_CSUM,
                csum_start: ly.l4 as u16,
                csum_offset,
                ..VirtioNetHdr::PLAIN
            }
        } else {
            c.add(&headers[ly.l4..hl]);
            c.add(&frame[start..end]);
            let mut sum = c.finish();
            if sum == [0, 0] && self.kind != Kind::Tcp {
                sum = [0xff, 0xff];
            }
            headers[field..field + 2].copy_from_slice(&sum);
            VirtioNetHdr::PLAIN
        };
        Segment {
            hdr,
            header_len: hl,
            payload: start..end,
        }
    }

    /// Collects segment `k` into a new vector (tests, examples, the slow paths).
    pub fn segment_to_vec(&self, k: usize, frame: &[u8]) -> (VirtioNetHdr, Vec<u8>) {
        let mut headers = [0u8; MAX_SEGMENT_HEADERS];
        let s = self.segment(k, frame, &mut headers);
        let mut v = Vec::with_capacity(s.len());
        v.extend_from_slice(&headers[..s.header_len]);
        v.extend_from_slice(&frame[s.payload]);
        (s.hdr, v)
    }

    fn add_pseudo(&self, c: &mut Checksum, headers: &[u8], l4_len: usize) {
        let l3 = self.layers.l3;
        let (src, dst) = if self.layers.ipv6 {
            (&headers[l3 + 8..l3 + 24], &headers[l3 + 24..l3 + 40])
        } else {
            (&headers[l3 + 12..l3 + 16], &headers[l3 + 16..l3 + 20])
        };
        add_pseudo_header(c, src, dst, self.layers.proto, l4_len as u32);
    }

    /// Rewrites the IP length (and for IPv4 the id and header checksum) for an IP payload of
    /// `l4_len` bytes.
    fn set_ip_lengths(&self, headers: &mut [u8], l4_len: usize, k: usize) {
        let l3 = self.layers.l3;
        if self.layers.ipv6 {
            headers[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            let tot = self.layers.l4 - l3 + l4_len;
            headers[l3 + 2..l3 + 4].copy_from_slice(&(tot as u16).to_be_bytes());
            let id = self.ipv4_id.wrapping_add(k as u16);
            headers[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
            ipv4_header_checksum(&mut headers[l3..self.layers.l4]);
        }
    }

    /// UFO: complete the whole datagram's UDP length and checksum before fragmenting.
    fn prepare_ufo(&mut self, frame: &mut [u8]) {
        let ly = self.layers;
        let udp_len = frame.len() - ly.l4;
        frame[ly.l4 + 4..ly.l4 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        frame[ly.l4 + 6..ly.l4 + 8].fill(0);
        let mut c = Checksum::new();
        self.add_pseudo(&mut c, frame, udp_len);
        c.add(&frame[ly.l4..]);
        let mut sum = c.finish();
        if sum == [0, 0] {
            sum = [0xff, 0xff];
        }
        frame[ly.l4 + 6..ly.l4 + 8].copy_from_slice(&sum);
        if ly.ipv6 {
            // One identification per datagram, stable for its fragments: a keyed hash of the
            // addresses (the key random per process) plus a counter, so identifications are
            // neither shared between datagrams of a flow nor predictable (RFC 7739).
            let keyed = frag_ident_key().hash_one(&frame[ly.l3 + 8..ly.l3 + 40]) as u32;
            self.frag_ident =
                keyed.wrapping_add(FRAG_IDENT_COUNTER.fetch_add(1, Ordering::Relaxed));
        }
    }

    fn fragment(
        &self,
        start: usize,
        end: usize,
        last: bool,
        frame: &[u8],
        headers: &mut [u8; MAX_SEGMENT_HEADERS],
    ) -> Segment {
        let ly = self.layers;
        let offset = start - ly.l4;
        let seg_len = end - start;
        let header_len = if ly.ipv6 {
            headers[..ly.l4].copy_from_slice(&frame[..ly.l4]);
            headers[ly.l3 + 6] = IPPROTO_FRAGMENT;
            let payload_len = IPV6_FRAG_HLEN + seg_len;
            headers[ly.l3 + 4..ly.l3 + 6].copy_from_slice(&(payload_len as u16).to_be_bytes());
            let fh = &mut headers[ly.l4..ly.l4 + IPV6_FRAG_HLEN];
            fh[0] = ly.proto;
            fh[1] = 0;
            let off_flags = (offset as u16 & 0xfff8) | u16::from(!last);
            fh[2..4].copy_from_slice(&off_flags.to_be_bytes());
            fh[4..8].copy_from_slice(&self.frag_ident.to_be_bytes());
            ly.l4 + IPV6_FRAG_HLEN
        } else {
            headers[..ly.l4].copy_from_slice(&frame[..ly.l4]);
            let tot = ly.l4 - ly.l3 + seg_len;
            headers[ly.l3 + 2..ly.l3 + 4].copy_from_slice(&(tot as u16).to_be_bytes());
            let mut frag = (offset / 8) as u16;
            if !last {
                frag |= IPV4_MF;
            }
            headers[ly.l3 + 6..ly.l3 + 8].copy_from_slice(&frag.to_be_bytes());
            ipv4_header_checksum(&mut headers[ly.l3..ly.l4]);
            ly.l4
        };
        Segment {
            hdr: VirtioNetHdr::PLAIN,
            header_len,
            payload: start..end,
        }
    }
}

static FRAG_IDENT_COUNTER: AtomicU32 = AtomicU32::new(0);

fn frag_ident_key() -> &'static RandomState {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new)
}

/// Recomputes an IPv4 header's checksum in place.
pub fn ipv4_header_checksum(ip: &mut [u8]) {
    ip[10..12].fill(0);
    let mut c = Checksum::new();
    c.add(ip);
    let sum = c.finish();
    ip[10..12].copy_from_slice(&sum);
}
