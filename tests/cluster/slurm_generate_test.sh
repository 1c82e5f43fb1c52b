#!/usr/bin/env bash
# slurm_generate_test.sh DEEPSHARD SOURCE_DIR
#
# Starts a one-machine Slurm (cluster/local_slurm.sh) in a temp dir, submits
# cluster/slurm/deepshard.sbatch with PP=2 EP=2 on 4 tasks through `sbatch --wait`,
# and checks that the job prints what single-rank `deepshard generate` prints for the
# same prompts. Then checks that 3 tasks for PP*EP=4 fail with the script's message,
# and serves over HTTP with cluster/slurm/deepshard-serve.sbatch (PP=2 EP=2): a greedy
# request matches one rank, and `scancel --signal=TERM` drains it to exit 0.
# Last, `deepshard generate` and `deepshard serve` with a bad flag as 4-task
# `srun --mpi=pmix` jobs: one usage error for the whole job (only the launcher's
# rank 0 prints it; PMIX_RANK, no OMPI_COMM_WORLD_RANK under srun), non-zero exit.
# Exit 77 (skipped) where the Slurm/munge daemons are not installed or not root.
set -euo pipefail

DEEPSHARD=$(realpath "${1:?usage: $0 DEEPSHARD SOURCE_DIR}")
SRC=$(realpath "${2:?usage: $0 DEEPSHARD SOURCE_DIR}")
LOCAL_SLURM=$SRC/cluster/local_slurm.sh
SBATCH_SCRIPT=$SRC/cluster/slurm/deepshard.sbatch

for b in slurmctld slurmd munged; do
  if ! command -v "$b" >/dev/null && [ ! -x "/usr/sbin/$b" ]; then
    echo "SKIP: $b is not installed (scripts/setup.sh installs slurmctld slurmd slurm-client munge)"
    exit 77
  fi
done
for b in sbatch sinfo squeue scancel; do
  command -v "$b" >/dev/null || { echo "SKIP: $b is not installed (package slurm-client)"; exit 77; }
done
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: a local Slurm needs root (slurmd, SlurmUser=root)"
  exit 77
fi

# A test run inside a real Slurm job must not leak that job's settings into ours.
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep -E '^(SLURM|SBATCH|SRUN|SALLOC)_' || true)

WORK=$(mktemp -d /tmp/ds-slurm-test.XXXXXX)
chmod 0755 "$WORK"  # munged runs as user munge and must reach its socket below
STATE=$WORK/slurm
cleanup() {
  local rc=$? pid
  "$LOCAL_SLURM" stop "$STATE" || true
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done  # a pending sbatch --wait
  if [ $rc -ne 0 ]; then
    for f in "$STATE"/log/*.log "$WORK"/*.out "$WORK"/*.err; do
      [ -f "$f" ] && { echo "---- $f (tail)"; tail -n 20 "$f"; }
    done
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap "exit 143" TERM INT  # so that a killed test still stops its daemons

fail() { echo "FAIL: $*"; exit 1; }

t0=$(date +%s.%N)
# 4 one-CPU slots on this node even on 2 cores; own ports so as not to meet another
# local Slurm on the default ones.
export DS_SLURM_CPUS=4
export DS_SLURM_CTLD_PORT=${DS_SLURM_CTLD_PORT:-26817}
export DS_SLURM_D_PORT=${DS_SLURM_D_PORT:-26818}
start_out=$("$LOCAL_SLURM" start "$STATE") || fail "local_slurm.sh start failed"
eval "$start_out"
[ -n "${SLURM_CONF:-}" ] || fail "local_slurm.sh start printed no SLURM_CONF"
# start is idempotent: a second start on the running cluster just prints the export.
[ "$("$LOCAL_SLURM" start "$STATE" 2>/dev/null)" = "export SLURM_CONF=$SLURM_CONF" ] \
  || fail "second start did not just print the export line"
echo "slurm up after $(echo "$(date +%s.%N) - $t0" | bc) s"

MODEL=$WORK/model
"$DEEPSHARD" make-model --preset tiny-v3 --layers 4 --out "$MODEL" >/dev/null
PROMPTS="0,5,17;3,4;7"
NEW=8
OMP_NUM_THREADS=1 "$DEEPSHARD" generate --model "$MODEL" --prompt-ids "$PROMPTS" \
  --max-new-tokens $NEW --ignore-eos >"$WORK/ref.txt"
[ "$(wc -l <"$WORK/ref.txt")" -eq 3 ] || fail "reference printed $(wc -l <"$WORK/ref.txt") lines, want 3"

submit() {  # submit NTASKS NAME: runs the sbatch script with PP=2 EP=2, returns its rc
  local n=$1 name=$2
  MODEL=$MODEL PP=2 EP=2 PROMPT_IDS=$PROMPTS MAX_NEW_TOKENS=$NEW EXTRA_ARGS=--ignore-eos \
    DEEPSHARD=$DEEPSHARD \
    timeout 120 sbatch --wait --quiet --job-name="ds-test-$name" --nodes=1 \
      --ntasks-per-node="$n" --cpus-per-task=1 --time=00:02:00 \
      --chdir="$WORK" --output="$WORK/$name.out" --error="$WORK/$name.err" "$SBATCH_SCRIPT" &
  wait $!  # in the background, so that SIGTERM reaches the trap at once
}

# 1. PP=2 x EP=2 on 4 tasks: same ids as one rank.
t1=$(date +%s.%N)
rc=0; submit 4 ok || rc=$?
echo "4-task job: exit $rc after $(echo "$(date +%s.%N) - $t1" | bc) s"
[ $rc -eq 0 ] || fail "4-task job exited $rc"
if ! diff -u "$WORK/ref.txt" "$WORK/ok.out"; then
  fail "job output differs from single-rank generate"
fi
grep -q "PP=2 EP=2, OMP_NUM_THREADS=1" "$WORK/ok.err" || fail "job log lacks its PP/EP line"

# 2. 3 tasks for PP*EP = 4: the script refuses with a clear message, non-zero exit.
t1=$(date +%s.%N)
rc=0; submit 3 bad || rc=$?
echo "3-task job: exit $rc after $(echo "$(date +%s.%N) - $t1" | bc) s"
[ $rc -ne 0 ] || fail "3-task job succeeded; want a PP*EP mismatch error"
grep -q "SLURM_NTASKS=3 tasks but PP\*EP = 2\*2 = 4" "$WORK/bad.err" \
  || fail "3-task job did not print the PP*EP mismatch message"
[ ! -s "$WORK/bad.out" ] || fail "3-task job printed output"

# 3. deepshard serve under srun (cluster/slurm/deepshard-serve.sbatch), PP=2 x EP=2:
#    a greedy request over HTTP gives the single-rank ids; scancel --signal=TERM
#    drains it and every task exits 0.
SERVE_SCRIPT=$SRC/cluster/slurm/deepshard-serve.sbatch
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
t1=$(date +%s.%N)
JOB=$(MODEL=$MODEL PP=2 EP=2 PORT=$PORT DEEPSHARD=$DEEPSHARD EXTRA_ARGS="--kv-cache-memory 32MiB" \
  sbatch --parsable --job-name=ds-test-serve --nodes=1 --ntasks-per-node=4 --cpus-per-task=1 --time=00:03:00 \
    --chdir="$WORK" --output="$WORK/serve.out" --error="$WORK/serve.err" "$SERVE_SCRIPT")
up=0
for _ in $(seq 1 240); do
  if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then up=1; break; fi
  sleep 0.25
done
[ $up -eq 1 ] || fail "serve job $JOB did not answer /health on port $PORT"
echo "serve job up after $(echo "$(date +%s.%N) - $t1" | bc) s"
got=$(curl -sf "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"prompt\": [0,5,17], \"max_tokens\": $NEW, \"temperature\": 0, \"ignore_eos\": true, \"return_token_ids\": true}" \
  | python3 -c 'import json,sys; print(",".join(map(str, json.load(sys.stdin)["choices"][0]["token_ids"])))')
[ "$got" = "$(head -n 1 "$WORK/ref.txt")" ] || fail "served ids $got differ from single-rank $(head -n 1 "$WORK/ref.txt")"
scancel --signal=TERM "$JOB"
for _ in $(seq 1 120); do
  squeue -h -j "$JOB" 2>/dev/null | grep -q . || break
  sleep 0.25
done
squeue -h -j "$JOB" 2>/dev/null | grep -q . && fail "serve job $JOB still running 30 s after SIGTERM"
grep -q "deepshard serve exited with 0" "$WORK/serve.err" || fail "serve job did not exit 0 after SIGTERM"
grep -q "drained; shutting down" "$WORK/serve.err" || fail "serve job did not drain"
echo "serve job: greedy ids match, SIGTERM drained, exit 0 after $(echo "$(date +%s.%N) - $t1" | bc) s"

# 4. A usage error under `srun --mpi=pmix` on 4 tasks: every rank exits non-zero but
#    only rank 0 prints the error (before, every rank did: it looked only for
#    OMPI_COMM_WORLD_RANK, which srun does not set). stdout and stderr go to one file.
cat >"$WORK/usage.sbatch" <<'EOS'
#!/usr/bin/env bash
exec srun --mpi=pmix "$DEEPSHARD" "$@"
EOS
usage_job() {  # usage_job NAME DEEPSHARD_ARGS...: 4-task job of `deepshard ARGS`, returns its rc
  local name=$1; shift
  DEEPSHARD=$DEEPSHARD \
    timeout 120 sbatch --wait --quiet --job-name="ds-test-$name" --nodes=1 \
      --ntasks-per-node=4 --cpus-per-task=1 --time=00:02:00 \
      --chdir="$WORK" --output="$WORK/$name.out" "$WORK/usage.sbatch" "$@" &
  wait $!
}
check_usage_job() {  # check_usage_job COMMAND NAME WANT_MESSAGE DEEPSHARD_ARGS...
  local cmd=$1 name=$2 want=$3 rc=0 n; shift 3
  t1=$(date +%s.%N)
  usage_job "$name" "$cmd" "$@" || rc=$?
  n=$(grep -cF "deepshard $cmd: error:" "$WORK/$name.out" || true)
  echo "$cmd usage-error job (4 tasks): exit $rc, $n \"deepshard $cmd: error:\" line(s)" \
       "after $(echo "$(date +%s.%N) - $t1" | bc) s"
  [ $rc -ne 0 ] || fail "$cmd job with a bad flag exited 0"
  grep -q "tasks 0-3: Exited with exit code" "$WORK/$name.out" \
    || fail "$cmd job with a bad flag: srun did not report all 4 tasks exiting"
  [ "$n" -eq 1 ] || fail "$cmd job with a bad flag printed $n \"deepshard $cmd: error:\" lines, want 1"
  grep -qF "deepshard $cmd: error: $want" "$WORK/$name.out" \
    || fail "$cmd job's error is not \"$want\""
}
check_usage_job generate usage-generate "top_p must be in (0, 1], got 2" \
  --model "$MODEL" --prompt-ids "$PROMPTS" --top-p 2
check_usage_job serve usage-serve "unknown flag --no-such-flag" \
  --model "$MODEL" --no-such-flag

echo "PASS in $(echo "$(date +%s.%N) - $t0" | bc) s"
