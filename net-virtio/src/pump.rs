//! The transmit and receive pumps: virtqueue chains in, backend frames out, and back.
//!
//! A pump owns no queue and no backend: each call gets the `virtio_queue::Queue`, the guest
//! memory and the backend queue pair, so a VMM's device ([`crate::device::NetDevice`]) and the
//! vhost-user daemon (whose rings `vhost-user-backend` keeps) drive the same code.
//!
//! # Transmit
//! Chains are popped in batches of [`TX_BATCH`]. The header is copied out (it is small and the
//! device must not read it twice); the frame goes to the backend as `IoSlice`s of guest memory,
//! without a copy, when the backend takes it as it is. A frame that needs the software
//! fallback is copied once into the pump's own buffer, completed or segmented there, and sent
//! from it. When the backend would block, the chains it did not take are given back to the
//! ring (`next_avail` moves back), a half-sent segmented frame is kept, and the pump reports
//! [`PumpOutcome::blocked`]: call again when the backend's TX readiness fires.
//!
//! # Receive
//! The pump takes guest buffers off the ring before it asks the backend for a frame, and only
//! asks when the buffers it holds can take the largest frame the backend may deliver: with
//! `MRG_RXBUF`, several chains, whose count goes into `num_buffers`; without it, one chain
//! (a frame too large for it is the backend's `Truncated` drop). With too few buffers the
//! frame stays in the backend until the guest refills ([`PumpOutcome::blocked`], counted in
//! [`PumpStats::no_buffers`]). The backend writes into guest memory directly; the header is
//! written afterwards into the first buffer's first bytes.
//!
//! # Hostile guests
//! Every chain is walked once with bounds ([`crate::guest`]); a bad chain is completed with
//! length 0 and counted, and the pump goes on. A ring whose available index runs more than a
//! queue ahead is a [`PumpError::Ring`]: the device must be reset (`NEEDS_RESET`). No call
//! does more than a fixed budget of work ([`PumpOutcome::more`] says to call again).

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};

use net_api::ether::ETH_HLEN;
use net_api::{QueuePair, RxFilter, TxFrame, VirtioNetHdr};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemory, Permissions};

use crate::codec::HdrLayout;
use crate::gso::MAX_SEGMENT_HEADERS;
use crate::guest::{self, ChainError, Direction, Seg};
use crate::translate::{
    RxRoute, RxTranslator, SoftFrame, TxRoute, TxTranslator, HEAD_LEN, MAX_FRAME_LEN,
};

/// Chains per backend `send` call.
pub const TX_BATCH: usize = 64;
/// Chains (transmit) or frames (receive) one call handles at most.
pub const BUDGET: usize = 256;
/// The largest header layout (v1 with hash report).
const MAX_HDR: usize = 20;
/// Segments of a software-segmented frame per `send` call.
const SEG_BATCH: usize = 32;

/// Why a pump stopped working.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The ring itself is unusable (an available index more than a queue ahead, a used ring
    /// outside guest memory): the device needs a reset.
    #[error("virtqueue is unusable, the device needs a reset: {0}")]
    Ring(#[from] virtio_queue::Error),
    /// The backend failed as a whole.
    #[error(transparent)]
    Backend(#[from] net_api::Error),
}

/// What a pump call did and what the caller should wait for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpOutcome {
    /// Chains returned to the guest.
    pub completed: u32,
    /// Whether the guest must be interrupted (event index or flags say so).
    pub notify: bool,
    /// Transmit: the backend is full (wait for its TX readiness). Receive: the guest has not
    /// given enough buffers (wait for its kick; do not poll the backend's RX readiness).
    pub blocked: bool,
    /// The budget ran out with work left: call again.
    pub more: bool,
}

/// Counters of one pump. Bad chains are completed with length 0 and counted once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpStats {
    /// Frames handed to the backend (transmit) or to the guest (receive).
    pub frames: u64,
    /// Bytes of those frames, without headers.
    pub bytes: u64,
    /// Frames that went through the software checksum/segmentation path.
    pub software: u64,
    /// Chains with a broken, looping, too long or empty descriptor list.
    pub bad_chains: u64,
    /// Chains with a descriptor of the wrong direction (write-only on transmit, read-only on
    /// receive).
    pub wrong_direction: u64,
    /// Chains pointing outside guest memory.
    pub bad_addresses: u64,
    /// Transmit: headers that contradict their frame, or chains shorter than a header.
    pub bad_headers: u64,
    /// Transmit: frames above [`MAX_FRAME_LEN`].
    pub too_large: u64,
    /// Receive: buffers below the minimum (completed with length 0).
    pub short_buffers: u64,
    /// Receive: frames the software receive filter dropped.
    pub filtered: u64,
    /// Receive: frames from the backend that could not be delivered (malformed header).
    pub rx_errors: u64,
    /// Transmit: times the backend was full.
    pub backend_full: u64,
    /// Receive: times a frame waited in the backend because guest buffers were missing.
    pub no_buffers: u64,
    /// Interrupts asked for.
    pub notifications: u64,
}

impl PumpStats {
    fn chain_error(&mut self, e: ChainError) {
        match e {
            ChainError::WrongDirection => self.wrong_direction += 1,
            ChainError::BadAddress => self.bad_addresses += 1,
            ChainError::TooLarge => self.too_large += 1,
            ChainError::Empty | ChainError::Broken | ChainError::TooLong => self.bad_chains += 1,
        }
    }
}

/// Copies bytes from `iovs`, skipping `skip` first; returns how many were copied.
fn copy_out(iovs: &[IoSlice<'_>], mut skip: usize, out: &mut [u8]) -> usize {
    let mut done = 0;
    for s in iovs {
        if done == out.len() {
            break;
        }
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        let n = (s.len() - skip).min(out.len() - done);
        out[done..done + n].copy_from_slice(&s[skip..skip + n]);
        done += n;
        skip = 0;
    }
    done
}

/// Copies from guest slices into `out`; returns how many bytes were copied.
fn copy_volatile<B: vm_memory::bitmap::BitmapSlice>(
    slices: &[vm_memory::VolatileSlice<'_, B>],
    out: &mut [u8],
) -> usize {
    let mut done = 0;
    for s in slices {
        if done == out.len() {
            break;
        }
        done += s.copy_to(&mut out[done..]);
    }
    done
}

/// Drops the first `n` bytes of `iovs[start..]` (the header); returns the index where the
/// rest begins (the slices before it are left unused).
fn skip_bytes(iovs: &mut [IoSlice<'_>], start: usize, mut n: usize) -> usize {
    let mut i = start;
    while n > 0 && i < iovs.len() {
        let len = iovs[i].len();
        if n >= len {
            n -= len;
            i += 1;
        } else {
            iovs[i].advance(n);
            n = 0;
        }
    }
    i
}

/// Returns a chain with `len` bytes written, unless its head index cannot be in the used ring
/// (beyond the queue: the chain was empty and nothing can be returned).
fn complete<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    head: u16,
    len: u32,
    done: &mut u32,
) -> Result<(), PumpError> {
    if head < queue.size() {
        queue.add_used(mem, head, len)?;
        *done += 1;
    }
    Ok(())
}

/// Pops the next chain, reporting an available index that ran ahead (instead of hiding it as
/// `pop_descriptor_chain` does).
fn pop<'m, M: GuestMemory>(
    queue: &mut Queue,
    mem: &'m M,
) -> Result<Option<virtio_queue::DescriptorChain<&'m M>>, PumpError> {
    Ok(queue.iter(mem)?.next())
}

/// Finishes a call: whether to interrupt the guest.
fn finish<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    mut out: PumpOutcome,
    stats: &mut PumpStats,
) -> Result<PumpOutcome, PumpError> {
    if out.completed > 0 && queue.needs_notification(mem)? {
        out.notify = true;
        stats.notifications += 1;
    }
    Ok(out)
}

/// A frame the software path is sending, kept across would-block.
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

enum Special {
    Drop(u16),
    Soft {
        head: u16,
        hdr: VirtioNetHdr,
        slices: (usize, usize),
        len: usize,
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

    /// Forgets a half-sent frame and the blocked state (device reset). Chains held are not
    /// returned: after a reset the guest owns every buffer again.
    pub fn reset(&mut self) {
        self.pending = None;
        self.blocked = false;
    }

    /// Sends what the guest queued, until the ring is empty, the backend is full or the
    /// budget is spent.
    pub fn process<M: GuestMemory, Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        backend: &mut Q,
    ) -> Result<PumpOutcome, PumpError> {
        let mut out = PumpOutcome::default();
        let mut budget = BUDGET;
        self.blocked = false;
        loop {
            if let Some(p) = self.pending.take() {
                if let Some(p) = self.send_soft(p, queue, mem, backend, &mut out.completed)? {
                    self.pending = Some(p);
                    self.blocked = true;
                    self.stats.backend_full += 1;
                    break;
                }
            }
            queue.disable_notification(mem)?;
            match self.batch(queue, mem, backend, &mut out.completed, &mut budget)? {
                BatchEnd::Again => continue,
                BatchEnd::Blocked => {
                    self.blocked = true;
                    self.stats.backend_full += 1;
                    break;
                }
                BatchEnd::Budget => {
                    out.more = true;
                    break;
                }
                BatchEnd::Empty => {
                    if !queue.enable_notification(mem)? {
                        break;
                    }
                }
            }
        }
        out.blocked = self.blocked;
        finish(queue, mem, out, &mut self.stats)
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
        let mut iovs: Vec<IoSlice<'_>> = Vec::with_capacity(TX_BATCH * 2);
        let mut metas: Vec<(u16, VirtioNetHdr, usize, usize)> = Vec::with_capacity(TX_BATCH);
        let mut special = None;
        let mut ran_dry = false;
        while metas.len() < TX_BATCH && special.is_none() {
            if *budget == 0 {
                break;
            }
            let Some(chain) = pop(queue, mem)? else {
                ran_dry = true;
                break;
            };
            *budget -= 1;
            let head = chain.head_index();
            let max = (hdr_len + MAX_FRAME_LEN) as u64;
            let walked = match guest::walk(
                chain,
                Direction::Read,
                usize::from(queue.size()),
                max,
                &mut self.segs,
            ) {
                Ok(w) => w,
                Err(e) => {
                    self.stats.chain_error(e);
                    special = Some(Special::Drop(head));
                    break;
                }
            };
            let total = walked.readable as usize;
            if total < hdr_len + ETH_HLEN {
                self.stats.bad_headers += 1;
                special = Some(Special::Drop(head));
                break;
            }
            let len = total - hdr_len;
            // Each descriptor resolved once, into iovecs over guest memory.
            let start = iovs.len();
            let mut bad = false;
            for &seg in &self.segs {
                if guest::for_each_slice(mem, seg, 0, Permissions::Read, |s| {
                    iovs.push(guest::io_slice(&s))
                })
                .is_err()
                {
                    bad = true;
                    break;
                }
            }
            if bad {
                iovs.truncate(start);
                self.stats.bad_addresses += 1;
                special = Some(Special::Drop(head));
                break;
            }
            // The header and the head of the frame: copies of our own, read once.
            let mut hbuf = [0u8; MAX_HDR];
            let mut head_bytes = [0u8; HEAD_LEN];
            let hn = copy_out(&iovs[start..], 0, &mut hbuf[..hdr_len]);
            let head_n = copy_out(&iovs[start..], hdr_len, &mut head_bytes);
            let Ok(hdr) = self.layout.decode(&hbuf[..hn]) else {
                iovs.truncate(start);
                self.stats.bad_headers += 1;
                special = Some(Special::Drop(head));
                break;
            };
            // The frame's iovecs start after the header.
            let start = skip_bytes(&mut iovs, start, hdr_len);
            match self.translator.route(&hdr, len, &head_bytes[..head_n]) {
                Ok(TxRoute::Direct(h)) => metas.push((head, h, start, iovs.len())),
                Ok(TxRoute::Software) => {
                    special = Some(Special::Soft {
                        head,
                        hdr,
                        slices: (start, iovs.len()),
                        len,
                    })
                }
                Err(_) => {
                    iovs.truncate(start);
                    self.stats.bad_headers += 1;
                    special = Some(Special::Drop(head));
                }
            }
        }

        if !metas.is_empty() {
            let frames: Vec<TxFrame<'_>> = metas
                .iter()
                .map(|&(_, hdr, a, b)| TxFrame {
                    hdr,
                    data: &iovs[a..b],
                })
                .collect();
            let sent = backend.send(&frames)?.min(frames.len());
            for (i, &(head, _, _, _)) in metas[..sent].iter().enumerate() {
                complete(queue, mem, head, 0, done)?;
                self.stats.frames += 1;
                self.stats.bytes += frames[i].len() as u64;
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
            Some(Special::Drop(head)) => {
                complete(queue, mem, head, 0, done)?;
                Ok(BatchEnd::Again)
            }
            Some(Special::Soft {
                head,
                hdr,
                slices: (a, b),
                len,
            }) => {
                // The one copy of the software path, into our own buffer: everything the
                // translator parses is ours from here on.
                let mut at = 0;
                for s in &iovs[a..b] {
                    let n = s.len().min(len - at);
                    self.buf[at..at + n].copy_from_slice(&s[..n]);
                    at += n;
                }
                match self.translator.software(&hdr, &mut self.buf[..len]) {
                    Ok(soft) => {
                        self.stats.software += 1;
                        self.pending = Some(TxPending {
                            head,
                            soft,
                            len,
                            next: 0,
                        });
                        // Sent, and completed, by the caller's loop.
                        Ok(BatchEnd::Again)
                    }
                    Err(_) => {
                        self.stats.bad_headers += 1;
                        complete(queue, mem, head, 0, done)?;
                        Ok(BatchEnd::Again)
                    }
                }
            }
        }
    }

    /// Sends what is left of a software frame; gives it back when the backend is full.
    fn send_soft<M: GuestMemory, Q: QueuePair + ?Sized>(
        &mut self,
        mut p: TxPending,
        queue: &mut Queue,
        mem: &M,
        backend: &mut Q,
        done: &mut u32,
    ) -> Result<Option<TxPending>, PumpError> {
        let frame = &self.buf[..p.len];
        match &p.soft {
            SoftFrame::Whole(hdr) => {
                let data = [IoSlice::new(frame)];
                if backend.send(&[TxFrame {
                    hdr: *hdr,
                    data: &data,
                }])? == 0
                {
                    return Ok(Some(p));
                }
                self.stats.frames += 1;
                self.stats.bytes += p.len as u64;
            }
            SoftFrame::Segments(seg) => {
                while p.next < seg.count() {
                    let n = (seg.count() - p.next).min(SEG_BATCH);
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
                    let sent = backend.send(&frames)?.min(n);
                    self.stats.frames += sent as u64;
                    self.stats.bytes += frames[..sent].iter().map(|f| f.len() as u64).sum::<u64>();
                    p.next += sent;
                    if sent < n {
                        return Ok(Some(p));
                    }
                }
            }
        }
        complete(queue, mem, p.head, 0, done)?;
        Ok(None)
    }
}

/// A guest receive buffer the pump holds: its segments are the next `nsegs` of the pump's
/// segment queue.
#[derive(Debug, Clone, Copy)]
struct Held {
    head: u16,
    nsegs: usize,
    cap: u64,
}

/// A received frame the guest could not take as it was, being delivered from our buffer.
#[derive(Debug)]
struct RxPending {
    soft: SoftFrame,
    len: usize,
    next: usize,
}

/// How the receive pump is set up, from the acked features and the backend.
#[derive(Debug, Clone, Copy)]
pub struct RxConfig {
    /// The header layout the guest negotiated.
    pub layout: HdrLayout,
    /// `VIRTIO_NET_F_MRG_RXBUF`: a frame may span several chains.
    pub mergeable: bool,
    /// The largest frame the backend may deliver now (with the offloads enabled).
    pub max_frame: usize,
    /// The translator for the guest's receive offloads.
    pub translator: RxTranslator,
}

/// The receive pump of one queue.
#[derive(Debug)]
pub struct RxPump {
    cfg: RxConfig,
    held: VecDeque<Held>,
    held_segs: VecDeque<Seg>,
    held_cap: u64,
    walk_segs: Vec<Seg>,
    used: Vec<(u16, usize, u32)>,
    pending: Option<RxPending>,
    buf: Vec<u8>,
    out: Vec<u8>,
    waiting: bool,
    stats: PumpStats,
}

impl RxPump {
    /// A pump for this configuration.
    pub fn new(cfg: RxConfig) -> RxPump {
        RxPump {
            cfg: RxConfig {
                max_frame: cfg.max_frame.min(MAX_FRAME_LEN + 4),
                ..cfg
            },
            held: VecDeque::new(),
            held_segs: VecDeque::new(),
            held_cap: 0,
            walk_segs: Vec::new(),
            used: Vec::new(),
            pending: None,
            buf: Vec::new(),
            out: Vec::new(),
            waiting: false,
            stats: PumpStats::default(),
        }
    }

    /// Changes the receive offloads (`CTRL_GUEST_OFFLOADS`) and with them the largest frame.
    pub fn reconfigure(&mut self, translator: RxTranslator, max_frame: usize) {
        self.cfg.translator = translator;
        self.cfg.max_frame = max_frame.min(MAX_FRAME_LEN + 4);
    }

    /// The counters.
    pub fn stats(&self) -> PumpStats {
        self.stats
    }

    /// Whether the pump waits for guest buffers (poll the kick, not the backend).
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// Guest buffers held, not yet used.
    pub fn held_buffers(&self) -> usize {
        self.held.len()
    }

    /// Forgets held buffers and any half-delivered frame (device reset: the guest owns its
    /// buffers again).
    pub fn reset(&mut self) {
        self.held.clear();
        self.held_segs.clear();
        self.held_cap = 0;
        self.pending = None;
        self.waiting = false;
    }

    fn hdr_len(&self) -> usize {
        self.cfg.layout.size()
    }

    /// Bytes the held buffers need before asking the backend for a frame.
    fn need(&self) -> u64 {
        (self.hdr_len() + self.cfg.max_frame) as u64
    }

    fn min_buffer(&self) -> u64 {
        if self.cfg.mergeable {
            self.hdr_len() as u64
        } else {
            (self.hdr_len() + ETH_HLEN) as u64
        }
    }

    fn enough(&self, queue: &Queue) -> bool {
        if self.cfg.mergeable {
            // All the guest's buffers held and still short: use what there is.
            self.held_cap >= self.need()
                || (!self.held.is_empty() && self.held.len() >= usize::from(queue.size()))
        } else {
            !self.held.is_empty()
        }
    }

    /// Takes guest buffers until there are enough; bad ones are completed with length 0.
    fn refill<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        done: &mut u32,
        budget: &mut usize,
    ) -> Result<(), PumpError> {
        while !self.enough(queue) && *budget > 0 {
            let Some(chain) = pop(queue, mem)? else {
                break;
            };
            *budget -= 1;
            let head = chain.head_index();
            // A buffer larger than any frame is fine; count only what can be used.
            let max = u64::from(u32::MAX);
            let walked = guest::walk(
                chain,
                Direction::Write,
                usize::from(queue.size()),
                max,
                &mut self.walk_segs,
            )
            .and_then(|w| guest::check(mem, &self.walk_segs, Permissions::Write).map(|()| w));
            match walked {
                Ok(w) if w.writable >= self.min_buffer() => {
                    self.held.push_back(Held {
                        head,
                        nsegs: self.walk_segs.len(),
                        cap: w.writable,
                    });
                    self.held_segs.extend(self.walk_segs.iter().copied());
                    self.held_cap += w.writable;
                }
                Ok(_) => {
                    self.stats.short_buffers += 1;
                    complete(queue, mem, head, 0, done)?;
                }
                Err(e) => {
                    self.stats.chain_error(e);
                    complete(queue, mem, head, 0, done)?;
                }
            }
        }
        Ok(())
    }

    /// Moves frames from the backend into guest buffers until the backend is empty, the
    /// guest's buffers run out or the budget is spent. `filter` is applied to every frame
    /// unless it is `None` (the backend applies it, or everything passes).
    pub fn process<M: GuestMemory, Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        backend: &mut Q,
        filter: Option<&RxFilter>,
    ) -> Result<PumpOutcome, PumpError> {
        let mut out = PumpOutcome::default();
        let mut budget = BUDGET;
        loop {
            self.refill(queue, mem, &mut out.completed, &mut budget)?;
            if budget == 0 {
                out.more = true;
                break;
            }
            if self.pending.is_some() {
                if self.deliver_pending(queue, mem, &mut out.completed)? {
                    budget -= 1;
                    continue;
                }
            } else if self.enough(queue) {
                self.waiting = false;
                match self.receive(queue, mem, backend, filter, &mut out.completed)? {
                    Some(()) => {
                        budget -= 1;
                        continue;
                    }
                    None => break,
                }
            }
            // Short of buffers: let the guest kick us when it adds some.
            if !self.waiting {
                self.waiting = true;
                self.stats.no_buffers += 1;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        out.blocked = self.waiting;
        finish(queue, mem, out, &mut self.stats)
    }

    /// One frame from the backend into the held buffers; `None` when the backend is empty.
    fn receive<M: GuestMemory, Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        backend: &mut Q,
        filter: Option<&RxFilter>,
        done: &mut u32,
    ) -> Result<Option<()>, PumpError> {
        let hdr_len = self.hdr_len();
        // Enough chains for the largest frame, not every chain held.
        let mut nsegs = 0;
        let mut cap = 0;
        for h in &self.held {
            nsegs += h.nsegs;
            cap += h.cap;
            if !self.cfg.mergeable || cap >= self.need() {
                break;
            }
        }
        let mut slices = Vec::with_capacity(nsegs + 2);
        let mut skip = hdr_len;
        for &seg in self.held_segs.iter().take(nsegs) {
            let len = seg.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            // Checked when the buffer was taken; memory can only have shrunk since (a VMM
            // must reset the device before it unplugs memory), so fail the ring if so.
            guest::for_each_slice(mem, seg, skip, Permissions::Write, |s| slices.push(s))
                .map_err(|_| PumpError::Ring(virtio_queue::Error::InvalidChain))?;
            skip = 0;
        }
        let mut iovs: Vec<IoSliceMut<'_>> = slices.iter().map(guest::io_slice_mut).collect();
        let Some(frame) = backend.recv(&mut iovs)? else {
            return Ok(None);
        };
        drop(iovs);
        let len = frame.len.min(slices.iter().map(|s| s.len()).sum());
        if guest::tracks_dirty::<<M as GuestMemory>::Bitmap>() {
            guest::mark_dirty(&slices, len);
        }
        // What the filter and the translator read, copied: the guest can write its buffers.
        let mut head = [0u8; HEAD_LEN];
        let head_n = copy_volatile(&slices, &mut head[..len.min(HEAD_LEN)]);
        if let Some(f) = filter {
            if !f.accepts(&head[..head_n]) {
                self.stats.filtered += 1;
                return Ok(Some(()));
            }
        }
        match self.cfg.translator.route(&frame.hdr, len, &head[..head_n]) {
            Ok(RxRoute::Deliver(hdr)) => {
                self.complete_frame(queue, mem, hdr, len, done)?;
            }
            Ok(RxRoute::Software) => {
                self.buf.resize(len, 0);
                let n = copy_volatile(&slices, &mut self.buf);
                match self.cfg.translator.software(&frame.hdr, &mut self.buf[..n]) {
                    Ok(soft) => {
                        self.stats.software += 1;
                        self.pending = Some(RxPending {
                            soft,
                            len: n,
                            next: 0,
                        });
                    }
                    Err(_) => self.stats.rx_errors += 1,
                }
            }
            Err(_) => self.stats.rx_errors += 1,
        }
        Ok(Some(()))
    }

    /// The frame of `len` bytes is in the held buffers after the header room: write the
    /// header and return the buffers it used.
    fn complete_frame<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        mut hdr: VirtioNetHdr,
        len: usize,
        done: &mut u32,
    ) -> Result<(), PumpError> {
        let hdr_len = self.hdr_len();
        let mut left = (hdr_len + len) as u64;
        let mut used = std::mem::take(&mut self.used);
        used.clear();
        for h in &self.held {
            if left == 0 || (!self.cfg.mergeable && !used.is_empty()) {
                break;
            }
            let n = h.cap.min(left);
            used.push((h.head, h.nsegs, n as u32));
            left -= n;
        }
        hdr.num_buffers = used.len() as u16;
        let mut hbuf = [0u8; MAX_HDR];
        let n = self.cfg.layout.encode(&hdr, &mut hbuf).unwrap_or(hdr_len);
        let first_segs = self.held_segs.iter().take(used[0].1).copied();
        guest::write_to(mem, first_segs, 0, &hbuf[..n])
            .map_err(|_| PumpError::Ring(virtio_queue::Error::InvalidChain))?;
        for &(head, nsegs, bytes) in &used {
            if let Some(h) = self.held.pop_front() {
                self.held_cap -= h.cap;
            }
            self.held_segs.drain(..nsegs);
            queue.add_used(mem, head, bytes)?;
            *done += 1;
        }
        self.used = used;
        self.stats.frames += 1;
        self.stats.bytes += len as u64;
        Ok(())
    }

    /// Delivers the next piece of a software-path frame; `false` when buffers are short.
    fn deliver_pending<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        done: &mut u32,
    ) -> Result<bool, PumpError> {
        let hdr_len = self.hdr_len();
        let Some(p) = self.pending.as_mut() else {
            return Ok(true);
        };
        let frame = &self.buf[..p.len];
        let hdr = match &p.soft {
            SoftFrame::Whole(h) => {
                self.out.clear();
                self.out.extend_from_slice(frame);
                *h
            }
            SoftFrame::Segments(seg) => {
                let mut headers = [0u8; MAX_SEGMENT_HEADERS];
                let s = seg.segment(p.next, frame, &mut headers);
                self.out.clear();
                self.out.extend_from_slice(&headers[..s.header_len]);
                self.out.extend_from_slice(&frame[s.payload.clone()]);
                self.cfg.translator.segment_hdr(seg)
            }
        };
        let count = match &p.soft {
            SoftFrame::Whole(_) => 1,
            SoftFrame::Segments(seg) => seg.count(),
        };
        let room = if self.cfg.mergeable {
            self.held_cap
        } else {
            self.held.front().map_or(0, |h| h.cap)
        };
        let need = (hdr_len + self.out.len()) as u64;
        if room < need {
            if !self.cfg.mergeable && !self.held.is_empty() {
                // This piece will never fit the guest's buffers: drop it, keep going.
                self.stats.short_buffers += 1;
                p.next += 1;
                if p.next >= count {
                    self.pending = None;
                }
                return Ok(true);
            }
            return Ok(false);
        }
        let nsegs: usize = if self.cfg.mergeable {
            self.held_segs.len()
        } else {
            self.held[0].nsegs
        };
        let segs = self.held_segs.iter().take(nsegs).copied();
        guest::write_to(mem, segs, hdr_len, &self.out)
            .map_err(|_| PumpError::Ring(virtio_queue::Error::InvalidChain))?;
        p.next += 1;
        if p.next >= count {
            self.pending = None;
        }
        let len = self.out.len();
        self.complete_frame(queue, mem, hdr, len, done)?;
        Ok(true)
    }
}
