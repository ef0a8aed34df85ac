#!/usr/bin/env bash
# The main job: a 64 KiB TCP super-frame from a guest through header translation and the
# loopback backend, for three shapes of backend. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
need_cargo
need_debs "${BUILD_DEBS[@]}"
exec cargo run --quiet --release -p net-virtio --example gso_through_loopback
