//! The `virtio_device` seeds reach what they are named for, so the fuzzer starts from inputs
//! that exercise the transmit pump, the software path, the control queue, receive, and the
//! hostile-ring paths.

use volt_net_fuzz::device::{run, Summary};

fn seed(name: &str) -> Summary {
    let (_, bytes) = volt_net_fuzz::device_seeds()
        .into_iter()
        .find(|(n, _)| n == &format!("seed-{name}"))
        .unwrap_or_else(|| panic!("no seed {name}"));
    let s = run(&bytes);
    eprintln!(
        "{name}: acked {:#x} tx {:?} rx {:?} backend {:?} ctrl {:?} checked {} peer {} completed {:?} resets {}",
        s.acked, s.stats.pairs[0].1, s.stats.pairs[0].0, s.stats.pairs[0].2, s.stats.ctrl, s.ctrl_checked, s.peer_frames, s.completed, s.stats.needs_reset
    );
    s
}

#[test]
fn seeds_do_what_they_are_named_for() {
    let s = seed("tx-split-header");
    assert_eq!(s.stats.pairs[0].1.frames, 3);
    assert_eq!(s.peer_frames, 3);

    let s = seed("tx-software-gso");
    assert_eq!(s.stats.pairs[0].1.software, 3);
    assert!(s.peer_frames > 3);

    let s = seed("ctrl-mac-table");
    assert_eq!((s.stats.ctrl.ok, s.stats.ctrl.err), (3, 1));
    assert_eq!(s.ctrl_checked, 4);

    let s = seed("ctrl-mq");
    assert_eq!(s.stats.ctrl.ok, 3);
    assert_eq!(s.stats.pairs[1].1.frames, 1, "sent on the second pair");
    assert_eq!(s.ctrl_checked, 3);

    let s = seed("desc-loop");
    assert_eq!(s.stats.pairs[0].1.bad_chains, 1);
    assert_eq!(s.stats.pairs[0].1.frames, 1);

    let s = seed("avail-jump");
    // The rings were not zeroed: DRIVER_OK looks at them at once, finds the available index
    // still a queue ahead and asks for a reset again (recovery on fresh rings is checked at
    // the end of every input).
    assert_eq!(s.stats.needs_reset, 2);
    assert_eq!(
        s.stats.pairs[0].1.frames, 0,
        "nothing sent from a broken ring"
    );

    let s = seed("indirect-chain");
    assert_eq!(s.stats.pairs[0].1.frames, 2);

    let s = seed("indirect-nested");
    assert_eq!(s.stats.pairs[0].1.bad_chains, 1);

    let s = seed("rx-peer");
    // Two buffers for the largest frame: a TSO frame and a plain one; the third waits.
    assert_eq!(s.stats.pairs[0].0.frames, 2);
    // Waiting at DRIVER_OK (no buffers yet), and again for the third frame.
    assert_eq!(s.stats.pairs[0].0.no_buffers, 2);

    let s = seed("rx-mergeable");
    // Three plain frames and a TCP one in 1536-byte buffers; the 1600-byte frame is above
    // the loopback's MTU.
    assert_eq!(s.stats.pairs[0].0.frames, 4);
    assert_eq!(s.stats.ctrl.ok, 1);

    let s = seed("backpressure");
    assert!(s.stats.pairs[0].1.backend_full >= 1);
    // plain, checksummed, 3 TSO segments, plain: all through a 2-frame backend.
    assert_eq!(s.peer_frames, 6);

    let s = seed("straddle-and-out-of-range");
    let tx = s.stats.pairs[0].1;
    assert_eq!(tx.frames, 1, "the buffer across the region boundary goes");
    assert_eq!(tx.bad_addresses, 2, "past the end, and at u64::MAX");
    assert_eq!(tx.bad_headers, 1, "the descriptor table read as a header");

    let s = seed("ctrl-ack-in-ring");
    assert_eq!(s.stats.ctrl.ok, 1);
}
