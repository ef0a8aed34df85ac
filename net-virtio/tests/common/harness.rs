//! A device over a loopback backend, driven by the mock driver, with the loopback's other end
//! as the peer.
#![allow(dead_code)]

use std::io;

use net_api::{IoBuf, IoBufMut};
use std::sync::{Arc, Mutex};

use net_api::loopback::{pair, Loopback, LoopbackConfig, LoopbackQueue};
use net_api::{Backend, QueuePair, RxFrame, TxFrame, VirtioNetHdr};
use net_virtio::features::bit;
use net_virtio::mock::{MockDriver, Received};
use net_virtio::{DeviceConfig, Event, IrqCause, NetDevice};
use virtio_bindings::virtio_config as vc;
use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring as vr;

pub type Irqs = Arc<Mutex<Vec<IrqCause>>>;
pub type Irq = Box<dyn Fn(IrqCause) -> io::Result<()> + Send>;
pub type Dev = NetDevice<Loopback, Irq>;

pub const QSIZE: u16 = 256;
pub const MEM: u64 = 64 << 20;

pub struct Rig {
    pub dev: Dev,
    pub drv: MockDriver,
    pub peer: Vec<LoopbackQueue>,
    pub irqs: Irqs,
    _peer_end: Loopback,
}

pub fn v1() -> u64 {
    bit(vc::VIRTIO_F_VERSION_1)
}
pub fn f(n: u32) -> u64 {
    bit(n)
}

/// Every feature a Linux guest would take.
pub fn everything() -> u64 {
    !bit(vc::VIRTIO_F_ACCESS_PLATFORM)
}

pub fn rig(lb: LoopbackConfig, cfg: DeviceConfig, features: u64) -> Rig {
    let pairs = cfg.queue_pairs;
    let (host, mut peer_end) = pair(lb).expect("loopback");
    let irqs: Irqs = Arc::default();
    let sink = Arc::clone(&irqs);
    let irq: Irq = Box::new(move |c| {
        sink.lock().expect("irqs").push(c);
        Ok(())
    });
    let mut dev = NetDevice::new(host, cfg, irq).expect("device");
    let mut drv = MockDriver::new(MEM, dev.num_queues(), QSIZE);
    drv.start(&mut dev, features).expect("driver start");
    let caps = peer_end.capabilities();
    let peer = (0..pairs)
        .map(|i| {
            let mut q = peer_end.open_queue_pair(i).expect("peer queue");
            // The network side takes whatever the guest sends.
            q.set_rx_offloads(caps.rx_offloads).expect("peer offloads");
            q
        })
        .collect();
    Rig {
        dev,
        drv,
        peer,
        irqs,
        _peer_end: peer_end,
    }
}

impl Rig {
    pub fn has(&self, feature: u32) -> bool {
        self.drv.features & bit(feature) != 0
    }

    pub fn ctrl_index(&self) -> u16 {
        if self.has(vn::VIRTIO_NET_F_MQ) {
            self.dev.num_queues() - 1
        } else {
            2
        }
    }

    pub fn ctrl(&mut self, class: u32, cmd: u32, data: &[u8]) -> Option<u8> {
        let c = self.ctrl_index();
        self.drv
            .ctrl(&mut self.dev, c, class as u8, cmd as u8, data)
            .expect("ctrl")
    }

    /// Guest sends on pair `p`; returns the chain's head.
    pub fn guest_send(&mut self, p: u16, hdr: &VirtioNetHdr, frame: &[u8], cuts: &[u32]) -> u16 {
        let h = self
            .drv
            .send(2 * p + 1, hdr, frame, cuts)
            .expect("tx chain");
        self.drv.kick(&mut self.dev, 2 * p + 1).expect("tx kick");
        h
    }

    /// Everything the peer has on queue pair `p`.
    pub fn peer_recv(&mut self, p: u16) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while let Some(RxFrame { hdr, len }) = self.peer[usize::from(p)]
            .recv(&[IoBufMut::from_mut_slice(&mut buf)])
            .expect("peer recv")
        {
            out.push((hdr, buf[..len].to_vec()));
        }
        out
    }

    /// The peer sends a frame toward the guest on pair `p`.
    pub fn peer_send(&mut self, p: u16, hdr: VirtioNetHdr, frame: &[u8]) -> usize {
        let data = [IoBuf::from_slice(frame)];
        self.peer[usize::from(p)]
            .send(&[TxFrame { hdr, data: &data }])
            .expect("peer send")
    }

    /// Posts `n` receive chains on pair `p` sized for the negotiated features.
    pub fn post_rx(&mut self, p: u16, n: usize) {
        let size = self.rx_buffer_size();
        for _ in 0..n {
            self.drv.post_rx(2 * p, &[size]).expect("rx chain");
        }
        self.drv.kick(&mut self.dev, 2 * p).expect("rx kick");
    }

    /// What a Linux guest posts: 1536-byte buffers with MRG_RXBUF, else big enough for the
    /// largest frame (65562 with guest GSO, 1526 without; +4 for a VLAN tag).
    pub fn rx_buffer_size(&self) -> u32 {
        let hdr = self.drv.layout().size() as u32;
        if self.has(vn::VIRTIO_NET_F_MRG_RXBUF) {
            1536
        } else if self.has(vn::VIRTIO_NET_F_GUEST_TSO4)
            || self.has(vn::VIRTIO_NET_F_GUEST_TSO6)
            || self.has(vn::VIRTIO_NET_F_GUEST_UFO)
        {
            65562
        } else {
            hdr + 1518
        }
    }

    pub fn backend_rx(&mut self, p: u16) {
        self.dev
            .handle(Event::BackendRx(p), &self.drv.mem)
            .expect("backend rx");
    }

    pub fn guest_recv(&mut self, p: u16) -> Vec<Received> {
        self.drv.received(2 * p)
    }

    pub fn irq_count(&self, cause: IrqCause) -> usize {
        self.irqs
            .lock()
            .expect("irqs")
            .iter()
            .filter(|c| **c == cause)
            .count()
    }
}

/// Feature sets that matter: header layouts × mergeable × offloads.
pub fn combos(offloads: bool) -> Vec<(&'static str, u64)> {
    let off = if offloads {
        f(vn::VIRTIO_NET_F_CSUM)
            | f(vn::VIRTIO_NET_F_HOST_TSO4)
            | f(vn::VIRTIO_NET_F_HOST_TSO6)
            | f(vn::VIRTIO_NET_F_GUEST_CSUM)
            | f(vn::VIRTIO_NET_F_GUEST_TSO4)
            | f(vn::VIRTIO_NET_F_GUEST_TSO6)
    } else {
        0
    };
    let base = f(vn::VIRTIO_NET_F_MAC)
        | f(vn::VIRTIO_NET_F_CTRL_VQ)
        | f(vn::VIRTIO_NET_F_CTRL_RX)
        | f(vn::VIRTIO_NET_F_MQ)
        | f(vr::VIRTIO_RING_F_EVENT_IDX)
        | off;
    vec![
        ("legacy", base),
        ("legacy+mrg", base | f(vn::VIRTIO_NET_F_MRG_RXBUF)),
        ("v1", base | v1()),
        ("v1+mrg", base | v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF)),
        (
            "v1+mrg+indirect",
            base | v1() | f(vn::VIRTIO_NET_F_MRG_RXBUF) | f(vr::VIRTIO_RING_F_INDIRECT_DESC),
        ),
    ]
}

/// How a [`Misbehaving`] backend breaks the contract.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Deliver every offload whatever the guest enabled (`set_rx_offloads` is ignored).
    pub ignore_rx_offloads: bool,
    /// `send` fails while this is set.
    pub fail_send: Arc<std::sync::atomic::AtomicBool>,
}

/// A loopback end that misbehaves as [`Faults`] says.
pub struct Misbehaving(pub Loopback, pub Faults);

/// A queue pair of [`Misbehaving`].
pub struct MisbehavingQueue(LoopbackQueue, Faults);

impl Backend for Misbehaving {
    type Queue = MisbehavingQueue;
    fn name(&self) -> &str {
        "misbehaving"
    }
    fn capabilities(&self) -> net_api::Capabilities {
        self.0.capabilities()
    }
    fn open_queue_pair(&mut self, index: u16) -> net_api::Result<MisbehavingQueue> {
        let mut q = self.0.open_queue_pair(index)?;
        if self.1.ignore_rx_offloads {
            q.set_rx_offloads(net_api::OffloadSet::ALL)?;
        }
        Ok(MisbehavingQueue(q, self.1.clone()))
    }
}

impl QueuePair for MisbehavingQueue {
    fn index(&self) -> u16 {
        self.0.index()
    }
    fn send(&mut self, frames: &[TxFrame<'_>]) -> net_api::Result<usize> {
        if self.1.fail_send.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(net_api::Error::Disconnected {
                target: "misbehaving".into(),
                why: "test".into(),
            });
        }
        self.0.send(frames)
    }
    fn recv(&mut self, bufs: &[IoBufMut<'_>]) -> net_api::Result<Option<RxFrame>> {
        self.0.recv(bufs)
    }
    fn set_rx_offloads(&mut self, o: net_api::OffloadSet) -> net_api::Result<()> {
        if self.1.ignore_rx_offloads {
            return Ok(());
        }
        self.0.set_rx_offloads(o)
    }
    fn set_attached(&mut self, a: bool) -> net_api::Result<()> {
        self.0.set_attached(a)
    }
    fn rx_readiness(&self) -> net_api::Readiness<'_> {
        self.0.rx_readiness()
    }
    fn tx_readiness(&self) -> net_api::Readiness<'_> {
        self.0.tx_readiness()
    }
    fn stats(&self) -> net_api::QueueStats {
        self.0.stats()
    }
}
