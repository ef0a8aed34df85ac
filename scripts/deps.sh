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

# need_msix_qemu: a QEMU that runs a vhost-user-net device with MSI-X (virtio-net-pci's
# default) under TCG, for the guest tests. Debian bookworm's QEMU 7.2 crashes there whatever
# the backend (see net-select/tests/serve_qemu.rs), so on bookworm the bookworm-backports
# QEMU is downloaded and unpacked under target/qemu-bpo (nothing is installed, no apt source
# is added: a private apt configuration is used for the download). A distribution QEMU 8 or
# newer is used as it is.
need_msix_qemu() {
    local dest=target/qemu-bpo qemu=qemu-system-x86_64 major tmp opts
    major=$($qemu --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1)
    [ "${major:-0}" -ge 8 ] && return 0
    [ -x "$dest/usr/bin/$qemu" ] && return 0
    if ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
        log "QEMU ${major:-?} cannot run vhost-user-net with MSI-X under TCG; install QEMU 8 or newer"
        return 0
    fi
    log "unpacking bookworm-backports' qemu-system-x86 into $dest (QEMU 7.2 crashes with MSI-X under TCG)"
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$dest"
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$tmp/sources.list"
    opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::Archives=$tmp/archives"
        -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update -qq
    (cd "$tmp" && apt-get "${opts[@]}" download -qq qemu-system-x86 qemu-system-common qemu-system-data)
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$dest"; done
    rm -rf "$tmp"
}
