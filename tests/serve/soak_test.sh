#!/usr/bin/env bash
# Soak test (tools/soak.py): `deepshard serve` on 4 ranks (pp 2 x ep 2) under a
# steady mixed load (streams, chats, cancels, disconnects, bad requests, n = 2
# with logprobs, json_schema) for DS_SOAK_SECONDS (default 120), then: no
# unexpected answer, every request answered, no KV block / sequence / request
# left, RSS within 5% of its post-warm-up value, a clean SIGTERM exit.
#   soak_test.sh <deepshard> <mpirun> <build dir>
set -euo pipefail
BIN="$1"; MPIRUN="$2"; BUILD="$3"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$BUILD/soak"
MODEL="$WORK/tiny-v3-soak"
mkdir -p "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rm -rf "$MODEL"
"$BIN" make-model --preset tiny-v3 --seed 5 --layers 4 --vocab 129280 \
  --tokenizer "$ROOT/tests/data/tokenizers/deepseek-v3" --out "$MODEL" >/dev/null
exec python3 "$ROOT/tools/soak.py" --deepshard "$BIN" --mpirun "$MPIRUN" --model "$MODEL" --workdir "$WORK" \
  --duration "${DS_SOAK_SECONDS:-120}"
