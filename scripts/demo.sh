#!/usr/bin/env bash
# The README's first command: install, build, make a small random DeepSeek-V3-style
# model on the spot, and generate from it on one rank and across 4 MPI ranks
# (2 pipeline stages x 2 expert shards).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/build.sh"
BIN="$ROOT/build/launcher/deepshard"
MODEL="$ROOT/build/demo/tiny-v3"
PROMPTS="${DEEPSHARD_DEMO_PROMPTS:-0,5,17,42,7,99;3,1,4,1,5,9,2,6;271,82}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --mca pml ob1 --bind-to none)

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
