//! # net-vhostuser: vhost-user-net, both ways
//!
//! - [`backend`]: any [`net_api::Backend`] served to a vhost-user frontend (QEMU, Cloud
//!   Hypervisor, DPDK's virtio_user) over a unix socket, built on rust-vmm's
//!   `vhost-user-backend`, with `net-virtio`'s pumps on the guest memory the frontend shares.
//!
//! The frontend side (a VMM handing its queues to an external backend through the `vhost`
//! crate) and the `volt-net serve` command are still to come (issue 5).

pub mod backend;
pub mod server;
