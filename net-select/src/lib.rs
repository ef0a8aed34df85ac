//! # net-select: probe the host, choose a backend, explain why, open it
//!
//! - [`probe`]: per interface, the kind, driver, speed, state, queues, MTU and XDP features
//!   (from the kernel's `netdev` generic-netlink family, or a driver list on older kernels,
//!   saying which), and host-wide `/dev/net/tun`, macvtap and the process's capabilities.
//!   Read through [`probe::HostView`], so tests use [`probe::FakeHost`].
//! - [`decide`]: a pure function from the probe and the VM's [`decide::Requirements`] to a
//!   backend, with reasons, rejected alternatives and warnings; how the seed's tree is read is
//!   documented there.
//! - [`facade`]: opens the choice as a `net-api` backend (or a frontend to an external
//!   switch). The backend crates are re-exported behind cargo features `macvtap`, `vhostuser`
//!   (both default) and `afxdp`; without `afxdp` nothing needs clang or libelf.
//! - [`serve`] (feature `cli`): the vhost-user-net daemon's entry point, `volt-net serve` and
//!   `volt-net-serve`: it opens the host side (TAP, macvtap, AF_XDP, loopback) and hands it to
//!   `net_vhostuser::server`.
//! - The `volt-net` command line (feature `cli`): `probe`, `select`, `networkd`, `serve`.

pub mod decide;
pub mod facade;
mod genl;
pub mod probe;
pub mod relink;
#[cfg(feature = "cli")]
pub mod serve;

pub use genl::DevXdp;

#[cfg(feature = "afxdp")]
pub use net_afxdp;
#[cfg(feature = "macvtap")]
pub use net_macvtap;
#[cfg(feature = "vhostuser")]
pub use net_vhostuser;
