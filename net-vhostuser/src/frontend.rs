//! The frontend side: a VMM hands its virtio-net queues and guest memory to an external
//! vhost-user-net backend (DPDK's `net_vhost`, OVS-DPDK, another `volt-net serve`), with
//! rust-vmm's `vhost` crate speaking the protocol.
//!
//! ```no_run
//! # fn demo(mem: &vm_memory::GuestMemoryMmap, rings: Vec<net_vhostuser::frontend::Vring>)
//! # -> Result<(), net_vhostuser::frontend::FrontendError> {
//! use net_vhostuser::frontend::VhostUserNet;
//! let mut net = VhostUserNet::connect("/run/switch/vm0.sock", 1)?;
//! let offered = net.features();          // what the guest may ack
//! net.set_features(offered & (1 << 32))?; // what it acked (VERSION_1 here)
//! net.set_memory(mem)?;                   // memfd-backed regions
//! for (i, ring) in rings.into_iter().enumerate() {
//!     net.start_vring(i, ring, 0)?;       // receive queue 0, transmit queue 1, ...
//! }
//! // The backend went away and came back (a switch restart):
//! net.reconnect(std::time::Duration::from_secs(10))?;
//! # Ok(()) }
//! ```
//!
//! Guest memory must be file-backed (a memfd with `MAP_SHARED`): the backend maps the same
//! pages. Ring addresses are given as guest addresses and translated here to this process's
//! addresses, as the protocol wants. After the backend restarts, [`VhostUserNet::reconnect`]
//! sets the session up again and resumes each ring where the backend last completed work
//! (the used index in guest memory), as QEMU does when `GET_VRING_BASE` cannot be asked.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: negotiated with the backend, never shown to the guest.
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// What went wrong talking to a backend.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The protocol or the backend failed a request.
    #[error("vhost-user backend at {path}: {what}: {source}")]
    Protocol {
        /// The backend's socket.
        path: PathBuf,
        /// The request.
        what: &'static str,
        /// What vhost said.
        source: vhost::Error,
    },
    /// The backend cannot serve what was asked.
    #[error("vhost-user backend at {path}: {why}")]
    Unsupported {
        /// The backend's socket.
        path: PathBuf,
        /// Why, and what to do.
        why: String,
    },
    /// A caller error (a ring out of range, memory that cannot be shared).
    #[error("{0}")]
    Invalid(String),
}

/// One virtqueue as the guest set it up: size, guest addresses of its parts, and the
/// eventfds the backend reads kicks from and signals interrupts on.
#[derive(Debug)]
pub struct Vring {
    /// Queue size (a power of two).
    pub size: u16,
    /// Descriptor table, available ring and used ring (guest addresses).
    pub desc: GuestAddress,
    /// See `desc`.
    pub avail: GuestAddress,
    /// See `desc`.
    pub used: GuestAddress,
    /// The guest's notifications (an ioeventfd).
    pub kick: EventFd,
    /// The backend's interrupts (an irqfd).
    pub call: EventFd,
}

/// A vhost-user-net backend driven for a VMM: one session at a time, replayed on
/// [`reconnect`](Self::reconnect).
pub struct VhostUserNet {
    path: PathBuf,
    queue_pairs: u16,
    frontend: Frontend,
    /// The backend's virtio features (with `PROTOCOL_FEATURES` if it offers it).
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    acked: Option<u64>,
    mem: Option<GuestMemoryMmap>,
    vrings: Vec<Option<Vring>>,
}

impl std::fmt::Debug for VhostUserNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserNet")
            .field("path", &self.path)
            .field("queue_pairs", &self.queue_pairs)
            .field("offered", &format_args!("{:#x}", self.offered))
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

impl VhostUserNet {
    /// Connects to the backend listening on `path` and sets up a session for `queue_pairs`
    /// queue pairs (owner, protocol features, queue count).
    pub fn connect(path: impl AsRef<Path>, queue_pairs: u16) -> Result<Self, FrontendError> {
        let path = path.as_ref().to_path_buf();
        if queue_pairs == 0 {
            return Err(FrontendError::Invalid(
                "0 queue pairs: ask for at least 1".into(),
            ));
        }
        let frontend = Frontend::connect(&path, 2 * u64::from(queue_pairs)).map_err(|e| {
            FrontendError::Protocol {
                path: path.clone(),
                what: "connecting",
                source: e,
            }
        })?;
        let mut net = VhostUserNet {
            path,
            queue_pairs,
            frontend,
            offered: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            acked: None,
            mem: None,
            vrings: (0..2 * queue_pairs).map(|_| None).collect(),
        };
        net.session()?;
        Ok(net)
    }

    fn err(&self, what: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError + '_ {
        move |source| FrontendError::Protocol {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// The first requests of every connection.
    fn session(&mut self) -> Result<(), FrontendError> {
        self.frontend.set_owner().map_err(self.err("SET_OWNER"))?;
        let offered = self
            .frontend
            .get_features()
            .map_err(self.err("GET_FEATURES"))?;
        self.offered = offered;
        self.protocol = VhostUserProtocolFeatures::empty();
        if offered & PROTOCOL_FEATURES != 0 {
            let theirs = self
                .frontend
                .get_protocol_features()
                .map_err(self.err("GET_PROTOCOL_FEATURES"))?;
            let wanted =
                theirs & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            self.frontend
                .set_protocol_features(wanted)
                .map_err(self.err("SET_PROTOCOL_FEATURES"))?;
            self.protocol = wanted;
            // Every request then waits for the backend's verdict, so a refusal is an error
            // here rather than a dropped connection later.
            if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                self.frontend
                    .set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        if self.queue_pairs > 1 {
            let queues = if self.protocol.contains(VhostUserProtocolFeatures::MQ) {
                self.frontend
                    .get_queue_num()
                    .map_err(self.err("GET_QUEUE_NUM"))?
            } else {
                2
            };
            if queues < 2 * u64::from(self.queue_pairs) {
                return Err(FrontendError::Unsupported {
                    path: self.path.clone(),
                    why: format!(
                        "it serves {} queues, {} queue pairs need {}: start it with more queues",
                        queues,
                        self.queue_pairs,
                        2 * self.queue_pairs
                    ),
                });
            }
        }
        Ok(())
    }

    /// The virtio features the backend offers, to offer the guest (`PROTOCOL_FEATURES`,
    /// which is between us and the backend, removed).
    pub fn features(&self) -> u64 {
        self.offered & !PROTOCOL_FEATURES
    }

    /// Tells the backend the features the guest acked (a subset of [`features`](Self::features)).
    pub fn set_features(&mut self, acked: u64) -> Result<(), FrontendError> {
        if acked & !self.features() != 0 {
            return Err(FrontendError::Invalid(format!(
                "features {:#x} were not offered by the backend",
                acked & !self.features()
            )));
        }
        let value = acked | (self.offered & PROTOCOL_FEATURES);
        self.frontend
            .set_features(value)
            .map_err(self.err("SET_FEATURES"))?;
        self.acked = Some(acked);
        Ok(())
    }

    /// Shares guest memory with the backend: every region must be file-backed.
    pub fn set_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), FrontendError> {
        let regions = mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|_| {
                    FrontendError::Invalid(format!(
                        "guest memory region at {:#x} is not file-backed: back guest memory with a memfd (MAP_SHARED) to share it",
                        r.start_addr().raw_value()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(self.err("SET_MEM_TABLE"))?;
        self.mem = Some(mem.clone());
        Ok(())
    }

    /// Hands ring `index` (receive queues are even, transmit queues odd) to the backend,
    /// starting at available index `base`, and enables it.
    pub fn start_vring(
        &mut self,
        index: usize,
        vring: Vring,
        base: u16,
    ) -> Result<(), FrontendError> {
        if index >= self.vrings.len() {
            return Err(FrontendError::Invalid(format!(
                "ring {index}: {} queue pairs have rings 0 to {}",
                self.queue_pairs,
                self.vrings.len() - 1
            )));
        }
        self.send_vring(index, &vring, base)?;
        self.vrings[index] = Some(vring);
        Ok(())
    }

    fn send_vring(&mut self, index: usize, vring: &Vring, base: u16) -> Result<(), FrontendError> {
        if !vring.size.is_power_of_two() || vring.size > 32768 {
            return Err(FrontendError::Invalid(format!(
                "ring {index}: size {} is not a power of two up to 32768",
                vring.size
            )));
        }
        let mem = self.mem.as_ref().ok_or_else(|| {
            FrontendError::Invalid("set the memory table before starting a ring".into())
        })?;
        let host = |a: GuestAddress, what: &str| {
            mem.get_host_address(a).map(|p| p as u64).map_err(|_| {
                FrontendError::Invalid(format!(
                    "ring {index}: {what} at {:#x} is outside guest memory",
                    a.0
                ))
            })
        };
        let config = VringConfigData {
            queue_max_size: vring.size,
            queue_size: vring.size,
            flags: 0,
            desc_table_addr: host(vring.desc, "descriptor table")?,
            used_ring_addr: host(vring.used, "used ring")?,
            avail_ring_addr: host(vring.avail, "available ring")?,
            log_addr: None,
        };
        self.frontend
            .set_vring_num(index, vring.size)
            .map_err(self.err("SET_VRING_NUM"))?;
        self.frontend
            .set_vring_addr(index, &config)
            .map_err(self.err("SET_VRING_ADDR"))?;
        self.frontend
            .set_vring_base(index, base)
            .map_err(self.err("SET_VRING_BASE"))?;
        self.frontend
            .set_vring_call(index, &vring.call)
            .map_err(self.err("SET_VRING_CALL"))?;
        self.frontend
            .set_vring_kick(index, &vring.kick)
            .map_err(self.err("SET_VRING_KICK"))?;
        if self.offered & PROTOCOL_FEATURES != 0 {
            self.frontend
                .set_vring_enable(index, true)
                .map_err(self.err("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Stops ring `index` and returns it with the available index the backend reached (to
    /// resume from, or to save in a snapshot). On an error the ring stays started.
    pub fn stop_vring(&mut self, index: usize) -> Result<(Vring, u16), FrontendError> {
        if self.vrings.get(index).is_none_or(Option::is_none) {
            return Err(FrontendError::Invalid(format!(
                "ring {index} is not started"
            )));
        }
        if self.offered & PROTOCOL_FEATURES != 0 {
            self.frontend
                .set_vring_enable(index, false)
                .map_err(self.err("SET_VRING_ENABLE"))?;
        }
        let base = self
            .frontend
            .get_vring_base(index)
            .map_err(self.err("GET_VRING_BASE"))?;
        let vring = self.vrings[index]
            .take()
            .ok_or_else(|| FrontendError::Invalid(format!("ring {index} is not started")))?;
        Ok((vring, base as u16))
    }

    /// After the backend went away: connects again (retrying until `timeout`, while it
    /// restarts), sets the session up as it was, and restarts every ring from the used index
    /// in guest memory (what the backend completed; buffers it held but did not complete are
    /// offered again).
    pub fn reconnect(&mut self, timeout: Duration) -> Result<(), FrontendError> {
        let deadline = Instant::now() + timeout;
        let frontend = loop {
            match Frontend::connect(&self.path, 2 * u64::from(self.queue_pairs)) {
                Ok(f) => break f,
                Err(e) if Instant::now() >= deadline => {
                    return Err(FrontendError::Protocol {
                        path: self.path.clone(),
                        what: "reconnecting",
                        source: e,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        self.frontend = frontend;
        self.session()?;
        if let Some(acked) = self.acked {
            if acked & !self.features() != 0 {
                return Err(FrontendError::Unsupported {
                    path: self.path.clone(),
                    why: format!(
                        "the restarted backend no longer offers features {:#x} the guest acked",
                        acked & !self.features()
                    ),
                });
            }
            self.set_features(acked)?;
        }
        // Clones share the regions: nothing is lost if a request fails (and reconnect can be
        // called again).
        if let Some(mem) = self.mem.clone() {
            self.set_memory(&mem)?;
        }
        for index in 0..self.vrings.len() {
            let Some(vring) = self.vrings[index].take() else {
                continue;
            };
            let res = self
                .used_index(&vring)
                .and_then(|base| self.send_vring(index, &vring, base));
            self.vrings[index] = Some(vring);
            res?;
        }
        Ok(())
    }

    fn used_index(&self, vring: &Vring) -> Result<u16, FrontendError> {
        let mem = self
            .mem
            .as_ref()
            .ok_or_else(|| FrontendError::Invalid("no memory table".into()))?;
        let at = vring
            .used
            .checked_add(2)
            .ok_or_else(|| FrontendError::Invalid("used ring address overflows".into()))?;
        mem.read_obj::<u16>(at)
            .map(u16::from_le)
            .map_err(|e| FrontendError::Invalid(format!("reading the used index: {e}")))
    }

    /// The backend's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection's fd (to watch for the backend hanging up: readable at EOF).
    pub fn connection_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }
}
