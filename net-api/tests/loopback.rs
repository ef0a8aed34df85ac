//! The loopback backend keeps the queue-pair contract: byte-exact delivery, atomic frames,
//! backpressure, level-triggered readiness, drops by reason.

use net_api::{IoBuf, IoBufMut};
use std::os::fd::BorrowedFd;

use net_api::hdr::NEEDS_CSUM;
use net_api::loopback::{pair, LoopbackConfig};
use net_api::{Backend, DropReason, Error, GsoType, OffloadSet, QueuePair, TxFrame, VirtioNetHdr};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

fn ready(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
}

fn frame(n: usize, tag: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8) ^ tag).collect()
}

fn plain<'a>(data: &'a [IoBuf<'a>]) -> TxFrame<'a> {
    TxFrame {
        hdr: VirtioNetHdr::PLAIN,
        data,
    }
}

#[test]
fn scatter_gather_frames_arrive_byte_exact_in_order() {
    let (mut a, mut b) = pair(LoopbackConfig::default()).expect("pair");
    let (mut qa, mut qb) = (
        a.open_queue_pair(0).expect("a0"),
        b.open_queue_pair(0).expect("b0"),
    );
    let f1 = frame(1514, 1);
    let f2 = frame(60, 2);
    let parts1 = [
        IoBuf::from_slice(&f1[..7]),
        IoBuf::from_slice(&f1[7..1000]),
        IoBuf::from_slice(&f1[1000..]),
    ];
    let parts2 = [IoBuf::from_slice(&f2)];
    let sent = qa.send(&[plain(&parts1), plain(&parts2)]).expect("send");
    assert_eq!(sent, 2);
    for want in [&f1, &f2] {
        let (mut x, mut y) = (vec![0u8; 100], vec![0u8; 1500]);
        let got = qb
            .recv(&[
                IoBufMut::from_mut_slice(&mut x),
                IoBufMut::from_mut_slice(&mut y),
            ])
            .expect("recv")
            .expect("a frame");
        assert_eq!(got.len, want.len());
        let mut joined = x.clone();
        joined.extend_from_slice(&y);
        assert_eq!(&joined[..got.len], &want[..]);
    }
    let mut buf = [0u8; 1514];
    assert_eq!(
        qb.recv(&[IoBufMut::from_mut_slice(&mut buf)])
            .expect("recv"),
        None
    );
    let (sa, sb) = (qa.stats(), qb.stats());
    assert_eq!((sa.tx_packets, sa.tx_bytes), (2, 1574));
    assert_eq!((sb.rx_packets, sb.rx_bytes), (2, 1574));
}

#[test]
fn backpressure_and_readiness() {
    let cfg = LoopbackConfig {
        capacity: 2,
        ..LoopbackConfig::default()
    };
    let (mut a, mut b) = pair(cfg).expect("pair");
    let (mut qa, mut qb) = (
        a.open_queue_pair(0).expect("a0"),
        b.open_queue_pair(0).expect("b0"),
    );
    assert!(!ready(qb.rx_readiness().fd), "nothing to read yet");
    assert!(ready(qa.tx_readiness().fd), "room to send");
    let f = frame(64, 0);
    let data = [IoBuf::from_slice(&f)];
    let batch = [plain(&data); 3];
    assert_eq!(qa.send(&batch).expect("send"), 2, "third frame held back");
    assert_eq!(qa.stats().tx_would_block, 1);
    assert!(!ready(qa.tx_readiness().fd), "full: not writable");
    assert!(ready(qb.rx_readiness().fd), "frames wait");
    assert_eq!(qa.send(&batch[2..]).expect("send"), 0, "still full");
    let mut buf = vec![0u8; 1514];
    assert!(qb
        .recv(&[IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv")
        .is_some());
    assert!(ready(qa.tx_readiness().fd), "room again after a receive");
    assert_eq!(qa.send(&batch[2..]).expect("send"), 1);
    assert!(qb
        .recv(&[IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv")
        .is_some());
    assert!(qb
        .recv(&[IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv")
        .is_some());
    assert!(qb
        .recv(&[IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv")
        .is_none());
    assert!(!ready(qb.rx_readiness().fd), "drained");
}

#[test]
fn drops_are_counted_by_reason_and_the_batch_goes_on() {
    let cfg = LoopbackConfig {
        vnet_hdr: true,
        offloads: OffloadSet::CSUM,
        ..LoopbackConfig::default()
    };
    let (mut a, mut b) = pair(cfg).expect("pair");
    let (mut qa, mut qb) = (
        a.open_queue_pair(0).expect("a0"),
        b.open_queue_pair(0).expect("b0"),
    );
    let big = frame(1600, 0);
    let runt = frame(10, 0);
    let ok = frame(100, 0);
    let tso = VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type: GsoType::TcpV4.raw(),
        gso_size: 1448,
        ..VirtioNetHdr::PLAIN
    };
    let csum = VirtioNetHdr {
        flags: NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VirtioNetHdr::PLAIN
    };
    let (d_big, d_runt, d_ok) = (
        [IoBuf::from_slice(&big)],
        [IoBuf::from_slice(&runt)],
        [IoBuf::from_slice(&ok)],
    );
    let n = qa
        .send(&[
            plain(&d_big),
            plain(&d_runt),
            TxFrame {
                hdr: tso,
                data: &d_ok,
            },
            TxFrame {
                hdr: csum,
                data: &d_ok,
            },
        ])
        .expect("send");
    assert_eq!(n, 4, "refused frames are consumed");
    let s = qa.stats();
    assert_eq!(s.tx_drops.get(DropReason::TooLarge), 1);
    assert_eq!(s.tx_drops.get(DropReason::Runt), 1);
    assert_eq!(s.tx_drops.get(DropReason::UnsupportedOffload), 1);
    assert_eq!(s.tx_packets, 1);
    // The receiver has not enabled CSUM: the partial-checksum frame is dropped there.
    let mut buf = vec![0u8; 1514];
    assert_eq!(
        qb.recv(&[IoBufMut::from_mut_slice(&mut buf)])
            .expect("recv"),
        None
    );
    assert_eq!(qb.stats().rx_drops.get(DropReason::UnsupportedOffload), 1);
    // Once enabled, it arrives with its header.
    qb.set_rx_offloads(OffloadSet::CSUM)
        .expect("CSUM is deliverable");
    let with_csum = TxFrame {
        hdr: csum,
        data: &d_ok,
    };
    qa.send(&[with_csum]).expect("send");
    let got = qb
        .recv(&[IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv")
        .expect("frame");
    assert_eq!(got.hdr, csum);
    // Too small a buffer: truncated, dropped, counted.
    qa.send(&[plain(&d_ok)]).expect("send");
    let mut small = [0u8; 99];
    assert_eq!(
        qb.recv(&[IoBufMut::from_mut_slice(&mut small)])
            .expect("recv"),
        None
    );
    assert_eq!(qb.stats().rx_drops.get(DropReason::Truncated), 1);
    let e = qb
        .set_rx_offloads(OffloadSet::TSO4)
        .expect_err("not deliverable");
    assert!(e.to_string().contains("enable a subset"), "{e}");
}

#[test]
fn queue_pairs_are_independent_and_opened_once() {
    let cfg = LoopbackConfig {
        queue_pairs: 4,
        ..LoopbackConfig::default()
    };
    let (mut a, mut b) = pair(cfg).expect("pair");
    let mut qa: Vec<_> = (0..4)
        .map(|i| a.open_queue_pair(i).expect("open"))
        .collect();
    let mut qb: Vec<_> = (0..4)
        .map(|i| b.open_queue_pair(i).expect("open"))
        .collect();
    assert!(matches!(
        a.open_queue_pair(4),
        Err(Error::NoSuchQueue {
            index: 4,
            max: 4,
            ..
        })
    ));
    assert!(matches!(
        a.open_queue_pair(1),
        Err(Error::QueueInUse { index: 1, .. })
    ));
    for (i, q) in qa.iter_mut().enumerate() {
        let f = frame(60 + i, i as u8);
        q.send(&[plain(&[IoBuf::from_slice(&f)])]).expect("send");
    }
    for (i, q) in qb.iter_mut().enumerate() {
        let mut buf = [0u8; 1514];
        let got = q
            .recv(&[IoBufMut::from_mut_slice(&mut buf)])
            .expect("recv")
            .expect("frame");
        assert_eq!(got.len, 60 + i, "queue {i} got its own frame");
    }
    drop(qa.remove(1));
    assert!(
        a.open_queue_pair(1).is_ok(),
        "dropping a queue pair frees its index"
    );
}

#[test]
fn bad_configs_are_refused_with_advice() {
    let e = pair(LoopbackConfig {
        queue_pairs: 0,
        ..LoopbackConfig::default()
    })
    .expect_err("0 queues");
    assert!(e.to_string().contains("at least 1"), "{e}");
    assert!(pair(LoopbackConfig {
        capacity: 0,
        ..LoopbackConfig::default()
    })
    .is_err());
}

#[test]
fn a_queue_pair_moves_between_threads() {
    let (mut a, mut b) = pair(LoopbackConfig::default()).expect("pair");
    let mut qa = a.open_queue_pair(0).expect("a0");
    let mut qb = b.open_queue_pair(0).expect("b0");
    let t = std::thread::spawn(move || {
        let f = frame(200, 9);
        let data = [IoBuf::from_slice(&f)];
        for _ in 0..100 {
            while qa.send(&[plain(&data)]).expect("send") == 0 {
                std::thread::yield_now();
            }
        }
    });
    let mut got = 0;
    let mut buf = [0u8; 1514];
    while got < 100 {
        match qb
            .recv(&[IoBufMut::from_mut_slice(&mut buf)])
            .expect("recv")
        {
            Some(r) => {
                assert_eq!(&buf[..r.len], &frame(200, 9)[..]);
                got += 1;
            }
            None => std::thread::yield_now(),
        }
    }
    t.join().expect("sender");
}

#[test]
fn detached_queue_pairs_are_steered_around_and_drained() {
    let cfg = LoopbackConfig {
        queue_pairs: 3,
        ..Default::default()
    };
    let (mut a, mut b) = pair(cfg).expect("pair");
    let mut qa: Vec<_> = (0..3)
        .map(|i| a.open_queue_pair(i).expect("open"))
        .collect();
    let mut qb: Vec<_> = (0..3)
        .map(|i| b.open_queue_pair(i).expect("open"))
        .collect();
    let f = frame(60, 7);
    let data = [IoBuf::from_slice(&f)];
    let mut buf = vec![0u8; 1518];

    // One frame waits on b's queue 2 when it is detached: it is dropped, not left behind.
    assert_eq!(qa[2].send(&[plain(&data)]).expect("send"), 1);
    qb[2].set_attached(false).expect("detach");
    assert_eq!(qb[2].stats().rx_drops.get(DropReason::HostError), 1);
    assert!(!ready(qb[2].rx_readiness().fd));
    assert!(qb[2]
        .recv(&[IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv")
        .is_none());
    assert!(
        qb[2].send(&[plain(&data)]).is_err(),
        "a detached queue does not send"
    );

    // What a sends to queue 2 now reaches the lowest attached queue of b.
    qb[0].set_attached(false).expect("detach");
    assert_eq!(qa[2].send(&[plain(&data)]).expect("send"), 1);
    assert!(ready(qb[1].rx_readiness().fd));
    let got = qb[1]
        .recv(&[IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv");
    assert_eq!(got.map(|g| g.len), Some(60));
    assert_eq!(&buf[..60], &f[..]);

    // Nothing attached: counted as dropped on the sender.
    qb[1].set_attached(false).expect("detach");
    assert_eq!(qa[0].send(&[plain(&data)]).expect("send"), 1);
    assert_eq!(qa[0].stats().tx_drops.get(DropReason::HostError), 1);

    // Attached again: frames flow on the queue itself.
    qb[2].set_attached(true).expect("attach");
    assert_eq!(qa[2].send(&[plain(&data)]).expect("send"), 1);
    let got = qb[2]
        .recv(&[IoBufMut::from_mut_slice(&mut buf)])
        .expect("recv");
    assert_eq!(got.map(|g| g.len), Some(60));
}
