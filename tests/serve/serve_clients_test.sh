#!/usr/bin/env bash
# Real client libraries (LangChain, LiteLLM, lm-eval; pinned in
# requirements-clients.txt) against `mpirun -np 4 deepshard serve --pp 2 --ep 2`
# (see serve_clients_test.py). Makes the e2e test's tiny model and, once per
# build dir, a venv of the clients.
#   serve_clients_test.sh <deepshard> <mpirun> <build dir> [--only langchain,litellm,lm-eval]
# Exit 77 (CTest SKIP) when the venv is missing and PyPI cannot be reached.
set -euo pipefail
BIN="$(realpath "$1")"; MPIRUN="$2"; BUILD="$(realpath "$3")"; shift 3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="$BUILD/serve-clients"
VENV="$BUILD/serve-clients-venv"
MODEL="$WORK/tiny-v3-serve"
REQS="$HERE/requirements-clients.txt"
mkdir -p "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# The venv is made once per build dir and remade when requirements-clients.txt
# changes. The file pins every package (the transitive ones too), so pip installs
# it with --no-deps: no resolver, and lm-eval without the dependencies this test
# never imports (scikit-learn, evaluate, rouge-score; no torch either way).
if ! cmp -s "$REQS" "$VENV/requirements-clients.txt" 2>/dev/null; then
  rm -rf "$VENV"
  start=$(date +%s)
  if python3 -m venv "$VENV" &&
     "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REQS" >"$WORK/pip.log" 2>&1; then
    cp "$REQS" "$VENV/requirements-clients.txt"
    echo "serve_clients_test: made $VENV in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
  else
    tail -n 30 "$WORK/pip.log" >&2 || true
    # Only an unreachable index is a skip; any other install failure is a failure.
    probe="$WORK/pip-probe"
    rm -rf "$probe"
    if [ -x "$VENV/bin/pip" ] &&
       "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$probe" "pip" >/dev/null 2>&1; then
      echo "serve_clients_test: FAILED to install $REQS although the package index answers" >&2
      rm -rf "$VENV"
      exit 1
    fi
    rm -rf "$VENV"
    echo "################################################################################" >&2
    echo "serve_clients_test: SKIPPED: the package index (PyPI) cannot be reached, so the" >&2
    echo "client venv ($REQS) cannot be made. NOTHING WAS TESTED." >&2
    echo "################################################################################" >&2
    exit 77
  fi
fi

rm -rf "$MODEL"
"$BIN" make-model --preset tiny-v3 --seed 3 --dtype bf16 --layers 4 --vocab 129280 \
  --tokenizer "$ROOT/tests/data/tokenizers/deepseek-v3" --out "$MODEL" >/dev/null

# LiteLLM would fetch its model price map from GitHub at import time.
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec "$VENV/bin/python" "$HERE/serve_clients_test.py" --deepshard "$BIN" --mpirun "$MPIRUN" --model "$MODEL" \
  --workdir "$WORK" --task-dir "$HERE/lm_eval_task" "$@"
