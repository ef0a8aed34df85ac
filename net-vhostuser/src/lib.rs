//! # net-vhostuser: vhost-user-net, both ways
//!
//! - [`backend`]: any [`net_api::Backend`] served to a vhost-user frontend (QEMU, Cloud
//!   Hypervisor, DPDK's virtio_user) over a unix socket, built on rust-vmm's
//!   `vhost-user-backend`, with `net-virtio`'s pumps on the guest memory the frontend shares.
//!
//! - [`serve`]: the daemon's command line (`volt-net-serve`, `volt-net serve`).
//! - [`server`]: one socket, frontends served one after another (what `volt-net-serve` runs),
//!   the device reset between them.
//! - [`frontend`]: the other way round: a VMM hands its virtio-net queues and memfd-backed
//!   guest memory to an external vhost-user backend (DPDK, OVS-DPDK), and recovers when that
//!   backend restarts.

pub mod backend;
pub mod frontend;
pub mod serve;
pub mod server;
