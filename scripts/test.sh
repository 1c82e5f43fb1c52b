#!/usr/bin/env bash
# The README's second command: install, build, and run every test with CTest.
# Extra arguments go to ctest (e.g. -L unit, -R golden).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/build.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "$ROOT/build" --output-on-failure -j "${DEEPSHARD_TEST_JOBS:-2}" --timeout 600 "$@"
