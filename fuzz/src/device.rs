//! The `virtio_device` harness: a hostile guest driving a real `NetDevice` over the loopback
//! backend. The input format and the checks are documented on [`crate::virtio_device`].

use std::io;

use net_api::{IoBuf, IoBufMut};
use std::sync::OnceLock;

use net_api::loopback::{pair, Loopback, LoopbackConfig, LoopbackQueue};
use net_api::{Backend, GsoType, OffloadSet, QueuePair, TxFrame, VirtioNetHdr};
use net_virtio::ctrl::GUEST_OFFLOAD_BITS;
use net_virtio::device::DeviceStats;
use net_virtio::features::{bit, check_dependencies};
use net_virtio::mock::MockDriver;
use net_virtio::test_utils::GuestFrame;
use net_virtio::{DeviceConfig, Event, HdrLayout, IrqCause, NetDevice};
use virtio_bindings::virtio_config as vc;
use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring as vr;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Guest memory: two regions of 4 MiB, so the boundary is at [`BOUNDARY`].
pub const MEM_SIZE: u64 = 8 << 20;
/// Where the two guest memory regions meet.
pub const BOUNDARY: u64 = MEM_SIZE / 2;
/// Start of the buffer area the address encoding favours (the mock's rings are at 1 MiB ..
/// 2.25 MiB).
pub const HEAP: u64 = 0x30_0000;
/// The most operations one input runs.
pub const MAX_OPS: usize = 64;
/// Descriptor reads the reference walk of the control queue may do before giving up on the
/// exact check for that kick.
const REF_BUDGET: u32 = 4096;
/// `MAX_CTRL_BYTES` of the device: the most bytes of a control chain.
const MAX_CTRL_BYTES: u64 = 1 << 20;
/// `guest::MAX_CHAIN_DESCRIPTORS`.
const MAX_CHAIN: usize = 1024;
/// Bytes of the peer's receive buffer (the largest loopback frame and then some).
const PEER_BUF: usize = 70_000;

const NEXT: u16 = vr::VRING_DESC_F_NEXT as u16;
const WRITE: u16 = vr::VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = vr::VRING_DESC_F_INDIRECT as u16;
const S_DRIVER_OK: u8 = vc::VIRTIO_CONFIG_S_DRIVER_OK as u8;

type Irq = fn(IrqCause) -> io::Result<()>;
type Dev = NetDevice<Loopback, Irq>;

/// Opcodes (the op byte modulo [`OPS`]).
pub mod op {
    /// `q, index, addr, len, flags, next`: a descriptor in queue `q`'s table.
    pub const DESC: u8 = 0;
    /// `table addr, entry, addr, len, flags, next`: a descriptor anywhere (indirect tables).
    pub const TABLE_DESC: u8 = 1;
    /// `addr, n, n bytes`: raw guest memory.
    pub const BYTES: u8 = 2;
    /// `addr, kind`: a frame template with its header (kind < 0x80) or a control command.
    pub const TEMPLATE: u8 = 3;
    /// `q, head`: publish a head in the available ring.
    pub const PUBLISH: u8 = 4;
    /// `q, m [, u16]`: available index += m >> 1 (m even) or := the u16 (m odd).
    pub const AVAIL_IDX: u8 = 5;
    /// `q, u16`: `used_event`.
    pub const USED_EVENT: u8 = 6;
    /// `q`: the driver notifies transport queue `q` (`q % (queues + 1)`).
    pub const KICK: u8 = 7;
    /// `b`: `BackendRx` (b odd) or `BackendTx` of pair `(b >> 1) % (pairs + 1)`.
    pub const BACKEND: u8 = 8;
    /// `p, kind, count`: the peer sends `count % 4 + 1` frame templates on pair `p`.
    pub const PEER_SEND: u8 = 9;
    /// The peer receives everything waiting.
    pub const PEER_DRAIN: u8 = 10;
    /// `b`: reset; restart unless bit 1; fresh zeroed rings if bit 0.
    pub const RESET: u8 = 11;
    /// `q, kind, shape, start, addr`: a frame template written at `addr`, cut into a chain
    /// at descriptors `start..` (or an indirect table) and published on `q`.
    pub const SEND: u8 = 12;
    /// `kind, shape, start, addr`: a control command chain published on the control queue.
    pub const CTRL: u8 = 13;
    /// `b`: announce (b odd) or set the link up/down (bit 1).
    pub const CONFIG: u8 = 14;
    /// `q, n, start, addr`: `n % 8 + 1` receive buffers of one writable descriptor each
    /// (1536, 4096, 65570 or 60 bytes by `n >> 3 & 3`), side by side from `addr`, at
    /// descriptors `start..`, published on `q`.
    pub const RX_BUFS: u8 = 15;
}
/// How many opcodes there are.
pub const OPS: u8 = 16;

/// The features bytes 1 and 2 select, bit by bit (see [`fsel`]).
pub const FEATURE_GROUPS: [&[u32]; 16] = [
    &[vc::VIRTIO_F_VERSION_1],
    &[vn::VIRTIO_NET_F_MRG_RXBUF],
    &[vr::VIRTIO_RING_F_EVENT_IDX],
    &[vr::VIRTIO_RING_F_INDIRECT_DESC],
    &[vn::VIRTIO_NET_F_CSUM],
    &[vn::VIRTIO_NET_F_HOST_TSO4, vn::VIRTIO_NET_F_HOST_TSO6],
    &[vn::VIRTIO_NET_F_HOST_USO, vn::VIRTIO_NET_F_HOST_UFO],
    &[vn::VIRTIO_NET_F_HOST_ECN],
    &[vn::VIRTIO_NET_F_CTRL_VQ],
    &[vn::VIRTIO_NET_F_CTRL_RX, vn::VIRTIO_NET_F_CTRL_RX_EXTRA],
    &[vn::VIRTIO_NET_F_CTRL_VLAN],
    &[vn::VIRTIO_NET_F_MQ],
    &[vn::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS],
    &[
        vn::VIRTIO_NET_F_GUEST_CSUM,
        vn::VIRTIO_NET_F_GUEST_TSO4,
        vn::VIRTIO_NET_F_GUEST_TSO6,
        vn::VIRTIO_NET_F_GUEST_ECN,
        vn::VIRTIO_NET_F_GUEST_UFO,
        vn::VIRTIO_NET_F_GUEST_USO4,
        vn::VIRTIO_NET_F_GUEST_USO6,
    ],
    &[
        vn::VIRTIO_NET_F_CTRL_MAC_ADDR,
        vn::VIRTIO_NET_F_GUEST_ANNOUNCE,
    ],
    &[
        vn::VIRTIO_NET_F_STATUS,
        vn::VIRTIO_NET_F_MAC,
        vn::VIRTIO_NET_F_MTU,
    ],
];

/// The feature bits for the two selector bytes.
pub fn features_from(sel: u16) -> u64 {
    FEATURE_GROUPS
        .iter()
        .enumerate()
        .filter(|(i, _)| sel & (1 << i) != 0)
        .flat_map(|(_, g)| g.iter())
        .fold(0, |f, &n| f | bit(n))
}

/// The input, read front to back; `None` when it ran out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) | u64::from(self.u32()?) << 32)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// Frame templates: (header, frame).
fn frame_templates() -> &'static [(VirtioNetHdr, Vec<u8>)] {
    static T: OnceLock<Vec<(VirtioNetHdr, Vec<u8>)>> = OnceLock::new();
    T.get_or_init(|| {
        let plain = |len: usize, tag: u8| {
            let mut f: Vec<u8> = (0..len).map(|i| (i as u8) ^ tag).collect();
            f[..6].copy_from_slice(&[0xff; 6]);
            f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0x0a]);
            f[12..14].copy_from_slice(&[0x88, 0xb5]);
            (VirtioNetHdr::PLAIN, f)
        };
        let gf = |g: GuestFrame| g.build();
        let mut bad = gf(GuestFrame {
            payload_len: 3000,
            gso: GsoType::TcpV4,
            gso_size: 1000,
            ..GuestFrame::default()
        });
        bad.0.csum_start = 5000;
        vec![
            plain(60, 0),
            gf(GuestFrame {
                payload_len: 200,
                ..GuestFrame::default()
            }),
            gf(GuestFrame {
                payload_len: 3000,
                gso: GsoType::TcpV4,
                gso_size: 1000,
                ..GuestFrame::default()
            }),
            gf(GuestFrame {
                tcp: false,
                payload_len: 3000,
                gso: GsoType::UdpL4,
                gso_size: 1000,
                ..GuestFrame::default()
            }),
            gf(GuestFrame {
                ipv6: true,
                vlan: true,
                ecn: true,
                payload_len: 3000,
                gso: GsoType::TcpV6,
                gso_size: 1000,
                ..GuestFrame::default()
            }),
            gf(GuestFrame {
                ipv6: true,
                tcp: false,
                payload_len: 3000,
                gso: GsoType::Udp,
                gso_size: 1000,
                ..GuestFrame::default()
            }),
            plain(1600, 3),
            bad,
        ]
    })
}

/// Control commands: `class, command, data`.
fn ctrl_command(kind: u8, acked: u64) -> Vec<u8> {
    let mac = |last: u8| [0x52, 0x54, 0, 0, 0x12, last];
    match kind % 10 {
        0 => vec![0, 0, 1],
        1 => {
            let mut b = vec![1, 0];
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&mac(1));
            b.extend_from_slice(&2u32.to_le_bytes());
            b.extend_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
            b.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
            b
        }
        2 => {
            let mut b = vec![1, 1];
            b.extend_from_slice(&mac(2));
            b
        }
        3 => vec![2, 0, 42, 0],
        4 => vec![2, 1, 42, 0],
        5 => vec![3, 0],
        6 => vec![4, 0, 2, 0],
        7 => {
            let mut b = vec![5, 0];
            b.extend_from_slice(&(acked & GUEST_OFFLOAD_BITS).to_le_bytes());
            b
        }
        8 => vec![0, 5, 1],
        _ => {
            let mut b = vec![1, 0];
            b.extend_from_slice(&u32::MAX.to_le_bytes());
            b.extend_from_slice(&mac(3));
            b
        }
    }
}

/// The role of a transport queue index under the acked features, as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Rx,
    Tx,
    Ctrl,
    None,
}

/// What the control queue must do on the next kick, from a reference walk of its chains
/// before the kick.
enum CtrlPlan {
    /// The available index is more than a queue ahead: the device must stop (`NEEDS_RESET`)
    /// and write nothing.
    RingError,
    /// The chains, in order.
    Chains(Vec<RefChain>),
}

struct Run {
    dev: Dev,
    drv: MockDriver,
    peer: Vec<LoopbackQueue>,
    _peer_end: Loopback,
    features: u64,
    size: u16,
    nq: u16,
    pairs: u16,
    /// Per queue: the available index last seen, and the entries the driver has made
    /// available since the reset (forward distance of every change).
    avail_seen: Vec<u16>,
    credit: Vec<u64>,
    /// Per queue: the device's used index last seen, and entries completed since the reset.
    used_seen: Vec<u16>,
    used_total: Vec<u64>,
    /// Per queue: the device may have written into that queue's own rings while processing
    /// it, so the count check no longer holds until the next reset.
    tainted: Vec<bool>,
    peer_buf: Vec<u8>,
    /// Control chains whose outcome the reference walk predicted and checked.
    ctrl_checked: u64,
    /// Frames the peer received.
    peer_frames: u64,
}

fn irq(_: IrqCause) -> io::Result<()> {
    Ok(())
}

impl Run {
    fn new(setup: u8, wanted: u64) -> Run {
        let size = [4u16, 8, 32, 256][usize::from(setup & 3)];
        let pairs = if setup & 4 != 0 { 2 } else { 1 };
        let vnet_hdr = setup & 8 != 0;
        let offloads = [
            OffloadSet::CSUM,
            OffloadSet::CSUM | OffloadSet::TSO4 | OffloadSet::TSO6,
            OffloadSet::ALL,
            OffloadSet::NONE,
        ][usize::from(setup >> 4 & 3)];
        let (host, mut peer_end) = pair(LoopbackConfig {
            queue_pairs: pairs,
            capacity: if setup & 0x40 != 0 { 2 } else { 256 },
            vnet_hdr,
            offloads,
            ..LoopbackConfig::default()
        })
        .expect("loopback pair");
        let cfg = DeviceConfig {
            queue_pairs: pairs,
            max_queue_size: 256,
            mergeable_rx: setup & 0x80 == 0,
            ctrl_queue: true,
            ..DeviceConfig::default()
        };
        let dev = NetDevice::new(host, cfg, irq as Irq).expect("device");
        let caps = peer_end.capabilities();
        let peer = (0..pairs)
            .map(|i| {
                let mut q = peer_end.open_queue_pair(i).expect("peer queue");
                q.set_rx_offloads(caps.rx_offloads).expect("peer offloads");
                q
            })
            .collect();
        // Masked to the offer, then every feature whose dependency is missing dropped, so that
        // FEATURES_OK holds.
        let mut features = wanted & dev.features();
        while let Err(e) = check_dependencies(features) {
            features &= !bit(e.feature);
        }
        let nq = dev.num_queues();
        let drv = MockDriver::new(MEM_SIZE, nq, size);
        let n = usize::from(nq);
        let mut run = Run {
            dev,
            drv,
            peer,
            _peer_end: peer_end,
            features,
            size,
            nq,
            pairs,
            avail_seen: vec![0; n],
            credit: vec![0; n],
            used_seen: vec![0; n],
            used_total: vec![0; n],
            tainted: vec![false; n],
            peer_buf: vec![0; PEER_BUF],
            ctrl_checked: 0,
            peer_frames: 0,
        };
        run.restart(false);
        run
    }

    fn mem(&self) -> &GuestMemoryMmap {
        &self.drv.mem
    }

    fn running(&self) -> bool {
        self.dev.status() & S_DRIVER_OK != 0 && !self.dev.needs_reset()
    }

    fn has(&self, feature: u32) -> bool {
        self.dev.acked_features() & bit(feature) != 0
    }

    fn ctrl_index(&self) -> u16 {
        if self.has(vn::VIRTIO_NET_F_MQ) {
            2 * self.pairs
        } else {
            2
        }
    }

    fn role(&self, q: u16) -> Role {
        let mq = self.has(vn::VIRTIO_NET_F_MQ);
        if q == self.ctrl_index() && self.has(vn::VIRTIO_NET_F_CTRL_VQ) {
            Role::Ctrl
        } else if q < 2 * self.pairs && (mq || q < 2) {
            if q & 1 == 0 {
                Role::Rx
            } else {
                Role::Tx
            }
        } else {
            Role::None
        }
    }

    fn layout(&self) -> HdrLayout {
        HdrLayout::from_features(self.dev.acked_features())
    }

    /// Resets the device and starts it again with the same features (zeroed rings if
    /// `fresh`); the bookkeeping starts over.
    fn restart(&mut self, fresh: bool) {
        if fresh {
            self.fresh_rings();
        }
        self.drv
            .start(&mut self.dev, self.features)
            .expect("a reset device starts again");
        // DRIVER_OK looks at the rings at once: stale rings whose available index ran ahead
        // put the device straight into NEEDS_RESET, as they should.
        assert!(
            self.running() || (!fresh && self.dev.needs_reset()),
            "started device is running"
        );
        self.rebase();
    }

    fn fresh_rings(&mut self) {
        let mem = self.drv.mem.clone();
        for q in &mut self.drv.queues {
            *q = net_virtio::mock::MockQueue::new(&mem, q.desc, q.size);
        }
    }

    /// After a reset the device's indices start at 0: whatever the available index says now
    /// has been made available. DRIVER_OK already processed what the rings held, so what it
    /// completed counts against that.
    fn rebase(&mut self) {
        for q in 0..usize::from(self.nq) {
            let a = self.avail_idx(q);
            self.avail_seen[q] = a;
            self.credit[q] = u64::from(a);
            let used = self.dev.queue(q as u16).expect("queue").next_used();
            self.used_seen[q] = used;
            self.used_total[q] = u64::from(used);
            self.tainted[q] = false;
            let role = self.role(q as u16);
            if role != Role::Rx && role != Role::None {
                assert!(
                    u64::from(used) <= self.credit[q],
                    "queue {q}: {used} chains completed at DRIVER_OK, {a} available"
                );
            }
        }
    }

    fn avail_idx(&self, q: usize) -> u16 {
        let a = self.drv.queues[q].avail;
        u16::from_le(
            self.mem()
                .read_obj(GuestAddress(a.0 + 2))
                .expect("avail idx"),
        )
    }

    /// Accounts for changes of the available indices (by the driver or anything else).
    fn observe_avail(&mut self) {
        for q in 0..usize::from(self.nq) {
            let a = self.avail_idx(q);
            self.credit[q] += u64::from(a.wrapping_sub(self.avail_seen[q]));
            self.avail_seen[q] = a;
        }
    }

    fn used_entry(&self, q: usize, slot: u16) -> (u32, u32) {
        let at = self.drv.queues[q].used.0 + 4 + 8 * u64::from(slot % self.size);
        let id = u32::from_le(self.mem().read_obj(GuestAddress(at)).expect("used id"));
        let len = u32::from_le(self.mem().read_obj(GuestAddress(at + 4)).expect("used len"));
        (id, len)
    }

    /// Decodes an address: mostly inside guest memory, sometimes across the region boundary,
    /// over the rings, past the end, or anywhere.
    fn addr(&self, inp: &mut Input<'_>) -> Option<u64> {
        let sel = inp.u8()?;
        if sel & 7 == 6 {
            return inp.u64();
        }
        let off = u64::from(inp.u16()?);
        Some(match sel & 7 {
            0..=2 => HEAP + off,
            3 => BOUNDARY - 0x8000 + off,
            4 => {
                self.drv.queues[usize::from(sel >> 3) % self.drv.queues.len()]
                    .desc
                    .0
                    + off
            }
            5 => MEM_SIZE - 0x8000 + off,
            _ => off,
        })
    }

    fn len(inp: &mut Input<'_>) -> Option<u32> {
        let m = inp.u8()?;
        Some(match m & 3 {
            0 => u32::from(m >> 2),
            1 => u32::from(inp.u16()?),
            2 => inp.u32()?,
            _ => 16 * u32::from(m >> 2),
        })
    }

    fn next_field(inp: &mut Input<'_>) -> Option<u16> {
        let n = inp.u8()?;
        Some(if n == 0xff { 0xffff } else { u16::from(n) })
    }

    fn queue(&self, b: u8) -> usize {
        usize::from(b) % usize::from(self.nq)
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        // Partial writes at the end of memory are fine; out of memory writes nothing.
        let _ = self.mem().write(bytes, GuestAddress(addr));
    }

    fn write_raw_desc(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.write(at, &d);
    }

    fn template(&self, kind: u8) -> Vec<u8> {
        if kind & 0x80 != 0 {
            return ctrl_command(kind, self.dev.acked_features());
        }
        let (hdr, frame) = &frame_templates()[usize::from(kind) % frame_templates().len()];
        let layout = self.layout();
        let mut b = vec![0u8; layout.size()];
        layout.encode(hdr, &mut b).expect("header fits");
        b.extend_from_slice(frame);
        b
    }

    /// One operation; `None` when the input ran out.
    fn step(&mut self, inp: &mut Input<'_>) -> Option<()> {
        let code = inp.u8()? % OPS;
        match code {
            op::DESC => {
                let q = self.queue(inp.u8()?);
                let index = u16::from(inp.u8()?) % self.size;
                let addr = self.addr(inp)?;
                let len = Self::len(inp)?;
                let flags = u16::from(inp.u8()?);
                let next = Self::next_field(inp)?;
                self.drv.queues[q].write_desc(self.mem(), index, addr, len, flags, next);
            }
            op::TABLE_DESC => {
                let table = self.addr(inp)?;
                let entry = u64::from(inp.u8()?);
                let addr = self.addr(inp)?;
                let len = Self::len(inp)?;
                let flags = u16::from(inp.u8()?);
                let next = Self::next_field(inp)?;
                self.write_raw_desc(table.wrapping_add(16 * entry), addr, len, flags, next);
            }
            op::BYTES => {
                let addr = self.addr(inp)?;
                let n = usize::from(inp.u8()?);
                let b = inp.bytes(n).to_vec();
                self.write(addr, &b);
            }
            op::TEMPLATE => {
                let addr = self.addr(inp)?;
                let b = self.template(inp.u8()?);
                self.write(addr, &b);
            }
            op::PUBLISH => {
                let q = self.queue(inp.u8()?);
                let head = u16::from(inp.u8()?);
                self.drv.queues[q].publish(&self.drv.mem, head);
            }
            op::AVAIL_IDX => {
                let q = self.queue(inp.u8()?);
                let m = inp.u8()?;
                let idx = if m & 1 == 0 {
                    self.avail_idx(q).wrapping_add(u16::from(m >> 1))
                } else {
                    inp.u16()?
                };
                self.drv.queues[q].set_avail_idx(self.mem(), idx);
            }
            op::USED_EVENT => {
                let q = self.queue(inp.u8()?);
                let v = inp.u16()?;
                self.drv.queues[q].set_used_event(self.mem(), v);
            }
            op::KICK => {
                let q = u16::from(inp.u8()?) % (self.nq + 1);
                self.device(Event::Kick(q));
            }
            op::BACKEND => {
                let b = inp.u8()?;
                let p = u16::from(b >> 1) % (self.pairs + 1);
                self.device(if b & 1 != 0 {
                    Event::BackendRx(p)
                } else {
                    Event::BackendTx(p)
                });
            }
            op::PEER_SEND => {
                let p = usize::from(inp.u8()?) % self.peer.len();
                let kind = inp.u8()?;
                let count = usize::from(inp.u8()? % 4) + 1;
                let (hdr, frame) = &frame_templates()[usize::from(kind) % frame_templates().len()];
                let hdr = if kind & 0x80 != 0 {
                    VirtioNetHdr::PLAIN
                } else {
                    *hdr
                };
                let data = [IoBuf::from_slice(frame)];
                let frames: Vec<TxFrame<'_>> =
                    (0..count).map(|_| TxFrame { hdr, data: &data }).collect();
                self.peer[p].send(&frames).expect("peer send");
            }
            op::PEER_DRAIN => self.drain_peer(),
            op::RESET => {
                let b = inp.u8()?;
                if b & 2 != 0 {
                    self.dev
                        .set_status(0, &self.drv.mem)
                        .expect("reset never fails");
                    assert_eq!(self.dev.status(), 0);
                    if b & 1 != 0 {
                        self.fresh_rings();
                    }
                    self.rebase();
                } else {
                    self.restart(b & 1 != 0);
                }
            }
            op::SEND => {
                let q = self.queue(inp.u8()?);
                let kind = inp.u8()?;
                let shape = inp.u8()?;
                let start = u16::from(inp.u8()?);
                let addr = self.addr(inp)?;
                let bytes = self.template(kind & 0x7f);
                self.write(addr, &bytes);
                let hdr_len = self.layout().size() as u64;
                let total = bytes.len() as u64;
                // Cuts: a header descriptor of its own (bit 2), then 1 to 4 equal pieces.
                let mut pieces = Vec::new();
                let mut at = 0u64;
                if shape & 4 != 0 {
                    pieces.push((addr, hdr_len as u32));
                    at = hdr_len;
                }
                let n = u64::from(shape & 3) + 1;
                let step = (total - at).div_ceil(n).max(1);
                while at < total {
                    let l = step.min(total - at);
                    pieces.push((addr.wrapping_add(at), l as u32));
                    at += l;
                }
                let extra = if shape & 8 != 0 { WRITE } else { 0 };
                if kind & 0x80 != 0 {
                    // An indirect table right after the bytes.
                    let table = addr.wrapping_add(total.next_multiple_of(16));
                    for (i, &(a, l)) in pieces.iter().enumerate() {
                        let last = i + 1 == pieces.len();
                        let flags = if last { extra } else { NEXT };
                        self.write_raw_desc(
                            table.wrapping_add(16 * i as u64),
                            a,
                            l,
                            flags,
                            i as u16 + 1,
                        );
                    }
                    let head = start % self.size;
                    let len = 16 * pieces.len() as u32;
                    self.drv.queues[q].write_desc(self.mem(), head, table, len, INDIRECT, 0);
                    self.drv.queues[q].publish(&self.drv.mem, head);
                } else {
                    let ids: Vec<u16> = (0..pieces.len() as u16)
                        .map(|i| (start + i) % self.size)
                        .collect();
                    for (i, &(a, l)) in pieces.iter().enumerate() {
                        let last = i + 1 == pieces.len();
                        let (flags, next) = if last { (extra, 0) } else { (NEXT, ids[i + 1]) };
                        self.drv.queues[q].write_desc(self.mem(), ids[i], a, l, flags, next);
                    }
                    self.drv.queues[q].publish(&self.drv.mem, ids[0]);
                }
            }
            op::CTRL => {
                let kind = inp.u8()?;
                let shape = inp.u8()?;
                let start = u16::from(inp.u8()?);
                let addr = self.addr(inp)?;
                let cmd = ctrl_command(kind, self.dev.acked_features());
                self.write(addr, &cmd);
                let ack = addr.wrapping_add(0x800);
                self.write(ack, &[0xee]);
                let mut descs = Vec::new();
                if shape & 1 != 0 {
                    descs.push((addr, 2, 0));
                    if cmd.len() > 2 {
                        descs.push((addr.wrapping_add(2), cmd.len() as u32 - 2, 0));
                    }
                } else {
                    descs.push((addr, cmd.len() as u32, 0));
                }
                let ack_flags = if shape & 4 != 0 { 0 } else { WRITE };
                descs.push((ack, if shape & 2 != 0 { 2 } else { 1 }, ack_flags));
                let q = if shape & 0x10 != 0 {
                    self.queue(shape >> 5)
                } else {
                    usize::from(self.ctrl_index()) % usize::from(self.nq)
                };
                let ids: Vec<u16> = (0..descs.len() as u16)
                    .map(|i| (start + i) % self.size)
                    .collect();
                for (i, &(a, l, f)) in descs.iter().enumerate() {
                    let last = i + 1 == descs.len();
                    let (flags, next) = if last { (f, 0) } else { (f | NEXT, ids[i + 1]) };
                    self.drv.queues[q].write_desc(self.mem(), ids[i], a, l, flags, next);
                }
                self.drv.queues[q].publish(&self.drv.mem, ids[0]);
            }
            op::CONFIG => {
                let b = inp.u8()?;
                if b & 1 != 0 {
                    self.dev.announce().expect("announce");
                } else {
                    self.dev.set_link_up(b & 2 != 0).expect("link");
                }
            }
            op::RX_BUFS => {
                let q = self.queue(inp.u8()?);
                let n = inp.u8()?;
                let start = u16::from(inp.u8()?);
                let addr = self.addr(inp)?;
                let len = [1536u32, 4096, 65570, 60][usize::from(n >> 3 & 3)];
                for i in 0..u16::from(n % 8) + 1 {
                    let at = addr.wrapping_add(u64::from(i) * u64::from(len));
                    let id = (start + i) % self.size;
                    self.drv.queues[q].write_desc(self.mem(), id, at, len, WRITE, 0);
                    self.drv.queues[q].publish(&self.drv.mem, id);
                }
            }
            _ => unreachable!("opcode {code} < {OPS}"),
        }
        self.observe_avail();
        Some(())
    }

    fn drain_peer(&mut self) {
        for q in &mut self.peer {
            while q
                .recv(&[IoBufMut::from_mut_slice(&mut self.peer_buf)])
                .expect("peer recv")
                .is_some()
            {
                self.peer_frames += 1;
            }
        }
    }

    /// Runs one event through the device and checks what it wrote.
    fn device(&mut self, event: Event) {
        let running = self.running();
        let plan = match event {
            Event::Kick(q) if running && self.role(q) == Role::Ctrl => {
                let plan = self.ctrl_plan(q);
                if plan.is_none() {
                    self.tainted[usize::from(q)] = true;
                }
                plan
            }
            _ => None,
        };
        let before: Vec<u16> = (0..self.nq)
            .map(|q| self.dev.queue(q).expect("queue").next_used())
            .collect();
        assert_eq!(before, self.used_seen, "used indices moved outside a call");
        if let Err(e) = self.dev.handle(event, &self.drv.mem) {
            panic!("{event:?}: the loopback backend cannot fail, yet: {e}");
        }
        for q in 0..self.nq {
            let qi = usize::from(q);
            let now = self.dev.queue(q).expect("queue").next_used();
            let delta = now.wrapping_sub(before[qi]);
            self.used_seen[qi] = now;
            if delta == 0 {
                continue;
            }
            assert!(
                running,
                "{event:?}: queue {q} completed {delta} chains while the device was stopped"
            );
            let role = self.role(q);
            assert_ne!(
                role,
                Role::None,
                "{event:?}: queue {q} has no role but completed"
            );
            self.used_total[qi] += u64::from(delta);
            if role != Role::Rx && !self.tainted[qi] {
                assert!(
                    self.used_total[qi] <= self.credit[qi],
                    "{event:?}: queue {q} completed {} chains since the reset, only {} made available",
                    self.used_total[qi],
                    self.credit[qi]
                );
                assert!(
                    delta <= self.size + 1,
                    "{event:?}: queue {q} completed {delta} chains in one call (size {})",
                    self.size
                );
            }
            // Entries the device wrote this call (the last `size` of them if it wrapped).
            let first = delta.saturating_sub(self.size);
            match role {
                Role::Tx => {
                    for k in first..delta {
                        let (id, len) = self.used_entry(qi, before[qi].wrapping_add(k));
                        assert!(
                            id < u32::from(self.size),
                            "{event:?}: tx used id {id} (size {})",
                            self.size
                        );
                        assert_eq!(len, 0, "{event:?}: tx used len of head {id}");
                    }
                }
                Role::Ctrl if !self.tainted[qi] => {
                    for k in first..delta {
                        let (id, len) = self.used_entry(qi, before[qi].wrapping_add(k));
                        assert!(id < u32::from(self.size), "ctrl used id {id}");
                        assert!(len <= 1, "ctrl used len {len} of head {id}");
                    }
                }
                // The device writes frames (Rx) or acks (Ctrl) wherever the guest said,
                // which may be this used ring: entries are only checked when they cannot
                // have been overwritten.
                _ => {}
            }
        }
        if let Some(plan) = plan {
            self.check_ctrl(event, plan, &before);
        }
        self.observe_avail();
    }

    /// Walks the control chains the next kick will take, as the device must, before the kick.
    /// `None` when the exact outcome cannot be predicted: the walk is too long, or an ack byte
    /// would land on something the device reads after writing it (a ring, a descriptor, a
    /// command), which makes the device's view differ from a walk done beforehand.
    fn ctrl_plan(&self, q: u16) -> Option<CtrlPlan> {
        let qi = usize::from(q);
        let mq = &self.drv.queues[qi];
        let next = self.dev.queue(q).expect("queue").next_avail();
        let avail = self.avail_idx(qi);
        let pending = avail.wrapping_sub(next);
        if pending > self.size {
            return Some(CtrlPlan::RingError);
        }
        let size = u64::from(self.size);
        let avail_ring = (mq.avail.0, 6 + 2 * size);
        let used_ring = (mq.used.0, 6 + 8 * size);
        let mut reads = vec![avail_ring, used_ring];
        let mut budget = REF_BUDGET;
        let mut chains = Vec::new();
        for k in 0..pending {
            let slot = u64::from(next.wrapping_add(k) % self.size);
            let head: u16 = u16::from_le(
                self.mem()
                    .read_obj(GuestAddress(mq.avail.0 + 4 + 2 * slot))
                    .expect("avail ring"),
            );
            chains.push(ref_walk(
                self.mem(),
                mq.desc.0,
                self.size,
                head,
                &mut reads,
                &mut budget,
            )?);
        }
        // The device writes acks and used entries as it goes: the prediction holds only if
        // none of them lands on a descriptor or a ring it reads afterwards.
        let overlap = |a: u64, l: u64| {
            reads
                .iter()
                .any(|&(s, sl)| a < s.saturating_add(sl) && s < a.saturating_add(l))
        };
        if chains.iter().any(|c| c.ack.is_some_and(|a| overlap(a, 1))) {
            return None;
        }
        if reads[2..]
            .iter()
            .any(|&(s, l)| s < used_ring.0 + used_ring.1 && used_ring.0 < s.saturating_add(l))
        {
            return None;
        }
        Some(CtrlPlan::Chains(chains))
    }

    fn check_ctrl(&mut self, event: Event, plan: CtrlPlan, before: &[u16]) {
        let Event::Kick(q) = event else {
            unreachable!("ctrl plans are made for kicks")
        };
        let qi = usize::from(q);
        let done = self.used_seen[qi].wrapping_sub(before[qi]);
        match plan {
            CtrlPlan::RingError => {
                assert!(
                    self.dev.needs_reset(),
                    "ctrl: avail index ran ahead, device must need a reset"
                );
                assert_eq!(done, 0, "ctrl: nothing completed on a broken ring");
            }
            CtrlPlan::Chains(chains) => {
                assert!(!self.dev.needs_reset(), "ctrl: sound ring, yet NEEDS_RESET");
                let expect: Vec<(u32, u32)> = chains
                    .iter()
                    .filter(|c| c.head < self.size)
                    .map(|c| (u32::from(c.head), u32::from(c.ack_mapped)))
                    .collect();
                let got: Vec<(u32, u32)> = (0..done)
                    .map(|k| self.used_entry(qi, before[qi].wrapping_add(k)))
                    .collect();
                self.ctrl_checked += chains.len() as u64;
                assert_eq!(
                    got, expect,
                    "ctrl: used entries (id, len) differ from a reference walk of the chains"
                );
                for c in chains.iter().filter(|c| c.ack_mapped) {
                    let a = c.ack.expect("a mapped ack has an address");
                    let b: u8 = self.mem().read_obj(GuestAddress(a)).expect("ack byte");
                    assert!(b <= 1, "ctrl: ack byte {b:#x} of head {} at {a:#x}", c.head);
                }
            }
        }
    }

    /// Reset, restart on fresh rings, and one frame each way must work, whatever came before.
    fn recover(&mut self) {
        self.restart(true);
        self.drain_peer();
        let hdr_len = self.layout().size();
        let (_, frame) = &frame_templates()[0];
        let mut b = vec![0u8; hdr_len];
        self.layout()
            .encode(&VirtioNetHdr::PLAIN, &mut b)
            .expect("header");
        b.extend_from_slice(frame);
        let at = HEAP;
        self.drv.write(at, &b);
        let mem = self.drv.mem.clone();
        self.drv.queues[1].write_desc(&mem, 0, at, b.len() as u32, 0, 0);
        self.drv.queues[1].publish(&mem, 0);
        self.observe_avail();
        self.device(Event::Kick(1));
        assert_eq!(self.used_seen[1], 1, "recovered device completes the frame");
        assert_eq!(self.used_entry(1, 0), (0, 0));
        let got = self.peer[0]
            .recv(&[IoBufMut::from_mut_slice(&mut self.peer_buf)])
            .expect("peer recv")
            .expect("the frame reached the peer");
        assert_eq!(&self.peer_buf[..got.len], &frame[..]);

        // Receive: one buffer large enough for any frame.
        let buf = HEAP + 0x10_0000;
        self.drv.queues[0].write_desc(&mem, 0, buf, 70_000, WRITE, 0);
        self.drv.queues[0].publish(&mem, 0);
        self.observe_avail();
        self.device(Event::Kick(0));
        let data = [IoBuf::from_slice(frame)];
        let sent = self.peer[0]
            .send(&[TxFrame {
                hdr: VirtioNetHdr::PLAIN,
                data: &data,
            }])
            .expect("peer send");
        assert_eq!(sent, 1);
        self.device(Event::BackendRx(0));
        assert_eq!(self.used_seen[0], 1, "recovered device delivers the frame");
        let (id, len) = self.used_entry(0, 0);
        assert_eq!((id, len as usize), (0, hdr_len + frame.len()));
        let mut got = vec![0u8; frame.len()];
        self.mem()
            .read_slice(&mut got, GuestAddress(buf + hdr_len as u64))
            .expect("rx buffer");
        assert_eq!(&got, frame);
    }
}

/// A control chain as the reference walk sees it.
#[derive(Debug, Clone, Copy)]
struct RefChain {
    head: u16,
    /// Where the ack byte goes: the first device-writable segment of a well-formed chain.
    ack: Option<u64>,
    /// Whether that whole segment is guest memory (the device then reports 1 byte written).
    ack_mapped: bool,
}

/// The reference walk of one control chain, as `virtio-queue` iterates it and as
/// `net_virtio::guest::walk(.., ReadThenWrite, queue size, MAX_CTRL_BYTES, ..)` checks its
/// shape (direction, descriptor count, byte count, loops, empty chains); guest memory is
/// checked only where the ack goes (`guest::write_to` resolves the first writable segment).
/// Records the descriptors read; `None` when the budget ran out.
fn ref_walk(
    mem: &GuestMemoryMmap,
    table: u64,
    size: u16,
    head: u16,
    reads: &mut Vec<(u64, u64)>,
    budget: &mut u32,
) -> Option<RefChain> {
    let malformed = Some(RefChain {
        head,
        ack: None,
        ack_mapped: false,
    });
    // virtio-queue's DescriptorChain.
    let (mut table, mut qsize, mut next, mut ttl) = (table, size, head, size);
    let mut indirect = false;
    let mut yielded = 0u32;
    // guest::walk.
    let max_descs = usize::from(size).min(MAX_CHAIN);
    let mut n = 0usize;
    let mut any = false;
    let mut last_has_next = false;
    let (mut readable, mut writable) = (0u64, 0u64);
    let mut segs = 0usize;
    let mut seen_writable = false;
    let mut ack = None;
    loop {
        if ttl == 0 || next >= qsize {
            break;
        }
        let Some(at) = table.checked_add(u64::from(next) * 16) else {
            break;
        };
        *budget = budget.checked_sub(1)?;
        reads.push((at, 16));
        let mut d = [0u8; 16];
        if mem.read_slice(&mut d, GuestAddress(at)).is_err() {
            break;
        }
        let addr = u64::from_le_bytes(d[..8].try_into().expect("8"));
        let len = u32::from_le_bytes(d[8..12].try_into().expect("4"));
        let flags = u16::from_le_bytes([d[12], d[13]]);
        let dnext = u16::from_le_bytes([d[14], d[15]]);
        if flags & INDIRECT != 0 {
            if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                break;
            }
            table = addr;
            qsize = (len / 16) as u16;
            next = 0;
            ttl = qsize;
            indirect = true;
            continue;
        }
        let Some(y) = yielded.checked_add(len) else {
            break;
        };
        yielded = y;
        if flags & NEXT != 0 {
            next = dnext;
            ttl -= 1;
        } else {
            ttl = 0;
        }
        // One descriptor through guest::walk.
        if n >= max_descs {
            return malformed;
        }
        n += 1;
        any = true;
        last_has_next = flags & NEXT != 0;
        let w = flags & WRITE != 0;
        // A readable descriptor after any writable one, zero-length or not.
        if !w && seen_writable {
            return malformed;
        }
        seen_writable |= w;
        if len == 0 {
            continue;
        }
        let l = u64::from(len);
        if readable + writable + l > MAX_CTRL_BYTES {
            return malformed;
        }
        segs += 1;
        if w {
            ack.get_or_insert((addr, len));
            writable += l;
        } else {
            readable += l;
        }
    }
    if last_has_next || !any || segs == 0 || writable == 0 {
        return malformed;
    }
    let (addr, len) = ack?;
    Some(RefChain {
        head,
        ack: Some(addr),
        ack_mapped: GuestMemory::check_range(
            mem,
            GuestAddress(addr),
            len as usize,
            Permissions::Write,
        ),
    })
}

/// What an input did before the final recovery check (for tests of the seeds).
#[derive(Debug, Clone)]
pub struct Summary {
    /// The device's counters.
    pub stats: DeviceStats,
    /// The features the driver acked.
    pub acked: u64,
    /// Control chains whose used entry and ack the reference walk checked.
    pub ctrl_checked: u64,
    /// Frames the peer received.
    pub peer_frames: u64,
    /// Chains completed per transport queue.
    pub completed: Vec<u64>,
}

/// See [`crate::virtio_device`]; returns what happened before the final recovery check.
pub fn run(data: &[u8]) -> Summary {
    let mut inp = Input(data);
    let setup = inp.u8().unwrap_or(0);
    let wanted = features_from(inp.u16().unwrap_or(0));
    let mut run = Run::new(setup, wanted);
    let mut completed = vec![0u64; usize::from(run.nq)];
    for _ in 0..MAX_OPS {
        let before = run.used_total.clone();
        let more = run.step(&mut inp);
        for (c, (now, was)) in completed.iter_mut().zip(run.used_total.iter().zip(before)) {
            // used_total restarts at a reset.
            *c += now.saturating_sub(was);
        }
        if more.is_none() {
            break;
        }
    }
    run.drain_peer();
    let summary = Summary {
        stats: run.dev.stats(),
        acked: run.dev.acked_features(),
        ctrl_checked: run.ctrl_checked,
        peer_frames: run.peer_frames,
        completed,
    };
    run.recover();
    summary
}

/// Builds inputs for [`crate::virtio_device`] (seeds and tests).
#[derive(Debug, Clone)]
pub struct InputBuilder(Vec<u8>);

/// Where an encoded address points.
#[derive(Debug, Clone, Copy)]
pub enum Addr {
    /// `HEAP + off`.
    Heap(u16),
    /// `BOUNDARY - 0x8000 + off`.
    Boundary(u16),
    /// The rings of queue `q`, from its descriptor table on, `+ off`.
    Ring(u8, u16),
    /// `MEM_SIZE - 0x8000 + off`.
    End(u16),
    /// Anywhere.
    Raw(u64),
}

impl InputBuilder {
    /// Setup byte and the feature selector bits (see [`FEATURE_GROUPS`]).
    pub fn new(setup: u8, features: u16) -> Self {
        let mut b = vec![setup];
        b.extend_from_slice(&features.to_le_bytes());
        InputBuilder(b)
    }
    fn addr(&mut self, a: Addr) {
        let (sel, off) = match a {
            Addr::Heap(o) => (0, o),
            Addr::Boundary(o) => (3, o),
            Addr::Ring(q, o) => (4 | q << 3, o),
            Addr::End(o) => (5, o),
            Addr::Raw(r) => {
                self.0.push(6);
                self.0.extend_from_slice(&r.to_le_bytes());
                return;
            }
        };
        self.0.push(sel);
        self.0.extend_from_slice(&off.to_le_bytes());
    }
    fn len(&mut self, len: u32) {
        self.0.push(2);
        self.0.extend_from_slice(&len.to_le_bytes());
    }
    /// A descriptor in queue `q`'s table.
    pub fn desc(mut self, q: u8, index: u8, addr: Addr, len: u32, flags: u8, next: u8) -> Self {
        self.0.extend_from_slice(&[op::DESC, q, index]);
        self.addr(addr);
        self.len(len);
        self.0.extend_from_slice(&[flags, next]);
        self
    }
    /// A descriptor at entry `entry` of a table at `table`.
    pub fn table_desc(
        mut self,
        table: Addr,
        entry: u8,
        addr: Addr,
        len: u32,
        flags: u8,
        next: u8,
    ) -> Self {
        self.0.push(op::TABLE_DESC);
        self.addr(table);
        self.0.push(entry);
        self.addr(addr);
        self.len(len);
        self.0.extend_from_slice(&[flags, next]);
        self
    }
    /// Raw bytes.
    pub fn bytes(mut self, addr: Addr, bytes: &[u8]) -> Self {
        self.0.push(op::BYTES);
        self.addr(addr);
        self.0.push(bytes.len() as u8);
        self.0.extend_from_slice(&bytes[..bytes.len().min(255)]);
        self
    }
    /// A template (frame with header, or a control command with `kind | 0x80`).
    pub fn template(mut self, addr: Addr, kind: u8) -> Self {
        self.0.push(op::TEMPLATE);
        self.addr(addr);
        self.0.push(kind);
        self
    }
    /// Publishes a head.
    pub fn publish(mut self, q: u8, head: u8) -> Self {
        self.0.extend_from_slice(&[op::PUBLISH, q, head]);
        self
    }
    /// Sets the available index.
    pub fn avail_idx(mut self, q: u8, idx: u16) -> Self {
        self.0.extend_from_slice(&[op::AVAIL_IDX, q, 1]);
        self.0.extend_from_slice(&idx.to_le_bytes());
        self
    }
    /// Sets `used_event`.
    pub fn used_event(mut self, q: u8, v: u16) -> Self {
        self.0.extend_from_slice(&[op::USED_EVENT, q]);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Kicks a queue.
    pub fn kick(mut self, q: u8) -> Self {
        self.0.extend_from_slice(&[op::KICK, q]);
        self
    }
    /// `BackendRx(p)` (rx) or `BackendTx(p)`.
    pub fn backend(mut self, p: u8, rx: bool) -> Self {
        self.0
            .extend_from_slice(&[op::BACKEND, p << 1 | u8::from(rx)]);
        self
    }
    /// The peer sends `count` (1..=4) frame templates.
    pub fn peer_send(mut self, p: u8, kind: u8, count: u8) -> Self {
        self.0
            .extend_from_slice(&[op::PEER_SEND, p, kind, count.saturating_sub(1)]);
        self
    }
    /// The peer takes everything.
    pub fn peer_drain(mut self) -> Self {
        self.0.push(op::PEER_DRAIN);
        self
    }
    /// Reset and restart (`fresh`: zeroed rings).
    pub fn reset(mut self, fresh: bool) -> Self {
        self.0.extend_from_slice(&[op::RESET, u8::from(fresh)]);
        self
    }
    /// A frame template sent on queue `q` as a chain (see `op::SEND`).
    pub fn send(mut self, q: u8, kind: u8, shape: u8, start: u8, addr: Addr) -> Self {
        self.0.extend_from_slice(&[op::SEND, q, kind, shape, start]);
        self.addr(addr);
        self
    }
    /// A control command chain (see `op::CTRL`).
    pub fn ctrl(mut self, kind: u8, shape: u8, start: u8, addr: Addr) -> Self {
        self.0.extend_from_slice(&[op::CTRL, kind, shape, start]);
        self.addr(addr);
        self
    }
    /// Receive buffers (see `op::RX_BUFS`).
    pub fn rx_bufs(mut self, q: u8, n: u8, start: u8, addr: Addr) -> Self {
        self.0.extend_from_slice(&[op::RX_BUFS, q, n, start]);
        self.addr(addr);
        self
    }
    /// Announce or link change.
    pub fn config(mut self, b: u8) -> Self {
        self.0.extend_from_slice(&[op::CONFIG, b]);
        self
    }
    /// The input.
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

/// Feature selector bits, by group (indices into [`FEATURE_GROUPS`]).
pub mod fsel {
    /// VERSION_1.
    pub const V1: u16 = 1 << 0;
    /// MRG_RXBUF.
    pub const MRG: u16 = 1 << 1;
    /// EVENT_IDX.
    pub const EVENT_IDX: u16 = 1 << 2;
    /// INDIRECT_DESC.
    pub const INDIRECT: u16 = 1 << 3;
    /// CSUM.
    pub const CSUM: u16 = 1 << 4;
    /// HOST_TSO4 and HOST_TSO6.
    pub const TSO: u16 = 1 << 5;
    /// HOST_USO and HOST_UFO.
    pub const USO: u16 = 1 << 6;
    /// HOST_ECN.
    pub const ECN: u16 = 1 << 7;
    /// CTRL_VQ.
    pub const CTRL_VQ: u16 = 1 << 8;
    /// CTRL_RX and CTRL_RX_EXTRA.
    pub const CTRL_RX: u16 = 1 << 9;
    /// CTRL_VLAN.
    pub const CTRL_VLAN: u16 = 1 << 10;
    /// MQ.
    pub const MQ: u16 = 1 << 11;
    /// CTRL_GUEST_OFFLOADS.
    pub const CTRL_OFFLOADS: u16 = 1 << 12;
    /// GUEST_CSUM and every GUEST_* offload.
    pub const GUEST: u16 = 1 << 13;
    /// CTRL_MAC_ADDR and GUEST_ANNOUNCE.
    pub const MAC_ANNOUNCE: u16 = 1 << 14;
    /// STATUS, MAC, MTU.
    pub const CONFIG: u16 = 1 << 15;
}

/// Seed inputs for `virtio_device`.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use fsel::*;
    let all_tx = V1 | EVENT_IDX | INDIRECT | CSUM | TSO | USO | ECN | MRG | CONFIG;
    let all_ctrl = CTRL_VQ | CTRL_RX | CTRL_VLAN | CTRL_OFFLOADS | MAC_ANNOUNCE;
    // setup: bit 3 vnet header, bits 4-5 offloads (2 = ALL), bits 0-1 queue size.
    let tap = 0x08 | 0x20 | 3;
    let xdp = 2;
    let specs: Vec<(&str, Vec<u8>)> = vec![
        (
            "tx-split-header",
            InputBuilder::new(tap, all_tx)
                .send(1, 0, 4, 0, Addr::Heap(0))
                .send(1, 2, 4 | 2, 8, Addr::Heap(0x2000))
                .send(1, 1, 4 | 1, 16, Addr::Heap(0x4000))
                .kick(1)
                .peer_drain()
                .build(),
        ),
        (
            "tx-software-gso",
            InputBuilder::new(xdp, all_tx)
                .send(1, 2, 4 | 3, 0, Addr::Heap(0))
                .send(1, 3, 1, 8, Addr::Heap(0x2000))
                .send(1, 5, 2, 16, Addr::Boundary(0x7000))
                .kick(1)
                .peer_drain()
                .build(),
        ),
        (
            "ctrl-mac-table",
            InputBuilder::new(tap, V1 | all_ctrl | GUEST | EVENT_IDX)
                .ctrl(1, 1, 0, Addr::Heap(0))
                .ctrl(0, 0, 4, Addr::Heap(0x1000))
                .ctrl(9, 0, 8, Addr::Heap(0x2000))
                .ctrl(7, 1, 12, Addr::Heap(0x3000))
                .kick(2)
                .build(),
        ),
        (
            "ctrl-mq",
            InputBuilder::new(4 | 2, V1 | all_ctrl | MQ)
                .ctrl(6, 0, 0, Addr::Heap(0))
                .kick(4)
                .send(3, 0, 0, 0, Addr::Heap(0x1000))
                .kick(3)
                .ctrl(3, 0, 4, Addr::Heap(0x2000))
                .ctrl(2, 0, 8, Addr::Heap(0x3000))
                .kick(4)
                .build(),
        ),
        (
            "desc-loop",
            InputBuilder::new(2, V1)
                .template(Addr::Heap(0), 0)
                .desc(1, 0, Addr::Heap(0), 40, 1, 1)
                .desc(1, 1, Addr::Heap(40), 32, 1, 0)
                .publish(1, 0)
                .kick(1)
                .send(1, 0, 0, 4, Addr::Heap(0x1000))
                .kick(1)
                .build(),
        ),
        (
            "avail-jump",
            InputBuilder::new(1, V1 | EVENT_IDX)
                .send(1, 0, 0, 0, Addr::Heap(0))
                .avail_idx(1, 0x8000)
                .kick(1)
                .reset(false)
                .send(1, 0, 0, 0, Addr::Heap(0))
                .kick(1)
                .build(),
        ),
        (
            "indirect-chain",
            InputBuilder::new(tap, all_tx)
                .send(1, 0x80 | 2, 4 | 3, 0, Addr::Heap(0))
                .send(1, 0x80, 1, 1, Addr::Boundary(0x7f00))
                .kick(1)
                .peer_drain()
                .build(),
        ),
        (
            "indirect-nested",
            InputBuilder::new(1, V1 | INDIRECT)
                .template(Addr::Heap(0), 0)
                .table_desc(Addr::Heap(0x1000), 0, Addr::Heap(0x2000), 32, 4, 0)
                .table_desc(Addr::Heap(0x2000), 0, Addr::Heap(0), 72, 0, 0)
                .desc(1, 0, Addr::Heap(0x1000), 16, 4, 0)
                .publish(1, 0)
                .kick(1)
                .build(),
        ),
        (
            "rx-peer",
            InputBuilder::new(tap, V1 | MRG | GUEST | EVENT_IDX)
                .desc(0, 0, Addr::Heap(0), 70_000, 2, 0)
                .desc(0, 1, Addr::Boundary(0x4000), 70_000, 2, 0)
                .publish(0, 0)
                .publish(0, 1)
                .kick(0)
                .peer_send(0, 2, 1)
                .peer_send(0, 0, 2)
                .backend(0, true)
                .build(),
        ),
        (
            "rx-mergeable",
            InputBuilder::new(0x08 | 2, V1 | MRG | CTRL_VQ | CTRL_RX)
                .rx_bufs(0, 7, 0, Addr::Heap(0))
                .kick(0)
                .peer_send(0, 0, 3)
                .peer_send(0, 0x80 | 1, 1)
                .backend(0, true)
                .ctrl(0, 0, 16, Addr::Heap(0x8000))
                .kick(2)
                .peer_send(0, 0x80 | 6, 1)
                .backend(0, true)
                .build(),
        ),
        (
            "backpressure",
            InputBuilder::new(0x40 | 2, V1 | CSUM | TSO)
                .send(1, 0, 0, 0, Addr::Heap(0))
                .send(1, 1, 0, 1, Addr::Heap(0x1000))
                .send(1, 2, 0, 2, Addr::Heap(0x2000))
                .send(1, 0, 0, 6, Addr::Heap(0x3000))
                .kick(1)
                .peer_drain()
                .backend(0, false)
                .peer_drain()
                .backend(0, false)
                .build(),
        ),
        (
            "straddle-and-out-of-range",
            InputBuilder::new(2, V1)
                .template(Addr::Boundary(0x7ff0), 0)
                .desc(1, 0, Addr::Boundary(0x7ff0), 72, 0, 0)
                .publish(1, 0)
                .desc(1, 1, Addr::End(0x7ff0), 72, 0, 0)
                .publish(1, 1)
                .desc(1, 2, Addr::Raw(u64::MAX - 8), 72, 0, 0)
                .publish(1, 2)
                .desc(1, 3, Addr::Ring(1, 0), 72, 0, 0)
                .publish(1, 3)
                .kick(1)
                .build(),
        ),
        (
            "ctrl-ack-in-ring",
            InputBuilder::new(2, V1 | CTRL_VQ | CTRL_RX | EVENT_IDX)
                .template(Addr::Heap(0), 0x80)
                .desc(2, 0, Addr::Heap(0), 3, 1, 1)
                .desc(2, 1, Addr::Ring(2, 0x10), 1, 2, 0)
                .publish(2, 0)
                .used_event(2, 0)
                .kick(2)
                .config(1)
                .build(),
        ),
    ];
    specs
        .into_iter()
        .map(|(n, b)| (format!("seed-{n}"), b))
        .collect()
}
