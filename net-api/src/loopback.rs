//! An in-memory backend: two ends joined like the two sides of a cable.
//!
//! Frames sent on queue pair `i` of one end are received on queue pair `i` of the other. It
//! needs no privileges and no kernel link, so tests, benchmarks and examples use it. It can be
//! configured to speak virtio-net headers with a set of offloads, or to take plain frames only,
//! like an AF_XDP socket; it never segments or checksums anything itself, so a frame that asks
//! for more than the receiving end enabled is dropped there and counted.
//!
//! Queue pairs can be detached ([`QueuePair::set_attached`]): frames the other end sends to a
//! detached queue pair go to the lowest attached one instead (dropped, as `host-error`, when
//! that one is full or none is attached), as a multi-queue TAP steers around detached queues.
//!
//! Readiness fds are `AF_UNIX` socket pairs used as doorbells: the receive doorbell is readable
//! while frames wait, the transmit doorbell while there is room.
//!
//! ```
//! use net_api::{loopback, Backend, IoBuf, IoBufMut, QueuePair, TxFrame, VirtioNetHdr};
//!
//! let (mut a, mut b) = loopback::pair(loopback::LoopbackConfig::default())?;
//! let (mut qa, mut qb) = (a.open_queue_pair(0)?, b.open_queue_pair(0)?);
//! let frame = [0xffu8; 60];
//! let data = [IoBuf::from_slice(&frame)];
//! assert_eq!(qa.send(&[TxFrame { hdr: VirtioNetHdr::PLAIN, data: &data }])?, 1);
//! let mut buf = vec![0u8; 1514];
//! let got = qb.recv(&[IoBufMut::from_mut_slice(&mut buf)])?.expect("a frame waits");
//! assert_eq!(&buf[..got.len], &frame[..]);
//! # Ok::<(), net_api::Error>(())
//! ```

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::ether::{is_ipv6, ETH_HLEN};
use crate::hdr::VirtioNetHdr;
use crate::iovec::{self, IoBufMut};
use crate::mac::MacAddr;
use crate::offload::{Capabilities, OffloadSet};
use crate::queue::{Backend, Interest, QueuePair, Readiness, RxFrame, TxFrame};
use crate::stats::{DropReason, QueueStats};

/// How a loopback pair is built. Both ends get the same settings.
#[derive(Clone, Debug)]
pub struct LoopbackConfig {
    /// Queue pairs per end.
    pub queue_pairs: u16,
    /// Frames buffered per direction and queue pair before `send` would block.
    pub capacity: usize,
    /// Whether the ends speak virtio-net headers (then `offloads` apply).
    pub vnet_hdr: bool,
    /// Offloads accepted on send and deliverable on receive (with `vnet_hdr`).
    pub offloads: OffloadSet,
    /// MTU reported in the capabilities; frames up to MTU + 14 (+4 for one VLAN tag) pass.
    pub mtu: u16,
    /// The MAC addresses of end A and end B.
    pub macs: [MacAddr; 2],
}

impl Default for LoopbackConfig {
    fn default() -> Self {
        LoopbackConfig {
            queue_pairs: 1,
            capacity: 256,
            vnet_hdr: false,
            offloads: OffloadSet::NONE,
            mtu: 1500,
            macs: [
                MacAddr([0x52, 0x54, 0x00, 0, 0, 0x0a]),
                MacAddr([0x52, 0x54, 0x00, 0, 0, 0x0b]),
            ],
        }
    }
}

impl LoopbackConfig {
    /// The largest frame (Ethernet header and one VLAN tag included).
    pub fn max_frame(&self) -> usize {
        if self.vnet_hdr && !self.offloads.difference(OffloadSet::CSUM).is_empty() {
            // A GSO super-frame: 64 KiB of IP packet plus the link-layer header.
            usize::from(u16::MAX) + ETH_HLEN + 4
        } else {
            usize::from(self.mtu) + ETH_HLEN + 4
        }
    }
}

/// Builds a connected pair of loopback ends.
pub fn pair(cfg: LoopbackConfig) -> Result<(Loopback, Loopback)> {
    if cfg.queue_pairs == 0 {
        return Err(Error::InvalidConfig {
            what: "loopback queue_pairs",
            why: "0 queue pairs: ask for at least 1".into(),
        });
    }
    if cfg.capacity == 0 {
        return Err(Error::InvalidConfig {
            what: "loopback capacity",
            why: "0 frames per queue: ask for at least 1".into(),
        });
    }
    let n = usize::from(cfg.queue_pairs);
    let a_to_b: Vec<_> = (0..n)
        .map(|_| Link::new(cfg.capacity))
        .collect::<Result<_>>()?;
    let b_to_a: Vec<_> = (0..n)
        .map(|_| Link::new(cfg.capacity))
        .collect::<Result<_>>()?;
    let a_to_b: Arc<[Arc<Link>]> = a_to_b.into();
    let b_to_a: Arc<[Arc<Link>]> = b_to_a.into();
    let end = |name: &str, mac, tx: &Arc<[Arc<Link>]>, rx: &Arc<[Arc<Link>]>| Loopback {
        name: format!("loopback:{name}"),
        caps: Capabilities {
            vnet_hdr: cfg.vnet_hdr,
            tx_offloads: if cfg.vnet_hdr {
                cfg.offloads
            } else {
                OffloadSet::NONE
            },
            rx_offloads: if cfg.vnet_hdr {
                cfg.offloads
            } else {
                OffloadSet::NONE
            },
            rx_csum_verified: false,
            max_frame: cfg.max_frame(),
            max_queue_pairs: cfg.queue_pairs,
            mac: Some(mac),
            mtu: cfg.mtu,
        },
        tx: Arc::clone(tx),
        rx: Arc::clone(rx),
        open: (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect(),
    };
    Ok((
        end("a", cfg.macs[0], &a_to_b, &b_to_a),
        end("b", cfg.macs[1], &b_to_a, &a_to_b),
    ))
}

/// One end of a loopback pair.
#[derive(Debug)]
pub struct Loopback {
    name: String,
    caps: Capabilities,
    tx: Arc<[Arc<Link>]>,
    rx: Arc<[Arc<Link>]>,
    open: Vec<Arc<AtomicBool>>,
}

impl Backend for Loopback {
    type Queue = LoopbackQueue;

    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }

    fn open_queue_pair(&mut self, index: u16) -> Result<LoopbackQueue> {
        let i = usize::from(index);
        let open = crate::error::claim_queue(&self.open, &self.name, index)?;
        let (Some(tx), Some(rx)) = (self.tx.get(i), self.rx.get(i)) else {
            open.store(false, Ordering::Release);
            return Err(Error::NoSuchQueue {
                backend: self.name.clone(),
                index,
                max: self.caps.max_queue_pairs,
            });
        };
        rx.attached.store(true, Ordering::Release);
        Ok(LoopbackQueue {
            index,
            caps: self.caps.clone(),
            tx: Arc::clone(tx),
            peers: Arc::clone(&self.tx),
            rx: Arc::clone(rx),
            open: Arc::clone(&self.open[i]),
            rx_enabled: OffloadSet::NONE,
            stats: QueueStats::default(),
        })
    }
}

/// A queue pair of a [`Loopback`] end.
#[derive(Debug)]
pub struct LoopbackQueue {
    index: u16,
    caps: Capabilities,
    tx: Arc<Link>,
    /// Every receive link of the other end, to steer around detached queue pairs.
    peers: Arc<[Arc<Link>]>,
    rx: Arc<Link>,
    open: Arc<AtomicBool>,
    rx_enabled: OffloadSet,
    stats: QueueStats,
}

impl Drop for LoopbackQueue {
    fn drop(&mut self) {
        self.rx.attached.store(true, Ordering::Release);
        self.open.store(false, Ordering::Release);
    }
}

impl LoopbackQueue {
    /// Sends to the lowest attached queue pair of the other end, dropping what does not fit.
    fn send_steered(&mut self, frames: &[TxFrame<'_>]) -> Result<usize> {
        let target = self
            .peers
            .iter()
            .find(|l| l.attached.load(Ordering::Acquire))
            .cloned();
        for frame in frames {
            let Some(link) = &target else {
                self.stats.tx_drops.add(DropReason::HostError);
                continue;
            };
            if let Some(reason) = self.size_refusal(frame.len()) {
                self.stats.tx_drops.add(reason);
                continue;
            }
            let mut st = link.lock();
            if st.frames.len() >= link.capacity {
                self.stats.tx_drops.add(DropReason::HostError);
                continue;
            }
            self.enqueue(link, &mut st, frame)?;
        }
        Ok(frames.len())
    }

    /// Why a frame of `len` bytes cannot be sent, if it cannot.
    fn size_refusal(&self, len: usize) -> Option<DropReason> {
        if len > self.caps.max_frame {
            Some(DropReason::TooLarge)
        } else if len < ETH_HLEN {
            Some(DropReason::Runt)
        } else {
            None
        }
    }

    /// Copies a frame into `link` (which has room), or counts why its header cannot cross.
    fn enqueue(&mut self, link: &Link, st: &mut LinkState, frame: &TxFrame<'_>) -> Result<()> {
        let mut data = st.spare.pop().unwrap_or_default();
        // One copy out of the sender's buffers (guest memory): everything checked below is
        // read from our own bytes.
        data.clear();
        data.resize(frame.len(), 0);
        let n = iovec::read_bufs(frame.data, 0, &mut data);
        data.truncate(n);
        if let Some(reason) = self.header_refusal(&frame.hdr, &data, self.caps.tx_offloads) {
            self.stats.tx_drops.add(reason);
            st.spare.push(data);
            return Ok(());
        }
        let hdr = VirtioNetHdr {
            num_buffers: 0,
            ..frame.hdr
        };
        self.stats.count_tx(data.len());
        st.frames.push_back(Packet { hdr, data });
        link.readable.ring(&mut st.readable_armed)
    }

    /// Why a frame with this header cannot cross, if it cannot.
    fn header_refusal(
        &self,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        allowed: OffloadSet,
    ) -> Option<DropReason> {
        if hdr.is_plain() {
            return None;
        }
        if !self.caps.vnet_hdr {
            return Some(DropReason::UnsupportedOffload);
        }
        match OffloadSet::required_by(hdr, is_ipv6(frame)) {
            None => Some(DropReason::MalformedHeader),
            Some(need) if allowed.contains(need) => None,
            Some(_) => Some(DropReason::UnsupportedOffload),
        }
    }
}

impl QueuePair for LoopbackQueue {
    fn index(&self) -> u16 {
        self.index
    }

    fn send(&mut self, frames: &[TxFrame<'_>]) -> Result<usize> {
        if !self.rx.attached.load(Ordering::Acquire) {
            return Err(Error::InvalidConfig {
                what: "loopback queue state",
                why: format!(
                    "queue pair {} is detached: attach it before sending",
                    self.index
                ),
            });
        }
        if !self.tx.attached.load(Ordering::Acquire) {
            return self.send_steered(frames);
        }
        let link = Arc::clone(&self.tx);
        let mut st = link.lock();
        for (done, frame) in frames.iter().enumerate() {
            if let Some(reason) = self.size_refusal(frame.len()) {
                self.stats.tx_drops.add(reason);
                continue;
            }
            if st.frames.len() >= link.capacity {
                link.writable.clear(&mut st.writable_armed)?;
                self.stats.tx_would_block += 1;
                return Ok(done);
            }
            self.enqueue(&link, &mut st, frame)?;
        }
        Ok(frames.len())
    }

    fn recv(&mut self, bufs: &[IoBufMut<'_>]) -> Result<Option<RxFrame>> {
        if !self.rx.attached.load(Ordering::Acquire) {
            return Ok(None);
        }
        let room = iovec::total_len_mut(bufs);
        let mut st = self.rx.lock();
        loop {
            let Some(pkt) = st.frames.pop_front() else {
                self.rx.readable.clear(&mut st.readable_armed)?;
                return Ok(None);
            };
            if st.frames.len() + 1 == self.rx.capacity {
                self.rx.writable.ring(&mut st.writable_armed)?;
            }
            let hdr = if self.caps.vnet_hdr {
                pkt.hdr
            } else {
                VirtioNetHdr::PLAIN
            };
            let refusal = if pkt.data.len() > room {
                Some(DropReason::Truncated)
            } else {
                self.header_refusal(&hdr, &pkt.data, self.rx_enabled)
            };
            if let Some(reason) = refusal {
                self.stats.rx_drops.add(reason);
            } else {
                iovec::write_bufs(bufs, 0, &pkt.data);
                self.stats.count_rx(pkt.data.len());
            }
            let len = pkt.data.len();
            if st.spare.len() < self.rx.capacity {
                st.spare.push(pkt.data);
            }
            if refusal.is_none() {
                return Ok(Some(RxFrame { hdr, len }));
            }
        }
    }

    fn set_rx_offloads(&mut self, offloads: OffloadSet) -> Result<()> {
        if !self.caps.rx_offloads.contains(offloads) {
            return Err(Error::Unsupported {
                backend: format!("loopback queue {}", self.index),
                what: format!("receive offloads {offloads}"),
                hint: format!(
                    "enable a subset of its rx offloads ({})",
                    self.caps.rx_offloads
                ),
            });
        }
        self.rx_enabled = offloads;
        Ok(())
    }

    fn set_attached(&mut self, attached: bool) -> Result<()> {
        let mut st = self.rx.lock();
        self.rx.attached.store(attached, Ordering::Release);
        if !attached {
            // Like TUNSETQUEUE's detach: what waited is gone.
            let LinkState { frames, spare, .. } = &mut *st;
            for pkt in frames.drain(..) {
                self.stats.rx_drops.add(DropReason::HostError);
                if spare.len() < self.rx.capacity {
                    spare.push(pkt.data);
                }
            }
            self.rx.readable.clear(&mut st.readable_armed)?;
            self.rx.writable.ring(&mut st.writable_armed)?;
        }
        Ok(())
    }

    fn rx_readiness(&self) -> Readiness<'_> {
        Readiness {
            fd: self.rx.readable.poll.as_fd(),
            interest: Interest::Readable,
        }
    }

    fn tx_readiness(&self) -> Readiness<'_> {
        Readiness {
            fd: self.tx.writable.poll.as_fd(),
            interest: Interest::Readable,
        }
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }
}

#[derive(Debug)]
struct Packet {
    hdr: VirtioNetHdr,
    data: Vec<u8>,
}

/// One direction of one queue pair.
#[derive(Debug)]
struct Link {
    state: Mutex<LinkState>,
    capacity: usize,
    /// Whether the receiving queue pair is attached (frames are steered elsewhere when not).
    attached: AtomicBool,
    /// Readable while frames wait.
    readable: Doorbell,
    /// Readable while there is room.
    writable: Doorbell,
}

#[derive(Debug)]
struct LinkState {
    frames: VecDeque<Packet>,
    spare: Vec<Vec<u8>>,
    readable_armed: bool,
    writable_armed: bool,
}

impl Link {
    fn new(capacity: usize) -> Result<Arc<Link>> {
        let link = Link {
            state: Mutex::new(LinkState {
                frames: VecDeque::with_capacity(capacity.min(4096)),
                spare: Vec::new(),
                readable_armed: false,
                writable_armed: false,
            }),
            capacity,
            attached: AtomicBool::new(true),
            readable: Doorbell::new()?,
            writable: Doorbell::new()?,
        };
        {
            let mut st = link.lock();
            link.writable.ring(&mut st.writable_armed)?;
        }
        Ok(Arc::new(link))
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // A panic while holding the lock leaves only plain data behind: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A level-triggered signal made of a socket pair: `poll` is readable while rung.
#[derive(Debug)]
struct Doorbell {
    poll: UnixStream,
    bell: UnixStream,
}

impl Doorbell {
    fn new() -> Result<Doorbell> {
        let io_err = |source| Error::Io {
            op: "socketpair for a loopback doorbell",
            target: "loopback".into(),
            source,
        };
        let (poll, bell) = UnixStream::pair().map_err(io_err)?;
        poll.set_nonblocking(true).map_err(io_err)?;
        bell.set_nonblocking(true).map_err(io_err)?;
        Ok(Doorbell { poll, bell })
    }

    /// Makes `poll` readable, once (`armed` is kept under the link's lock).
    fn ring(&self, armed: &mut bool) -> Result<()> {
        if !*armed {
            match (&self.bell).write(&[1]) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(source) => return Err(self.err("ring", source)),
            }
            *armed = true;
        }
        Ok(())
    }

    /// Makes `poll` not readable.
    fn clear(&self, armed: &mut bool) -> Result<()> {
        if *armed {
            let mut buf = [0u8; 16];
            loop {
                match (&self.poll).read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => return Err(self.err("clear", source)),
                }
            }
            *armed = false;
        }
        Ok(())
    }

    fn err(&self, op: &'static str, source: io::Error) -> Error {
        Error::Io {
            op,
            target: "loopback doorbell".into(),
            source,
        }
    }
}
