//! AF_XDP on a veth pair between two private namespaces: `A` holds `va` (10.9.0.1) where the
//! VMs' sockets sit, `B` holds `vb` (10.9.0.2), a peer that writes and reads raw frames.
//! Needs root; prints SKIPPED otherwise. Every namespace (with its links and programs) is
//! deleted at the end, also on failure.

use net_api::{IoBuf, IoBufMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use net_afxdp::{AfXdp, AfXdpConfig, AfXdpQueue, AttachMode, ZeroCopy};
use net_api::{Backend, MacAddr, QueuePair, TxFrame, VirtioNetHdr};
use net_macvtap::testns::{sh, NetNs, VethPair};
use nix::libc;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Namespaces `A` and `B` joined by a veth (`va` - `vb`) with `queues` queues each, up,
/// addressed (10.9.0.1 and 10.9.0.2).
struct Pair {
    a: NetNs,
    b: NetNs,
}

impl Pair {
    fn new(tag: &str, queues: u16) -> Pair {
        let VethPair { a, b } = VethPair::new(tag, "va", "vb", queues).expect("a veth pair");
        sh(&[
            "ip",
            "-n",
            a.name(),
            "addr",
            "add",
            "10.9.0.1/24",
            "dev",
            "va",
        ]);
        sh(&[
            "ip",
            "-n",
            b.name(),
            "addr",
            "add",
            "10.9.0.2/24",
            "dev",
            "vb",
        ]);
        Pair { a, b }
    }

    fn mac_of(ns: &NetNs, dev: &str) -> MacAddr {
        let out = sh(&["ip", "-n", ns.name(), "link", "show", dev]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .expect("a MAC")
    }

    /// The XDP line of `ip link show va`, if a program is attached.
    fn xdp_on_va(&self) -> Option<String> {
        let out = sh(&["ip", "-n", self.a.name(), "link", "show", "va"]);
        out.lines()
            .find(|l| l.contains("prog/xdp"))
            .map(str::to_string)
    }
}

/// A raw AF_PACKET socket on `vb` in namespace `B`.
struct Peer {
    fd: OwnedFd,
}

impl Peer {
    fn new(pair: &Pair) -> Peer {
        let _in_b = pair.b.enter().expect("entering B");
        let ifindex = nix::net::if_::if_nametoindex("vb").expect("vb");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )
        };
        assert!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll for the length given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        Peer { fd }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for its length during the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Frames received (outgoing ones excluded) until `want` matches one or 3 s pass.
    fn wait_for(&self, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let end = Instant::now() + Duration::from_secs(3);
        let mut buf = vec![0u8; 4096];
        while Instant::now() < end {
            // SAFETY: `buf` is valid for its length during the call.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                let f = &buf[..n as usize];
                if want(f) {
                    return Some(f.to_vec());
                }
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        None
    }
}

fn frame(dst: MacAddr, src: MacAddr, tag: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&tag.to_be_bytes());
    while f.len() < len {
        f.push(f.len() as u8);
    }
    f
}

fn tag_of(f: &[u8]) -> Option<u32> {
    (f.len() >= 18 && f[12..14] == [0x88, 0xb5])
        .then(|| u32::from_be_bytes([f[14], f[15], f[16], f[17]]))
}

/// Frames from `q` for up to 2 s, until `n` arrived.
fn drain(q: &mut AfXdpQueue, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 4096];
    while got.len() < n && Instant::now() < end {
        match q.recv(&[IoBufMut::from_mut_slice(&mut buf)]).expect("recv") {
            Some(f) => got.push(buf[..f.len].to_vec()),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    got
}

const VM1: MacAddr = MacAddr([0x02, 0, 0, 0, 0xaa, 0x01]);
const VM2: MacAddr = MacAddr([0x02, 0, 0, 0, 0xaa, 0x02]);

fn config(mac: MacAddr, mode: AttachMode, queues: u16) -> AfXdpConfig {
    AfXdpConfig {
        queues,
        attach: mode,
        zero_copy: ZeroCopy::Prefer,
        frames_per_queue: 512,
        ring_size: 256,
        ..AfXdpConfig::new("va", mac)
    }
}

fn skip(test: &str) -> bool {
    if !is_root() {
        println!("SKIPPED {test}: needs root (namespaces, XDP, AF_XDP sockets)");
        return true;
    }
    false
}

/// One VM in `mode`: its frames arrive byte-exact, the host keeps its traffic, frames it sends
/// reach the peer, and nothing is left on the interface afterwards.
fn one_vm(tag: &str, mode: AttachMode) {
    let pair = Pair::new(tag, 1);
    let peer = Peer::new(&pair);
    let vb = Pair::mac_of(&pair.b, "vb");
    {
        let _in_a = pair.a.enter().expect("entering A");
        let mut be = AfXdp::open(config(VM1, mode, 1)).expect("opening AF_XDP");
        assert_eq!(be.attach_mode(), mode);
        let caps = be.capabilities();
        assert!(!caps.vnet_hdr && caps.tx_offloads.is_empty() && caps.rx_offloads.is_empty());
        let mut q = be.open_queue_pair(0).expect("queue pair 0");
        assert!(!q.zero_copy(), "veth has no zero-copy");
        assert!(pair.xdp_on_va().is_some(), "our program is attached");

        // Peer -> VM: byte-exact.
        let sent: Vec<Vec<u8>> = (0..20)
            .map(|i| frame(VM1, vb, i, 60 + 70 * i as usize))
            .collect();
        for f in &sent {
            peer.send(f);
        }
        let got = drain(&mut q, sent.len());
        assert_eq!(
            got, sent,
            "every frame for the VM's MAC, in order, byte-exact"
        );

        // The host's own traffic still flows while the socket is bound.
        let ping = Command::new("ip")
            .args([
                "netns",
                "exec",
                pair.b.name(),
                "ping",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "2",
                "10.9.0.1",
            ])
            .output()
            .expect("ping");
        assert!(
            ping.status.success(),
            "ping from B to the host side: {ping:?}"
        );

        // VM -> peer: one batch of 100 frames (more than the kernel sends per wakeup in copy
        // mode), every one arriving, the last one whole.
        let outs: Vec<Vec<u8>> = (0..100).map(|i| frame(vb, VM1, 0xf000 + i, 200)).collect();
        let datas: Vec<[IoBuf<'_>; 1]> = outs.iter().map(|o| [IoBuf::from_slice(o)]).collect();
        let batch: Vec<TxFrame<'_>> = datas
            .iter()
            .map(|d| TxFrame {
                hdr: VirtioNetHdr::PLAIN,
                data: d,
            })
            .collect();
        assert_eq!(q.send(&batch).expect("send"), 100);
        let last = peer.wait_for(|f| tag_of(f) == Some(0xf000 + 99));
        assert_eq!(
            last.as_deref(),
            Some(&outs[99][..]),
            "the VM's last frame reaches the peer whole"
        );
        assert_eq!(q.stats().rx_packets, 20);
        assert_eq!(q.stats().tx_packets, 100);
    }
    assert_eq!(pair.xdp_on_va(), None, "no XDP program left on va");
}

#[test]
fn skb_mode_frames_both_ways_and_the_host_keeps_its_traffic() {
    if skip("skb_mode_frames_both_ways_and_the_host_keeps_its_traffic") {
        return;
    }
    one_vm("axs", AttachMode::Skb);
}

#[test]
fn native_mode_on_veth() {
    if skip("native_mode_on_veth") {
        return;
    }
    one_vm("axn", AttachMode::Native);
}

#[test]
fn two_vms_on_one_interface_get_only_their_own_frames() {
    if skip("two_vms_on_one_interface_get_only_their_own_frames") {
        return;
    }
    let pair = Pair::new("ax2", 1);
    let peer = Peer::new(&pair);
    let vb = Pair::mac_of(&pair.b, "vb");
    {
        let _in_a = pair.a.enter().expect("entering A");
        let mut one = AfXdp::open(config(VM1, AttachMode::Skb, 1)).expect("VM 1");
        let mut two = AfXdp::open(config(VM2, AttachMode::Skb, 1)).expect("VM 2");
        assert!(
            AfXdp::open(config(VM2, AttachMode::Skb, 1)).is_err(),
            "a MAC belongs to one VM"
        );
        let mut q1 = one.open_queue_pair(0).expect("VM 1 queue");
        let mut q2 = two.open_queue_pair(0).expect("VM 2 queue");
        for i in 0..10 {
            peer.send(&frame(VM1, vb, i, 100));
            peer.send(&frame(VM2, vb, 100 + i, 100));
        }
        let tags = |v: Vec<Vec<u8>>| v.iter().filter_map(|f| tag_of(f)).collect::<Vec<_>>();
        assert_eq!(tags(drain(&mut q1, 10)), (0..10).collect::<Vec<_>>());
        assert_eq!(tags(drain(&mut q2, 10)), (100..110).collect::<Vec<_>>());
        assert!(drain(&mut q1, 1).is_empty() && drain(&mut q2, 1).is_empty());

        // VM 2 leaves: its frames go to the host now, VM 1 still gets its own, and the
        // program stays (VM 1 uses it).
        drop(q2);
        drop(two);
        assert!(pair.xdp_on_va().is_some());
        peer.send(&frame(VM2, vb, 500, 100));
        peer.send(&frame(VM1, vb, 501, 100));
        assert_eq!(tags(drain(&mut q1, 1)), vec![501]);
    }
    assert_eq!(
        pair.xdp_on_va(),
        None,
        "the last VM took the program with it"
    );
}

#[test]
fn four_queues_share_one_umem() {
    if skip("four_queues_share_one_umem") {
        return;
    }
    let pair = Pair::new("ax4", 4);
    let peer = Peer::new(&pair);
    let vb = Pair::mac_of(&pair.b, "vb");
    let _in_a = pair.a.enter().expect("entering A");
    let mut be = AfXdp::open(config(VM1, AttachMode::Skb, 4)).expect("opening");
    let mut qs: Vec<AfXdpQueue> = (0..4)
        .map(|i| be.open_queue_pair(i).expect("a queue pair"))
        .collect();
    assert!(be.open_queue_pair(0).is_err(), "a queue opens once");
    assert!(be.open_queue_pair(4).is_err(), "four queues, no fifth");
    for i in 0..64 {
        peer.send(&frame(VM1, vb, i, 64));
    }
    let mut got = 0;
    let end = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 4096];
    while got < 64 && Instant::now() < end {
        for q in qs.iter_mut() {
            while let Some(_f) = q.recv(&[IoBufMut::from_mut_slice(&mut buf)]).expect("recv") {
                got += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got, 64, "every frame arrived on one of the four sockets");
    // Every queue sends.
    for (i, q) in qs.iter_mut().enumerate() {
        let out = frame(vb, VM1, 0x4000 + i as u32, 80);
        let data = [IoBuf::from_slice(&out)];
        assert_eq!(
            q.send(&[TxFrame {
                hdr: VirtioNetHdr::PLAIN,
                data: &data
            }])
            .expect("send"),
            1
        );
        assert!(
            peer.wait_for(|f| tag_of(f) == Some(0x4000 + i as u32))
                .is_some(),
            "queue {i}'s frame"
        );
    }
}

#[test]
fn bad_input_is_refused_with_reasons() {
    if skip("bad_input_is_refused_with_reasons") {
        return;
    }
    let pair = Pair::new("axe", 1);
    let _in_a = pair.a.enter().expect("entering A");
    // Each refusal says what was wrong.
    let refused = |cfg: AfXdpConfig, what: &str, says: &str| {
        let e = AfXdp::open(cfg).expect_err(what);
        assert!(e.to_string().contains(says), "{what}: {e}");
    };
    refused(
        AfXdpConfig::new("nosuch0", VM1),
        "no such interface",
        "nosuch0",
    );
    refused(
        config(MacAddr([0xff; 6]), AttachMode::Skb, 1),
        "broadcast MAC",
        "unicast",
    );
    refused(
        AfXdpConfig {
            zero_copy: ZeroCopy::Require,
            ..config(VM1, AttachMode::Skb, 1)
        },
        "zero-copy in skb mode",
        "zero-copy",
    );
    // An MTU whose frames do not fit a chunk is refused, with what to do.
    let mtu = |m: &str| sh(&["ip", "-n", pair.a.name(), "link", "set", "va", "mtu", m]);
    mtu("3000");
    refused(
        AfXdpConfig {
            frame_size: 2048,
            ..config(VM1, AttachMode::Skb, 1)
        },
        "MTU 3000 in 2048-byte chunks",
        "lower the MTU",
    );
    mtu("1500");
    let mut be = AfXdp::open(config(VM1, AttachMode::Skb, 1)).expect("opening");
    let mut q = be.open_queue_pair(0).expect("queue");
    let big = vec![0u8; 5000];
    let data = [IoBuf::from_slice(&big)];
    assert_eq!(
        q.send(&[TxFrame {
            hdr: VirtioNetHdr::PLAIN,
            data: &data
        }])
        .expect("send"),
        1
    );
    assert_eq!(
        q.stats().tx_drops.get(net_api::DropReason::TooLarge),
        1,
        "too large: dropped and counted"
    );
    assert_eq!(q.stats().tx_packets, 0);
    assert!(
        q.set_rx_offloads(net_api::OffloadSet::ALL).is_err(),
        "no offloads on AF_XDP"
    );
}

/// Not a test of its own: run by `a_crashed_owners_program_is_replaced` in a child process,
/// which opens AF_XDP on `va` and dies without cleaning up.
#[test]
#[ignore = "a helper run by another test"]
fn crash_helper() {
    let Ok(iface) = std::env::var("VOLT_AFXDP_CRASH_IFACE") else {
        return;
    };
    let mut be = AfXdp::open(AfXdpConfig {
        attach: AttachMode::Skb,
        ..AfXdpConfig::new(&iface, VM1)
    })
    .expect("opening in the helper");
    let _q = be.open_queue_pair(0).expect("queue in the helper");
    println!("ATTACHED");
    std::process::abort();
}

#[test]
fn a_crashed_owners_program_is_replaced_and_a_foreign_one_is_left_alone() {
    if skip("a_crashed_owners_program_is_replaced_and_a_foreign_one_is_left_alone") {
        return;
    }
    let pair = Pair::new("axc", 1);
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new("ip")
        .args(["netns", "exec", pair.a.name()])
        .arg(&exe)
        .args(["--exact", "crash_helper", "--ignored", "--nocapture"])
        .env("VOLT_AFXDP_CRASH_IFACE", "va")
        .output()
        .expect("running the crash helper");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ATTACHED"),
        "{out:?}"
    );
    assert!(!out.status.success(), "the helper died");
    assert!(
        pair.xdp_on_va().is_some(),
        "the dead owner's program is still on va"
    );
    {
        let _in_a = pair.a.enter().expect("entering A");
        let mut be =
            AfXdp::open(config(VM1, AttachMode::Skb, 1)).expect("replacing the stale program");
        let _q = be.open_queue_pair(0).expect("queue");
    }
    assert_eq!(pair.xdp_on_va(), None);

    // Somebody else's program is never touched.
    {
        let _in_a = pair.a.enter().expect("entering A");
        let obj = libbpf_rs::ObjectBuilder::default()
            .open_memory(include_bytes!(concat!(env!("OUT_DIR"), "/foreign.bpf.o")))
            .and_then(|o| o.load())
            .expect("loading the foreign program");
        let prog = obj.progs().next().expect("its program");
        let ifindex = nix::net::if_::if_nametoindex("va").expect("va") as i32;
        use std::os::fd::AsFd;
        let xdp = libbpf_rs::Xdp::new(prog.as_fd());
        xdp.attach(ifindex, libbpf_rs::XdpFlags::SKB_MODE)
            .expect("attaching it");
        let e = AfXdp::open(config(VM1, AttachMode::Skb, 1)).expect_err("not ours");
        assert!(e.to_string().contains("not volt-net's"), "{e}");
        assert!(pair.xdp_on_va().is_some(), "the foreign program stays");
        xdp.detach(ifindex, libbpf_rs::XdpFlags::SKB_MODE)
            .expect("detaching it");
    }
}
