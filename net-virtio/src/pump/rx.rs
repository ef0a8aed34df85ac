//! The receive pump: see the module above for how it works.

use std::collections::VecDeque;

use net_api::ether::ETH_HLEN;
use net_api::{IoBufMut, QueuePair, RxFilter, VirtioNetHdr};

use super::{finish, recycle, PumpError, PumpOutcome, PumpStats, MAX_HDR};
use crate::chain::{self, Direction, Seg};
use crate::codec::HdrLayout;
use crate::gso::MAX_SEGMENT_HEADERS;
use crate::mem::GuestRegions;
use crate::queue::{Ring, RingError, SplitQueue};
use crate::translate::{RxRoute, RxTranslator, SoftFrame, HEAD_LEN, MAX_FRAME_LEN};

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
    /// The receive buffers of one `recv`, kept between calls (empty; see `recycle`).
    bufs_store: Vec<IoBufMut<'static>>,
    pending: Option<RxPending>,
    /// The frame of `pending`.
    buf: Vec<u8>,
    /// The next piece of `pending`, ready to copy into guest buffers, and its header.
    out: Vec<u8>,
    out_hdr: Option<VirtioNetHdr>,
    waiting: bool,
    polling: bool,
    stats: PumpStats,
}

/// Buffers the fast path takes at once.
const FAST_BURST: usize = 32;

/// How the fast path ended.
enum Fast {
    /// The backend has nothing: wait for its fd.
    BackendEmpty,
    /// The budget is spent.
    Budget,
    /// The general path goes on.
    Fallback,
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
            bufs_store: Vec::new(),
            pending: None,
            buf: Vec::new(),
            out: Vec::new(),
            out_hdr: None,
            waiting: false,
            polling: false,
            stats: PumpStats::default(),
        }
    }

    /// Polling: while short of buffers the driver is not asked to kick (the caller looks at
    /// the ring again soon); turning it off re-arms on the next call.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
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

    /// Gives every held buffer back to the guest with length 0 and drops a frame waiting in
    /// the pump (counted), so that the queue's state (`next_avail`, `next_used`) describes
    /// every buffer: call before saving the queue for a snapshot or a migration.
    pub fn release(
        &mut self,
        queue: &mut SplitQueue,
        mem: &GuestRegions<'_>,
    ) -> Result<PumpOutcome, PumpError> {
        let mut ring = queue.ring(mem)?;
        let mut out = PumpOutcome::default();
        if self.pending.take().is_some() {
            self.stats.too_large += 1;
        }
        self.out_hdr = None;
        while let Some(h) = self.held.pop_front() {
            if ring.add_used(h.head, 0) {
                out.completed += 1;
            }
        }
        self.held_segs.clear();
        self.held_cap = 0;
        Ok(finish(&mut ring, out, &mut self.stats))
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
    fn refill(
        &mut self,
        ring: &mut Ring<'_, '_>,
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
            if !short || self.held.len() >= usize::from(ring.size()) || *budget == 0 {
                return Ok(false);
            }
            let Some(head) = ring.pop()? else {
                return Ok(true);
            };
            *budget -= 1;
            // A buffer larger than any frame is fine; count only what can be used.
            let max = u64::from(u32::MAX);
            let mem = ring.memory();
            let walked = ring
                .walk(head, Direction::Write, max, &mut self.walk_segs)
                .and_then(|w| chain::check(mem, &self.walk_segs).map(|()| w));
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
                    if ring.add_used(head, 0) {
                        *done += 1;
                    }
                }
                Err(e) => {
                    self.stats.chain_error(e);
                    if ring.add_used(head, 0) {
                        *done += 1;
                    }
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

    fn next_step(&mut self, size: u16, dry: bool) -> Next {
        let have = !self.held.is_empty();
        let all_held = self.held.len() >= usize::from(size);
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
    /// guest's buffers run out or `budget` (frames and buffers taken) is spent. `filter` is
    /// applied to every frame unless it is `None` (the backend applies it, or everything
    /// passes).
    pub fn process<Q: QueuePair + ?Sized>(
        &mut self,
        queue: &mut SplitQueue,
        mem: &GuestRegions<'_>,
        backend: &mut Q,
        filter: Option<&RxFilter>,
        budget: usize,
    ) -> Result<PumpOutcome, PumpError> {
        let mut ring = queue.ring(mem)?;
        let mut out = PumpOutcome::default();
        // No kicks while we work: the driver adds buffers, we take them.
        ring.disable_notification();
        let res = self.run(&mut ring, backend, filter, budget, &mut out);
        out.blocked = self.waiting;
        let out = finish(&mut ring, out, &mut self.stats);
        res.map(|()| out)
    }

    fn run<Q: QueuePair + ?Sized>(
        &mut self,
        ring: &mut Ring<'_, '_>,
        backend: &mut Q,
        filter: Option<&RxFilter>,
        mut budget: usize,
        out: &mut PumpOutcome,
    ) -> Result<(), PumpError> {
        loop {
            if budget == 0 {
                out.more = true;
                break;
            }
            match self.fast_path(ring, backend, filter, &mut budget, &mut out.completed)? {
                Fast::BackendEmpty => {
                    self.waiting = false;
                    break;
                }
                Fast::Budget => {
                    out.more = true;
                    break;
                }
                Fast::Fallback => {}
            }
            let dry = self.refill(ring, &mut out.completed, &mut budget)?;
            let progressed = match self.next_step(ring.size(), dry) {
                Next::Piece => {
                    self.deliver_piece(ring, &mut out.completed)?;
                    true
                }
                Next::DropPiece => {
                    self.stats.too_large += 1;
                    self.advance_piece();
                    true
                }
                // The backend is empty: what we wait for now is the backend, not guest buffers
                // (a `waiting` left from an earlier call would keep the caller from watching
                // the backend's fd, and the frame that comes would wait for a guest kick).
                Next::Direct => {
                    if self
                        .receive_direct(ring, backend, filter, &mut out.completed)?
                        .is_none()
                    {
                        self.waiting = false;
                        break;
                    }
                    true
                }
                Next::Bounce => {
                    if self.receive_bounce(backend, filter)?.is_none() {
                        self.waiting = false;
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
            if self.polling
                || !ring.enable_notification()?
                || self.held.len() >= usize::from(ring.size())
            {
                break;
            }
        }
        Ok(())
    }

    /// The common case, before the general one: nothing pending or held, no software filter,
    /// and the guest's next buffer one writable descriptor (no `NEXT`, no `INDIRECT`) in one
    /// memory region, large enough for any frame (mergeable) or for a minimal one. The frame
    /// goes straight into it and the buffer back to the guest, with the walks, checks and
    /// bookkeeping of the general path reduced to what that shape needs; whatever does not fit
    /// it is given back to the ring (`rewind`) and left to the general path, so both take the
    /// same decisions.
    fn fast_path<Q: QueuePair + ?Sized>(
        &mut self,
        ring: &mut Ring<'_, '_>,
        backend: &mut Q,
        filter: Option<&RxFilter>,
        budget: &mut usize,
        done: &mut u32,
    ) -> Result<Fast, PumpError> {
        const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        let hdr_len = self.hdr_len();
        let need = if self.cfg.mergeable {
            self.need()
        } else {
            self.min_buffer()
        };
        let mem = ring.memory();
        let mut heads = [0u16; FAST_BURST];
        let mut lens = [0u32; FAST_BURST];
        let mut addrs = [0u64; FAST_BURST];
        let mut bufs: [Option<IoBufMut<'_>>; FAST_BURST] = [None; FAST_BURST];
        loop {
            if *budget == 0 {
                return Ok(Fast::Budget);
            }
            if filter.is_some() || self.pending.is_some() || !self.held.is_empty() {
                return Ok(Fast::Fallback);
            }
            // A burst of buffers first (their descriptors and translations, one after the
            // other, so the loads overlap), then the frames into them.
            let want = FAST_BURST.min(*budget);
            let mut k = 0;
            let mut misfit = false;
            while k < want {
                let Some(head) = ring.pop()? else {
                    break;
                };
                let d = ring.desc(head).unwrap_or_default();
                let buf = (d.flags == WRITE && u64::from(d.len) >= need)
                    .then(|| mem.buf_mut(d.addr, u64::from(d.len)))
                    .flatten();
                match buf {
                    Some(b) => {
                        heads[k] = head;
                        lens[k] = d.len;
                        addrs[k] = d.addr;
                        bufs[k] = Some(b);
                        k += 1;
                    }
                    None => {
                        // Not the fast shape: the general path takes it.
                        ring.rewind(1);
                        misfit = true;
                        break;
                    }
                }
            }
            if k == 0 {
                return Ok(Fast::Fallback);
            }
            let mut i = 0;
            while i < k {
                let Some(buf) = bufs[i] else {
                    break;
                };
                let frame_buf = [buf.offset(hdr_len)];
                let received = match backend.recv(&frame_buf) {
                    Ok(r) => r,
                    Err(e) => {
                        ring.rewind((k - i) as u16);
                        return Err(e.into());
                    }
                };
                let Some(frame) = received else {
                    // Not used: these buffers go back to the ring as they were.
                    ring.rewind((k - i) as u16);
                    return Ok(Fast::BackendEmpty);
                };
                *budget = budget.saturating_sub(1);
                self.waiting = false;
                let len = frame.len.min(frame_buf[0].len());
                if mem.tracks_dirty() {
                    mem.mark_dirty(addrs[i], hdr_len + len);
                }
                let route = if frame.hdr.is_plain() {
                    self.accept(None, &frame.hdr, len, &[])
                } else {
                    let mut head_bytes = [0u8; HEAD_LEN];
                    let n = frame_buf[0]
                        .as_buf()
                        .read(0, &mut head_bytes[..len.min(HEAD_LEN)]);
                    self.accept(None, &frame.hdr, len, &head_bytes[..n])
                };
                match route {
                    Some(RxRoute::Deliver(mut hdr)) => {
                        hdr.num_buffers = 1;
                        let mut hbuf = [0u8; MAX_HDR];
                        let n = self.cfg.layout.encode(&hdr, &mut hbuf).unwrap_or(hdr_len);
                        buf.write(0, &hbuf[..n]);
                        if ring.add_used(heads[i], (hdr_len + len) as u32) {
                            *done += 1;
                        }
                        self.stats.frames += 1;
                        self.stats.bytes += len as u64;
                        i += 1;
                    }
                    Some(RxRoute::Software) => {
                        // The general path takes it from here, with this buffer held and the
                        // ones after it given back.
                        self.buf.resize(len, 0);
                        let n = frame_buf[0].as_buf().read(0, &mut self.buf);
                        self.make_pending(RxRoute::Software, &frame.hdr, n);
                        self.held.push_back(Held {
                            head: heads[i],
                            nsegs: 1,
                            cap: u64::from(lens[i]),
                        });
                        self.held_segs.push_back(Seg {
                            addr: addrs[i],
                            len: lens[i],
                        });
                        self.held_cap += u64::from(lens[i]);
                        ring.rewind((k - i - 1) as u16);
                        return Ok(Fast::Fallback);
                    }
                    // Dropped (counted): the same buffer takes the next frame.
                    None => {
                        if *budget == 0 {
                            ring.rewind((k - i) as u16);
                            return Ok(Fast::Budget);
                        }
                    }
                }
            }
            if misfit {
                return Ok(Fast::Fallback);
            }
        }
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
    fn receive_direct<Q: QueuePair + ?Sized>(
        &mut self,
        ring: &mut Ring<'_, '_>,
        backend: &mut Q,
        filter: Option<&RxFilter>,
        done: &mut u32,
    ) -> Result<Option<()>, PumpError> {
        let mem = ring.memory();
        let hdr_len = self.hdr_len();
        let nsegs = self.direct_segs();
        let mut bufs: Vec<IoBufMut<'_>> = recycle(std::mem::take(&mut self.bufs_store));
        // Checked when the buffers were taken; memory can only have shrunk since (a VMM must
        // reset the device before it unplugs memory), so fail the ring if so.
        let resolved = chain::bufs_mut(
            mem,
            self.held_segs.iter().take(nsegs).copied(),
            0,
            &mut bufs,
        );
        if resolved.is_err() {
            self.bufs_store = recycle(bufs);
            return Err(PumpError::Ring(RingError::BadRings));
        }
        // `bufs[..whole]` cover the buffers from their first byte (the header goes there
        // last), `bufs[whole..]` the same bytes after the header room: the frame's.
        let whole = bufs.len();
        frame_view(&mut bufs, hdr_len);
        let received = backend.recv(&bufs[whole..]);
        let room = net_api::iovec::total_len_mut(&bufs[whole..]);
        let frame = match received {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.bufs_store = recycle(bufs);
                return Ok(None);
            }
            Err(e) => {
                self.bufs_store = recycle(bufs);
                return Err(e.into());
            }
        };
        let len = frame.len.min(room);
        if mem.tracks_dirty() {
            mark_dirty(
                mem,
                self.held_segs.iter().take(nsegs).copied(),
                hdr_len + len,
            );
        }
        // What the filter and the translator read, copied: the guest can write its buffers.
        // A plain frame with no filter needs none of it.
        let route = if filter.is_none() && frame.hdr.is_plain() {
            self.accept(None, &frame.hdr, len, &[])
        } else {
            let mut head = [0u8; HEAD_LEN];
            let head_n = read_written(&bufs[whole..], &mut head[..len.min(HEAD_LEN)]);
            self.accept(filter, &frame.hdr, len, &head[..head_n])
        };
        let res = match route {
            Some(RxRoute::Deliver(hdr)) => {
                self.complete_frame(ring, hdr, len, Some(&bufs[..whole]), done)
            }
            Some(RxRoute::Software) => {
                self.buf.resize(len, 0);
                let n = read_written(&bufs[whole..], &mut self.buf);
                self.make_pending(RxRoute::Software, &frame.hdr, n);
                Ok(())
            }
            None => Ok(()),
        };
        self.bufs_store = recycle(bufs);
        res.map(|()| Some(()))
    }

    /// One frame from the backend into the pump's buffer, where it waits for guest buffers;
    /// `None` when the backend is empty.
    fn receive_bounce<Q: QueuePair + ?Sized>(
        &mut self,
        backend: &mut Q,
        filter: Option<&RxFilter>,
    ) -> Result<Option<()>, PumpError> {
        self.buf.resize(MAX_RX_FRAME, 0);
        let Some(frame) = backend.recv(&[IoBufMut::from_mut_slice(&mut self.buf)])? else {
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
    fn deliver_piece(&mut self, ring: &mut Ring<'_, '_>, done: &mut u32) -> Result<(), PumpError> {
        let Some(hdr) = self.out_hdr else {
            return Ok(());
        };
        let nsegs: usize = if self.cfg.mergeable {
            self.held_segs.len()
        } else {
            self.held.front().map_or(0, |h| h.nsegs)
        };
        let segs = self.held_segs.iter().take(nsegs).copied();
        chain::write_to(ring.memory(), segs, self.hdr_len(), &self.out)
            .map_err(|_| PumpError::Ring(RingError::BadRings))?;
        let len = self.out.len();
        self.advance_piece();
        self.complete_frame(ring, hdr, len, None, done)
    }

    /// The frame of `len` bytes is in the held buffers after the header room: write the
    /// header and return the buffers it used.
    /// `hdr_bufs`, when given, are the first buffers' bytes from the start (the header is
    /// written there without resolving the segments again).
    fn complete_frame(
        &mut self,
        ring: &mut Ring<'_, '_>,
        mut hdr: VirtioNetHdr,
        len: usize,
        hdr_bufs: Option<&[IoBufMut<'_>]>,
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
        match hdr_bufs {
            Some(b) => {
                // Resolved for this frame, dirty pages marked with it.
                net_api::iovec::write_bufs(b, 0, &hbuf[..n]);
            }
            None => {
                let first_segs = self.held_segs.iter().take(first_nsegs).copied();
                chain::write_to(ring.memory(), first_segs, 0, &hbuf[..n])
                    .map_err(|_| PumpError::Ring(RingError::BadRings))?;
            }
        }
        for &(head, nsegs, bytes) in &used {
            if let Some(h) = self.held.pop_front() {
                self.held_cap -= h.cap;
            }
            self.held_segs.drain(..nsegs);
            if ring.add_used(head, bytes) {
                *done += 1;
            }
        }
        self.used = used;
        self.stats.frames += 1;
        self.stats.bytes += len as u64;
        Ok(())
    }
}

/// Marks the first `len` bytes of the segments dirty (the backend wrote them through an
/// `IoBufMut`, behind the memory's bitmap).
fn mark_dirty(mem: &GuestRegions<'_>, segs: impl IntoIterator<Item = Seg>, mut len: usize) {
    for s in segs {
        if len == 0 {
            break;
        }
        let n = (s.len as usize).min(len);
        mem.mark_dirty(s.addr, n);
        len -= n;
    }
}

/// Copies the start of what a backend wrote into `bufs` into `out`; returns how many bytes.
fn read_written(bufs: &[IoBufMut<'_>], out: &mut [u8]) -> usize {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            break;
        }
        done += b.as_buf().read(0, &mut out[done..]);
    }
    done
}

/// Appends to `bufs` a view of the same bytes without their first `skip`.
fn frame_view(bufs: &mut Vec<IoBufMut<'_>>, mut skip: usize) {
    let whole = bufs.len();
    let mut i = 0;
    while i < whole && skip >= bufs[i].len() {
        skip -= bufs[i].len();
        i += 1;
    }
    if i < whole {
        let first = bufs[i].offset(skip);
        bufs.push(first);
        bufs.extend_from_within(i + 1..whole);
    }
}
