#!/usr/bin/env bash
# Fault injection (tools/fault_inject.py): `deepshard serve` and `deepshard generate`
# on 4 ranks (pp 2 x ep 2), a rank killed (SIGKILL) or stopped (SIGSTOP) at a
# random step of prefill, decode or (serve) a drain; then: the job ends within
# 30 s naming the rank and what happened, every accepted request gets its tokens
# or an explicit error, no process is left. Plus the log on a full disk
# (/dev/full). CI runs the fixed `--cover ci` list with seed DS_FAULT_SEED (1);
# DS_FAULT_ROUNDS=N runs N random rounds instead (a longer run).
#   fault_inject_test.sh <deepshard> <mpirun> <build dir>
set -euo pipefail
BIN="$1"; MPIRUN="$2"; BUILD="$3"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$BUILD/fault-inject"
rm -rf "$WORK"
mkdir -p "$WORK"
if [ -n "${DS_FAULT_ROUNDS:-}" ]; then
  PLAN=(--rounds "$DS_FAULT_ROUNDS")
else
  PLAN=(--cover ci)
fi
exec python3 "$ROOT/tools/fault_inject.py" --deepshard "$BIN" --mpirun "$MPIRUN" --workdir "$WORK" \
  --seed "${DS_FAULT_SEED:-1}" "${PLAN[@]}" --disk-full
