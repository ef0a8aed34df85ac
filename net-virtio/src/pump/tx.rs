//! The transmit pump: see the module above for how it works.

use std::io::IoSlice;

use net_api::ether::ETH_HLEN;
use net_api::{QueuePair, TxFrame, VirtioNetHdr};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemory, Permissions};

use super::{
    complete, copy_volatile_from, finish, pop, skip_volatile, PumpError, PumpOutcome, PumpStats,
    BUDGET, MAX_HDR, SEG_BATCH, TX_BATCH,
};
use crate::codec::HdrLayout;
use crate::gso::MAX_SEGMENT_HEADERS;
use crate::guest::{self, ChainError, Direction, Seg};
use crate::translate::{SoftFrame, TxRoute, TxTranslator, HEAD_LEN, MAX_FRAME_LEN};

/// A frame the software path is sending, kept across would-block and budget ends.
#[derive(Debug)]
struct TxPending {
    head: u16,
    soft: SoftFrame,
    len: usize,
    next: usize,
}

/// The transmit pump of one queue.
#[derive(Debug)]
pub struct TxPump {
    layout: HdrLayout,
    translator: TxTranslator,
    buf: Vec<u8>,
    headers: Vec<[u8; MAX_SEGMENT_HEADERS]>,
    segs: Vec<Seg>,
    pending: Option<TxPending>,
    blocked: bool,
    stats: PumpStats,
}

/// Why a chain is dropped; counted when it is completed (a chain given back to the ring is
/// popped and judged again later).
#[derive(Debug, Clone, Copy)]
enum Bad {
    Chain(ChainError),
    Header,
}

/// A chain that ends a batch: dropped, or sent from the pump's own copy.
enum Special {
    Drop(u16, Bad),
    Copy {
        head: u16,
        hdr: VirtioNetHdr,
        /// The frame's guest slices (header excluded), in `vslices`.
        slices: (usize, usize),
        len: usize,
        /// The header to send it with when the backend takes it as it is (the copy is only
        /// for too many slices); `None` for the software path.
        direct: Option<VirtioNetHdr>,
    },
}

enum BatchEnd {
    Empty,
    Blocked,
    Budget,
    Again,
}

/// The frames of one batch: `(head, header, iovec range)`.
type Metas = Vec<(u16, VirtioNetHdr, usize, usize)>;

impl TxPump {
    /// A pump for the header layout the guest negotiated and a backend's translator.
    pub fn new(layout: HdrLayout, translator: TxTranslator) -> TxPump {
        TxPump {
            layout,
            translator,
            buf: vec![0; MAX_FRAME_LEN],
            headers: vec![[0; MAX_SEGMENT_HEADERS]; SEG_BATCH],
            segs: Vec::new(),
            pending: None,
            blocked: false,
            stats: PumpStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> PumpStats {
        self.stats
    }

    /// Whether the last call stopped on a full backend (poll its TX readiness).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Completes a half-sent frame's chain without sending the rest (counted as a drop), so
    /// that the queue's state describes every buffer: call before saving the queue.
    pub fn release<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<PumpOutcome, PumpError> {
        let mut out = PumpOutcome::default();
        if let Some(p) = self.pending.take() {
            self.stats.backend_full += 1;
            complete(queue, mem, p.head, 0, &mut out.completed)?;
        }
        self.blocked = false;
        finish(queue, mem, out, &mut self.stats)
    }

    /// Sends what the guest queued, until the ring is empty, the backend is full or the
    /// budget (chains and software segments) is spent.
    pub fn process<M: GuestMemory, Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        backend: &mut Q,
    ) -> Result<PumpOutcome, PumpError> {
        let mut out = PumpOutcome::default();
        let mut budget = BUDGET;
        self.blocked = false;
        let res = self.run(queue, mem, backend, &mut out, &mut budget);
        out.blocked = self.blocked;
        // Interrupt for what was completed, even when the backend then failed.
        let notified = finish(queue, mem, out, &mut self.stats);
        res?;
        notified
    }

    fn run<M: GuestMemory, Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        backend: &mut Q,
        out: &mut PumpOutcome,
        budget: &mut usize,
    ) -> Result<(), PumpError> {
        loop {
            if self.pending.is_some() {
                self.send_pending(queue, mem, backend, &mut out.completed, budget)?;
                if self.pending.is_some() {
                    if *budget == 0 {
                        out.more = true;
                    } else {
                        self.blocked = true;
                        self.stats.backend_full += 1;
                    }
                    return Ok(());
                }
            }
            queue.disable_notification(mem)?;
            match self.batch(queue, mem, backend, &mut out.completed, budget)? {
                BatchEnd::Again => continue,
                BatchEnd::Blocked => {
                    self.blocked = true;
                    self.stats.backend_full += 1;
                    return Ok(());
                }
                BatchEnd::Budget => {
                    out.more = true;
                    return Ok(());
                }
                BatchEnd::Empty => {
                    if !queue.enable_notification(mem)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn count_bad(&mut self, bad: Bad) {
        match bad {
            Bad::Chain(e) => self.stats.chain_error(e),
            Bad::Header => self.stats.bad_headers += 1,
        }
    }

    /// Pops up to a batch of chains and sends the direct ones; stops early at a chain that
    /// needs special handling, which is handled after the batch went out.
    fn batch<M: GuestMemory, Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        backend: &mut Q,
        done: &mut u32,
        budget: &mut usize,
    ) -> Result<BatchEnd, PumpError> {
        let hdr_len = self.layout.size();
        let mut vslices = Vec::with_capacity(TX_BATCH * 2);
        let mut metas: Metas = Vec::with_capacity(TX_BATCH);
        let mut special = None;
        let mut ran_dry = false;
        while metas.len() < TX_BATCH && special.is_none() && *budget > 0 {
            let Some(chain) = pop(queue, mem)? else {
                ran_dry = true;
                break;
            };
            *budget -= 1;
            let head = chain.head_index();
            let max = (hdr_len + MAX_FRAME_LEN) as u64;
            let walked = guest::walk(
                chain,
                Direction::Read,
                usize::from(queue.size()),
                max,
                &mut self.segs,
            );
            let walked = match walked {
                Ok(w) => w,
                Err(e) => {
                    special = Some(Special::Drop(head, Bad::Chain(e)));
                    break;
                }
            };
            let total = walked.readable as usize;
            if total < hdr_len + ETH_HLEN {
                special = Some(Special::Drop(head, Bad::Header));
                break;
            }
            let len = total - hdr_len;
            // Each descriptor resolved once.
            let start = vslices.len();
            let mut bad = false;
            for &seg in &self.segs {
                if guest::for_each_slice(mem, seg, 0, Permissions::Read, |s| vslices.push(s))
                    .is_err()
                {
                    bad = true;
                    break;
                }
            }
            if bad {
                vslices.truncate(start);
                special = Some(Special::Drop(head, Bad::Chain(ChainError::BadAddress)));
                break;
            }
            // The header and the head of the frame: copies of our own, read once.
            let mut hbuf = [0u8; MAX_HDR];
            let mut head_bytes = [0u8; HEAD_LEN];
            let hn = copy_volatile_from(&vslices[start..], 0, &mut hbuf[..hdr_len]);
            let head_n = copy_volatile_from(&vslices[start..], hdr_len, &mut head_bytes);
            let Ok(hdr) = self.layout.decode(&hbuf[..hn]) else {
                vslices.truncate(start);
                special = Some(Special::Drop(head, Bad::Header));
                break;
            };
            // The frame's slices start after the header.
            let (first, off) = skip_volatile(&vslices, start, hdr_len);
            if let Some(rest) = vslices.get(first).and_then(|s| s.offset(off).ok()) {
                vslices[first] = rest;
            }
            let range = (first, vslices.len());
            match self.translator.route(&hdr, len, &head_bytes[..head_n]) {
                Ok(TxRoute::Direct(h)) if range.1 - range.0 <= net_api::MAX_IOVECS => {
                    metas.push((head, h, range.0, range.1))
                }
                Ok(TxRoute::Direct(h)) => {
                    special = Some(Special::Copy {
                        head,
                        hdr,
                        slices: range,
                        len,
                        direct: Some(h),
                    })
                }
                Ok(TxRoute::Software) => {
                    special = Some(Special::Copy {
                        head,
                        hdr,
                        slices: range,
                        len,
                        direct: None,
                    })
                }
                Err(_) => {
                    vslices.truncate(start);
                    special = Some(Special::Drop(head, Bad::Header));
                }
            }
        }

        if !metas.is_empty() {
            let sent = match send_direct(backend, &vslices, &metas) {
                Ok((sent, bytes)) => {
                    self.stats.frames += sent as u64;
                    self.stats.bytes += bytes;
                    sent
                }
                Err(e) => {
                    // Nothing of this batch is lost: every chain goes back to the ring.
                    let back = metas.len() + usize::from(special.is_some());
                    queue.set_next_avail(queue.next_avail().wrapping_sub(back as u16));
                    return Err(e.into());
                }
            };
            for &(head, _, _, _) in &metas[..sent] {
                complete(queue, mem, head, 0, done)?;
            }
            if sent < metas.len() {
                // Give the chains the backend did not take back to the ring, in order.
                let back = metas.len() - sent + usize::from(special.is_some());
                queue.set_next_avail(queue.next_avail().wrapping_sub(back as u16));
                return Ok(BatchEnd::Blocked);
            }
        }
        match special {
            None if ran_dry => Ok(BatchEnd::Empty),
            None if *budget == 0 => Ok(BatchEnd::Budget),
            None => Ok(BatchEnd::Again),
            Some(Special::Drop(head, bad)) => {
                self.count_bad(bad);
                complete(queue, mem, head, 0, done)?;
                Ok(BatchEnd::Again)
            }
            Some(Special::Copy {
                head,
                hdr,
                slices: (a, b),
                len,
                direct,
            }) => {
                // The one copy of the software path, into our own buffer: everything the
                // translator parses is ours from here on.
                let n = copy_volatile_from(&vslices[a..b], 0, &mut self.buf[..len]);
                let soft = match direct {
                    Some(h) => Ok(SoftFrame::Whole(h)),
                    None => self.translator.software(&hdr, &mut self.buf[..n]),
                };
                match soft {
                    Ok(soft) => {
                        if direct.is_none() {
                            self.stats.software += 1;
                        }
                        // Sent, and completed, by the caller's loop.
                        self.pending = Some(TxPending {
                            head,
                            soft,
                            len: n,
                            next: 0,
                        });
                    }
                    Err(_) => {
                        self.stats.bad_headers += 1;
                        complete(queue, mem, head, 0, done)?;
                    }
                }
                Ok(BatchEnd::Again)
            }
        }
    }

    /// Sends what is left of the pending frame, a segment per unit of budget; keeps it when
    /// the backend is full or the budget ends, completes its chain when it is all out.
    fn send_pending<M: GuestMemory, Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        backend: &mut Q,
        done: &mut u32,
        budget: &mut usize,
    ) -> Result<(), PumpError> {
        let Some(mut p) = self.pending.take() else {
            return Ok(());
        };
        let frame = &self.buf[..p.len];
        let finished = match &p.soft {
            SoftFrame::Whole(hdr) => {
                let data = [IoSlice::new(frame)];
                let res = backend.send(&[TxFrame {
                    hdr: *hdr,
                    data: &data,
                }]);
                match res {
                    Ok(0) => false,
                    Ok(_) => {
                        self.stats.frames += 1;
                        self.stats.bytes += p.len as u64;
                        true
                    }
                    Err(e) => {
                        self.pending = Some(p);
                        return Err(e.into());
                    }
                }
            }
            SoftFrame::Segments(seg) => {
                let mut finished = true;
                while p.next < seg.count() {
                    let n = (seg.count() - p.next).min(SEG_BATCH).min(*budget);
                    if n == 0 {
                        finished = false;
                        break;
                    }
                    let mut plan = [(VirtioNetHdr::PLAIN, 0usize, 0usize, 0usize); SEG_BATCH];
                    for (i, (h, slot)) in plan[..n]
                        .iter_mut()
                        .zip(self.headers.iter_mut())
                        .enumerate()
                    {
                        let s = seg.segment(p.next + i, frame, slot);
                        *h = (s.hdr, s.header_len, s.payload.start, s.payload.end);
                    }
                    let data: Vec<[IoSlice<'_>; 2]> = plan[..n]
                        .iter()
                        .zip(self.headers.iter())
                        .map(|(&(_, hl, a, b), hdrs)| {
                            [IoSlice::new(&hdrs[..hl]), IoSlice::new(&frame[a..b])]
                        })
                        .collect();
                    let frames: Vec<TxFrame<'_>> = plan[..n]
                        .iter()
                        .zip(data.iter())
                        .map(|(&(hdr, _, _, _), d)| TxFrame { hdr, data: d })
                        .collect();
                    let sent = match backend.send(&frames) {
                        Ok(sent) => sent.min(n),
                        Err(e) => {
                            drop(frames);
                            self.pending = Some(p);
                            return Err(e.into());
                        }
                    };
                    self.stats.frames += sent as u64;
                    self.stats.bytes += frames[..sent].iter().map(|f| f.len() as u64).sum::<u64>();
                    p.next += sent;
                    *budget = budget.saturating_sub(sent);
                    if sent < n {
                        finished = false;
                        break;
                    }
                }
                finished
            }
        };
        if finished {
            complete(queue, mem, p.head, 0, done)?;
        } else {
            self.pending = Some(p);
        }
        Ok(())
    }
}

/// Hands a batch of direct frames to the backend as iovecs over guest memory; returns how many
/// it took and their bytes. The iovecs and their mapping guards end here, before the caller
/// touches the used ring.
fn send_direct<B: vm_memory::bitmap::BitmapSlice, Q: QueuePair + ?Sized>(
    backend: &mut Q,
    vslices: &[vm_memory::VolatileSlice<'_, B>],
    metas: &Metas,
) -> Result<(usize, u64), net_api::Error> {
    let mut guards = Vec::with_capacity(vslices.len());
    let iovs: Vec<IoSlice<'_>> = vslices
        .iter()
        .map(|s| guest::io_slice(s, &mut guards))
        .collect();
    let frames: Vec<TxFrame<'_>> = metas
        .iter()
        .map(|&(_, hdr, a, b)| TxFrame {
            hdr,
            data: &iovs[a..b],
        })
        .collect();
    let sent = backend.send(&frames)?.min(frames.len());
    let bytes = frames[..sent].iter().map(|f| f.len() as u64).sum();
    Ok((sent, bytes))
}
