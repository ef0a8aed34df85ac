//! Independent verification of frames with etherparse: every length and checksum a segment
//! carries is recomputed by a parser that shares no code with net-virtio.
#![allow(dead_code)]

use etherparse::{Ipv4Header, Ipv6Header, TcpHeader, UdpHeader};

/// What a verified frame holds.
#[derive(Debug)]
pub struct Checked {
    pub ipv6: bool,
    pub ipv4_id: u16,
    /// Fragment: more-fragments flag, byte offset, IPv6 identification.
    pub fragment: Option<(bool, usize, u32)>,
    pub tcp: Option<TcpHeader>,
    pub udp: Option<UdpHeader>,
    /// The transport payload, or the IP payload of a fragment.
    pub payload: Vec<u8>,
}

fn l3_offset(f: &[u8]) -> (u16, usize) {
    let mut off = 12;
    loop {
        let et = u16::from_be_bytes([f[off], f[off + 1]]);
        if et == 0x8100 || et == 0x88a8 {
            off += 4;
            continue;
        }
        return (et, off + 2);
    }
}

/// Parses a frame and asserts that its IP lengths and every checksum are right.
pub fn verify(f: &[u8]) -> Checked {
    let (et, l3) = l3_offset(f);
    let (ipv6, src, dst, proto, rest, ipv4_id, mut fragment);
    match et {
        0x0800 => {
            let (ip, r) = Ipv4Header::from_slice(&f[l3..]).expect("IPv4 header parses");
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
            assert_eq!(usize::from(ip.total_len), f.len() - l3, "IPv4 total length");
            ipv6 = false;
            src = ip.source.to_vec();
            dst = ip.destination.to_vec();
            proto = ip.protocol.0;
            ipv4_id = ip.identification;
            let off = usize::from(ip.fragment_offset.byte_offset());
            fragment = (ip.more_fragments || off != 0).then_some((ip.more_fragments, off, 0));
            rest = r;
        }
        0x86dd => {
            let (ip, r) = Ipv6Header::from_slice(&f[l3..]).expect("IPv6 header parses");
            assert_eq!(
                usize::from(ip.payload_length),
                f.len() - l3 - 40,
                "IPv6 payload length"
            );
            ipv6 = true;
            src = ip.source.to_vec();
            dst = ip.destination.to_vec();
            ipv4_id = 0;
            fragment = None;
            if ip.next_header.0 == 44 {
                let more = r[3] & 1 != 0;
                let off = usize::from(u16::from_be_bytes([r[2], r[3]]) & 0xfff8);
                let ident = u32::from_be_bytes([r[4], r[5], r[6], r[7]]);
                fragment = Some((more, off, ident));
                proto = r[0];
                rest = &r[8..];
            } else {
                proto = ip.next_header.0;
                rest = r;
            }
        }
        other => panic!("not IP: ethertype {other:#x}"),
    }
    if fragment.is_some() {
        return Checked {
            ipv6,
            ipv4_id,
            fragment,
            tcp: None,
            udp: None,
            payload: rest.to_vec(),
        };
    }
    let (tcp, udp, payload) = match proto {
        6 => {
            let (t, p) = TcpHeader::from_slice(rest).expect("TCP header parses");
            let want = if ipv6 {
                t.calc_checksum_ipv6_raw(arr(&src), arr(&dst), p)
            } else {
                t.calc_checksum_ipv4_raw(arr(&src), arr(&dst), p)
            }
            .expect("checksum computable");
            // One's complement has two zeros: a sum that folds to zero is stored as 0xffff,
            // as the kernel's skb_checksum_help does (CSUM_MANGLED_0); etherparse says 0.
            let got = if want == 0 && t.checksum == 0xffff {
                0
            } else {
                t.checksum
            };
            assert_eq!(got, want, "TCP checksum");
            (Some(t), None, p.to_vec())
        }
        17 => {
            let (u, p) = UdpHeader::from_slice(rest).expect("UDP header parses");
            assert_eq!(usize::from(u.length), rest.len(), "UDP length");
            let want = if ipv6 {
                u.calc_checksum_ipv6_raw(arr(&src), arr(&dst), p)
            } else {
                u.calc_checksum_ipv4_raw(arr(&src), arr(&dst), p)
            }
            .expect("checksum computable");
            assert_eq!(u.checksum, want, "UDP checksum");
            (None, Some(u), p.to_vec())
        }
        p => panic!("unexpected protocol {p}"),
    };
    Checked {
        ipv6,
        ipv4_id,
        fragment: None,
        tcp,
        udp,
        payload,
    }
}

fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
    v.try_into().expect("address length")
}

/// Reassembles the IP payload of fragments (any order) and returns it; asserts the fragments
/// tile it exactly and only the last one has "more fragments" clear.
pub fn reassemble(frags: &[Checked]) -> Vec<u8> {
    let mut parts: Vec<(usize, bool, &[u8])> = frags
        .iter()
        .map(|c| {
            let (more, off, _) = c.fragment.expect("a fragment");
            (off, more, c.payload.as_slice())
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut out = Vec::new();
    for (i, (off, more, data)) in parts.iter().enumerate() {
        assert_eq!(*off, out.len(), "fragment offsets tile the datagram");
        assert_eq!(
            *more,
            i + 1 < parts.len(),
            "MF on all but the last fragment"
        );
        out.extend_from_slice(data);
    }
    out
}

pub mod harness;
