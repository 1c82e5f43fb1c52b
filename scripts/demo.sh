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
