//! # net-select: probe the host, choose a backend, explain why
//!
//! This crate will own (issue "net-select"): the probe of each interface (driver, speed,
//! queues, XDP features from the netdev generic-netlink family, tun/macvtap availability,
//! capabilities), the decision tree as a pure function that returns the backend with its
//! reasons and the rejected alternatives, the facade that opens the chosen backend as a
//! [`net_api`] object (backends behind cargo features), and the `volt-net` command line.
//! Nothing is implemented yet.
