//! # volt-net benchmarks
//!
//! Frame builders shared by the criterion benchmarks in `benches/`; the cross-backend suite
//! (namespaces, veth, DPDK peers) lands here with the backend issues.
