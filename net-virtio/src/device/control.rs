//! The control queue: commands decoded by [`crate::ctrl`], applied to the device, acked.

use log::{info, warn};
use net_api::Backend;
use virtio_bindings::virtio_net as vn;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use super::{DeviceError, NetDevice};
use crate::ctrl::{Command, CommandReader, Refused, RxMode};
use crate::guest::{self, Direction, Seg};
use crate::irq::Interrupt;
use crate::pump::{PumpError, PumpOutcome, BUDGET};

/// The most control-command bytes read (a MAC table of about 170000 addresses).
const MAX_CTRL_BYTES: u64 = 1 << 20;

impl<B: Backend, I: Interrupt> NetDevice<B, I> {
    pub(super) fn run_ctrl<M: GuestMemory>(&mut self, mem: &M) -> Result<(), DeviceError> {
        let index = self.ctrl_index();
        let res = self.ctrl_pass(index, mem);
        self.after_pump(index, res, (false, false), (false, false))
    }

    fn ctrl_pass<M: GuestMemory>(&mut self, index: u16, mem: &M) -> Result<PumpOutcome, PumpError> {
        let qi = usize::from(index);
        let mut out = PumpOutcome::default();
        let mut budget = BUDGET;
        self.queues[qi].disable_notification(mem)?;
        loop {
            if budget == 0 {
                out.more = true;
                break;
            }
            let Some(chain) = self.queues[qi].iter(mem)?.next() else {
                // Re-arm the driver's notifications (EVENT_IDX: avail_event), then look once
                // more for what it added meanwhile.
                if self.queues[qi].enable_notification(mem)? {
                    self.queues[qi].disable_notification(mem)?;
                    continue;
                }
                break;
            };
            budget -= 1;
            let head = chain.head_index();
            let walked = guest::walk(
                chain,
                Direction::ReadThenWrite,
                usize::from(self.queues[qi].size()),
                MAX_CTRL_BYTES,
                &mut self.ctrl_segs,
            );
            let w = match walked {
                // The ack byte (the first writable segment) must be writable guest memory
                // before the command is applied.
                Ok(w)
                    if w.writable > 0
                        && guest::check(
                            mem,
                            self.ctrl_segs
                                .get(w.readable_segs..=w.readable_segs)
                                .unwrap_or(&[]),
                            vm_memory::Permissions::Write,
                        )
                        .is_ok() =>
                {
                    w
                }
                _ => {
                    self.ctrl_stats.bad_chains += 1;
                    if head < self.queues[qi].size() {
                        self.queues[qi].add_used(mem, head, 0)?;
                        out.completed += 1;
                    }
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
            let written = guest::write_to(mem, segs[w.readable_segs..].iter().copied(), 0, &[ack])
                .unwrap_or(0);
            self.ctrl_segs = segs;
            self.queues[qi].add_used(mem, head, written as u32)?;
            out.completed += 1;
        }
        if out.completed > 0 && self.queues[qi].needs_notification(mem)? {
            out.notify = true;
        }
        Ok(out)
    }

    fn apply<M: GuestMemory>(&mut self, cmd: Command, mem: &M) -> Result<(), Refused> {
        let (old_filter, old_mac) = (self.filter.clone(), self.mac);
        let res = self.apply_inner(cmd, mem);
        if res.is_err() {
            // An ERR leaves the device as it was.
            self.filter = old_filter;
            self.mac = old_mac;
        }
        res
    }

    fn apply_inner<M: GuestMemory>(&mut self, cmd: Command, mem: &M) -> Result<(), Refused> {
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
struct SegReader<'a, M: GuestMemory + ?Sized> {
    mem: &'a M,
    segs: &'a [Seg],
    skip: u64,
    left: u64,
}

impl<M: GuestMemory + ?Sized> CommandReader for SegReader<'_, M> {
    fn remaining(&self) -> u64 {
        self.left
    }

    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), Refused> {
        if out.len() as u64 > self.left {
            return Err(Refused::BadLength);
        }
        let n = guest::read_from(self.mem, self.segs, self.skip as usize, out)
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
