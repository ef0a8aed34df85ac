//! # net-macvtap: TAP and macvtap backends, link plumbing and networkd files
//!
//! - [`tap`]: the TAP backend (`/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
//!   IFF_MULTI_QUEUE`) and the macvtap backend (`/dev/tapN`), one fd per queue pair,
//!   implementing [`net_api::QueuePair`] with `readv`/`writev` straight from the caller's
//!   slices; both also take fds opened by a privileged helper.
//! - [`netlink`]: synchronous rtnetlink plumbing: create, read, change, move and delete
//!   links (macvtap in every mode, veth, bridge), addresses and default routes, with errors
//!   that name the operation and the link.
//! - [`zone`]: a zone: a bridge with an IPv4 subnet, nftables masquerade out of an uplink and
//!   IPv4 forwarding; VMs attach by macvtap, containers by veth.
//! - [`networkd`]: systemd-networkd files for what volt-net declares (a VM's macvtap, its
//!   lower link, a zone bridge), every value checked, written atomically.
//!
//! It builds without any C library.

pub mod netlink;
pub mod networkd;
pub mod tap;
#[cfg(any(test, feature = "test-utils"))]
pub mod testns;
pub mod zone;
