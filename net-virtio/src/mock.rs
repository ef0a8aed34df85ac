//! A guest driver in miniature, over real `GuestMemoryMmap` (cargo feature `test-utils`).
//!
//! [`MockQueue`] is the driver's side of one split virtqueue: it writes descriptors, publishes
//! them in the available ring, and reads the used ring back. [`MockDriver`] brings a
//! [`NetDevice`] up like a virtio-net driver (features, queues, `DRIVER_OK`), sends frames in
//! any buffer layout, posts receive buffers, reads received frames and issues control
//! commands. Hostile tests write raw descriptors and ring indices through the same types.
//!
//! Guest memory is two adjacent regions, so buffers can straddle a region boundary.

use std::collections::HashMap;

use net_api::{Backend, VirtioNetHdr};
use virtio_bindings::virtio_config as vc;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::codec::HdrLayout;
use crate::device::{DeviceError, Event, NetDevice};
use crate::irq::Interrupt;

/// Where the rings live; buffers are allocated above [`HEAP_START`].
const RING_AREA: u64 = 0x10_0000;
/// Ring bytes per queue.
const RING_STRIDE: u64 = 0x4_0000;
/// First buffer address.
pub const HEAP_START: u64 = 0x100_0000;

/// Guest memory for tests: two adjacent regions of `size / 2` bytes from address 0.
pub fn guest_memory(size: u64) -> GuestMemoryMmap {
    let half = size / 2;
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), half as usize),
        (GuestAddress(half), (size - half) as usize),
    ])
    .expect("test guest memory")
}

/// One descriptor as the driver writes it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

impl Desc {
    /// The descriptor flags for this buffer in a chain (`NEXT` unless `last`).
    fn flags(&self, last: bool) -> u16 {
        let mut flags = if self.write {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        if !last {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        flags
    }
}

/// The driver's side of one split virtqueue.
#[derive(Debug)]
pub struct MockQueue {
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: GuestAddress,
    /// Available ring address.
    pub avail: GuestAddress,
    /// Used ring address.
    pub used: GuestAddress,
    free: Vec<u16>,
    avail_idx: u16,
    kicked_at: u16,
    last_used: u16,
    chains: HashMap<u16, (Vec<u16>, Vec<Desc>)>,
}

impl MockQueue {
    /// A queue of `size` entries with its rings from `base` on, zeroed.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> MockQueue {
        let desc = base;
        let avail = desc.unchecked_add(16 * u64::from(size));
        let used = GuestAddress((avail.0 + 6 + 2 * u64::from(size) + 3) & !3);
        let end = used.0 + 6 + 8 * u64::from(size);
        let zeros = vec![0u8; (end - base.0) as usize];
        mem.write_slice(&zeros, base).expect("ring memory");
        MockQueue {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            kicked_at: 0,
            last_used: 0,
            chains: HashMap::new(),
        }
    }

    /// Writes descriptor `index` as given (hostile tests use any values).
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc.unchecked_add(16 * u64::from(index));
        mem.write_obj(addr.to_le(), at).expect("desc");
        mem.write_obj(len.to_le(), at.unchecked_add(8))
            .expect("desc");
        mem.write_obj(flags.to_le(), at.unchecked_add(12))
            .expect("desc");
        mem.write_obj(next.to_le(), at.unchecked_add(14))
            .expect("desc");
    }

    /// Puts `head` in the next available slot and publishes it.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), self.avail.unchecked_add(4 + 2 * slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    /// Writes the available index (hostile tests make it jump).
    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx.to_le(), self.avail.unchecked_add(2))
            .expect("avail idx");
    }

    /// Writes `used_event` (the EVENT_IDX field after the available ring).
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, idx: u16) {
        let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        mem.write_obj(idx.to_le(), at).expect("used_event");
    }

    /// Whether the driver must notify the device now, as Linux's `virtqueue_kick_prepare`
    /// decides: with `EVENT_IDX`, when the available index crossed the device's `avail_event`
    /// since the last decision; without, unless the device set `VRING_USED_F_NO_NOTIFY`.
    pub fn kick_prepare(&mut self, mem: &GuestMemoryMmap, event_idx: bool) -> bool {
        let new = self.avail_idx;
        let old = std::mem::replace(&mut self.kicked_at, new);
        if event_idx {
            let at = self.used.unchecked_add(4 + 8 * u64::from(self.size));
            let event = u16::from_le(mem.read_obj(at).expect("avail_event"));
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = u16::from_le(mem.read_obj(self.used).expect("used flags"));
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        }
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Writes a chain and publishes it; `None` when descriptors ran out.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> Option<u16> {
        if descs.is_empty() || descs.len() > self.free.len() {
            return None;
        }
        let ids: Vec<u16> = (0..descs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, d) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = d.flags(last);
            let next = if last { 0 } else { ids[i + 1] };
            self.write_desc(mem, ids[i], d.addr, d.len, flags, next);
        }
        let head = ids[0];
        self.chains.insert(head, (ids, descs.to_vec()));
        self.publish(mem, head);
        Some(head)
    }

    /// Writes a chain as one indirect descriptor pointing at a table at `table`.
    pub fn add_indirect(
        &mut self,
        mem: &GuestMemoryMmap,
        table: u64,
        descs: &[Desc],
    ) -> Option<u16> {
        let id = self.free.pop()?;
        for (i, d) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = d.flags(last);
            let at = GuestAddress(table + 16 * i as u64);
            mem.write_obj(d.addr.to_le(), at).expect("indirect");
            mem.write_obj(d.len.to_le(), at.unchecked_add(8))
                .expect("indirect");
            mem.write_obj(flags.to_le(), at.unchecked_add(12))
                .expect("indirect");
            mem.write_obj(((i + 1) as u16).to_le(), at.unchecked_add(14))
                .expect("indirect");
        }
        self.write_desc(
            mem,
            id,
            table,
            16 * descs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        self.chains.insert(id, (vec![id], descs.to_vec()));
        self.publish(mem, id);
        Some(id)
    }

    /// The used index the device wrote.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(mem.read_obj(self.used.unchecked_add(2)).expect("used idx"))
    }

    /// New used entries `(id, len, buffers of that chain)`; their descriptors are free again.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32, Vec<Desc>)> {
        let mut out = Vec::new();
        let idx = self.used_idx(mem);
        while self.last_used != idx {
            let slot = u64::from(self.last_used % self.size);
            let at = self.used.unchecked_add(4 + 8 * slot);
            let id = u32::from_le(mem.read_obj(at).expect("used elem"));
            let len = u32::from_le(mem.read_obj(at.unchecked_add(4)).expect("used elem"));
            let descs = match u16::try_from(id).ok().and_then(|h| self.chains.remove(&h)) {
                Some((ids, descs)) => {
                    self.free.extend(ids);
                    descs
                }
                None => Vec::new(),
            };
            out.push((id, len, descs));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}

/// Reads `len` bytes spread over `descs`.
pub fn gather(mem: &GuestMemoryMmap, descs: &[Desc], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for d in descs {
        if out.len() == len {
            break;
        }
        let n = (d.len as usize).min(len - out.len());
        let mut b = vec![0u8; n];
        mem.read_slice(&mut b, GuestAddress(d.addr))
            .expect("gather");
        out.extend_from_slice(&b);
    }
    out
}

/// A virtio-net driver over a [`NetDevice`].
#[derive(Debug)]
pub struct MockDriver {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues, by transport index.
    pub queues: Vec<MockQueue>,
    /// The acked features.
    pub features: u64,
    heap: u64,
    heap_end: u64,
}

/// A received frame: header, bytes and how many chains it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The header as the device wrote it.
    pub hdr: VirtioNetHdr,
    /// The frame.
    pub frame: Vec<u8>,
    /// Chains used (the `num_buffers` the device should have written).
    pub chains: usize,
}

impl MockDriver {
    /// A driver with `mem_size` bytes of guest memory (at least 64 MiB) and `queues` queues
    /// of `size` entries.
    pub fn new(mem_size: u64, queues: u16, size: u16) -> MockDriver {
        let mem = guest_memory(mem_size);
        let queues = (0..queues)
            .map(|i| {
                MockQueue::new(
                    &mem,
                    GuestAddress(RING_AREA + RING_STRIDE * u64::from(i)),
                    size,
                )
            })
            .collect();
        MockDriver {
            mem,
            queues,
            features: 0,
            heap: HEAP_START,
            heap_end: mem_size,
        }
    }

    /// Allocates `len` bytes of buffer at an odd-friendly address (wraps around; tests keep
    /// less in flight than the heap holds).
    pub fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len).max(1);
        if self.heap + len > self.heap_end {
            self.heap = HEAP_START;
        }
        let at = self.heap;
        self.heap += len;
        at
    }

    /// Writes bytes at an address.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("write");
    }

    /// The header layout the acked features give.
    pub fn layout(&self) -> HdrLayout {
        HdrLayout::from_features(self.features)
    }

    /// Brings the device up as a driver would: acks `features` (masked to the offer),
    /// `FEATURES_OK`, queue sizes and addresses, ready, `DRIVER_OK`.
    pub fn start<B: Backend, I: Interrupt>(
        &mut self,
        dev: &mut NetDevice<B, I>,
        features: u64,
    ) -> Result<(), DeviceError> {
        let features = features & dev.features();
        self.features = features;
        dev.set_status(0, &self.mem)?;
        dev.set_status(1 | 2, &self.mem)?;
        dev.ack_features(features)?;
        dev.set_status(1 | 2 | vc::VIRTIO_CONFIG_S_FEATURES_OK as u8, &self.mem)?;
        for (i, q) in self.queues.iter().enumerate() {
            let i = i as u16;
            if i >= dev.num_queues() {
                break;
            }
            dev.set_queue_size(i, q.size)?;
            dev.set_queue_addresses(i, q.desc.0, q.avail.0, q.used.0)?;
            dev.set_queue_ready(i, true)?;
        }
        dev.set_status(
            1 | 2 | (vc::VIRTIO_CONFIG_S_FEATURES_OK | vc::VIRTIO_CONFIG_S_DRIVER_OK) as u8,
            &self.mem,
        )
    }

    /// Queues one frame for transmit on queue `q` with header `hdr`, the header and frame
    /// bytes cut into descriptors of the sizes in `cuts` (the last one takes the rest).
    pub fn send(&mut self, q: u16, hdr: &VirtioNetHdr, frame: &[u8], cuts: &[u32]) -> Option<u16> {
        let layout = self.layout();
        let mut bytes = vec![0u8; layout.size()];
        layout.encode(hdr, &mut bytes).expect("header");
        bytes.extend_from_slice(frame);
        let mut descs = Vec::new();
        let mut at = 0usize;
        for &c in cuts {
            if at >= bytes.len() {
                break;
            }
            let n = (c as usize).min(bytes.len() - at);
            let addr = self.alloc(n as u32);
            self.write(addr, &bytes[at..at + n]);
            descs.push(Desc {
                addr,
                len: n as u32,
                write: false,
            });
            at += n;
        }
        if at < bytes.len() {
            let n = bytes.len() - at;
            let addr = self.alloc(n as u32);
            self.write(addr, &bytes[at..]);
            descs.push(Desc {
                addr,
                len: n as u32,
                write: false,
            });
        }
        self.queues[usize::from(q)].add_chain(&self.mem, &descs)
    }

    /// Posts one receive chain on queue `q` made of writable buffers of these sizes.
    pub fn post_rx(&mut self, q: u16, sizes: &[u32]) -> Option<u16> {
        let descs: Vec<Desc> = sizes
            .iter()
            .map(|&len| Desc {
                addr: self.alloc(len),
                len,
                write: true,
            })
            .collect();
        self.queues[usize::from(q)].add_chain(&self.mem, &descs)
    }

    /// Reads the frames the device delivered on receive queue `q`, joining mergeable chains
    /// by `num_buffers`.
    pub fn received(&mut self, q: u16) -> Vec<Received> {
        let layout = self.layout();
        let used = self.queues[usize::from(q)].take_used(&self.mem);
        let mut out = Vec::new();
        let mut it = used.into_iter();
        while let Some((_, len, descs)) = it.next() {
            if len == 0 {
                continue;
            }
            let first = gather(&self.mem, &descs, len as usize);
            let Ok(hdr) = layout.decode(&first) else {
                continue;
            };
            let mut frame = first[layout.size()..].to_vec();
            let chains = if layout.has_num_buffers() {
                usize::from(hdr.num_buffers).max(1)
            } else {
                1
            };
            for _ in 1..chains {
                if let Some((_, len, descs)) = it.next() {
                    frame.extend(gather(&self.mem, &descs, len as usize));
                }
            }
            out.push(Received { hdr, frame, chains });
        }
        out
    }

    /// Notifies queue `q` if the device asked for it (`EVENT_IDX` or the used ring's flags),
    /// as a Linux driver does after adding buffers; returns whether it did. Tests that use
    /// this catch a device that forgets to re-enable notifications.
    pub fn kick<B: Backend, I: Interrupt>(
        &mut self,
        dev: &mut NetDevice<B, I>,
        q: u16,
    ) -> Result<bool, DeviceError> {
        let event_idx = self.features & crate::features::bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        if !self.queues[usize::from(q)].kick_prepare(&self.mem, event_idx) {
            return Ok(false);
        }
        dev.handle(Event::Kick(q), &self.mem)?;
        Ok(true)
    }

    /// Notifies queue `q` whether or not the device asked for it (a spurious kick).
    pub fn force_kick<B: Backend, I: Interrupt>(
        &self,
        dev: &mut NetDevice<B, I>,
        q: u16,
    ) -> Result<(), DeviceError> {
        dev.handle(Event::Kick(q), &self.mem)
    }

    /// Sends a control command on queue `ctrl` and returns the ack byte (`None`: no answer).
    pub fn ctrl<B: Backend, I: Interrupt>(
        &mut self,
        dev: &mut NetDevice<B, I>,
        ctrl: u16,
        class: u8,
        cmd: u8,
        data: &[u8],
    ) -> Result<Option<u8>, DeviceError> {
        let mut bytes = vec![class, cmd];
        bytes.extend_from_slice(data);
        let out = self.alloc(bytes.len() as u32);
        self.write(out, &bytes);
        let ack = self.alloc(1);
        self.write(ack, &[0xee]);
        let descs = [
            Desc {
                addr: out,
                len: bytes.len() as u32,
                write: false,
            },
            Desc {
                addr: ack,
                len: 1,
                write: true,
            },
        ];
        self.queues[usize::from(ctrl)].add_chain(&self.mem, &descs);
        self.kick(dev, ctrl)?;
        let used = self.queues[usize::from(ctrl)].take_used(&self.mem);
        Ok(used
            .last()
            .and_then(|&(_, len, _)| (len == 1).then(|| gather(&self.mem, &descs[1..], 1)[0])))
    }
}
