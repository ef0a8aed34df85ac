//! Why a frame cannot be taken as its header describes it.

use net_api::GsoType;

use crate::csum::CsumOutOfFrame;

/// A malformed virtio-net header, or a frame that contradicts its header.
///
/// Every variant means: drop the frame and count it as
/// [`net_api::DropReason::MalformedHeader`] (or `TooLarge`/`Runt` for the length variants);
/// the device stays usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// `gso_type` holds a value virtio-net does not define.
    #[error("unknown gso_type {gso_type:#04x}")]
    UnknownGsoType {
        /// The raw value.
        gso_type: u8,
    },
    /// `flags` holds bits virtio-net does not define.
    #[error("unknown header flags {flags:#04x}")]
    UnknownFlags {
        /// The raw value.
        flags: u8,
    },
    /// A GSO type with `gso_size` 0.
    #[error("gso_type {gso:?} with gso_size 0")]
    GsoSizeZero {
        /// The segmentation asked for.
        gso: GsoType,
    },
    /// UFO with fragments smaller than the 8-byte unit IP fragment offsets count in.
    #[error("UFO gso_size {gso_size} is below 8 bytes, the IP fragment unit")]
    UfoFragmentTooSmall {
        /// The value given.
        gso_size: u16,
    },
    /// The ECN bit without TCP segmentation.
    #[error("the GSO ECN bit is set on gso_type {gso:?}, which is not TCP segmentation")]
    EcnWithoutTso {
        /// The segmentation asked for.
        gso: GsoType,
    },
    /// `hdr_len` beyond the frame.
    #[error("hdr_len {hdr_len} exceeds the {len}-byte frame")]
    HdrLenBeyondFrame {
        /// `hdr_len`.
        hdr_len: u16,
        /// The frame's length.
        len: usize,
    },
    /// `csum_start`/`csum_offset` outside the frame.
    #[error(transparent)]
    CsumOutOfFrame(#[from] CsumOutOfFrame),
    /// A frame larger than any virtio-net frame may be.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame shorter than the headers it claims.
    #[error("frame of {len} bytes ends inside its {what} header, which needs {need} bytes")]
    Truncated {
        /// The header being read (`Ethernet`, `IPv4`, `TCP`...).
        what: &'static str,
        /// The bytes needed up to the end of that header.
        need: usize,
        /// The frame's length.
        len: usize,
    },
    /// A GSO frame whose network layer is not IP.
    #[error("gso_type {gso:?} on a frame of ethertype {ethertype:#06x}, which is not IP")]
    NotIp {
        /// The segmentation asked for.
        gso: GsoType,
        /// The frame's ethertype (after VLAN tags).
        ethertype: u16,
    },
    /// The IP version field disagrees with the ethertype.
    #[error("ethertype says IPv{expected} but the IP header has version {version}")]
    IpVersion {
        /// The version the ethertype implies.
        expected: u8,
        /// The version in the header.
        version: u8,
    },
    /// A GSO type that does not match the frame's protocols.
    #[error("gso_type {gso:?} does not match a frame of IPv{ip} protocol {proto}")]
    GsoMismatch {
        /// The segmentation asked for.
        gso: GsoType,
        /// 4 or 6.
        ip: u8,
        /// The transport protocol number.
        proto: u8,
    },
    /// IPv4 options in a frame to segment (refused: segments would need per-option rules).
    #[error("IPv4 header length {ihl_bytes} bytes: options are not segmented, send without GSO")]
    Ipv4Options {
        /// The header length the IHL field gives.
        ihl_bytes: usize,
    },
    /// An IPv4 header length below 20 bytes.
    #[error("IPv4 header length {ihl_bytes} bytes is below the 20-byte minimum")]
    Ipv4HeaderTooShort {
        /// The header length the IHL field gives.
        ihl_bytes: usize,
    },
    /// A fragment handed over for segmentation.
    #[error("an IPv4 fragment (MF or offset set) cannot be segmented")]
    Ipv4Fragment,
    /// An IPv6 extension header in a frame to segment (refused, documented).
    #[error(
        "IPv6 next header {next_header} is an extension header or not TCP/UDP: \
         segmentation through extension headers is not supported"
    )]
    Ipv6ExtensionHeader {
        /// The next-header value after the fixed IPv6 header.
        next_header: u8,
    },
    /// An IP packet longer than its 16-bit length field can say.
    #[error("IP packet of {len} bytes exceeds the {max} bytes its length field can hold")]
    IpTooLong {
        /// The IP packet's (IPv4) or payload's (IPv6) length.
        len: usize,
        /// 65535.
        max: usize,
    },
    /// A TCP data offset below 5 words.
    #[error("TCP data offset {words} words is below the 5-word minimum")]
    TcpHeaderTooShort {
        /// The data offset field.
        words: u8,
    },
}
