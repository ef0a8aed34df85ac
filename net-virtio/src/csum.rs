//! The Internet checksum (RFC 1071) and partial-checksum completion.
//!
//! Words are summed in native byte order, which RFC 1071 shows gives the same folded sum as
//! big-endian words, byte-swapped; so the folded value written back in native order *is* the
//! checksum in network order. Callers never convert.

/// A running ones'-complement sum over any number of byte slices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    acc: u64,
    /// The bytes added so far have odd length: the next byte is the second of a word.
    odd: bool,
}

impl Checksum {
    /// An empty sum.
    pub const fn new() -> Checksum {
        Checksum { acc: 0, odd: false }
    }

    /// Adds bytes, continuing where the last slice ended (odd lengths are fine).
    pub fn add(&mut self, mut data: &[u8]) {
        if self.odd {
            if let Some((&b, rest)) = data.split_first() {
                self.add_word(u16::from_ne_bytes([0, b]));
                data = rest;
                self.odd = false;
            }
        }
        self.acc = add_u64(self.acc, sum_words(data));
        if data.len() % 2 == 1 {
            self.odd = true;
        }
    }

    /// Adds one 16-bit word given in native order (as read with `from_ne_bytes`).
    pub fn add_word(&mut self, w: u16) {
        self.acc = add_u64(self.acc, u64::from(w));
    }

    /// The folded sum, not complemented, in network order bytes.
    pub fn folded(&self) -> [u8; 2] {
        fold(self.acc).to_ne_bytes()
    }

    /// The checksum to store: the complement of the folded sum, in network order bytes.
    pub fn finish(&self) -> [u8; 2] {
        (!fold(self.acc)).to_ne_bytes()
    }
}

/// The checksum of `data` alone, in network order bytes.
pub fn checksum(data: &[u8]) -> [u8; 2] {
    let mut c = Checksum::new();
    c.add(data);
    c.finish()
}

/// Adds the IPv4 or IPv6 pseudo-header (RFC 793/768, RFC 8200 8.1) to a sum.
pub fn add_pseudo_header(c: &mut Checksum, src: &[u8], dst: &[u8], proto: u8, l4_len: u32) {
    c.add(src);
    c.add(dst);
    if src.len() == 4 {
        // IPv4: zero, protocol, 16-bit length.
        c.add(&[0, proto]);
        c.add(&(l4_len as u16).to_be_bytes());
    } else {
        // IPv6: 32-bit length, three zero bytes, next header.
        c.add(&l4_len.to_be_bytes());
        c.add(&[0, 0, 0, proto]);
    }
}

/// Where the partial checksum of a frame does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "checksum at csum_start {start} + csum_offset {offset} (2 bytes) lies outside the \
     {len}-byte frame"
)]
pub struct CsumOutOfFrame {
    /// `csum_start`.
    pub start: usize,
    /// `csum_offset`.
    pub offset: usize,
    /// The frame's length.
    pub len: usize,
}

/// Checks that a partial checksum's field lies inside a frame of `len` bytes.
pub fn check_partial(start: usize, offset: usize, len: usize) -> Result<usize, CsumOutOfFrame> {
    let field = start
        .checked_add(offset)
        .filter(|f| f.checked_add(2).is_some_and(|end| end <= len))
        .ok_or(CsumOutOfFrame { start, offset, len })?;
    Ok(field)
}

/// Completes a partial checksum in place, as a NIC would for `NEEDS_CSUM`.
///
/// The field at `start + offset` holds the (uncomplemented) pseudo-header sum the sender
/// seeded; the sum of `frame[start..]`, complemented, replaces it. A result of zero is stored
/// as `0xffff`, as the kernel does, since zero means "no checksum" for UDP over IPv4.
pub fn complete_partial(
    frame: &mut [u8],
    start: usize,
    offset: usize,
) -> Result<(), CsumOutOfFrame> {
    let field = check_partial(start, offset, frame.len())?;
    let mut sum = checksum(&frame[start..]);
    if sum == [0, 0] {
        sum = [0xff, 0xff];
    }
    frame[field..field + 2].copy_from_slice(&sum);
    Ok(())
}

#[inline]
fn add_u64(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + u64::from(carry)
}

/// Sums the slice as native-order 32-bit words into 64 bits (no carry is lost below 2^32
/// words), with a trailing 16-bit word and byte as RFC 1071 pads them.
fn sum_words(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(32);
    let mut acc = 0u64;
    for c in &mut chunks {
        // Eight independent adds per iteration: LLVM vectorises this loop.
        let mut part = 0u64;
        for w in c.chunks_exact(4) {
            part += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
        acc = add_u64(acc, part);
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(4);
    for w in &mut words {
        acc = add_u64(acc, u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])));
    }
    let tail = words.remainder();
    let mut pairs = tail.chunks_exact(2);
    for w in &mut pairs {
        acc = add_u64(acc, u64::from(u16::from_ne_bytes([w[0], w[1]])));
    }
    if let [b] = pairs.remainder() {
        acc = add_u64(acc, u64::from(u16::from_ne_bytes([*b, 0])));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's reference: big-endian 16-bit words, end-around carry, one word at a time.
    pub(crate) fn reference(data: &[u8]) -> [u8; 2] {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let w = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
            sum += w;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        (!(sum as u16)).to_be_bytes()
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these bytes is ddf2, the checksum 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), [0x22, 0x0d]);
        assert_eq!(reference(&data), [0x22, 0x0d]);
    }

    #[test]
    fn ipv4_header_golden() {
        // A real IPv4 header (Wikipedia's example): checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), [0xb8, 0x61]);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(checksum(&h), [0, 0], "a verified header sums to zero");
    }

    #[test]
    fn split_at_any_point_gives_the_same_sum() {
        let data: Vec<u8> = (0..301u32).map(|i| (i * 7 + 3) as u8).collect();
        for cut in [0, 1, 2, 3, 5, 32, 33, 150, 299, 300, 301] {
            let mut c = Checksum::new();
            c.add(&data[..cut]);
            c.add(&data[cut..]);
            assert_eq!(c.finish(), reference(&data), "cut at {cut}");
        }
    }

    #[test]
    fn partial_completion_bounds() {
        let mut f = [0u8; 10];
        assert!(complete_partial(&mut f, 4, 4).is_ok());
        assert_eq!(
            complete_partial(&mut f, 4, 5),
            Err(CsumOutOfFrame {
                start: 4,
                offset: 5,
                len: 10
            })
        );
        assert!(complete_partial(&mut f, usize::MAX, 1).is_err());
        assert!(complete_partial(&mut f, 1, usize::MAX).is_err());
    }

    #[test]
    fn zero_result_is_stored_as_ffff() {
        // Sum of 0xffff alone is 0xffff; its complement is 0 -> stored as ffff.
        let mut f = [0xff, 0xff, 0x00, 0x00];
        complete_partial(&mut f, 0, 2).expect("in frame");
        assert_eq!(f[2..], [0xff, 0xff]);
    }

    proptest::proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            proptest::prop_assert_eq!(checksum(&data), reference(&data));
        }
    }
}
