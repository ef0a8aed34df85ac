//! Packets per second of the virtqueue pumps on the loopback backend, single queue, at 64 and
//! 1500 bytes, next to a plain `memcpy` of the same bytes in the same run (the floor: the
//! loopback backend itself copies every frame once).
//!
//! ```text
//! cargo bench -p volt-net-bench --bench pumps
//! ```
//! Each measurement is one device call moving a batch of [`BATCH`] frames: TX pops the
//! guest's chains and hands the frames to the backend as guest-memory iovecs; RX takes the
//! guest's mergeable buffers and receives into them. Only the device call is timed (the mock
//! driver's ring writes and the peer's draining are not). Criterion's "elements" are frames.
//! The `tx_pump`/`rx_pump` groups run over the loopback (which copies each frame into its
//! queue and out again, under a lock); the `null` group over the null sink and source (a
//! frame read, or written, once in the calling thread): the pumps' own cost.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io;

use net_api::{IoBuf, IoBufMut};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use net_api::loopback::{pair, Loopback, LoopbackConfig, LoopbackQueue};
use net_api::null::{Null, NullMode};
use net_api::{Backend, QueuePair, TxFrame, VirtioNetHdr};
use net_virtio::features::bit;
use net_virtio::mock::{Desc, MockDriver};
use net_virtio::{DeviceConfig, Event, IrqCause, NetDevice};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Frames per device call.
const BATCH: usize = 128;
const QSIZE: u16 = 256;

type Irq = fn(IrqCause) -> io::Result<()>;

fn no_irq(_: IrqCause) -> io::Result<()> {
    Ok(())
}

struct Rig {
    dev: NetDevice<Loopback, Irq>,
    drv: MockDriver,
    peer: LoopbackQueue,
    _peer_end: Loopback,
}

fn rig() -> Rig {
    let (host, mut peer_end) = pair(LoopbackConfig {
        capacity: 4 * BATCH,
        ..Default::default()
    })
    .expect("loopback");
    let irq: Irq = no_irq;
    let mut dev = NetDevice::new(host, DeviceConfig::default(), irq).expect("device");
    let mut drv = MockDriver::new(64 << 20, dev.num_queues(), QSIZE);
    let features =
        bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_EVENT_IDX);
    drv.start(&mut dev, features).expect("start");
    let peer = peer_end.open_queue_pair(0).expect("peer");
    Rig {
        dev,
        drv,
        peer,
        _peer_end: peer_end,
    }
}

fn frame(len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| i as u8).collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

/// The floor beside each pump case: the same bytes, `BATCH` frames, copied with `memcpy`.
fn memcpy_floor(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, f: &[u8]) {
    let mut dst: Vec<Vec<u8>> = vec![vec![0u8; f.len()]; BATCH];
    g.bench_function(format!("memcpy/{}", f.len()), |b| {
        b.iter(|| {
            for d in dst.iter_mut() {
                d.copy_from_slice(black_box(f));
            }
            black_box(&dst);
        })
    });
}

fn tx(c: &mut Criterion) {
    let mut g = c.benchmark_group("tx_pump");
    for size in [64usize, 1500] {
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut r = rig();
        // Each frame as Linux lays it out: the 12-byte header and the frame in two buffers.
        let f = frame(size);
        let mut hdr = [0u8; 12];
        r.drv
            .layout()
            .encode(&VirtioNetHdr::PLAIN, &mut hdr)
            .expect("header");
        let chains: Vec<[Desc; 2]> = (0..BATCH)
            .map(|_| {
                let h = r.drv.alloc(12);
                r.drv.write(h, &hdr);
                let d = r.drv.alloc(size as u32);
                r.drv.write(d, &f);
                [
                    Desc {
                        addr: h,
                        len: 12,
                        write: false,
                    },
                    Desc {
                        addr: d,
                        len: size as u32,
                        write: false,
                    },
                ]
            })
            .collect();
        let mut sink = vec![0u8; 2048];
        g.bench_function(format!("volt-net/{size}"), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    for ch in &chains {
                        r.drv.queues[1].add_chain(&r.drv.mem, ch).expect("chain");
                    }
                    let start = Instant::now();
                    r.dev.handle(Event::Kick(1), &r.drv.mem).expect("tx");
                    t += start.elapsed();
                    let n = r.drv.queues[1].take_used(&r.drv.mem).len();
                    assert_eq!(n, BATCH);
                    while r
                        .peer
                        .recv(&[IoBufMut::from_mut_slice(&mut sink)])
                        .expect("drain")
                        .is_some()
                    {}
                }
                t
            })
        });
        memcpy_floor(&mut g, &f);
    }
    g.finish();
}

fn rx(c: &mut Criterion) {
    let mut g = c.benchmark_group("rx_pump");
    for size in [64usize, 1500] {
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut r = rig();
        let f = frame(size);
        // Mergeable buffers as Linux posts them.
        let bufs: Vec<[Desc; 1]> = (0..BATCH)
            .map(|_| {
                [Desc {
                    addr: r.drv.alloc(1536),
                    len: 1536,
                    write: true,
                }]
            })
            .collect();
        g.bench_function(format!("volt-net/{size}"), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    for ch in &bufs {
                        r.drv.queues[0].add_chain(&r.drv.mem, ch).expect("chain");
                    }
                    let data = [IoBuf::from_slice(&f)];
                    let frames = vec![
                        TxFrame {
                            hdr: VirtioNetHdr::PLAIN,
                            data: &data
                        };
                        BATCH
                    ];
                    assert_eq!(r.peer.send(&frames).expect("peer send"), BATCH);
                    let start = Instant::now();
                    r.dev.handle(Event::Kick(0), &r.drv.mem).expect("rx");
                    t += start.elapsed();
                    let n = r.drv.queues[0].take_used(&r.drv.mem).len();
                    assert_eq!(n, BATCH);
                }
                t
            })
        });
        memcpy_floor(&mut g, &f);
    }
    g.finish();
}

/// A device over the `null` backend (a sink for TX, a source for RX): the pump alone, with
/// the layouts DPDK's virtio_user uses (header and frame in one descriptor on TX, one
/// 2048-byte buffer per frame on RX).
fn null_rig(mode: NullMode) -> (NetDevice<Null, Irq>, MockDriver) {
    let irq: Irq = no_irq;
    let backend = Null::new(mode, 1).expect("null");
    let mut dev = NetDevice::new(backend, DeviceConfig::default(), irq).expect("device");
    let mut drv = MockDriver::new(64 << 20, dev.num_queues(), QSIZE);
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
    drv.start(&mut dev, features).expect("start");
    (dev, drv)
}

fn null_pumps(c: &mut Criterion) {
    let mut g = c.benchmark_group("null");
    for size in [64usize, 1500] {
        g.throughput(Throughput::Elements(BATCH as u64));
        let (mut dev, mut drv) = null_rig(NullMode::Sink);
        let mut bytes = vec![0u8; 12];
        drv.layout()
            .encode(&VirtioNetHdr::PLAIN, &mut bytes)
            .expect("header");
        bytes.extend_from_slice(&frame(size));
        let chains: Vec<[Desc; 1]> = (0..BATCH)
            .map(|_| {
                let a = drv.alloc(bytes.len() as u32);
                drv.write(a, &bytes);
                [Desc {
                    addr: a,
                    len: bytes.len() as u32,
                    write: false,
                }]
            })
            .collect();
        g.bench_function(format!("tx-sink/{size}"), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    for ch in &chains {
                        drv.queues[1].add_chain(&drv.mem, ch).expect("chain");
                    }
                    let start = Instant::now();
                    dev.handle(Event::Kick(1), &drv.mem).expect("tx");
                    t += start.elapsed();
                    assert_eq!(drv.queues[1].take_used(&drv.mem).len(), BATCH);
                }
                t
            })
        });
        let (mut dev, mut drv) = null_rig(NullMode::Source { len: size });
        let bufs: Vec<[Desc; 1]> = (0..BATCH)
            .map(|_| {
                [Desc {
                    addr: drv.alloc(2048),
                    len: 2048,
                    write: true,
                }]
            })
            .collect();
        g.bench_function(format!("rx-source/{size}"), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    for ch in &bufs {
                        drv.queues[0].add_chain(&drv.mem, ch).expect("chain");
                    }
                    let start = Instant::now();
                    dev.handle(Event::Kick(0), &drv.mem).expect("rx");
                    t += start.elapsed();
                    assert_eq!(drv.queues[0].take_used(&drv.mem).len(), BATCH);
                }
                t
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = tx, rx, null_pumps
}
criterion_main!(benches);
