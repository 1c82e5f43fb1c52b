#!/usr/bin/env bash
# Prefix-cache benchmark: TTFT of a multi-turn chat workload (tools/prefix_chat.py:
# N conversations x T turns sharing a long system prompt, each turn resending the
# history) against `deepshard serve` with the prefix cache (the default) and with
# `--no-prefix-cache`, both servers up at once on the same model and layout, every
# request sent to both back to back; replies must be identical.
#   tools/bench_prefix_cache.sh [layout ...]     layout = PPxEP, default "1x1 1x2"
# Environment: CONVERSATIONS (8), TURNS (4), REPS (2), SYSTEM_WORDS (880, ~1,000 tokens),
# USER_WORDS (30), MAX_TOKENS (16), LAYERS (4), MODEL (made here if absent), THREADS
# (`serve --threads`; default: the node's cores shared among its ranks).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/build/launcher/deepshard"
LAYERS="${LAYERS:-4}"
MODEL="${MODEL:-$ROOT/build/bench/prefix-v3-l$LAYERS}"
LAYOUTS=("$@"); [ ${#LAYOUTS[@]} -gt 0 ] || LAYOUTS=(1x1 1x2)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# The demo model (tiny-v3 widths, bf16, the real DeepSeek-V3 tokenizer and vocabulary),
# with max_position_embeddings raised from the preset's 128 to 4096 so that a
# ~1,000-token system prompt and its turns fit (random weights: nothing to break).
if [ ! -f "$MODEL/config.json" ]; then
  "$BIN" make-model --preset tiny-v3 --seed 1 --dtype bf16 --layers "$LAYERS" --vocab 129280 \
    --tokenizer "$ROOT/tests/data/tokenizers/deepseek-v3" --out "$MODEL" >/dev/null 2>&1
  python3 - "$MODEL/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["max_position_embeddings"] = 4096
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CPU="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
echo "# $(date -u '+%F %H:%M UTC') $(uname -n): $CPU, $(nproc --all) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# model $(basename "$MODEL") (tiny-v3 widths, $LAYERS layers, bf16, vocab 129280), block size 64"

PIDS=(); LOGS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -f "${LOGS[@]}"; }
trap cleanup EXIT
for LAYOUT in "${LAYOUTS[@]}"; do
  PP="${LAYOUT%x*}"; EP="${LAYOUT#*x}"; NP=$((PP * EP))
  if [ "$NP" -eq 1 ]; then LAUNCH=("$BIN"); else
    LAUNCH=(mpirun --oversubscribe --mca pml ob1 --bind-to none -np "$NP" "$BIN"); fi
  URLS=(); SERVERS=()
  for FLAG in "" --no-prefix-cache; do
    PORT=$(free_port); LOG=$(mktemp); LOGS+=("$LOG")
    # shellcheck disable=SC2086
    "${LAUNCH[@]}" serve --model "$MODEL" --pp "$PP" --ep "$EP" --port "$PORT" --kv-cache-memory 64MiB $FLAG \
      ${THREADS:+--threads "$THREADS"} \
      >"$LOG" 2>&1 &
    PIDS+=($!); SERVERS+=("$!:$LOG"); URLS+=("http://127.0.0.1:$PORT")
  done
  for U in "${URLS[@]}"; do
    for _ in $(seq 1 240); do curl -sf "$U/health" >/dev/null 2>&1 && break; sleep 0.5; done
    curl -sf "$U/health" >/dev/null || { cat "${LOGS[@]}"; echo "server at $U did not come up" >&2; exit 1; }
  done
  echo
  echo "## pp $PP x ep $EP ($NP rank$([ "$NP" -gt 1 ] && echo s), threads ${THREADS:-auto}): cache = default, no-cache = --no-prefix-cache"
  T0=$(date +%s)
  RC=0
  python3 "$ROOT/tools/prefix_chat.py" --url "${URLS[0]}" --label cache --url "${URLS[1]}" --label no-cache \
    --conversations "${CONVERSATIONS:-8}" --turns "${TURNS:-4}" --reps "${REPS:-2}" \
    --system-words "${SYSTEM_WORDS:-880}" --user-words "${USER_WORDS:-30}" --max-tokens "${MAX_TOKENS:-16}" || RC=$?
  echo "# workload took $(( $(date +%s) - T0 )) s"
  for S in "${SERVERS[@]}"; do
    LOG="${S#*:}"
    R0=$(grep -o "ready, pid [0-9]*" "$LOG" | head -1 | awk '{print $3}' || true)
    kill -TERM "${R0:-${S%%:*}}" 2>/dev/null || true
    wait "${S%%:*}" || true
  done
  [ "$RC" -eq 0 ] || { echo "replies differ between the two servers" >&2; exit "$RC"; }
done
