//! # net-vhostuser: vhost-user-net, both ways
//!
//! This crate will own (issue "net-vhostuser"): the backend side, built on rust-vmm's
//! `vhost-user-backend`, which serves any [`net_api::Backend`] to QEMU or Cloud Hypervisor over
//! a unix socket using `net-virtio`'s pumps on the shared guest memory; and the frontend side,
//! built on the `vhost` crate, which hands a VMM's virtio-net queues to an external backend
//! such as OVS-DPDK. Nothing is implemented yet.
