//! # net-macvtap: TAP and macvtap backends, link plumbing and networkd files
//!
//! This crate will own (issue "net-macvtap"):
//! - the TAP backend (`/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
//!   IFF_MULTI_QUEUE`) and the macvtap backend (`/dev/tapN`), one fd per queue pair,
//!   implementing [`net_api::QueuePair`] with `readv`/`writev` straight from the caller's slices;
//! - host plumbing over netlink: macvtap in vepa/bridge/private/passthru, tap, veth, bridge,
//!   moving links between namespaces;
//! - the zone: a bridge with an address and nftables masquerade toward an uplink;
//! - the networkd renderer for `.netdev`, `.network` and `.link` files.
//!
//! It builds without any C library. Nothing is implemented yet.
