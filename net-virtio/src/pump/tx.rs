//! The transmit pump: see the module above for how it works.

use net_api::ether::ETH_HLEN;
use net_api::{IoBuf, QueuePair, TxFrame, VirtioNetHdr};

use super::{finish, recycle, PumpError, PumpOutcome, PumpStats, MAX_HDR, SEG_BATCH, TX_BATCH};
use crate::chain::{self, ChainError, Direction, Seg};
use crate::codec::HdrLayout;
use crate::gso::MAX_SEGMENT_HEADERS;
use crate::mem::GuestRegions;
use crate::queue::{Ring, SplitQueue};
use crate::translate::{SoftFrame, TxRoute, TxTranslator, HEAD_LEN, MAX_FRAME_LEN};

/// A frame the software path is sending, kept across would-block and budget ends.
#[derive(Debug)]
struct TxPending {
    head: u16,
    soft: SoftFrame,
    len: usize,
    next: usize,
}

/// One frame of a batch: its chain, the header to send it with, its buffers (`bufs[a..b]`),
/// its length.
#[derive(Debug, Clone, Copy)]
struct Meta {
    head: u16,
    hdr: VirtioNetHdr,
    a: usize,
    b: usize,
    len: usize,
}

/// The transmit pump of one queue.
#[derive(Debug)]
pub struct TxPump {
    layout: HdrLayout,
    translator: TxTranslator,
    buf: Vec<u8>,
    headers: Vec<[u8; MAX_SEGMENT_HEADERS]>,
    segs: Vec<Seg>,
    metas: Vec<Meta>,
    /// Allocations kept between calls (empty; see `recycle`).
    bufs_store: Vec<IoBuf<'static>>,
    frames_store: Vec<TxFrame<'static>>,
    pending: Option<TxPending>,
    blocked: bool,
    polling: bool,
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
        /// The frame's buffers (header excluded), `bufs[a..b]`.
        a: usize,
        b: usize,
        len: usize,
        /// The header to send it with when the backend takes it as it is (the copy is only
        /// for too many buffers); `None` for the software path.
        direct: Option<VirtioNetHdr>,
    },
}

enum BatchEnd {
    Empty,
    Blocked,
    Budget,
    Again,
}

impl TxPump {
    /// A pump for the header layout the guest negotiated and a backend's translator.
    pub fn new(layout: HdrLayout, translator: TxTranslator) -> TxPump {
        TxPump {
            layout,
            translator,
            buf: vec![0; MAX_FRAME_LEN],
            headers: vec![[0; MAX_SEGMENT_HEADERS]; SEG_BATCH],
            segs: Vec::with_capacity(16),
            metas: Vec::with_capacity(TX_BATCH),
            bufs_store: Vec::with_capacity(TX_BATCH * 2),
            frames_store: Vec::with_capacity(TX_BATCH),
            pending: None,
            blocked: false,
            polling: false,
            stats: PumpStats::default(),
        }
    }

    /// Polling: when the ring runs dry the driver is not asked to kick (the caller looks at
    /// the ring again soon); turning it off re-arms on the next call.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
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
    pub fn release(
        &mut self,
        queue: &mut SplitQueue,
        mem: &GuestRegions<'_>,
    ) -> Result<PumpOutcome, PumpError> {
        let mut ring = queue.ring(mem)?;
        let mut out = PumpOutcome::default();
        if let Some(p) = self.pending.take() {
            self.stats.backend_full += 1;
            if ring.add_used(p.head, 0) {
                out.completed += 1;
            }
        }
        self.blocked = false;
        Ok(finish(&mut ring, out, &mut self.stats))
    }

    /// Sends what the guest queued, until the ring is empty, the backend is full or `budget`
    /// (chains and software segments) is spent.
    pub fn process<Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut SplitQueue,
        mem: &GuestRegions<'_>,
        backend: &mut Q,
        budget: usize,
    ) -> Result<PumpOutcome, PumpError> {
        let mut ring = queue.ring(mem)?;
        let mut out = PumpOutcome::default();
        let mut budget = budget;
        self.blocked = false;
        let res = self.run(&mut ring, backend, &mut out, &mut budget);
        out.blocked = self.blocked;
        // Interrupt for what was completed, even when the backend then failed.
        let out = finish(&mut ring, out, &mut self.stats);
        res.map(|()| out)
    }

    fn run<Q: QueuePair + ?Sized>(
        &mut self,
        ring: &mut Ring<'_, '_>,
        backend: &mut Q,
        out: &mut PumpOutcome,
        budget: &mut usize,
    ) -> Result<(), PumpError> {
        loop {
            if self.pending.is_some() {
                self.send_pending(ring, backend, &mut out.completed, budget)?;
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
            ring.disable_notification();
            match self.batch(ring, backend, &mut out.completed, budget)? {
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
                    if self.polling || !ring.enable_notification()? {
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
    fn batch<Q: QueuePair + ?Sized>(
        &mut self,
        ring: &mut Ring<'_, '_>,
        backend: &mut Q,
        done: &mut u32,
        budget: &mut usize,
    ) -> Result<BatchEnd, PumpError> {
        let mem = ring.memory();
        let hdr_len = self.layout.size();
        let max = (hdr_len + MAX_FRAME_LEN) as u64;
        let mut bufs: Vec<IoBuf<'_>> = recycle(std::mem::take(&mut self.bufs_store));
        self.metas.clear();
        let mut special = None;
        let mut ran_dry = false;
        while self.metas.len() < TX_BATCH && special.is_none() && *budget > 0 {
            let Some(head) = ring.pop()? else {
                ran_dry = true;
                break;
            };
            *budget -= 1;
            let start = bufs.len();
            // The common shape first: one readable descriptor holding header and frame, in one
            // memory region (what Linux and DPDK send when the header fits in front of the
            // frame). The general walk gives the same verdict on it.
            let fast = ring
                .desc(head)
                .filter(|d| {
                    d.flags == 0 && d.len as usize >= hdr_len + ETH_HLEN && u64::from(d.len) <= max
                })
                .and_then(|d| mem.buf(d.addr, u64::from(d.len)));
            let total = match fast {
                Some(b) => {
                    bufs.push(b);
                    b.len()
                }
                None => {
                    let walked = match ring.walk(head, Direction::Read, max, &mut self.segs) {
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
                    // Each descriptor resolved once.
                    if chain::bufs(mem, &self.segs, 0, &mut bufs).is_err() {
                        bufs.truncate(start);
                        special = Some(Special::Drop(head, Bad::Chain(ChainError::BadAddress)));
                        break;
                    }
                    total
                }
            };
            let len = total - hdr_len;
            // The header: a copy of our own, read once.
            let mut hbuf = [0u8; MAX_HDR];
            let hn = net_api::iovec::read_bufs(&bufs[start..], 0, &mut hbuf[..hdr_len]);
            let Ok(hdr) = self.layout.decode(&hbuf[..hn]) else {
                bufs.truncate(start);
                special = Some(Special::Drop(head, Bad::Header));
                break;
            };
            let a = skip_header(&mut bufs, start, hdr_len);
            let b = bufs.len();
            // The head of the frame matters only to a header that asks for offloads.
            let mut head_bytes = [0u8; HEAD_LEN];
            let head_n = if hdr.is_plain() {
                0
            } else {
                net_api::iovec::read_bufs(&bufs[a..], 0, &mut head_bytes)
            };
            match self.translator.route(&hdr, len, &head_bytes[..head_n]) {
                Ok(TxRoute::Direct(h)) if b - a <= net_api::MAX_IOVECS => self.metas.push(Meta {
                    head,
                    hdr: h,
                    a,
                    b,
                    len,
                }),
                Ok(TxRoute::Direct(h)) => {
                    special = Some(Special::Copy {
                        head,
                        hdr,
                        a,
                        b,
                        len,
                        direct: Some(h),
                    })
                }
                Ok(TxRoute::Software) => {
                    special = Some(Special::Copy {
                        head,
                        hdr,
                        a,
                        b,
                        len,
                        direct: None,
                    })
                }
                Err(_) => {
                    bufs.truncate(start);
                    special = Some(Special::Drop(head, Bad::Header));
                }
            }
        }

        let end = self.finish_batch(ring, backend, &bufs, special.is_some(), done);
        let end = match end {
            Ok(None) => Ok(match special {
                None if ran_dry => BatchEnd::Empty,
                None if *budget == 0 => BatchEnd::Budget,
                None => BatchEnd::Again,
                Some(Special::Drop(head, bad)) => {
                    self.count_bad(bad);
                    if ring.add_used(head, 0) {
                        *done += 1;
                    }
                    BatchEnd::Again
                }
                Some(Special::Copy {
                    head,
                    hdr,
                    a,
                    b,
                    len,
                    direct,
                }) => {
                    self.copy_frame(ring, &bufs[a..b], head, &hdr, len, direct, done);
                    BatchEnd::Again
                }
            }),
            Ok(Some(end)) => Ok(end),
            Err(e) => Err(e),
        };
        self.bufs_store = recycle(bufs);
        end
    }

    /// Hands the batch's direct frames to the backend and completes what it took; gives the
    /// rest (and the special chain after them) back to the ring when it is full. `Some` ends
    /// the batch there.
    fn finish_batch<Q: QueuePair + ?Sized>(
        &mut self,
        ring: &mut Ring<'_, '_>,
        backend: &mut Q,
        bufs: &[IoBuf<'_>],
        special: bool,
        done: &mut u32,
    ) -> Result<Option<BatchEnd>, PumpError> {
        if self.metas.is_empty() {
            return Ok(None);
        }
        let mut frames: Vec<TxFrame<'_>> = recycle(std::mem::take(&mut self.frames_store));
        frames.extend(self.metas.iter().map(|m| TxFrame {
            hdr: m.hdr,
            data: &bufs[m.a..m.b],
        }));
        let res = backend.send(&frames);
        let sent = match res {
            Ok(sent) => sent.min(frames.len()),
            Err(e) => {
                self.frames_store = recycle(frames);
                // Nothing of this batch is lost: every chain goes back to the ring.
                ring.rewind((self.metas.len() + usize::from(special)) as u16);
                return Err(e.into());
            }
        };
        self.frames_store = recycle(frames);
        let bytes: u64 = self.metas[..sent].iter().map(|m| m.len as u64).sum();
        self.stats.frames += sent as u64;
        self.stats.bytes += bytes;
        for m in &self.metas[..sent] {
            if ring.add_used(m.head, 0) {
                *done += 1;
            }
        }
        if sent < self.metas.len() {
            // Give the chains the backend did not take back to the ring, in order.
            ring.rewind((self.metas.len() - sent + usize::from(special)) as u16);
            return Ok(Some(BatchEnd::Blocked));
        }
        Ok(None)
    }

    /// The one copy of the software path (or of a frame with too many buffers), into our own
    /// buffer: everything the translator parses is ours from here on. The frame is then sent
    /// (and completed) by the caller's loop.
    #[allow(clippy::too_many_arguments)]
    fn copy_frame(
        &mut self,
        ring: &mut Ring<'_, '_>,
        bufs: &[IoBuf<'_>],
        head: u16,
        hdr: &VirtioNetHdr,
        len: usize,
        direct: Option<VirtioNetHdr>,
        done: &mut u32,
    ) {
        let n = net_api::iovec::read_bufs(bufs, 0, &mut self.buf[..len]);
        let soft = match direct {
            Some(h) => Ok(SoftFrame::Whole(h)),
            None => self.translator.software(hdr, &mut self.buf[..n]),
        };
        match soft {
            Ok(soft) => {
                if direct.is_none() {
                    self.stats.software += 1;
                }
                self.pending = Some(TxPending {
                    head,
                    soft,
                    len: n,
                    next: 0,
                });
            }
            Err(_) => {
                self.stats.bad_headers += 1;
                if ring.add_used(head, 0) {
                    *done += 1;
                }
            }
        }
    }

    /// Sends what is left of the pending frame, a segment per unit of budget; keeps it when
    /// the backend is full or the budget ends, completes its chain when it is all out.
    fn send_pending<Q: QueuePair + ?Sized>(
        &mut self,
        ring: &mut Ring<'_, '_>,
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
                let data = [IoBuf::from_slice(frame)];
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
                    let data: Vec<[IoBuf<'_>; 2]> = plan[..n]
                        .iter()
                        .zip(self.headers.iter())
                        .map(|(&(_, hl, a, b), hdrs)| {
                            [
                                IoBuf::from_slice(&hdrs[..hl]),
                                IoBuf::from_slice(&frame[a..b]),
                            ]
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
            if ring.add_used(p.head, 0) {
                *done += 1;
            }
        } else {
            self.pending = Some(p);
        }
        Ok(())
    }
}

/// Drops the first `n` bytes of `bufs[start..]` (the header), in place; returns where the
/// frame's buffers start.
fn skip_header(bufs: &mut [IoBuf<'_>], start: usize, mut n: usize) -> usize {
    let mut i = start;
    while i < bufs.len() && n >= bufs[i].len() {
        n -= bufs[i].len();
        i += 1;
    }
    if let Some(b) = bufs.get_mut(i) {
        *b = b.offset(n);
    }
    i
}
