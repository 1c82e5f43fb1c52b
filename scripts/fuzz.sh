#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/, clang, ASan+UBSan) and runs each for a
# fixed number of executions from its checked-in seed corpus (tests/fuzz/corpus/<target>/).
# Fails on any crash, leak, sanitizer report or timeout; the reproducer is left in
# <build>/fuzz-artifacts/<target>/.
# Usage: scripts/fuzz.sh [runs per target (default 20000)] [target ...]
# The build is the CMake preset DEEPSHARD_FUZZ_PRESET: `fuzz` (default; build-fuzz/, the
# fuzz targets alone, each compiling only the sources it exercises) or `asan`
# (build-asan/, shared with the ASan unit tests: scripts/ci-sanitize.sh).
# CI runs it from scripts/ci-sanitize.sh with a few thousand runs per target; call it
# directly for longer campaigns.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-20000}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(safetensors_fuzz config_fuzz tokenizer_fuzz chat_template_fuzz openai_request_fuzz wire_fuzz
           http_request_fuzz)
fi
PRESET="${DEEPSHARD_FUZZ_PRESET:-fuzz}"
case "$PRESET" in
  fuzz|asan) ;;
  *) echo "fuzz.sh: DEEPSHARD_FUZZ_PRESET must be fuzz or asan, not $PRESET" >&2; exit 2 ;;
esac
BUILD="$ROOT/build-$PRESET"
# clang-14 and its runtimes: libclang_rt.fuzzer / asan / ubsan are in libclang-rt-14-dev
# (only a Recommends of clang-14); libomp for the asan preset's OpenMP; llvm for
# llvm-symbolizer (file:line in reports).
bash "$ROOT/scripts/setup.sh" clang libclang-rt-14-dev libomp-14-dev llvm
start=$(date +%s)
(cd "$ROOT" && cmake --preset "$PRESET" >/dev/null)
ninja -C "$BUILD" -j "${DEEPSHARD_BUILD_JOBS:-2}" "${TARGETS[@]}"
echo "[fuzz] build: $(( $(date +%s) - start )) s"

export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
failed=()
for t in "${TARGETS[@]}"; do
  corpus="$ROOT/tests/fuzz/corpus/$t"
  work="$BUILD/fuzz-corpus/$t"        # grows as the fuzzer finds new inputs; seeds stay untouched
  art="$BUILD/fuzz-artifacts/$t"
  mkdir -p "$work" "$art"
  t0=$(date +%s)
  if "$BUILD/tests/fuzz/$t" -runs="$RUNS" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
      -print_final_stats=1 -artifact_prefix="$art/" "$work" "$corpus" >"$BUILD/fuzz-$t.log" 2>&1; then
    echo "[fuzz] $t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$BUILD/fuzz-$t.log" | grep -o '[0-9]*$') runs, $(( $(date +%s) - t0 )) s, ok"
  else
    echo "[fuzz] $t: FAILED after $(( $(date +%s) - t0 )) s; log $BUILD/fuzz-$t.log, reproducer in $art/"
    grep -E "ERROR|SUMMARY|runtime error|deadly signal|http_request_fuzz:" "$BUILD/fuzz-$t.log" | head -5 || true
    failed+=("$t")
  fi
done
echo "[fuzz] total (build + runs): $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "[fuzz] crashes in: ${failed[*]}"
  exit 1
fi
