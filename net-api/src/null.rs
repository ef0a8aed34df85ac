//! A backend that ends at itself: a sink that takes every frame, or a source that always has
//! one, in the calling thread.
//!
//! These are the host-side counterparts of DPDK testpmd's `rxonly` and `txonly` modes, so a
//! benchmark of a device or a vhost-user daemon measures the datapath and not a second thread:
//! [`NullMode::Sink`] copies each frame it is given into a scratch buffer (as a NIC reads it,
//! and as DPDK's vhost PMD copies it into an mbuf) and counts it; [`NullMode::Source`] writes a
//! fixed frame into every buffer it is offered. Neither blocks. No privileges, no kernel link.
//!
//! ```
//! use net_api::null::{Null, NullMode};
//! use net_api::{Backend, IoBuf, IoBufMut, QueuePair, TxFrame, VirtioNetHdr};
//!
//! let mut sink = Null::new(NullMode::Sink, 1)?;
//! let mut q = sink.open_queue_pair(0)?;
//! let frame = [0u8; 64];
//! assert_eq!(q.send(&[TxFrame { hdr: VirtioNetHdr::PLAIN, data: &[IoBuf::from_slice(&frame)] }])?, 1);
//! assert_eq!(q.stats().tx_packets, 1);
//!
//! let mut source = Null::new(NullMode::Source { len: 60 }, 1)?;
//! let mut q = source.open_queue_pair(0)?;
//! let mut buf = [0u8; 1514];
//! assert_eq!(q.recv(&[IoBufMut::from_mut_slice(&mut buf)])?.map(|f| f.len), Some(60));
//! # Ok::<(), net_api::Error>(())
//! ```

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use crate::error::{Error, Result};
use crate::ether::ETH_HLEN;
use crate::hdr::VirtioNetHdr;
use crate::iovec::{self, IoBufMut};
use crate::mac::MacAddr;
use crate::offload::{Capabilities, OffloadSet};
use crate::queue::{Backend, Interest, QueuePair, Readiness, RxFrame, TxFrame};
use crate::stats::{DropReason, QueueStats};

/// What a [`Null`] backend does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NullMode {
    /// Takes every frame (reading its bytes once) and never has one to receive.
    Sink,
    /// Has a frame of `len` bytes (60 to 1514) to receive whenever asked, and takes every frame
    /// sent to it as the sink does.
    Source {
        /// The frame length, Ethernet header included.
        len: usize,
    },
}

/// The largest frame the sink takes: a 64 KiB GSO frame with its Ethernet header and a VLAN
/// tag.
const MAX_FRAME: usize = 65535 + ETH_HLEN + 4;

/// The MAC the source's frames come from.
pub const SOURCE_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x42]);

/// A sink or a source (see the module).
#[derive(Debug)]
pub struct Null {
    mode: NullMode,
    queue_pairs: u16,
    open: Vec<bool>,
    name: String,
}

impl Null {
    /// A backend of `queue_pairs` queue pairs (1 to 256) in `mode`.
    pub fn new(mode: NullMode, queue_pairs: u16) -> Result<Null> {
        if queue_pairs == 0 || queue_pairs > 256 {
            return Err(Error::InvalidConfig {
                what: "null queue pairs",
                why: format!("{queue_pairs}: use 1 to 256"),
            });
        }
        if let NullMode::Source { len } = mode {
            if !(ETH_HLEN + 46..=ETH_HLEN + 1500).contains(&len) {
                return Err(Error::InvalidConfig {
                    what: "null source frame length",
                    why: format!("{len} bytes: use 60 to 1514"),
                });
            }
        }
        let name = match mode {
            NullMode::Sink => "null:sink".to_string(),
            NullMode::Source { len } => format!("null:source/{len}"),
        };
        Ok(Null {
            mode,
            queue_pairs,
            open: vec![false; usize::from(queue_pairs)],
            name,
        })
    }
}

impl Backend for Null {
    type Queue = NullQueue;

    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            vnet_hdr: true,
            tx_offloads: OffloadSet::ALL,
            rx_offloads: OffloadSet::NONE,
            rx_csum_verified: false,
            max_frame: MAX_FRAME,
            max_queue_pairs: self.queue_pairs,
            mac: None,
            mtu: 1500,
        }
    }

    fn open_queue_pair(&mut self, index: u16) -> Result<NullQueue> {
        let Some(open) = self.open.get_mut(usize::from(index)) else {
            return Err(Error::InvalidConfig {
                what: "queue pair index",
                why: format!("{index}: {} has {}", self.name, self.queue_pairs),
            });
        };
        if *open {
            return Err(Error::InvalidConfig {
                what: "queue pair",
                why: format!("{} queue pair {index} is open already", self.name),
            });
        }
        let io_err = |source| Error::Io {
            op: "socketpair for a null backend's readiness",
            target: self.name.clone(),
            source,
        };
        // Two fds that never change: one always readable, one never.
        let (ready, mut bell) = UnixStream::pair().map_err(io_err)?;
        bell.write_all(&[1]).map_err(io_err)?;
        let (idle, idle_peer) = UnixStream::pair().map_err(io_err)?;
        let frame = match self.mode {
            NullMode::Sink => Vec::new(),
            NullMode::Source { len } => {
                let mut f = vec![0u8; len];
                f[..6].copy_from_slice(&[0xff; 6]);
                f[6..12].copy_from_slice(&SOURCE_MAC.0);
                // The local experimental ethertype.
                f[12..14].copy_from_slice(&[0x88, 0xb5]);
                for (i, b) in f[ETH_HLEN..].iter_mut().enumerate() {
                    *b = i as u8;
                }
                f
            }
        };
        *open = true;
        Ok(NullQueue {
            index,
            frame,
            scratch: vec![0u8; MAX_FRAME],
            ready,
            _bell: bell,
            idle,
            _idle_peer: idle_peer,
            stats: QueueStats::default(),
        })
    }
}

/// A queue pair of a [`Null`] backend.
#[derive(Debug)]
pub struct NullQueue {
    index: u16,
    /// The source's frame; empty for a sink.
    frame: Vec<u8>,
    scratch: Vec<u8>,
    ready: UnixStream,
    _bell: UnixStream,
    idle: UnixStream,
    _idle_peer: UnixStream,
    stats: QueueStats,
}

impl QueuePair for NullQueue {
    fn index(&self) -> u16 {
        self.index
    }

    fn send(&mut self, frames: &[TxFrame<'_>]) -> Result<usize> {
        for f in frames {
            let len = f.len();
            if len > MAX_FRAME {
                self.stats.tx_drops.add(DropReason::TooLarge);
                continue;
            }
            // Read the bytes once, as a NIC (or DPDK's vhost PMD) would.
            let n = iovec::read_bufs(f.data, 0, &mut self.scratch[..len]);
            self.stats.count_tx(n);
        }
        Ok(frames.len())
    }

    fn recv(&mut self, bufs: &[IoBufMut<'_>]) -> Result<Option<RxFrame>> {
        if self.frame.is_empty() {
            return Ok(None);
        }
        if iovec::total_len_mut(bufs) < self.frame.len() {
            self.stats.rx_drops.add(DropReason::Truncated);
            return Ok(None);
        }
        let len = iovec::write_bufs(bufs, 0, &self.frame);
        self.stats.count_rx(len);
        Ok(Some(RxFrame {
            hdr: VirtioNetHdr::PLAIN,
            len,
        }))
    }

    fn set_rx_offloads(&mut self, offloads: OffloadSet) -> Result<()> {
        if offloads != OffloadSet::NONE {
            return Err(Error::Unsupported {
                backend: "null".into(),
                what: format!("receive offloads {offloads}"),
                hint: "it delivers plain frames only".into(),
            });
        }
        Ok(())
    }

    fn set_attached(&mut self, _attached: bool) -> Result<()> {
        Ok(())
    }

    fn rx_readiness(&self) -> Readiness<'_> {
        let fd = if self.frame.is_empty() {
            self.idle.as_fd()
        } else {
            self.ready.as_fd()
        };
        Readiness {
            fd,
            interest: Interest::Readable,
        }
    }

    fn tx_readiness(&self) -> Readiness<'_> {
        Readiness {
            fd: self.ready.as_fd(),
            interest: Interest::Readable,
        }
    }

    fn stats(&self) -> QueueStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iovec::IoBuf;

    #[test]
    fn the_sink_takes_and_counts_everything() {
        let mut b = Null::new(NullMode::Sink, 2).expect("sink");
        let mut q = b.open_queue_pair(1).expect("queue");
        assert!(b.open_queue_pair(1).is_err(), "open twice");
        assert!(b.open_queue_pair(2).is_err(), "beyond the count");
        let f = [7u8; 100];
        let data = [IoBuf::from_slice(&f[..30]), IoBuf::from_slice(&f[30..])];
        let frames = [TxFrame {
            hdr: VirtioNetHdr::PLAIN,
            data: &data,
        }; 5];
        assert_eq!(q.send(&frames).expect("send"), 5);
        let st = q.stats();
        assert_eq!((st.tx_packets, st.tx_bytes), (5, 500));
        let mut buf = [0u8; 64];
        assert!(q
            .recv(&[IoBufMut::from_mut_slice(&mut buf)])
            .expect("recv")
            .is_none());
    }

    #[test]
    fn the_source_fills_every_buffer_offered() {
        assert!(Null::new(NullMode::Source { len: 59 }, 1).is_err());
        assert!(Null::new(NullMode::Source { len: 1515 }, 1).is_err());
        let mut b = Null::new(NullMode::Source { len: 64 }, 1).expect("source");
        let mut q = b.open_queue_pair(0).expect("queue");
        let (mut x, mut y) = ([0u8; 20], [0u8; 100]);
        for _ in 0..3 {
            let got = q
                .recv(&[
                    IoBufMut::from_mut_slice(&mut x),
                    IoBufMut::from_mut_slice(&mut y),
                ])
                .expect("recv")
                .expect("a frame");
            assert_eq!(got.len, 64);
        }
        assert_eq!(&x[..6], &[0xff; 6]);
        assert_eq!(&x[6..12], &SOURCE_MAC.0);
        assert_eq!(y[43], 49, "payload byte 49 (offset 63 of the frame)");
        let mut small = [0u8; 32];
        assert!(q
            .recv(&[IoBufMut::from_mut_slice(&mut small)])
            .expect("recv")
            .is_none());
        assert_eq!(q.stats().rx_packets, 3);
        assert_eq!(q.stats().rx_drops.get(DropReason::Truncated), 1);
    }
}
