#!/usr/bin/env bash
# The README's first command: install, build, make a small random DeepSeek-V3-style
# model on the spot, and generate tokens from it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/build.sh"
BIN="$ROOT/build/launcher/deepshard"
MODEL="$ROOT/build/demo/tiny-v3"
PROMPT="${DEEPSHARD_DEMO_PROMPT:-0,5,17,42,7,99}"
echo
echo "== make-model: random tiny-v3 (MLA + DeepSeekMoE with noaux_tc routing, YaRN) -> $MODEL"
"$BIN" make-model --preset tiny-v3 --seed 1 --dtype bf16 --out "$MODEL"
echo
echo "== generate: greedy continuation of prompt ids $PROMPT"
"$BIN" generate --model "$MODEL" --prompt-ids "$PROMPT" --max-new-tokens 16 --ignore-eos
echo
echo "== generate: seeded sampling (temperature 0.8, top-k 40, top-p 0.95)"
"$BIN" generate --model "$MODEL" --prompt-ids "$PROMPT" --max-new-tokens 16 --ignore-eos \
  --temperature 0.8 --top-k 40 --top-p 0.95 --seed 7
