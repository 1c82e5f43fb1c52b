#!/usr/bin/env bash
# End-to-end test of `deepshard serve` (see serve_e2e_test.py): makes a tiny
# DeepSeek-V3-style model with the real DeepSeek-V3 tokenizer, a venv with the
# pinned `openai` package, then runs the checks against mpirun -np 4 servers.
#   serve_e2e_test.sh <deepshard> <mpirun> <build dir> [--only main,strict,kill]
set -euo pipefail
BIN="$1"; MPIRUN="$2"; BUILD="$3"; shift 3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="$BUILD/serve-e2e"
VENV="$BUILD/serve-venv"
MODEL="$WORK/tiny-v3-serve"
mkdir -p "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# The venv is kept in the build dir: it is made once per fresh build (pip needs PyPI).
# Without PyPI the openai-client checks cannot run; every other check still does,
# and the log says loudly what was left out.
PY=python3
EXTRA=()
if "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  PY="$VENV/bin/python"
else
  rm -rf "$VENV"
  if python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"; then
    PY="$VENV/bin/python"
  else
    echo "serve_e2e_test: WARNING: could not install the openai package from PyPI" \
         "(tests/serve/requirements.txt): the openai-client checks are SKIPPED, the rest runs" >&2
    EXTRA=(--no-openai)
  fi
fi

rm -rf "$MODEL"
"$BIN" make-model --preset tiny-v3 --seed 3 --dtype bf16 --layers 4 --vocab 129280 \
  --tokenizer "$ROOT/tests/data/tokenizers/deepseek-v3" --out "$MODEL" >/dev/null

exec "$PY" "$HERE/serve_e2e_test.py" --deepshard "$BIN" --mpirun "$MPIRUN" --model "$MODEL" \
  --workdir "$WORK" "${EXTRA[@]}" "$@"
