#!/usr/bin/env bash
# The whole test suite: formatting, clippy, every crate's tests and doc tests, the C-free
# build of the crates a VMM embeds, the fuzz corpus, and a short fuzz run.
# Installs what is missing first. FUZZ_SECONDS (default 30) sets the fuzz run's length.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
need_cargo
need_debs "${BUILD_DEBS[@]}"
need_cargo_tool cargo-fuzz cargo-fuzz

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
cargo clippy --quiet --workspace --all-targets -- -D warnings

run_tests --workspace
# A VMM that embeds these crates must not need a C toolchain or a C library.
for crate in net-api net-virtio; do
    if cargo tree -p "$crate" -e normal,build --prefix none | grep -Eq '^(cc|[a-z0-9_-]+-sys) '; then
        log "$crate pulls a C build dependency:"
        cargo tree -p "$crate" -e normal,build
        exit 1
    fi
    run_tests -p "$crate"
done

run_tests --manifest-path fuzz/Cargo.toml
log "fuzzing header_translate for ${FUZZ_SECONDS:-30} s"
fuzzlog=$(mktemp)
if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run header_translate corpus/header_translate -- \
    -max_total_time="${FUZZ_SECONDS:-30}" -max_len=65600 -rss_limit_mb=512 \
    -malloc_limit_mb=64 -print_final_stats=1 >"$fuzzlog" 2>&1); then
    tail -n 60 "$fuzzlog"
    log "the fuzzer found a crash: the input is in fuzz/artifacts/header_translate"
    exit 1
fi
grep -E '^(Done|stat::number_of_executed_units)' "$fuzzlog" || true
rm -f "$fuzzlog"

passed=$(grep -Eo '[0-9]+ passed' "$results" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$results" | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
