#!/usr/bin/env bash
# The README's first command: install, build, make small random DeepSeek-V3-style
# models on the spot (one with the real DeepSeek-V3 tokenizer), and generate from
# them on one rank and across 4 MPI ranks (2 pipeline stages x 2 expert shards).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/build.sh"
BIN="$ROOT/build/launcher/deepshard"
MODEL="$ROOT/build/demo/tiny-v3"
PROMPTS="${DEEPSHARD_DEMO_PROMPTS:-0,5,17,42,7,99;3,1,4,1,5,9,2,6;271,82}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --mca pml ob1 --bind-to none)

TOK_MODEL="$ROOT/build/demo/tiny-v3-tokenizer"
echo
echo "== make-model with the real DeepSeek-V3 tokenizer (129,280-entry vocabulary) -> $TOK_MODEL"
"$BIN" make-model --preset tiny-v3 --seed 1 --dtype bf16 --layers 4 --vocab 129280 \
  --tokenizer "$ROOT/tests/data/tokenizers/deepseek-v3" --out "$TOK_MODEL"
echo
echo "== generate --prompt (text in, streamed text out; random weights, so the words are random)"
"$BIN" generate --model "$TOK_MODEL" --prompt "The three laws of robotics are" --max-new-tokens 24 --ignore-eos
echo
echo "== generate --chat (rendered with the model's chat template) on 4 MPI ranks"
"${MPIRUN[@]}" -np 4 "$BIN" generate --model "$TOK_MODEL" --pp 2 --ep 2 --chat "Hello! Who are you?" \
  --system "You are a helpful assistant." --max-new-tokens 24 --ignore-eos

echo
echo "== make-model: random tiny-v3 (MLA + DeepSeekMoE with noaux_tc routing, YaRN, 4 layers) -> $MODEL"
"$BIN" make-model --preset tiny-v3 --seed 1 --dtype bf16 --layers 4 --out "$MODEL"
echo
echo "== plan: 2 pipeline stages x 2 expert shards"
"$BIN" plan --model "$MODEL" --pp 2 --ep 2
echo
echo "== generate on one rank (greedy; one line of new token ids per prompt)"
"$BIN" generate --model "$MODEL" --prompt-ids "$PROMPTS" --max-new-tokens 16 --ignore-eos
echo
echo "== generate on 4 MPI ranks: mpirun -np 4 deepshard generate --pp 2 --ep 2 (same tokens)"
"${MPIRUN[@]}" -np 4 "$BIN" generate --model "$MODEL" --pp 2 --ep 2 --prompt-ids "$PROMPTS" \
  --max-new-tokens 16 --ignore-eos
echo
echo "== seeded sampling (temperature 0.8, top-k 40, top-p 0.95) on 4 ranks"
"${MPIRUN[@]}" -np 4 "$BIN" generate --model "$MODEL" --pp 2 --ep 2 --prompt-ids "$PROMPTS" \
  --max-new-tokens 16 --ignore-eos --temperature 0.8 --top-k 40 --top-p 0.95 --seed 7

# The main job: serve the tokenizer model over HTTP from 4 MPI ranks, talk to it
# with curl, then drain it with SIGTERM.
PORT="${DEEPSHARD_DEMO_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
LOG="$ROOT/build/demo/serve.log"
URL="http://127.0.0.1:$PORT"
echo
echo "== serve on 4 MPI ranks (pp 2 x ep 2): mpirun -np 4 deepshard serve --pp 2 --ep 2 --port $PORT"
"${MPIRUN[@]}" -np 4 "$BIN" serve --model "$TOK_MODEL" --pp 2 --ep 2 --port "$PORT" \
  --kv-cache-memory 64MiB >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -9 $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  curl -sf "$URL/health" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; echo "serve exited early" >&2; exit 1; }
  sleep 0.5
done
grep "listening on" "$LOG"
echo
echo "== curl $URL/v1/completions (greedy)"
curl -sS "$URL/v1/completions" -H 'Content-Type: application/json' \
  -d '{"prompt": "The three laws of robotics are", "max_tokens": 16, "temperature": 0, "ignore_eos": true}'
echo
echo
echo "== curl $URL/v1/chat/completions (streamed, server-sent events)"
curl -sS -N "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Hello! Who are you?"}],
       "max_tokens": 8, "temperature": 0, "ignore_eos": true, "stream": true}'
echo
echo "== curl $URL/metrics (excerpt)"
curl -sS "$URL/metrics" | grep -E '^deepshard_(kv_blocks|sequences|generation_tokens_total|backend_info|step_seconds_total\{phase="(attention|dispatch_combine)",rank="0"\})'
echo
echo "== SIGTERM to every rank: drain, then exit 0"
kill -TERM $(grep -o "ready, pid [0-9]*" "$LOG" | awk '{print $3}')
wait $SERVER
echo "serve exited with $?"
trap - EXIT
