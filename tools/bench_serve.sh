#!/usr/bin/env bash
# Serving benchmark: `deepshard serve` under load (tools/loadgen.py, 1..64
# clients) and, side by side on the same prompts and layout, offline
# `deepshard generate` running all of them as one batch (the same forward
# code with no HTTP, scheduler or control plane): the ratio of the two
# throughputs is what serving costs.
#   tools/bench_serve.sh [model dir] [pp] [ep]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/build/launcher/deepshard"
MODEL="${1:-$ROOT/build/demo/tiny-v3-tokenizer}"
PP="${2:-2}"; EP="${3:-2}"; NP=$((PP * EP))
TOKENS=32; REQ=2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --mca pml ob1 --bind-to none -np "$NP")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$(mktemp)
echo "# $(date -u +%F) $(uname -n): $(nproc) cores, model $(basename "$MODEL"), pp $PP x ep $EP ($NP ranks)"
"${MPIRUN[@]}" "$BIN" serve --model "$MODEL" --pp "$PP" --ep "$EP" --port "$PORT" --kv-cache-memory 256MiB >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -9 $SERVER 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.5; done
python3 "$ROOT/tools/loadgen.py" --url "http://127.0.0.1:$PORT" --concurrency 1,2,4,8,16,32,64 \
  --requests-per-client "$REQ" --max-tokens "$TOKENS"
# The same 64 prompts as 64 clients x 1 request, 3 times; then offline as one batch, 3 times.
SERVED=""
for _ in 1 2 3; do
  SERVED="$SERVED $(python3 "$ROOT/tools/loadgen.py" --url "http://127.0.0.1:$PORT" --concurrency 64 \
    --requests-per-client 1 --max-tokens "$TOKENS" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tok_s"])')"
done
kill -TERM $(grep -o "ready, pid [0-9]*" "$LOG" | awk '{print $3}')
wait $SERVER
PROMPTS=$(python3 "$ROOT/tools/loadgen.py" --print-prompts)
OFFLINE=""
for _ in 1 2 3; do
  T0=$(date +%s.%N)
  "${MPIRUN[@]}" "$BIN" generate --model "$MODEL" --pp "$PP" --ep "$EP" --prompt-ids "$PROMPTS" \
    --max-new-tokens "$TOKENS" --ignore-eos >/dev/null 2>&1
  T1=$(date +%s.%N)
  # Offline time includes start-up (model load, MPI init, prefill): measured with 1 new token and subtracted.
  "${MPIRUN[@]}" "$BIN" generate --model "$MODEL" --pp "$PP" --ep "$EP" --prompt-ids "$PROMPTS" \
    --max-new-tokens 1 --ignore-eos >/dev/null 2>&1
  T2=$(date +%s.%N)
  OFFLINE="$OFFLINE $(python3 -c "print(64 * ($TOKENS - 1) / (($T1 - $T0) - ($T2 - $T1)))")"
done
python3 - "$SERVED" "$OFFLINE" "$TOKENS" <<'PY'
import statistics, sys
served = [float(x) for x in sys.argv[1].split()]
offline = [float(x) for x in sys.argv[2].split()]
s, o = statistics.median(served), statistics.median(offline)
print(f"\n64 prompts x {sys.argv[3]} tokens, median of 3: served {s:.1f} tok/s (64 concurrent streams; runs "
      f"{', '.join(f'{x:.0f}' for x in served)}), offline batch {o:.1f} tok/s (decode steps only; runs "
      f"{', '.join(f'{x:.0f}' for x in offline)}); served / offline = {s / o:.2f}")
PY
