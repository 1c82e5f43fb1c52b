#!/usr/bin/env bash
# CI's sanitizer and fuzzing job (.ci/run runs it after scripts/test.sh):
#   1. one clang build, the `asan` preset (build-asan/): ASan + UBSan at -O1 -g, every
#      library also compiled with -fsanitize=fuzzer-no-link, so the same objects serve
#      the GoogleTest binaries (linked with address,undefined) and the libFuzzer targets
#      (linked with fuzzer); only the targets listed below are built;
#   2. every test of the ASan binaries below (every parser, the serving engine, the
#      control plane, the HTTP server) with LeakSanitizer on, then two MPI
#      engine-layout tests (leak checks off: Open MPI's start-up allocations);
#   3. each fuzz target for a fixed number of executions from its seed corpus
#      (scripts/fuzz.sh on the same build);
#   4. the `tsan` preset (gcc, build-tsan/): the serving engine, control plane and HTTP
#      tests under ThreadSanitizer.
# Any sanitizer report, test failure or fuzzer crash fails the job (after every phase
# has run). Phase times are printed ([ci-sanitize] lines).
#
# Environment: DEEPSHARD_FUZZ_RUNS (executions per fuzz target, default 50000),
# DEEPSHARD_CI_TSAN=0 (skip phase 4), DEEPSHARD_BUILD_JOBS / DEEPSHARD_TEST_JOBS
# (default 2), DEEPSHARD_SAN_EXCLUDE (a CTest name regex replacing
# scripts/sanitizers/asan_exclude.txt; '' runs everything).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUPP="$ROOT/scripts/sanitizers"
RUNS="${DEEPSHARD_FUZZ_RUNS:-50000}"
JOBS="${DEEPSHARD_BUILD_JOBS:-2}"

# Run under ASan + UBSan: all of their tests.
ASAN_TESTS=(
  text_tokenizer_test text_tokenizer_conformance_test text_tokenizer_fuzz_test
  text_tokenizer_fuzz_regression_test        # tokenizer.json, encode/decode
  chat_template_test                         # Jinja chat templates
  reasoning_parser_test tool_call_parser_test  # model output parsers
  text_structured_json_constraint_test       # response_format: JSON / JSON-schema grammar
  runtime_safetensors_test runtime_safetensors_fuzz_test  # safetensors header and index
  runtime_model_config_test                  # config.json
  serve_openai_api_test serve_choice_output_test  # OpenAI requests, prompts, responses
  serve_http_request_test serve_http_server_test  # HTTP parsing, routing, the server on sockets
  serve_control_plane_test                   # control plane frames, wire format, step plans
  serve_engine_test                          # the serving engine
)
MPI_BINARY=engine_layouts_test
MPI_TESTS='^engine_layout_(pp2_ep1|pp1_ep2)$'
FUZZERS=(safetensors_fuzz config_fuzz tokenizer_fuzz chat_template_fuzz openai_request_fuzz wire_fuzz http_request_fuzz)
# Run under ThreadSanitizer.
TSAN_TESTS=(serve_engine_test serve_control_plane_test serve_http_server_test serve_http_request_test)

# select_tests BUILD LIST EXCLUDE BINARY...: writes to LIST the ctest -I argument for
# every test of BUILD whose command runs one of BINARY, less those whose name matches
# the regex EXCLUDE. (Not ctest -E: combined with -I, CTest 3.25 runs the wrong tests.)
select_tests() {
  local build="$1" list="$2" exclude="$3"
  shift 3
  ctest --test-dir "$build" --show-only=json-v1 | EXCLUDE="$exclude" python3 -c '
import json, os, re, sys
want = set(sys.argv[1:])
exclude = os.environ["EXCLUDE"]
tests = json.load(sys.stdin)["tests"]
binary = lambda t: os.path.basename(t["command"][0]) if t.get("command") else ""
missing = want - {binary(t) for t in tests}
if missing:
    sys.exit("ci-sanitize: no tests found for " + " ".join(sorted(missing)))
nums = [str(i + 1) for i, t in enumerate(tests)
        if binary(t) in want and not (exclude and re.search(exclude, t["name"]))]
if not nums:
    sys.exit("ci-sanitize: no tests selected")
print("0,0,0," + ",".join(nums))
' "$@" >"$list"
  echo "[ci-sanitize] $(tr ',' '\n' <"$list" | tail -n +4 | wc -l) tests of $# binaries"
}

# clang, its sanitizer and libFuzzer runtimes (libclang-rt-14-dev is only a
# Recommends of clang-14), OpenMP for clang (libomp) and llvm-symbolizer (package
# llvm), without which ASan's reports have addresses instead of file:line.
bash "$ROOT/scripts/setup.sh" clang libclang-rt-14-dev libomp-14-dev llvm
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
status=0

# ---- ASan + UBSan ----
start=$(date +%s)
cmake --preset asan >/dev/null
ninja -C build-asan -j "$JOBS" "${ASAN_TESTS[@]}" "$MPI_BINARY" "${FUZZERS[@]}"
built=$(date +%s)
echo "[ci-sanitize] asan build: $((built - start)) s"

# Left out: scripts/sanitizers/asan_exclude.txt says which and why.
EXCLUDE="${DEEPSHARD_SAN_EXCLUDE-$(grep -v '^#' "$SUPP/asan_exclude.txt" | grep . | paste -sd'|')}"
select_tests "$ROOT/build-asan" "$ROOT/build-asan/ci-sanitize-tests.txt" "$EXCLUDE" "${ASAN_TESTS[@]}"
CTEST=(ctest --output-on-failure -j "${DEEPSHARD_TEST_JOBS:-2}" --timeout 900)
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1" \
LSAN_OPTIONS="suppressions=$SUPP/lsan.supp:print_suppressions=0" \
  "${CTEST[@]}" --test-dir build-asan -I "$ROOT/build-asan/ci-sanitize-tests.txt" || status=1
# Open MPI's start-up allocations are never freed: no leak checks for MPI jobs.
ASAN_OPTIONS="detect_leaks=0:abort_on_error=0" "${CTEST[@]}" --test-dir build-asan -R "$MPI_TESTS" || status=1
tested=$(date +%s)
echo "[ci-sanitize] asan tests: $((tested - built)) s, status $status"

# ---- libFuzzer ----
DEEPSHARD_FUZZ_PRESET=asan bash "$ROOT/scripts/fuzz.sh" "$RUNS" "${FUZZERS[@]}" || status=1
fuzzed=$(date +%s)
echo "[ci-sanitize] fuzz: $((fuzzed - tested)) s, status $status"

# ---- ThreadSanitizer ----
if [ "${DEEPSHARD_CI_TSAN:-1}" != 0 ]; then
  cmake --preset tsan >/dev/null
  ninja -C build-tsan -j "$JOBS" "${TSAN_TESTS[@]}"
  tsan_built=$(date +%s)
  echo "[ci-sanitize] tsan build: $((tsan_built - fuzzed)) s"
  select_tests "$ROOT/build-tsan" "$ROOT/build-tsan/ci-sanitize-tests.txt" "" "${TSAN_TESTS[@]}"
  TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$SUPP/tsan.supp" \
    "${CTEST[@]}" --test-dir build-tsan -I "$ROOT/build-tsan/ci-sanitize-tests.txt" || status=1
  echo "[ci-sanitize] tsan tests: $(( $(date +%s) - tsan_built )) s, status $status"
fi
echo "[ci-sanitize] total: $(( $(date +%s) - start )) s, status $status"
exit $status
