#!/usr/bin/env bash
# deepshard next to llama.cpp and Hugging Face transformers on the same model, the same
# number of threads, in the same run: prefill and batch-1 decode tokens/s, medians of
# --runs interleaved rounds (A B C A B C ...), and the ratios. llama.cpp is only a
# measuring reference here: it is built from the llama-cpp-python source package on PyPI
# (which carries the whole llama.cpp tree) and never linked into deepshard.
# No speed is asserted anywhere; this prints what it measured.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="tools/bench_cpu_engines.sh"
LLAMA_PY_VERSION_DEFAULT="0.3.36"

usage() {
  cat <<EOF
usage: $PROG [options]

Runs, interleaved, --runs times each:
  deepshard     deepshard_bench_forward --math exact and --math fast, on bf16 weights and,
                when the build has the flag, --weights int8 / int4
  llama.cpp     llama-bench on GGUF BF16, Q8_0 and Q4_0 converted from the same model
                (prefill: -p PROMPT -n 0; decode: -p 0 -n STEPS -d PROMPT, i.e. after a
                PROMPT-token context, like the others)
  transformers  tools/bench_transformers.py (torch, bf16)
then prints engine | weights | prefill tok/s | decode tok/s (medians) and the ratios
deepshard/llama.cpp (bf16:BF16, int8:Q8_0, int4:Q4_0) and deepshard/transformers.

options:
  --model DIR          model to measure (Hugging Face layout, bf16). Default: made once with
                       'deepshard make-model --preset bench-v2-lite --layers N --dtype bf16
                       --tokenizer tests/data/tokenizers/deepseek-v3' under the cache
                       (V2-Lite widths; the vocabulary follows the tokenizer, 128815 ids)
  --layers N           layers of the default model (default 4)
  --threads N          threads for every engine (default: all online CPUs = $(getconf _NPROCESSORS_ONLN))
  --runs N             interleaved rounds (default 3)
  --prompt N           prefill length, and the context decode runs at (default 512)
  --decode-steps N     decode steps (default 32)
  --engines LIST       comma-separated subset of deepshard,llama.cpp,transformers (default all)
  --out FILE           results file: CSV if FILE ends in .csv, JSON otherwise
                       (default: CACHE/results/cpu-engines-<UTC time>.json; logs next to it)
  --build-dir DIR      deepshard build directory (default: $ROOT/build)
  --llama-cpp-python V llama-cpp-python source package version (default $LLAMA_PY_VERSION_DEFAULT)
  --setup-only         set up (venv, llama.cpp, model, GGUFs) and stop
  -h, --help           this text

environment:
  DEEPSHARD_BENCH_CACHE  cache directory (default \$HOME/.cache/deepshard/bench): llama.cpp
                         source and build, the default model, GGUFs (keyed by model dir + mtimes)
  DEEPSHARD_BENCH_VENV   Python venv (default \$HOME/.cache/deepshard/bench-venv), created when
                         missing: tools/reference/requirements.txt (torch, transformers, ...) and
                         what llama.cpp's convert_hf_to_gguf.py needs
  DEEPSHARD_BENCH_JOBS   parallel jobs for the llama.cpp build (default: all online CPUs)

Needs deepshard built first (bash scripts/build.sh). First run: ~7 GB venv, ~0.3 GB llama.cpp
source + build, and for the default 4-layer model 4.7 GB model + 8.7 GB GGUFs (BF16, Q8_0, Q4_0);
about 15 minutes of setup on 2 cores, most of it the llama.cpp build.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }
log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

MODEL="" LAYERS=4 THREADS="$(getconf _NPROCESSORS_ONLN)" RUNS=3 PROMPT=512 STEPS=32 ENGINES="deepshard,llama.cpp,transformers"
OUT="" BUILD_DIR="$ROOT/build" LLAMA_PY_VERSION="$LLAMA_PY_VERSION_DEFAULT" SETUP_ONLY=0
while [ $# -gt 0 ]; do
  arg="$1"; val=""; has_val=0
  if [[ "$arg" == --*=* ]]; then val="${arg#*=}"; arg="${arg%%=*}"; has_val=1; fi
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --setup-only) [ $has_val = 0 ] || die "$arg takes no value"; SETUP_ONLY=1; shift; continue ;;
    --model|--layers|--threads|--runs|--prompt|--decode-steps|--engines|--out|--build-dir|--llama-cpp-python)
      if [ $has_val = 0 ]; then
        [ $# -ge 2 ] || die "$arg needs a value (see --help)"
        val="$2"; shift
      fi
      shift ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  case "$arg" in
    --model) MODEL="$val" ;;
    --layers) LAYERS="$val" ;;
    --threads) THREADS="$val" ;;
    --runs) RUNS="$val" ;;
    --prompt) PROMPT="$val" ;;
    --decode-steps) STEPS="$val" ;;
    --engines) ENGINES="$val" ;;
    --out) OUT="$val" ;;
    --build-dir) BUILD_DIR="$val" ;;
    --llama-cpp-python) LLAMA_PY_VERSION="$val" ;;
  esac
done
for pair in "layers:$LAYERS" "threads:$THREADS" "runs:$RUNS" "prompt:$PROMPT" "decode-steps:$STEPS"; do
  name="${pair%%:*}"; v="${pair#*:}"
  { is_uint "$v" && [ "$v" -ge 1 ]; } || die "--$name must be a positive integer, got '$v'"
done
[[ "$LLAMA_PY_VERSION" =~ ^[0-9]+(\.[0-9]+)*$ ]] || die "--llama-cpp-python must be a version like 0.3.36, got '$LLAMA_PY_VERSION'"
RUN_DS=0 RUN_LLAMA=0 RUN_HF=0
IFS=',' read -r -a _engines <<<"$ENGINES"
[ ${#_engines[@]} -gt 0 ] || die "--engines is empty"
for e in "${_engines[@]}"; do
  case "$e" in
    deepshard) RUN_DS=1 ;;
    llama.cpp|llama) RUN_LLAMA=1 ;;
    transformers|hf) RUN_HF=1 ;;
    *) die "--engines: unknown engine '$e' (deepshard, llama.cpp, transformers)" ;;
  esac
done
if [ -n "$MODEL" ]; then
  [ -f "$MODEL/config.json" ] || die "--model $MODEL: no config.json there"
  MODEL="$(cd "$MODEL" && pwd -P)"
fi

CACHE="${DEEPSHARD_BENCH_CACHE:-$HOME/.cache/deepshard/bench}"
VENV="${DEEPSHARD_BENCH_VENV:-$HOME/.cache/deepshard/bench-venv}"
JOBS="${DEEPSHARD_BENCH_JOBS:-$(getconf _NPROCESSORS_ONLN)}"
DS_CLI="$BUILD_DIR/launcher/deepshard"
DS_BENCH="$BUILD_DIR/tests/bench/deepshard_bench_forward"
LLAMA_PKG="$CACHE/llama-cpp-python-$LLAMA_PY_VERSION"
LLAMA_SRC="$LLAMA_PKG/vendor/llama.cpp"
LLAMA_BUILD="$CACHE/llama.cpp-build-$LLAMA_PY_VERSION"
LLAMA_INFO="$LLAMA_BUILD/deepshard-bench-info.json"
PY="$VENV/bin/python"
mkdir -p "$CACHE"
T_START=$(date +%s)

[ -x "$DS_CLI" ] || die "$DS_CLI not found: build deepshard first (bash scripts/build.sh) or pass --build-dir"
if [ $RUN_DS = 1 ]; then
  [ -x "$DS_BENCH" ] || die "$DS_BENCH not found: build deepshard first (bash scripts/build.sh) or pass --build-dir"
fi

# ---------------------------------------------------------------------------------------
# Setup 1: the Python venv (transformers side and llama.cpp's converter).
# ---------------------------------------------------------------------------------------
setup_venv() {
  if [ ! -x "$PY" ]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.deepshard-bench-ready"
  if [ ! -f "$stamp" ]; then
    # Pins from tools/reference/requirements.txt (torch, transformers, safetensors, numpy,
    # tokenizers); torch comes from PyPI (download.pytorch.org may be unreachable).
    log "installing tools/reference/requirements.txt into the venv (torch from PyPI: several GB)"
    "$PY" -m pip install -q --no-cache-dir --upgrade pip
    "$PY" -m pip install -q --no-cache-dir -r "$ROOT/tools/reference/requirements.txt"
    touch "$stamp"
  fi
}

# llama.cpp's convert_hf_to_gguf.py needs gguf-py (used from the tree via PYTHONPATH, so
# it matches the converter) and the rest of requirements-convert_legacy_llama.txt. Its
# torch/numpy pins (torch 2.11, numpy 2.2) differ from tools/reference/requirements.txt;
# the project's pins win (transformers 4.57.6 is the same in both), the converter only
# uses torch to read and reshape tensors.
setup_converter_deps() {
  local stamp="$VENV/.deepshard-bench-converter-$LLAMA_PY_VERSION"
  [ -f "$stamp" ] && return 0
  local req="$LLAMA_SRC/requirements/requirements-convert_legacy_llama.txt" reqs=()
  [ -f "$req" ] || die "$req missing: is $LLAMA_PKG a complete llama-cpp-python source tree?"
  while IFS= read -r line; do
    line="${line%%#*}"; line="$(echo "$line" | xargs)"
    [ -n "$line" ] || continue
    case "$line" in -*|torch*|numpy*|transformers*|gguf*) continue ;; esac
    reqs+=("$line")
  done <"$req"
  # gguf-py's own dependencies (gguf-py/pyproject.toml).
  reqs+=("tqdm>=4.27" "pyyaml>=5.1" "requests>=2.25")
  log "installing the converter's requirements: ${reqs[*]}"
  "$PY" -m pip install -q --no-cache-dir "${reqs[@]}"
  touch "$stamp"
}

# ---------------------------------------------------------------------------------------
# Setup 2: llama.cpp from the llama-cpp-python source package, CPU only, native, Release.
# ---------------------------------------------------------------------------------------
setup_llama() {
  if [ ! -f "$LLAMA_SRC/CMakeLists.txt" ]; then
    local dl="$CACHE/download"
    mkdir -p "$dl"
    log "pip download --no-binary :all: llama-cpp-python==$LLAMA_PY_VERSION"
    "$PY" -m pip download -q --no-cache-dir --no-deps --no-binary :all: -d "$dl" "llama-cpp-python==$LLAMA_PY_VERSION"
    local tgz="$dl/llama_cpp_python-$LLAMA_PY_VERSION.tar.gz"
    [ -f "$tgz" ] || die "pip download did not produce $tgz"
    rm -rf "$LLAMA_PKG.tmp" && mkdir -p "$LLAMA_PKG.tmp"
    tar -xzf "$tgz" -C "$LLAMA_PKG.tmp" --strip-components=1
    [ -f "$LLAMA_PKG.tmp/vendor/llama.cpp/CMakeLists.txt" ] || die "$tgz has no vendor/llama.cpp"
    rm -rf "$LLAMA_PKG" && mv "$LLAMA_PKG.tmp" "$LLAMA_PKG"
    rm -f "$tgz"
    rmdir "$dl" 2>/dev/null || true
  fi
  # LLAMA_CURL is deprecated in this tree; LLAMA_OPENSSL=OFF is what keeps it off the network.
  # AMX is compiled out (-mno-amx-*; GGML_NATIVE keeps AVX-512, VNNI, BF16 and the CPU_REPACK
  # weight layouts): with AMX, llama.cpp puts the 3-D MLA weights attn_k_b/attn_v_b of Q8_0 and
  # Q4_0 DeepSeek-2 models into its AMX buffer, whose matmul does not take them, and every
  # llama-bench run aborts in ggml_backend_sched_split_graph (GGML_ASSERT(*cur_backend_id != -1)),
  # tensor overrides to CPU included. ggml's AMX kernels cover quantized types only, so BF16 is
  # unaffected.
  local noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  local flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$noamx" "-DCMAKE_CXX_FLAGS=$noamx"
               -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_OPENCL=OFF -DLLAMA_OPENSSL=OFF
               -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
               -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON)
  if [ ! -x "$LLAMA_BUILD/bin/llama-bench" ] || [ ! -x "$LLAMA_BUILD/bin/llama-quantize" ] || [ ! -f "$LLAMA_INFO" ] \
     || [ "$(cat "$LLAMA_BUILD/deepshard-bench-flags" 2>/dev/null)" != "${flags[*]}" ]; then
    log "building llama.cpp (llama-bench, llama-quantize) in $LLAMA_BUILD with $JOBS jobs under nice"
    local gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    nice -n 10 cmake -S "$LLAMA_SRC" -B "$LLAMA_BUILD" "${gen[@]}" "${flags[@]}" >"$CACHE/llama-cmake.log" 2>&1 \
      || { tail -30 "$CACHE/llama-cmake.log" >&2; die "llama.cpp cmake configure failed (log: $CACHE/llama-cmake.log)"; }
    nice -n 10 cmake --build "$LLAMA_BUILD" --target llama-bench llama-quantize -j "$JOBS" >"$CACHE/llama-build.log" 2>&1 \
      || { tail -30 "$CACHE/llama-build.log" >&2; die "llama.cpp build failed (log: $CACHE/llama-build.log)"; }
    # llama-bench reports build_commit from the shallow .git the sdist carries; the commit the
    # package's CHANGELOG names ("update llama.cpp to ggml-org/llama.cpp@<commit>") is kept too.
    local commit
    commit="$(awk -v v="## [$LLAMA_PY_VERSION]" '$0==v{f=1;next} f&&/^## \[/{exit} f' "$LLAMA_PKG/CHANGELOG.md" \
              | grep -o 'ggml-org/llama.cpp@[0-9a-f]*' | head -1 | cut -d@ -f2 || true)"
    "$PY" - "$LLAMA_INFO" "$LLAMA_PY_VERSION" "${commit:-unknown}" "$(c++ --version | head -1)" "${flags[*]}" <<'PY'
import json, sys
out, ver, commit, cxx, flags = sys.argv[1:]
json.dump({"llama_cpp_python": ver, "llama_cpp_commit": commit, "compiler": cxx, "cmake_flags": flags}, open(out, "w"), indent=1)
PY
    echo "${flags[*]}" >"$LLAMA_BUILD/deepshard-bench-flags"
  fi
}

# ---------------------------------------------------------------------------------------
# Setup 3: the model, and its GGUFs (BF16, Q8_0, Q4_0) cached by model dir + mtimes.
# ---------------------------------------------------------------------------------------
setup_model() {
  [ -n "$MODEL" ] && return 0
  MODEL="$CACHE/models/bench-v2-lite-${LAYERS}l-bf16"
  if [ ! -f "$MODEL/config.json" ]; then
    log "making $MODEL (bench-v2-lite, $LAYERS layers, bf16, DeepSeek-V3 tokenizer)"
    mkdir -p "$CACHE/models"
    rm -rf "$MODEL.tmp"
    "$DS_CLI" make-model --preset bench-v2-lite --layers "$LAYERS" --dtype bf16 \
      --tokenizer "$ROOT/tests/data/tokenizers/deepseek-v3" --out "$MODEL.tmp"
    mv "$MODEL.tmp" "$MODEL"
  fi
}

GGUF_DIR="" LLAMA_SKIP=""
setup_gguf() {
  local key src
  key="$( { echo "$MODEL $LLAMA_PY_VERSION"; find "$MODEL" -maxdepth 1 -type f -printf '%f %s %T@\n' | sort; } \
          | sha1sum | cut -c1-12)"
  GGUF_DIR="$CACHE/gguf/$(basename "$MODEL")-$key"
  if [ -f "$GGUF_DIR/model-bf16.gguf" ] && [ -f "$GGUF_DIR/model-q8_0.gguf" ] && [ -f "$GGUF_DIR/model-q4_0.gguf" ]; then
    log "GGUFs cached in $GGUF_DIR"
    return 0
  fi
  mkdir -p "$CACHE/gguf"
  # GGUFs of an older version of the same model directory are stale: free their disk.
  for src in "$CACHE"/gguf/*/source; do
    [ -f "$src" ] || continue
    if [ "$(cat "$src")" = "$MODEL" ] && [ "$(dirname "$src")" != "$GGUF_DIR" ]; then
      log "removing stale GGUFs $(dirname "$src")"
      rm -rf "$(dirname "$src")"
    fi
  done
  mkdir -p "$GGUF_DIR"
  echo "$MODEL" >"$GGUF_DIR/source"
  # A converter-ready view of the model: symlinks to its files, and a config.json with
  # q_lora_rank written as 0 where it is null. llama.cpp treats q_lora_rank as optional
  # only for 26/27-layer (V2-Lite-sized) models; for any other layer count its loader
  # requires the key, and the converter writes it only when it is not null.
  local hf="$GGUF_DIR/hf"
  rm -rf "$hf" && mkdir -p "$hf"
  local f
  for f in "$MODEL"/*; do
    [ "$(basename "$f")" = config.json ] && continue
    ln -s "$f" "$hf/$(basename "$f")"
  done
  if [ ! -e "$MODEL/tokenizer.json" ]; then
    # llama.cpp's converter needs a tokenizer; the project's DeepSeek-V3 one fits a model
    # whose vocabulary holds all its ids.
    local vocab
    vocab="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$MODEL/config.json")"
    if [ "$vocab" -lt 128815 ]; then
      LLAMA_SKIP="model has no tokenizer.json and its vocab_size $vocab is below the 128815 ids of the project's DeepSeek-V3 tokenizer; llama.cpp's converter needs a matching tokenizer (make the model with 'make-model --tokenizer DIR')"
      rm -rf "$GGUF_DIR"
      return 0
    fi
    log "$MODEL has no tokenizer.json: the converter gets tests/data/tokenizers/deepseek-v3"
    rm -f "$hf/tokenizer_config.json"
    cp "$ROOT/tests/data/tokenizers/deepseek-v3/tokenizer.json" "$ROOT/tests/data/tokenizers/deepseek-v3/tokenizer_config.json" "$hf/"
  fi
  "$PY" - "$MODEL/config.json" "$hf/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
if c.get("q_lora_rank") is None and str(c.get("model_type", "")).startswith("deepseek"):
    c["q_lora_rank"] = 0
    print("[bench] converter config.json: q_lora_rank null -> 0", file=sys.stderr)
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY
  log "converting to GGUF BF16 (convert_hf_to_gguf.py, under nice)"
  if ! PYTHONPATH="$LLAMA_SRC/gguf-py${PYTHONPATH:+:$PYTHONPATH}" nice -n 10 "$PY" "$LLAMA_SRC/convert_hf_to_gguf.py" "$hf" \
        --outtype bf16 --outfile "$GGUF_DIR/model-bf16.gguf.tmp" >"$GGUF_DIR/convert.log" 2>&1; then
    tail -20 "$GGUF_DIR/convert.log" >&2
    die "convert_hf_to_gguf.py failed (log: $GGUF_DIR/convert.log)"
  fi
  mv "$GGUF_DIR/model-bf16.gguf.tmp" "$GGUF_DIR/model-bf16.gguf"
  local q
  for q in Q8_0 Q4_0; do
    local lq
    lq="$(echo "$q" | tr 'A-Z' 'a-z')"
    log "llama-quantize -> $q"
    nice -n 10 "$LLAMA_BUILD/bin/llama-quantize" "$GGUF_DIR/model-bf16.gguf" "$GGUF_DIR/model-$lq.gguf.tmp" "$q" "$JOBS" \
      >"$GGUF_DIR/quantize-$lq.log" 2>&1 || { tail -20 "$GGUF_DIR/quantize-$lq.log" >&2; die "llama-quantize $q failed"; }
    mv "$GGUF_DIR/model-$lq.gguf.tmp" "$GGUF_DIR/model-$lq.gguf"
  done
}

if [ $RUN_LLAMA = 1 ] || [ $RUN_HF = 1 ]; then setup_venv; fi
if [ $RUN_LLAMA = 1 ]; then setup_llama; setup_converter_deps; fi
setup_model
if [ $RUN_LLAMA = 1 ]; then setup_gguf; fi
T_SETUP=$(date +%s)
log "setup done in $((T_SETUP - T_START)) s; model $MODEL"
[ $SETUP_ONLY = 1 ] && exit 0

# ---------------------------------------------------------------------------------------
# The runs: every configuration once per round, rounds repeated --runs times.
# ---------------------------------------------------------------------------------------
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
[ -n "$OUT" ] || OUT="$CACHE/results/cpu-engines-$STAMP.json"
mkdir -p "$(dirname "$OUT")"
LOGDIR="${OUT%.*}-logs"
mkdir -p "$LOGDIR"
RAW="$LOGDIR/raw.jsonl"
: >"$RAW"
export OMP_NUM_THREADS="$THREADS"

# DS weight variants: bf16 always; int8/int4 when deepshard_bench_forward --help lists --weights.
DS_WEIGHTS=(bf16)
DS_QUANT_NOTE=""
if [ $RUN_DS = 1 ]; then
  if "$DS_BENCH" --help 2>/dev/null | grep -q -- '--weights'; then
    DS_WEIGHTS+=(int8 int4)
  else
    DS_QUANT_NOTE="deepshard int8/int4: not supported by this build ($DS_BENCH has no --weights flag)"
  fi
fi

# record ENGINE WEIGHTS MATH ROUND RC PREFILL DECODE LOG [ERROR]
record() {
  python3 - "$RAW" "$@" <<'PY'
import json, sys
raw, engine, weights, math, rnd, rc, pre, dec, logf = sys.argv[1:10]
err = sys.argv[10] if len(sys.argv) > 10 else ""
num = lambda s: float(s) if s not in ("", "nan") else None
load1 = float(open("/proc/loadavg").read().split()[0])  # 1-minute load average right after the run
with open(raw, "a") as f:
    f.write(json.dumps({"engine": engine, "weights": weights, "math": math, "round": int(rnd), "rc": int(rc),
                        "prefill_tok_s": num(pre), "decode_tok_s": num(dec), "loadavg1_after": load1, "log": logf,
                        "error": err}) + "\n")
PY
}

run_deepshard() {  # ROUND WEIGHTS MATH
  local r="$1" w="$2" m="$3" rc=0 args=()
  local logf="$LOGDIR/deepshard-$w-$m-r$r.log"
  args=(--model "$MODEL" --prompt "$PROMPT" --decode-steps "$STEPS" --threads "$THREADS")
  [ "$m" != default ] && args+=(--math "$m")
  [ "$w" != bf16 ] && args+=(--weights "$w")
  "$DS_BENCH" "${args[@]}" >"$logf" 2>&1 || rc=$?
  local pre dec err=""
  pre="$(awk '$1=="prefill"{print $4}' "$logf" | tail -1)"
  dec="$(awk '$1=="decode"{print $4}' "$logf" | tail -1)"
  [ $rc = 0 ] || err="exit $rc: $(grep -v '^#' "$logf" | tail -2 | tr '\n' ' ')"
  record deepshard "$w" "$m" "$r" "$rc" "$pre" "$dec" "$logf" "$err"
  log "round $r deepshard $w $m: prefill ${pre:-?} tok/s, decode ${dec:-?} tok/s${err:+ ($err)}"
}

run_llama() {  # ROUND QUANT
  local r="$1" q="$2" lq logp logd rc=0 err=""
  lq="$(echo "$q" | tr 'A-Z' 'a-z')"
  logp="$LOGDIR/llama-$lq-prefill-r$r.json"; logd="$LOGDIR/llama-$lq-decode-r$r.json"
  local common=(-m "$GGUF_DIR/model-$lq.gguf" -t "$THREADS" -r 1 -o json)
  "$LLAMA_BUILD/bin/llama-bench" "${common[@]}" -p "$PROMPT" -n 0 >"$logp" 2>"$logp.err" || rc=$?
  [ $rc = 0 ] && { "$LLAMA_BUILD/bin/llama-bench" "${common[@]}" -p 0 -n "$STEPS" -d "$PROMPT" >"$logd" 2>"$logd.err" || rc=$?; }
  local pre="" dec=""
  IFS='|' read -r pre dec < <(python3 - "$logp" "$logd" <<'PY'
import json, sys
out = []
for path, key in ((sys.argv[1], "n_prompt"), (sys.argv[2], "n_gen")):
    try:
        out.append(str([r for r in json.load(open(path)) if r.get(key, 0) > 0][0]["avg_ts"]))
    except Exception:
        out.append("")
print("|".join(out))
PY
) || true
  [ $rc = 0 ] || err="exit $rc: $(tail -2 "$logp.err" "$logd.err" 2>/dev/null | grep -v '^==>' | tr '\n' ' ')"
  record llama.cpp "$q" - "$r" "$rc" "$pre" "$dec" "$logp" "$err"
  log "round $r llama.cpp $q: prefill ${pre:-?} tok/s, decode ${dec:-?} tok/s${err:+ ($err)}"
}

run_transformers() {  # ROUND
  local r="$1" rc=0 err=""
  local logf="$LOGDIR/transformers-r$r.json"
  "$PY" "$ROOT/tools/bench_transformers.py" --model "$MODEL" --threads "$THREADS" --prompt "$PROMPT" \
    --decode-steps "$STEPS" >"$logf" 2>"$logf.err" || rc=$?
  local vals pre="" dec=""
  vals="$(python3 -c 'import json,sys
try:
    d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except Exception:
    d = {}
print(d.get("prefill_tok_s", ""), d.get("decode_tok_s", ""), str(d.get("error", "")).replace("|", "/"), sep="|")' "$logf")"
  IFS='|' read -r pre dec err <<<"$vals" || true
  if [ $rc != 0 ] && [ -z "$err" ]; then err="exit $rc: $(tail -2 "$logf.err" | tr '\n' ' ')"; fi
  record transformers bf16 - "$r" "$rc" "$pre" "$dec" "$logf" "$err"
  log "round $r transformers bf16: prefill ${pre:-?} tok/s, decode ${dec:-?} tok/s${err:+ ($err)}"
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "measuring: $RUNS rounds, $THREADS threads, prompt $PROMPT, $STEPS decode steps; logs in $LOGDIR"
for r in $(seq 1 "$RUNS"); do
  if [ $RUN_DS = 1 ]; then
    run_deepshard "$r" bf16 exact
    run_deepshard "$r" bf16 fast
    # Quantised weights in both maths: exact multiplies f32 activations by the
    # dequantised weights; fast quantises decode activations to int8 (integer dot
    # products, as llama.cpp's Q8_0/Q4_0 do).
    for w in "${DS_WEIGHTS[@]:1}"; do run_deepshard "$r" "$w" exact; run_deepshard "$r" "$w" fast; done
  fi
  if [ $RUN_LLAMA = 1 ] && [ -z "$LLAMA_SKIP" ]; then
    for q in BF16 Q8_0 Q4_0; do run_llama "$r" "$q"; done
  fi
  if [ $RUN_HF = 1 ]; then run_transformers "$r"; fi
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
T_END=$(date +%s)

# ---------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------
CPU_MODEL="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
CPU_FLAGS="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_bf16|avx512_vnni|avx_vnni|amx_tile|amx_bf16|amx_int8' | tr '\n' ' ' || true)"
DS_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || DS_COMMIT="$DS_COMMIT+dirty"
LLAMA_JSON="{}"
[ $RUN_LLAMA = 1 ] && [ -f "$LLAMA_INFO" ] && LLAMA_JSON="$(cat "$LLAMA_INFO")"
HF_VERSIONS=""
[ $RUN_HF = 1 ] && HF_VERSIONS="$("$PY" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")' 2>/dev/null || true)"

MODEL_BYTES="$(find "$MODEL/" -maxdepth 1 -name '*.safetensors' -printf '%s\n' | awk '{s+=$1} END{printf "%.0f\n", s}')"
REPORT_PY=python3  # the report needs only the standard library
B_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" B_HOST="$(hostname)" B_CPU_MODEL="$CPU_MODEL" B_CPU_FLAGS="$CPU_FLAGS" \
B_CORES="$(getconf _NPROCESSORS_ONLN)" B_MEM_KB="$(awk '/MemTotal/{print $2}' /proc/meminfo)" B_THREADS="$THREADS" B_RUNS="$RUNS" \
B_PROMPT="$PROMPT" B_STEPS="$STEPS" B_MODEL="$MODEL" B_MODEL_BYTES="$MODEL_BYTES" B_DS_COMMIT="$DS_COMMIT" \
B_LLAMA_JSON="$LLAMA_JSON" B_HF_VERSIONS="$HF_VERSIONS" B_LOAD_BEFORE="$LOAD_BEFORE" B_LOAD_AFTER="$LOAD_AFTER" \
B_SETUP_S="$((T_SETUP - T_START))" B_MEASURE_S="$((T_END - T_SETUP))" B_NOTE1="$DS_QUANT_NOTE" \
B_NOTE2="${LLAMA_SKIP:+llama.cpp skipped: $LLAMA_SKIP}" B_LOGDIR="$LOGDIR" \
"$REPORT_PY" - "$RAW" "$OUT" <<'PY'
import csv, json, os, statistics, sys
raw, out = sys.argv[1], sys.argv[2]
E = os.environ
rows = [json.loads(l) for l in open(raw) if l.strip()]
meta = {
    "date": E["B_DATE"],
    "host": E["B_HOST"],
    "cpu_model": E["B_CPU_MODEL"],
    "cpu_flags": E["B_CPU_FLAGS"].split(),
    "cores": int(E["B_CORES"]),
    "mem_gib": round(int(E["B_MEM_KB"]) / 1048576, 1),
    "threads": int(E["B_THREADS"]),
    "runs": int(E["B_RUNS"]),
    "prompt": int(E["B_PROMPT"]),
    "decode_steps": int(E["B_STEPS"]),
    "model": E["B_MODEL"],
    "model_bytes": int(E["B_MODEL_BYTES"]),
    "deepshard_commit": E["B_DS_COMMIT"],
    "llama_cpp": json.loads(E["B_LLAMA_JSON"]),
    "python_reference": E["B_HF_VERSIONS"],
    "loadavg_before": E["B_LOAD_BEFORE"],
    "loadavg_after": E["B_LOAD_AFTER"],
    "setup_s": int(E["B_SETUP_S"]),
    "measure_s": int(E["B_MEASURE_S"]),
    "notes": [n for n in (E["B_NOTE1"], E["B_NOTE2"]) if n],
}
groups = {}
for r in rows:
    groups.setdefault((r["engine"], r["weights"], r["math"]), []).append(r)

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

summary = []
for (engine, weights, math), rs in groups.items():
    errs = sorted({r["error"] for r in rs if r["error"]})
    summary.append({"engine": engine, "weights": weights, "math": math, "runs": len(rs),
                    "prefill_tok_s": med([r["prefill_tok_s"] for r in rs]),
                    "decode_tok_s": med([r["decode_tok_s"] for r in rs]),
                    "prefill_runs": [r["prefill_tok_s"] for r in rs], "decode_runs": [r["decode_tok_s"] for r in rs],
                    "errors": errs})
by = {(s["engine"], s["weights"], s["math"]): s for s in summary}

def ratio(a, b, key):
    if a is None or b is None or a[key] is None or b[key] is None or b[key] == 0:
        return None
    return a[key] / b[key]

pairs = []
for m in ("exact", "fast"):
    pairs.append((f"deepshard bf16 ({m}) / llama.cpp BF16", ("deepshard", "bf16", m), ("llama.cpp", "BF16", "-")))
for w, q in (("int8", "Q8_0"), ("int4", "Q4_0")):
    for m in ("exact", "fast"):
        pairs.append((f"deepshard {w} ({m}) / llama.cpp {q}", ("deepshard", w, m), ("llama.cpp", q, "-")))
for m in ("exact", "fast"):
    pairs.append((f"deepshard bf16 ({m}) / transformers bf16", ("deepshard", "bf16", m), ("transformers", "bf16", "-")))
ratios = []
for name, a, b in pairs:
    sa, sb = by.get(a), by.get(b)
    if sa is None and sb is None:
        continue
    why = "" if sa and sb else f"no {' '.join((a if sa is None else b)[:2])} result"
    # Same-round ratios too: each round runs every engine within minutes of the others.
    per_round = {"prefill_tok_s": [], "decode_tok_s": []}
    if sa and sb:
        ra = {r["round"]: r for r in groups[a]}
        rb = {r["round"]: r for r in groups[b]}
        for rnd in sorted(set(ra) & set(rb)):
            for key in per_round:
                per_round[key].append(ratio(ra[rnd], rb[rnd], key))
    ratios.append({"ratio": name, "prefill": ratio(sa, sb, "prefill_tok_s"), "decode": ratio(sa, sb, "decode_tok_s"),
                   "prefill_per_round": per_round["prefill_tok_s"], "decode_per_round": per_round["decode_tok_s"],
                   "missing": why})

f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"
print()
print(f"# {meta['date']}  {meta['host']}: {meta['cpu_model']}, {meta['cores']} cores, {meta['mem_gib']} GiB")
print(f"# cpu flags: {' '.join(meta['cpu_flags']) or '-'}")
print(f"# threads {meta['threads']} (every engine), {meta['runs']} interleaved rounds, prompt {meta['prompt']}, "
      f"{meta['decode_steps']} decode steps at context {meta['prompt']}")
print(f"# model {meta['model']} ({meta['model_bytes'] / 1e9:.2f} GB safetensors)")
lc = meta["llama_cpp"]
print(f"# deepshard {meta['deepshard_commit']}; llama.cpp {lc.get('llama_cpp_commit', '-')} "
      f"(llama-cpp-python {lc.get('llama_cpp_python', '-')}); {meta['python_reference'] or 'transformers not run'}")
loads = [r["loadavg1_after"] for r in rows if r.get("loadavg1_after") is not None]
meta["loadavg1_after_runs"] = [min(loads), max(loads)] if loads else None
print(f"# load average before {meta['loadavg_before']}, after {meta['loadavg_after']}"
      + (f", 1-min after each run {min(loads):.2f}-{max(loads):.2f}" if loads else "")
      + f"; setup {meta['setup_s']} s, measuring {meta['measure_s']} s")
if loads and max(loads) > 0.5 + meta["threads"] and meta["threads"] >= meta["cores"]:
    print(f"# warning: other processes ran on the {meta['cores']} cores during the runs (load above the {meta['threads']}"
          " threads measured): engines that spin at barriers (llama.cpp, OpenMP) lose most when a core is taken")
print()
hdr = ("engine", "weights", "math", "prefill tok/s", "decode tok/s", "prefill runs", "decode runs")
print(f"| {' | '.join(hdr)} |")
print("|" + "---|" * len(hdr))
for s in summary:
    pr = " / ".join(f(v) for v in s["prefill_runs"]); dr = " / ".join(f(v, 2) for v in s["decode_runs"])
    print(f"| {s['engine']} | {s['weights']} | {s['math']} | {f(s['prefill_tok_s'])} | {f(s['decode_tok_s'], 2)} | {pr} | {dr} |")
print()
print("| ratio | prefill (of medians) | decode (of medians) | prefill, same round | decode, same round |")
print("|---|---|---|---|---|")
for r in ratios:
    tail = f" ({r['missing']})" if r["missing"] else ""
    pr = " / ".join(f(v, 2) for v in r["prefill_per_round"]) or "-"
    dr = " / ".join(f(v, 2) for v in r["decode_per_round"]) or "-"
    print(f"| {r['ratio']}{tail} | {f(r['prefill'], 2)} | {f(r['decode'], 2)} | {pr} | {dr} |")
for n in meta["notes"]:
    print(f"\n# {n}")
for s in summary:
    for e in s["errors"]:
        print(f"# {s['engine']} {s['weights']} {s['math']}: {e}")

if out.endswith(".csv"):
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "engine", "weights", "math", "runs", "prefill_tok_s", "decode_tok_s", "prefill_runs",
                    "decode_runs", "note"])
        for s in summary:
            w.writerow(["median", s["engine"], s["weights"], s["math"], s["runs"], s["prefill_tok_s"], s["decode_tok_s"],
                        " ".join(map(str, s["prefill_runs"])), " ".join(map(str, s["decode_runs"])), "; ".join(s["errors"])])
        for r in ratios:
            w.writerow(["ratio", r["ratio"], "", "", "", r["prefill"], r["decode"],
                        " ".join(map(str, r["prefill_per_round"])), " ".join(map(str, r["decode_per_round"])), r["missing"]])
        for k, v in meta.items():
            w.writerow(["meta", k, "", "", "", "", "", "", "", json.dumps(v)])
else:
    with open(out, "w") as fh:
        json.dump({"meta": meta, "results": summary, "ratios": ratios, "raw": rows}, fh, indent=1)
print(f"\n# results: {out}; logs: {E['B_LOGDIR']}")
PY
