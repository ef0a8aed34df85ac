//! Feature negotiation: what to offer a guest for a backend, and what the acked bits mean.
//!
//! Transmit offloads (`CSUM`, `HOST_*`) are offered whatever the backend: what it cannot take,
//! the software fallback completes or segments. Receive offloads (`GUEST_*`) are offered only
//! as far as the backend can deliver them. The offered set always respects the dependencies of
//! virtio 1.2 section 5.1.3.1, which [`check_dependencies`] verifies on any set.

use net_api::{Capabilities, OffloadSet};
use virtio_bindings::virtio_net as vn;

/// The bit for a feature number.
pub const fn bit(feature: u32) -> u64 {
    1u64 << feature
}

/// Transmit offloads the software fallback can honour for any backend.
pub const SOFTWARE_TX_FEATURES: u64 = bit(vn::VIRTIO_NET_F_CSUM)
    | bit(vn::VIRTIO_NET_F_HOST_TSO4)
    | bit(vn::VIRTIO_NET_F_HOST_TSO6)
    | bit(vn::VIRTIO_NET_F_HOST_ECN)
    | bit(vn::VIRTIO_NET_F_HOST_UFO)
    | bit(vn::VIRTIO_NET_F_HOST_USO);

const GUEST_MAP: [(u32, OffloadSet); 7] = [
    (vn::VIRTIO_NET_F_GUEST_CSUM, OffloadSet::CSUM),
    (vn::VIRTIO_NET_F_GUEST_TSO4, OffloadSet::TSO4),
    (vn::VIRTIO_NET_F_GUEST_TSO6, OffloadSet::TSO6),
    (vn::VIRTIO_NET_F_GUEST_ECN, OffloadSet::TSO_ECN),
    (vn::VIRTIO_NET_F_GUEST_UFO, OffloadSet::UFO),
    (vn::VIRTIO_NET_F_GUEST_USO4, OffloadSet::USO4),
    (vn::VIRTIO_NET_F_GUEST_USO6, OffloadSet::USO6),
];

const HOST_MAP: [(u32, OffloadSet); 6] = [
    (vn::VIRTIO_NET_F_CSUM, OffloadSet::CSUM),
    (vn::VIRTIO_NET_F_HOST_TSO4, OffloadSet::TSO4),
    (vn::VIRTIO_NET_F_HOST_TSO6, OffloadSet::TSO6),
    (vn::VIRTIO_NET_F_HOST_ECN, OffloadSet::TSO_ECN),
    (vn::VIRTIO_NET_F_HOST_UFO, OffloadSet::UFO),
    (
        vn::VIRTIO_NET_F_HOST_USO,
        OffloadSet::USO4.union(OffloadSet::USO6),
    ),
];

/// The offload features to offer a guest for a backend with these capabilities.
pub fn offload_features(caps: &Capabilities) -> u64 {
    let rx = if caps.vnet_hdr {
        caps.rx_offloads
    } else {
        OffloadSet::NONE
    };
    let mut f = SOFTWARE_TX_FEATURES;
    let can_csum = rx.contains(OffloadSet::CSUM);
    if can_csum || caps.rx_csum_verified {
        // Partial checksums from the backend, or DATA_VALID on verified frames.
        f |= bit(vn::VIRTIO_NET_F_GUEST_CSUM);
    }
    if can_csum {
        for (feature, off) in GUEST_MAP {
            if off != OffloadSet::CSUM && off != OffloadSet::TSO_ECN && rx.contains(off) {
                f |= bit(feature);
            }
        }
        let tso = bit(vn::VIRTIO_NET_F_GUEST_TSO4) | bit(vn::VIRTIO_NET_F_GUEST_TSO6);
        if rx.contains(OffloadSet::TSO_ECN) && f & tso != 0 {
            f |= bit(vn::VIRTIO_NET_F_GUEST_ECN);
        }
    }
    f
}

/// The offloads a guest with these acked features accepts on receive: what to pass to
/// [`net_api::QueuePair::set_rx_offloads`] (intersected with the backend's) and to
/// [`crate::RxTranslator::new`].
pub fn guest_offloads(acked: u64) -> OffloadSet {
    GUEST_MAP
        .iter()
        .filter(|(feature, _)| acked & bit(*feature) != 0)
        .fold(OffloadSet::NONE, |s, (_, off)| s | *off)
}

/// The offloads a guest with these acked features may use on transmit.
pub fn host_offloads(acked: u64) -> OffloadSet {
    HOST_MAP
        .iter()
        .filter(|(feature, _)| acked & bit(*feature) != 0)
        .fold(OffloadSet::NONE, |s, (_, off)| s | *off)
}

/// What receive offloads to enable in a backend for a guest's `GUEST_*` features, and the
/// largest frame the backend may then deliver: a 64 KiB GSO frame when a segmentation offload
/// is on, else an MTU-sized frame with one VLAN tag. `mtu` is what the guest was told.
pub fn rx_plan(caps: &Capabilities, guest: OffloadSet, mtu: u16) -> (OffloadSet, usize) {
    let rx_caps = if caps.vnet_hdr {
        caps.rx_offloads
    } else {
        OffloadSet::NONE
    };
    let enable = guest & rx_caps;
    let gso = !enable.difference(OffloadSet::CSUM).is_empty();
    let max_frame = if gso {
        caps.max_frame
    } else {
        caps.max_frame
            .min(usize::from(mtu) + net_api::ether::ETH_HLEN + net_api::ether::VLAN_HLEN)
    };
    (enable, max_frame)
}

/// A feature present without one it depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("virtio-net feature {feature} requires {requires}, which is absent")]
pub struct MissingDependency {
    /// The feature's number.
    pub feature: u32,
    /// What it needs (a feature number, or two joined by "or").
    pub requires: &'static str,
}

/// Feature dependencies of virtio 1.2/1.3, 5.1.3.1: (feature, any one of these).
const DEPENDENCIES: [(u32, &[u32], &str); 20] = [
    (
        vn::VIRTIO_NET_F_GUEST_TSO4,
        &[vn::VIRTIO_NET_F_GUEST_CSUM],
        "GUEST_CSUM",
    ),
    (
        vn::VIRTIO_NET_F_GUEST_TSO6,
        &[vn::VIRTIO_NET_F_GUEST_CSUM],
        "GUEST_CSUM",
    ),
    (
        vn::VIRTIO_NET_F_GUEST_ECN,
        &[vn::VIRTIO_NET_F_GUEST_TSO4, vn::VIRTIO_NET_F_GUEST_TSO6],
        "GUEST_TSO4 or GUEST_TSO6",
    ),
    (
        vn::VIRTIO_NET_F_GUEST_UFO,
        &[vn::VIRTIO_NET_F_GUEST_CSUM],
        "GUEST_CSUM",
    ),
    (
        vn::VIRTIO_NET_F_GUEST_USO4,
        &[vn::VIRTIO_NET_F_GUEST_CSUM],
        "GUEST_CSUM",
    ),
    (
        vn::VIRTIO_NET_F_GUEST_USO6,
        &[vn::VIRTIO_NET_F_GUEST_CSUM],
        "GUEST_CSUM",
    ),
    (vn::VIRTIO_NET_F_HOST_TSO4, &[vn::VIRTIO_NET_F_CSUM], "CSUM"),
    (vn::VIRTIO_NET_F_HOST_TSO6, &[vn::VIRTIO_NET_F_CSUM], "CSUM"),
    (
        vn::VIRTIO_NET_F_HOST_ECN,
        &[vn::VIRTIO_NET_F_HOST_TSO4, vn::VIRTIO_NET_F_HOST_TSO6],
        "HOST_TSO4 or HOST_TSO6",
    ),
    (vn::VIRTIO_NET_F_HOST_UFO, &[vn::VIRTIO_NET_F_CSUM], "CSUM"),
    (vn::VIRTIO_NET_F_HOST_USO, &[vn::VIRTIO_NET_F_CSUM], "CSUM"),
    (
        vn::VIRTIO_NET_F_CTRL_RX,
        &[vn::VIRTIO_NET_F_CTRL_VQ],
        "CTRL_VQ",
    ),
    (
        vn::VIRTIO_NET_F_CTRL_VLAN,
        &[vn::VIRTIO_NET_F_CTRL_VQ],
        "CTRL_VQ",
    ),
    (
        vn::VIRTIO_NET_F_GUEST_ANNOUNCE,
        &[vn::VIRTIO_NET_F_CTRL_VQ],
        "CTRL_VQ",
    ),
    (vn::VIRTIO_NET_F_MQ, &[vn::VIRTIO_NET_F_CTRL_VQ], "CTRL_VQ"),
    (
        vn::VIRTIO_NET_F_CTRL_MAC_ADDR,
        &[vn::VIRTIO_NET_F_CTRL_VQ],
        "CTRL_VQ",
    ),
    (vn::VIRTIO_NET_F_RSS, &[vn::VIRTIO_NET_F_CTRL_VQ], "CTRL_VQ"),
    (
        vn::VIRTIO_NET_F_NOTF_COAL,
        &[vn::VIRTIO_NET_F_CTRL_VQ],
        "CTRL_VQ",
    ),
    (
        vn::VIRTIO_NET_F_RSC_EXT,
        &[vn::VIRTIO_NET_F_HOST_TSO4, vn::VIRTIO_NET_F_HOST_TSO6],
        "HOST_TSO4 or HOST_TSO6",
    ),
    // Not in the spec's list, but its only command travels on the control queue.
    (
        vn::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
        &[vn::VIRTIO_NET_F_CTRL_VQ],
        "CTRL_VQ",
    ),
];

/// Checks that every feature in `features` has what it depends on.
pub fn check_dependencies(features: u64) -> Result<(), MissingDependency> {
    for (feature, any_of, requires) in DEPENDENCIES {
        if features & bit(feature) != 0 && !any_of.iter().any(|d| features & bit(*d) != 0) {
            return Err(MissingDependency { feature, requires });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(vnet_hdr: bool, rx: OffloadSet, verified: bool) -> Capabilities {
        Capabilities {
            rx_csum_verified: verified,
            ..crate::test_utils::backend_caps(vnet_hdr, rx)
        }
    }

    #[test]
    fn tap_like_backend_gets_every_offload() {
        let f = offload_features(&caps(true, OffloadSet::ALL, false));
        for feature in [
            vn::VIRTIO_NET_F_GUEST_CSUM,
            vn::VIRTIO_NET_F_GUEST_TSO4,
            vn::VIRTIO_NET_F_GUEST_TSO6,
            vn::VIRTIO_NET_F_GUEST_ECN,
            vn::VIRTIO_NET_F_GUEST_UFO,
            vn::VIRTIO_NET_F_GUEST_USO4,
            vn::VIRTIO_NET_F_GUEST_USO6,
            vn::VIRTIO_NET_F_HOST_USO,
        ] {
            assert_ne!(f & bit(feature), 0, "feature {feature}");
        }
        assert_eq!(check_dependencies(f), Ok(()));
        assert_eq!(guest_offloads(f), OffloadSet::ALL);
        assert_eq!(host_offloads(f), OffloadSet::ALL);
    }

    #[test]
    fn headerless_backend_gets_tx_offloads_only() {
        let f = offload_features(&caps(false, OffloadSet::ALL, false));
        assert_eq!(f, SOFTWARE_TX_FEATURES);
        assert_eq!(guest_offloads(f), OffloadSet::NONE);
        let f = offload_features(&caps(false, OffloadSet::NONE, true));
        assert_eq!(f, SOFTWARE_TX_FEATURES | bit(vn::VIRTIO_NET_F_GUEST_CSUM));
    }

    #[test]
    fn guest_features_never_outrun_their_dependencies() {
        // TSO without CSUM in the backend: no GUEST_TSO, since GUEST_TSO4 needs GUEST_CSUM.
        let f = offload_features(&caps(true, OffloadSet::TSO4 | OffloadSet::TSO_ECN, false));
        assert_eq!(f & bit(vn::VIRTIO_NET_F_GUEST_TSO4), 0);
        assert_eq!(f & bit(vn::VIRTIO_NET_F_GUEST_ECN), 0);
        // ECN without any TSO: not offered.
        let f = offload_features(&caps(true, OffloadSet::CSUM | OffloadSet::TSO_ECN, false));
        assert_eq!(f & bit(vn::VIRTIO_NET_F_GUEST_ECN), 0);
        assert_eq!(check_dependencies(f), Ok(()));
    }

    #[test]
    fn dependencies_are_checked() {
        assert_eq!(
            check_dependencies(bit(vn::VIRTIO_NET_F_HOST_TSO4)),
            Err(MissingDependency {
                feature: vn::VIRTIO_NET_F_HOST_TSO4,
                requires: "CSUM"
            })
        );
        let ecn_alone = bit(vn::VIRTIO_NET_F_CSUM) | bit(vn::VIRTIO_NET_F_HOST_ECN);
        assert!(check_dependencies(ecn_alone).is_err());
        assert!(check_dependencies(bit(vn::VIRTIO_NET_F_MQ)).is_err());
        assert_eq!(check_dependencies(0), Ok(()));
    }
}
