//! The kernel's `netdev` generic-netlink family (Linux 6.3+): an interface's XDP features
//! (`NETDEV_CMD_DEV_GET`), as `ynl`/`ethtool` read them. Messages are built and parsed here
//! (a handful of fixed attributes) over a plain `netlink-sys` socket.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};

const NETLINK_GENERIC: isize = 16;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_A_DEV_XDP_ZC_MAX_SEGS: u16 = 4;

/// What `NETDEV_CMD_DEV_GET` said about one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevXdp {
    /// `NETDEV_A_DEV_XDP_FEATURES` (`NETDEV_XDP_ACT_*` bits).
    pub features: u64,
    /// `NETDEV_A_DEV_XDP_ZC_MAX_SEGS`, when the kernel sends it.
    pub zc_max_segs: Option<u32>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align4(buf.len()), 0);
}

fn request(family: u16, cmd: u8, seq: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = vec![0u8; NLMSG_HDRLEN];
    buf.extend_from_slice(&[cmd, 1, 0, 0]);
    for (k, d) in attrs {
        push_attr(&mut buf, *k, d);
    }
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&family.to_ne_bytes());
    buf[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    buf
}

/// One reply: the attributes of a generic-netlink message, or the errno of an error.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Attrs(Vec<(u16, Vec<u8>)>),
    Errno(i32),
}

/// Parses the first message for `seq` in a datagram.
fn parse(datagram: &[u8], seq: u32) -> Option<Reply> {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let this_seq = u32::from_ne_bytes(rest[8..12].try_into().ok()?);
        let body = &rest[NLMSG_HDRLEN..len];
        rest = &rest[align4(len).min(rest.len())..];
        if this_seq != seq || kind == NLMSG_DONE {
            continue;
        }
        if kind == NLMSG_ERROR {
            let errno = i32::from_ne_bytes(body.get(0..4)?.try_into().ok()?);
            return Some(Reply::Errno(-errno));
        }
        let mut attrs = Vec::new();
        let mut a = body.get(GENL_HDRLEN..)?;
        while a.len() >= 4 {
            let alen = u16::from_ne_bytes([a[0], a[1]]) as usize;
            let akind = u16::from_ne_bytes([a[2], a[3]]) & 0x3fff;
            if alen < 4 || alen > a.len() {
                break;
            }
            attrs.push((akind, a[4..alen].to_vec()));
            a = &a[align4(alen).min(a.len())..];
        }
        return Some(Reply::Attrs(attrs));
    }
    None
}

fn attr(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

struct Genl {
    socket: Socket,
    seq: u32,
}

impl Genl {
    fn open() -> io::Result<Genl> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        let timeout = nix::sys::time::TimeVal::new(TIMEOUT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(io::Error::from)?;
        Ok(Genl { socket, seq: 0 })
    }

    fn ask(&mut self, family: u16, cmd: u8, attrs: &[(u16, &[u8])]) -> io::Result<Reply> {
        self.seq += 1;
        let msg = request(family, cmd, self.seq, attrs);
        self.socket.send_to(&msg, &SocketAddr::new(0, 0), 0)?;
        let mut buf = Vec::with_capacity(16384);
        for _ in 0..16 {
            buf.clear();
            let (n, _) = self.socket.recv_from(&mut buf, 0)?;
            if let Some(r) = parse(&buf[..n.min(buf.len())], self.seq) {
                return Ok(r);
            }
        }
        Err(io::Error::other("no reply to a generic netlink request"))
    }
}

/// The XDP features of interface `ifindex` from the `netdev` family; `Ok(None)` when the
/// kernel has no such family (before 6.3).
pub fn dev_xdp(ifindex: u32) -> io::Result<Option<DevXdp>> {
    let mut g = Genl::open()?;
    let family = match g.ask(
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0")],
    )? {
        Reply::Errno(e) if e == libc_enoent() => return Ok(None),
        Reply::Errno(e) => return Err(io::Error::from_raw_os_error(e)),
        Reply::Attrs(a) => attr(&a, CTRL_ATTR_FAMILY_ID)
            .and_then(|v| v.get(0..2))
            .map(|v| u16::from_ne_bytes([v[0], v[1]]))
            .ok_or_else(|| io::Error::other("nlctrl answered without a family id"))?,
    };
    match g.ask(
        family,
        NETDEV_CMD_DEV_GET,
        &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())],
    )? {
        Reply::Errno(e) => Err(io::Error::from_raw_os_error(e)),
        Reply::Attrs(a) => {
            let features = attr(&a, NETDEV_A_DEV_XDP_FEATURES)
                .and_then(|v| v.get(0..8))
                .map(|v| u64::from_ne_bytes(v.try_into().unwrap_or([0; 8])))
                .unwrap_or(0);
            let zc_max_segs = attr(&a, NETDEV_A_DEV_XDP_ZC_MAX_SEGS)
                .and_then(|v| v.get(0..4))
                .map(|v| u32::from_ne_bytes(v.try_into().unwrap_or([0; 4])));
            Ok(Some(DevXdp {
                features,
                zc_max_segs,
            }))
        }
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

/// How long a probe waits for the kernel (kept short: the probe is interactive).
const TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let m = request(
            0x10,
            CTRL_CMD_GETFAMILY,
            7,
            &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0")],
        );
        // 16 header + 4 genl + 4 attr header + 7 name, padded to 32.
        assert_eq!(m.len(), 32);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().expect("4 bytes")), 32);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x10);
        assert_eq!(&m[16..20], &[CTRL_CMD_GETFAMILY, 1, 0, 0]);
        assert_eq!(u16::from_ne_bytes([m[20], m[21]]), 11);
        assert_eq!(&m[24..31], b"netdev\0");
    }

    #[test]
    fn replies_and_errors_parse_and_garbage_does_not_panic() {
        let mut reply = request(
            0x20,
            1,
            3,
            &[(NETDEV_A_DEV_XDP_FEATURES, &7u64.to_ne_bytes())],
        );
        assert_eq!(
            parse(&reply, 3),
            Some(Reply::Attrs(vec![(
                NETDEV_A_DEV_XDP_FEATURES,
                7u64.to_ne_bytes().to_vec()
            )]))
        );
        assert_eq!(parse(&reply, 4), None, "another request's reply");
        let mut err = vec![0u8; 20];
        err[0..4].copy_from_slice(&20u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[8..12].copy_from_slice(&3u32.to_ne_bytes());
        err[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(parse(&err, 3), Some(Reply::Errno(2)));
        reply[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert_eq!(parse(&reply, 3), None, "a length beyond the datagram");
        for n in 0..reply.len() {
            let _ = parse(&reply[..n], 3);
        }
    }
}
