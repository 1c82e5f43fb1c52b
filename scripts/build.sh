#!/usr/bin/env bash
# Installs missing packages, then configures and builds deepshard (Release) in ./build.
# Usage: scripts/build.sh [extra cmake -D options]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
# Two parallel compile jobs: the reference machines have 2 cores and 24 GiB.
ninja -C "$ROOT/build" -j "${DEEPSHARD_BUILD_JOBS:-2}"
