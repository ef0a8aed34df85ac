//! # volt-net-testkit: what the tests and benchmarks share to drive real peers
//!
//! [`testpmd`]: DPDK's `dpdk-testpmd` with one virtual device (a vhost-user socket, an AF_XDP
//! or TAP interface), two lcores on one pinned CPU, no hugepages; its output read as it comes,
//! so a caller can wait for traffic to flow and take the **steady-state** rate: the median of
//! the per-second rates testpmd prints after a warm-up, never a count divided by a window
//! holding testpmd's own start-up.

pub mod testpmd;
