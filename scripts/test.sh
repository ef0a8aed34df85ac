#!/usr/bin/env bash
# The whole test suite: formatting, clippy, every crate's tests and doc tests, the C-free
# build of the crates a VMM embeds, the fuzz corpus, and a short fuzz run.
# Installs what is missing first. FUZZ_SECONDS (default 100) sets the fuzz runs' length, split
# between the four fuzz targets.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
need_cargo
need_debs "${BUILD_DEBS[@]}" "${TEST_DEBS[@]}"
need_cargo_tool cargo-fuzz cargo-fuzz
need_msix_qemu

results=$(mktemp)
trap 'rm -f "$results"' EXIT
# Runs cargo test with the given arguments and keeps its result lines for the summary.
run_tests() {
    log "cargo test $*"
    cargo test "$@" 2>&1 | tee -a "$results"
    return "${PIPESTATUS[0]}"
}

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
# test-utils too, so the examples that need it are checked.
cargo clippy --quiet --workspace --all-targets \
    --features net-virtio/test-utils,net-select/cli,net-select/afxdp,net-vhostuser/test-utils \
    -- -D warnings

# With the `volt-net` command line, so its end-to-end tests run.
run_tests --workspace --features net-select/cli
# AF_XDP behind the facade and behind `volt-net serve --backend afxdp`.
run_tests -p net-select --features afxdp --test facade
run_tests -p net-select --features cli,afxdp --test vhost_frontend --test serve_links
# A VMM that embeds these crates must not need a C toolchain or a C library.
# (netlink-sys is plain Rust over the socket API, despite its name.)
for crate in net-api net-virtio net-macvtap net-select; do
    if cargo tree -p "$crate" -e normal,build --prefix none | grep -v '^netlink-sys ' |
        grep -Eq '^(cc|pkg-config|bindgen|[a-z0-9_-]+-sys) '; then
        log "$crate pulls a C build dependency:"
        cargo tree -p "$crate" -e normal,build
        exit 1
    fi
    run_tests -p "$crate"
done

# A real VM: the device's kick and interrupt eventfds wired to KVM (skips without /dev/kvm).
log "example kvm_wiring"
cargo run --quiet -p net-virtio --features test-utils --example kvm_wiring

run_tests --manifest-path fuzz/Cargo.toml
# Fuzzes target $1 over its corpus for $2 seconds with the libFuzzer options that follow.
fuzz_target() {
    local target=$1 seconds=$2 fuzzlog
    shift 2
    log "fuzzing $target for $seconds s"
    fuzzlog=$(mktemp)
    if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" "$@" -print_final_stats=1 >"$fuzzlog" 2>&1); then
        tail -n 60 "$fuzzlog"
        log "the fuzzer found a crash: the input is in fuzz/artifacts/$target"
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units)' "$fuzzlog" || true
    rm -f "$fuzzlog"
}
# FUZZ_SECONDS is shared by the four targets, a quarter each (at least 1 s: 0 would mean
# no limit).
fuzz_total=${FUZZ_SECONDS:-100}
fuzz_each=$((fuzz_total / 4 > 0 ? fuzz_total / 4 : 1))
fuzz_target header_translate "$fuzz_each" -max_len=65600 -rss_limit_mb=512 -malloc_limit_mb=64
fuzz_target virtio_device "$fuzz_each" -max_len=1024 -len_control=0 -rss_limit_mb=1024 \
    -malloc_limit_mb=64
fuzz_target ring_differential "$fuzz_each" -max_len=4096 -rss_limit_mb=1024 -malloc_limit_mb=64
fuzz_target vhost_user_messages "$fuzz_each" -max_len=4096 -rss_limit_mb=1024 \
    -malloc_limit_mb=64

passed=$(grep -Eo '[0-9]+ passed' "$results" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$results" | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
