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

/// Copies bytes from guest slices, skipping `skip` first; returns how many were copied.
fn copy_volatile_from<B: vm_memory::bitmap::BitmapSlice>(
    slices: &[vm_memory::VolatileSlice<'_, B>],
    mut skip: usize,
    out: &mut [u8],
) -> usize {
    let mut done = 0;
    for s in slices {
        if done == out.len() {
            break;
        }
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        if let Ok(rest) = s.offset(skip) {
            done += rest.copy_to(&mut out[done..]);
        }
        skip = 0;
    }
    done
}

/// Copies from guest slices into `out`; returns how many bytes were copied.
fn copy_volatile<B: vm_memory::bitmap::BitmapSlice>(
    slices: &[vm_memory::VolatileSlice<'_, B>],
    out: &mut [u8],
) -> usize {
    copy_volatile_from(slices, 0, out)
}

/// Where the bytes of `slices[start..]` after the first `n` begin: the slice index and the
/// offset in it.
fn skip_volatile<B: vm_memory::bitmap::BitmapSlice>(
    slices: &[vm_memory::VolatileSlice<'_, B>],
    start: usize,
    mut n: usize,
) -> (usize, usize) {
    let mut i = start;
    while i < slices.len() && n >= slices[i].len() {
        n -= slices[i].len();
        i += 1;
    }
    (i, n)
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

    /// Forgets a half-sent frame and the blocked state (device reset). Chains held are not
    /// returned: after a reset the guest owns every buffer again.
    pub fn reset(&mut self) {
        self.pending = None;
        self.blocked = false;
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

/// A guest receive buffer the pump holds: its segments are the next `nsegs` of the pump's
/// segment queue.
#[derive(Debug, Clone, Copy)]
struct Held {
    head: u16,
    nsegs: usize,
    cap: u64,
}

/// A received frame waiting in the pump's buffer for guest buffers: a whole frame, or the
/// segments of one the guest cannot take as it is.
#[derive(Debug)]
struct RxPending {
    soft: SoftFrame,
    len: usize,
    next: usize,
}

impl RxPending {
    fn count(&self) -> usize {
        match &self.soft {
            SoftFrame::Whole(_) => 1,
            SoftFrame::Segments(seg) => seg.count(),
        }
    }
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

/// The largest frame the receive path handles (a 64 KiB GSO frame and a VLAN tag).
const MAX_RX_FRAME: usize = MAX_FRAME_LEN + 4;

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
    /// The frame of `pending`.
    buf: Vec<u8>,
    /// The next piece of `pending`, ready to copy into guest buffers, and its header.
    out: Vec<u8>,
    out_hdr: Option<VirtioNetHdr>,
    waiting: bool,
    stats: PumpStats,
}

/// What the guest's buffers allow next.
enum Next {
    /// Deliver the pending piece.
    Piece,
    /// The pending piece can never fit the guest's buffers: drop it.
    DropPiece,
    /// Receive straight into the held buffers.
    Direct,
    /// Receive into the pump's buffer: the held buffers may be too small, and the frame waits
    /// there until the guest adds more.
    Bounce,
    /// Wait for the guest.
    Wait,
}

impl RxPump {
    /// A pump for this configuration.
    pub fn new(cfg: RxConfig) -> RxPump {
        RxPump {
            cfg: RxConfig {
                max_frame: cfg.max_frame.min(MAX_RX_FRAME),
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
            out_hdr: None,
            waiting: false,
            stats: PumpStats::default(),
        }
    }

    /// Changes the receive offloads (`CTRL_GUEST_OFFLOADS`) and with them the largest frame.
    pub fn reconfigure(&mut self, translator: RxTranslator, max_frame: usize) {
        self.cfg.translator = translator;
        self.cfg.max_frame = max_frame.min(MAX_RX_FRAME);
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
        self.out_hdr = None;
        self.waiting = false;
    }

    /// Gives every held buffer back to the guest with length 0 and drops a frame waiting in
    /// the pump (counted), so that the queue's state (`next_avail`, `next_used`) describes
    /// every buffer: call before saving the queue for a snapshot or a migration.
    pub fn release<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<PumpOutcome, PumpError> {
        let mut out = PumpOutcome::default();
        if self.pending.take().is_some() {
            self.stats.too_large += 1;
        }
        self.out_hdr = None;
        while let Some(h) = self.held.pop_front() {
            complete(queue, mem, h.head, 0, &mut out.completed)?;
        }
        self.held_segs.clear();
        self.held_cap = 0;
        finish(queue, mem, out, &mut self.stats)
    }

    fn hdr_len(&self) -> usize {
        self.cfg.layout.size()
    }

    /// Bytes (header included) the largest frame needs.
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

    /// Room the next delivery has: every held buffer with `MRG_RXBUF`, the first without.
    fn room(&self) -> u64 {
        if self.cfg.mergeable {
            self.held_cap
        } else {
            self.held.front().map_or(0, |h| h.cap)
        }
    }

    /// Bytes (header included) the next delivery needs.
    fn target(&self) -> u64 {
        match self.out_hdr {
            Some(_) => (self.hdr_len() + self.out.len()) as u64,
            None => self.need(),
        }
    }

    /// Takes guest buffers until the next delivery fits, the ring is empty or every entry of
    /// the ring is held; bad ones are completed with length 0. Returns whether the ring ran
    /// dry.
    fn refill<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        done: &mut u32,
        budget: &mut usize,
    ) -> Result<bool, PumpError> {
        let target = self.target();
        loop {
            let short = if self.cfg.mergeable {
                self.held_cap < target
            } else {
                self.held.is_empty()
            };
            if !short || self.held.len() >= usize::from(queue.size()) || *budget == 0 {
                return Ok(false);
            }
            let Some(chain) = pop(queue, mem)? else {
                return Ok(true);
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
    }

    /// Segments of the held chains a frame of the largest size would use.
    fn direct_segs(&self) -> usize {
        let mut nsegs = 0;
        let mut cap = 0;
        for h in &self.held {
            nsegs += h.nsegs;
            cap += h.cap;
            if !self.cfg.mergeable || cap >= self.need() {
                break;
            }
        }
        nsegs
    }

    fn next_step(&mut self, queue: &Queue, dry: bool) -> Next {
        let have = !self.held.is_empty();
        let all_held = self.held.len() >= usize::from(queue.size());
        if self.pending.is_some() {
            self.prepare_piece();
            if have && self.room() >= self.target() {
                Next::Piece
            } else if have && (!self.cfg.mergeable || all_held) {
                // No buffer the guest can add would make room.
                Next::DropPiece
            } else {
                Next::Wait
            }
        } else if !have {
            Next::Wait
        } else if !self.cfg.mergeable || self.room() >= self.need() {
            if self.direct_segs() + 1 > net_api::MAX_IOVECS {
                Next::Bounce
            } else {
                Next::Direct
            }
        } else if dry || all_held {
            Next::Bounce
        } else {
            Next::Wait
        }
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
            if budget == 0 {
                out.more = true;
                break;
            }
            let dry = self.refill(queue, mem, &mut out.completed, &mut budget)?;
            let progressed = match self.next_step(queue, dry) {
                Next::Piece => {
                    self.deliver_piece(queue, mem, &mut out.completed)?;
                    true
                }
                Next::DropPiece => {
                    self.stats.too_large += 1;
                    self.advance_piece();
                    true
                }
                Next::Direct => {
                    if self
                        .receive_direct(queue, mem, backend, filter, &mut out.completed)?
                        .is_none()
                    {
                        break;
                    }
                    true
                }
                Next::Bounce => {
                    if self.receive_bounce(backend, filter)?.is_none() {
                        break;
                    }
                    true
                }
                Next::Wait => false,
            };
            if progressed {
                self.waiting = false;
                budget = budget.saturating_sub(1);
                continue;
            }
            // Short of buffers: let the guest kick us when it adds some.
            if !self.waiting {
                self.waiting = true;
                self.stats.no_buffers += 1;
            }
            if !queue.enable_notification(mem)? || self.held.len() >= usize::from(queue.size()) {
                break;
            }
        }
        out.blocked = self.waiting;
        finish(queue, mem, out, &mut self.stats)
    }

    /// Whether a frame passes the filter and the translator: delivers it or makes it pending.
    /// `head` is a copy of its first bytes.
    fn accept(
        &mut self,
        filter: Option<&RxFilter>,
        hdr: &VirtioNetHdr,
        len: usize,
        head: &[u8],
    ) -> Option<RxRoute> {
        if let Some(f) = filter {
            if !f.accepts(head) {
                self.stats.filtered += 1;
                return None;
            }
        }
        match self.cfg.translator.route(hdr, len, head) {
            Ok(route) => Some(route),
            Err(_) => {
                self.stats.rx_errors += 1;
                None
            }
        }
    }

    /// Makes the frame in `buf[..len]` pending, through the software path if need be.
    fn make_pending(&mut self, route: RxRoute, hdr: &VirtioNetHdr, len: usize) {
        let soft = match route {
            RxRoute::Deliver(h) => SoftFrame::Whole(h),
            RxRoute::Software => match self.cfg.translator.software(hdr, &mut self.buf[..len]) {
                Ok(soft) => {
                    self.stats.software += 1;
                    soft
                }
                Err(_) => {
                    self.stats.rx_errors += 1;
                    return;
                }
            },
        };
        self.pending = Some(RxPending { soft, len, next: 0 });
        self.out_hdr = None;
    }

    /// One frame from the backend straight into the held buffers; `None` when the backend is
    /// empty.
    fn receive_direct<M: GuestMemory, Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        backend: &mut Q,
        filter: Option<&RxFilter>,
        done: &mut u32,
    ) -> Result<Option<()>, PumpError> {
        let hdr_len = self.hdr_len();
        let nsegs = self.direct_segs();
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
        let mut guards = Vec::with_capacity(slices.len());
        let mut iovs: Vec<IoSliceMut<'_>> = slices
            .iter()
            .map(|s| guest::io_slice_mut(s, &mut guards))
            .collect();
        let received = backend.recv(&mut iovs);
        drop(iovs);
        drop(guards);
        let Some(frame) = received? else {
            return Ok(None);
        };
        let len = frame.len.min(slices.iter().map(|s| s.len()).sum());
        if guest::tracks_dirty::<<M as GuestMemory>::Bitmap>() {
            guest::mark_dirty(&slices, len);
        }
        // What the filter and the translator read, copied: the guest can write its buffers.
        let mut head = [0u8; HEAD_LEN];
        let head_n = copy_volatile(&slices, &mut head[..len.min(HEAD_LEN)]);
        match self.accept(filter, &frame.hdr, len, &head[..head_n]) {
            Some(RxRoute::Deliver(hdr)) => self.complete_frame(queue, mem, hdr, len, done)?,
            Some(RxRoute::Software) => {
                self.buf.resize(len, 0);
                let n = copy_volatile(&slices, &mut self.buf);
                self.make_pending(RxRoute::Software, &frame.hdr, n);
            }
            None => {}
        }
        Ok(Some(()))
    }

    /// One frame from the backend into the pump's buffer, where it waits for guest buffers;
    /// `None` when the backend is empty.
    fn receive_bounce<Q: QueuePair + ?Sized>(
        &mut self,
        backend: &mut Q,
        filter: Option<&RxFilter>,
    ) -> Result<Option<()>, PumpError> {
        self.buf.resize(MAX_RX_FRAME, 0);
        let Some(frame) = backend.recv(&mut [IoSliceMut::new(&mut self.buf)])? else {
            return Ok(None);
        };
        let len = frame.len.min(MAX_RX_FRAME);
        let head_n = len.min(HEAD_LEN);
        let mut head = [0u8; HEAD_LEN];
        head[..head_n].copy_from_slice(&self.buf[..head_n]);
        if let Some(route) = self.accept(filter, &frame.hdr, len, &head[..head_n]) {
            self.make_pending(route, &frame.hdr, len);
        }
        Ok(Some(()))
    }

    /// Puts the next piece of the pending frame in `out` (once).
    fn prepare_piece(&mut self) {
        if self.out_hdr.is_some() {
            return;
        }
        let Some(p) = self.pending.as_ref() else {
            return;
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
        self.out_hdr = Some(hdr);
    }

    /// Moves past the current piece of the pending frame.
    fn advance_piece(&mut self) {
        self.out_hdr = None;
        if let Some(p) = self.pending.as_mut() {
            p.next += 1;
            if p.next >= p.count() {
                self.pending = None;
            }
        }
    }

    /// Copies the prepared piece into the held buffers and returns them to the guest.
    fn deliver_piece<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        done: &mut u32,
    ) -> Result<(), PumpError> {
        let Some(hdr) = self.out_hdr else {
            return Ok(());
        };
        let nsegs: usize = if self.cfg.mergeable {
            self.held_segs.len()
        } else {
            self.held.front().map_or(0, |h| h.nsegs)
        };
        let segs = self.held_segs.iter().take(nsegs).copied();
        guest::write_to(mem, segs, self.hdr_len(), &self.out)
            .map_err(|_| PumpError::Ring(virtio_queue::Error::InvalidChain))?;
        let len = self.out.len();
        self.advance_piece();
        self.complete_frame(queue, mem, hdr, len, done)
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
        let Some(&(_, first_nsegs, _)) = used.first() else {
            self.used = used;
            return Ok(());
        };
        hdr.num_buffers = used.len() as u16;
        let mut hbuf = [0u8; MAX_HDR];
        let n = self.cfg.layout.encode(&hdr, &mut hbuf).unwrap_or(hdr_len);
        let first_segs = self.held_segs.iter().take(first_nsegs).copied();
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
}
