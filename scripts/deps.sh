# shellcheck shell=bash
# Installs what volt-net's jobs need and is missing; sourced by main.sh and test.sh.
# Idempotent: present packages and tools are left alone. Needs root for apt-get.
set -euo pipefail

log() { printf '== %s\n' "$*" >&2; }

need_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo is missing: install a Rust toolchain (1.85 or newer, e.g. with rustup) and rerun."
        exit 2
    fi
}

# need_debs PKG...: apt-get installs the Debian packages that are not installed yet.
need_debs() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages: ${missing[*]}; run as root or install them: apt-get install ${missing[*]}"
        exit 2
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need_cargo_tool BIN CRATE: cargo installs CRATE when BIN is not on PATH.
need_cargo_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 with cargo"
    cargo install --locked --quiet "$2"
}

# The packages the crates need to build. g++ builds libFuzzer for the fuzz targets. The
# AF_XDP backend (net-afxdp) builds libbpf and libxdp from source (libelf-dev zlib1g-dev
# pkg-config m4) and compiles its XDP program with clang (llvm for the BPF target;
# linux-libc-dev for the kernel's UAPI headers).
BUILD_DEBS=(g++ pkg-config libelf-dev zlib1g-dev m4 clang llvm linux-libc-dev)
# What the privileged tests and the peer benchmarks run: iproute2 (namespaces, links),
# nftables (the zone's NAT), iputils-ping, systemd (the real systemd-networkd), DPDK's
# testpmd with its TAP, virtio_user, vhost and AF_XDP PMDs (peers of the TAP/macvtap
# benchmark, of the vhost-user daemon and frontend, and of the AF_XDP benchmark), ethtool (GRO on a veth, so the
# probe test sees the XDP features the kernel then reports), and the QEMU guest rig:
# qemu-system-x86, busybox-static, a Debian kernel image and cpio (the initramfs).
TEST_DEBS=(iproute2 nftables iputils-ping systemd ethtool dpdk-dev librte-net-tap23
    librte-net-virtio23 librte-net-vhost23 librte-net-af-xdp23 qemu-system-x86 busybox-static
    linux-image-amd64 cpio)
