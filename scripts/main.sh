#!/usr/bin/env bash
# The main job: `volt-net select` probes every interface of this host and prints the backend
# a VM on each should use, with the reasons, the alternatives rejected and warnings.
# Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
need_cargo
need_debs "${BUILD_DEBS[@]}"
exec cargo run --quiet --release -p net-select --features cli,afxdp --bin volt-net -- select "$@"
