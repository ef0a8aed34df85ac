//! # net-afxdp: the AF_XDP backend
//!
//! This crate will own (issue "net-afxdp"): one XSK socket per queue pair over a UMEM, copy
//! and zero-copy binds with the mode reported, skb and native attach, and the project's own XDP
//! program (steering a VM's MAC to its socket, passing everything else to the host stack),
//! loaded with libbpf-rs and detached when the last VM on a link goes.
//!
//! AF_XDP carries no virtio-net header: its capabilities report no offloads, so `net-virtio`
//! completes checksums and segments GSO frames in software. It is the only crate that will
//! need clang and libelf. Nothing is implemented yet.
