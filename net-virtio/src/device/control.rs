//! The control queue: commands decoded by [`crate::ctrl`], applied to the device, acked.

use log::{info, warn};
use net_api::Backend;
use virtio_bindings::virtio_net as vn;

use super::{DeviceError, NetDevice};
use crate::chain::{self, Direction, Seg};
use crate::ctrl::{Command, CommandReader, Refused, RxMode};
use crate::irq::{Interrupt, IrqCause};
use crate::mem::GuestRegions;
use crate::pump::BUDGET;
use crate::queue::{RingError, SplitQueue};

/// The most control-command bytes read (a MAC table of about 170000 addresses).
const MAX_CTRL_BYTES: u64 = 1 << 20;

impl<B: Backend, I: Interrupt> NetDevice<B, I> {
    pub(super) fn run_ctrl(&mut self, mem: &GuestRegions<'_>) -> Result<(), DeviceError> {
        let index = self.ctrl_index();
        let qi = usize::from(index);
        // The queue is ours for the pass: commands change the device, not this queue.
        let mut queue = std::mem::replace(&mut self.queues[qi], SplitQueue::new(1));
        let res = self.ctrl_pass(&mut queue, mem);
        self.queues[qi] = queue;
        match res {
            Ok((notify, more)) => {
                if notify {
                    self.irq.trigger(IrqCause::Queue(index))?;
                }
                if more {
                    self.kicks[qi].write(1)?;
                }
                Ok(())
            }
            Err(e) => {
                warn!("{}: queue {index}: {e}", self.name);
                self.enter_needs_reset();
                Ok(())
            }
        }
    }

    /// Answers the commands waiting; returns whether to interrupt and whether work is left.
    fn ctrl_pass(
        &mut self,
        queue: &mut SplitQueue,
        mem: &GuestRegions<'_>,
    ) -> Result<(bool, bool), RingError> {
        let mut ring = queue.ring(mem)?;
        let mut budget = BUDGET;
        let mut more = false;
        ring.disable_notification();
        loop {
            if budget == 0 {
                more = true;
                break;
            }
            let Some(head) = ring.pop()? else {
                // Re-arm the driver's notifications (EVENT_IDX: avail_event), then look once
                // more for what it added meanwhile.
                if ring.enable_notification()? {
                    ring.disable_notification();
                    continue;
                }
                break;
            };
            budget -= 1;
            let walked = ring.walk(
                head,
                Direction::ReadThenWrite,
                MAX_CTRL_BYTES,
                &mut self.ctrl_segs,
            );
            let w = match walked {
                // The ack byte (the first writable segment) must be writable guest memory
                // before the command is applied.
                Ok(w)
                    if w.writable > 0
                        && chain::check(
                            mem,
                            self.ctrl_segs
                                .get(w.readable_segs..=w.readable_segs)
                                .unwrap_or(&[]),
                        )
                        .is_ok() =>
                {
                    w
                }
                _ => {
                    self.ctrl_stats.bad_chains += 1;
                    ring.add_used(head, 0);
                    continue;
                }
            };
            let segs = std::mem::take(&mut self.ctrl_segs);
            let mut reader = SegReader {
                mem,
                segs: &segs[..w.readable_segs],
                skip: 0,
                left: w.readable,
            };
            let res = Command::decode(&mut reader, self.acked, self.cfg.queue_pairs)
                .and_then(|cmd| self.apply(cmd, mem));
            let ack = match res {
                Ok(()) => {
                    self.ctrl_stats.ok += 1;
                    vn::VIRTIO_NET_OK as u8
                }
                Err(e) => {
                    self.ctrl_stats.err += 1;
                    info!("{}: control command refused: {e}", self.name);
                    vn::VIRTIO_NET_ERR as u8
                }
            };
            let written = chain::write_to(mem, segs[w.readable_segs..].iter().copied(), 0, &[ack])
                .unwrap_or(0);
            self.ctrl_segs = segs;
            ring.add_used(head, written as u32);
        }
        Ok((ring.needs_notification(), more))
    }

    fn apply(&mut self, cmd: Command, mem: &GuestRegions<'_>) -> Result<(), Refused> {
        let (old_filter, old_mac) = (self.filter.clone(), self.mac);
        let res = self.apply_inner(cmd, mem);
        if res.is_err() {
            // An ERR leaves the device as it was.
            self.filter = old_filter;
            self.mac = old_mac;
        }
        res
    }

    fn apply_inner(&mut self, cmd: Command, mem: &GuestRegions<'_>) -> Result<(), Refused> {
        let backend_err = |e: net_api::Error| {
            warn!("backend refused a control command: {e}");
            Refused::OutOfRange
        };
        match cmd {
            Command::Rx(mode, on) => {
                let f = &mut self.filter;
                match mode {
                    RxMode::Promiscuous => f.promiscuous = on,
                    RxMode::AllMulticast => f.all_multicast = on,
                    RxMode::AllUnicast => f.all_unicast = on,
                    RxMode::NoMulticast => f.no_multicast = on,
                    RxMode::NoUnicast => f.no_unicast = on,
                    RxMode::NoBroadcast => f.no_broadcast = on,
                }
            }
            Command::MacTable { unicast, multicast } => {
                self.filter.set_unicast(unicast.macs, unicast.overflow);
                self.filter
                    .set_multicast(multicast.macs, multicast.overflow);
            }
            Command::MacAddr(mac) => {
                if mac.is_multicast() {
                    return Err(Refused::OutOfRange);
                }
                self.mac = Some(mac);
                self.filter.mac = Some(mac);
            }
            Command::VlanAdd(vid) => {
                self.filter.set_vlan(vid, true);
            }
            Command::VlanDel(vid) => {
                self.filter.set_vlan(vid, false);
            }
            Command::AnnounceAck => {
                self.announce = false;
                return Ok(());
            }
            Command::QueuePairs(n) => {
                if (0..n).any(|i| !self.pair_ready(i, mem)) {
                    return Err(Refused::OutOfRange);
                }
                return self.set_active_pairs(n).map_err(|e| match e {
                    DeviceError::Backend(e) => backend_err(e),
                    _ => Refused::OutOfRange,
                });
            }
            Command::GuestOffloads(bits) => {
                let old = self.guest_rx;
                self.guest_rx = bits;
                if let Err(e) = self.apply_guest_offloads() {
                    self.guest_rx = old;
                    // Best effort to restore what worked before.
                    let _ = self.apply_guest_offloads();
                    return Err(match e {
                        DeviceError::Backend(e) => backend_err(e),
                        _ => Refused::OutOfRange,
                    });
                }
                return Ok(());
            }
        }
        self.push_filter().map_err(|e| match e {
            DeviceError::Backend(e) => backend_err(e),
            _ => Refused::OutOfRange,
        })
    }
}

/// Reads a control command from the readable segments of a chain.
struct SegReader<'a, 'm> {
    mem: &'a GuestRegions<'m>,
    segs: &'a [Seg],
    skip: u64,
    left: u64,
}

impl CommandReader for SegReader<'_, '_> {
    fn remaining(&self) -> u64 {
        self.left
    }

    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), Refused> {
        if out.len() as u64 > self.left {
            return Err(Refused::BadLength);
        }
        let n = chain::read_from(self.mem, self.segs, self.skip as usize, out)
            .map_err(|_| Refused::Unreadable)?;
        if n != out.len() {
            return Err(Refused::Unreadable);
        }
        self.skip += n as u64;
        self.left -= n as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), Refused> {
        if n > self.left {
            return Err(Refused::BadLength);
        }
        self.skip += n;
        self.left -= n;
        Ok(())
    }
}
