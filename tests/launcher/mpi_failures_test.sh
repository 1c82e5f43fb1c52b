#!/usr/bin/env bash
# Failure handling of `deepshard generate` under mpiexec (issue 4, item 8):
# every bad layout gets one clear message from rank 0 and a non-zero exit of
# every rank within seconds; a rank killed mid-run ends the job non-zero
# within 30 s; a rank stopped mid-run (SIGSTOP) ends it within ~the heartbeat
# timeout, naming the rank (issue 16); a rank stopped before MPI_Init ends it
# within --startup-timeout, leaving no process behind. Usage:
# mpi_failures_test.sh DEEPSHARD MPIEXEC
set -u
BIN="$1"
MPIEXEC="$2"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPI=("$MPIEXEC" --oversubscribe --mca pml ob1 --bind-to none)
TMP="$(mktemp -d)"
# Whatever is left of this test's jobs (their command lines name $TMP): the
# start-up cases below count any as a failure first.
leftovers() { pgrep -f -- "$TMP/" | grep -vx "$$" || true; }
cleanup() {
  local p
  for p in $(leftovers); do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
fails=0
pass=0

"$BIN" make-model --preset tiny-v3 --layers 4 --out "$TMP/a" 2>/dev/null || exit 1
"$BIN" make-model --preset tiny-v3 --layers 4 --seed 2 --out "$TMP/b" 2>/dev/null || exit 1

# expect NAME EXPECTED_MESSAGE -- command...
expect_error() {
  local name="$1" needle="$2"
  shift 3
  local start end rc out
  start=$(date +%s.%N)
  out="$(timeout 60 "$@" 2>&1)"
  rc=$?
  end=$(date +%s.%N)
  local secs
  secs=$(echo "$end - $start" | bc)
  local count
  count=$(grep -c "deepshard generate: error" <<<"$out")
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -qF -- "$needle" <<<"$out" && [ "$count" -eq 1 ] &&
     [ "$(echo "$secs < 10" | bc)" -eq 1 ]; then
    echo "ok   $name: exit $rc in ${secs}s, one message"
    pass=$((pass + 1))
  else
    echo "FAIL $name: exit $rc in ${secs}s, $count error lines, wanted \"$needle\":"
    echo "$out" | sed 's/^/     /'
    fails=$((fails + 1))
  fi
}

expect_error "world != pp x ep" "does not fit the MPI world of 3 ranks" -- \
  "${MPI[@]}" -n 3 "$BIN" generate --model "$TMP/a" --pp 2 --ep 2 --prompt-ids 1,2
expect_error "pp > layers" "--pp 5 exceeds the model's 4 layers" -- \
  "${MPI[@]}" -n 5 "$BIN" generate --model "$TMP/a" --pp 5 --ep 1 --prompt-ids 1,2
expect_error "ep > experts" "--ep 17 exceeds the 16 routed experts" -- \
  "${MPI[@]}" -n 17 "$BIN" generate --model "$TMP/a" --ep 17 --prompt-ids 1,2
expect_error "ranks see different model files" "ranks see different model files" -- \
  "${MPI[@]}" -n 1 "$BIN" generate --model "$TMP/a" --ep 2 --prompt-ids 1,2 : \
  -n 1 "$BIN" generate --model "$TMP/b" --ep 2 --prompt-ids 1,2
expect_error "missing model on every rank" "no such model directory" -- \
  "${MPI[@]}" -n 2 "$BIN" generate --model "$TMP/nope" --ep 2 --prompt-ids 1,2

# Uneven expert shards are supported: 16 experts on 3 ranks (6/5/5) give the
# single-rank tokens.
want="$("$BIN" generate --model "$TMP/a" --prompt-ids "1,2;3,4;5" --max-new-tokens 6 --ignore-eos 2>/dev/null)"
got="$(timeout 60 "${MPI[@]}" -n 3 "$BIN" generate --model "$TMP/a" --ep 3 --prompt-ids "1,2;3,4;5" \
        --max-new-tokens 6 --ignore-eos 2>/dev/null)"
if [ -n "$want" ] && [ "$want" == "$got" ]; then
  echo "ok   uneven expert shards (ep 3, 16 experts): tokens match one rank"
  pass=$((pass + 1))
else
  echo "FAIL uneven expert shards: got [$got] want [$want]"
  fails=$((fails + 1))
fi

# The issue's example: 8 ranks, pp 2 x ep 4, several prompts of different lengths.
want="$("$BIN" generate --model "$TMP/a" --prompt-ids "0,5,17;9,8,7,6,5,4,3;42;1,2,3,4,5,6,7,8,9,10,11,12" \
        --max-new-tokens 8 --ignore-eos 2>/dev/null)"
got="$(timeout 120 "${MPI[@]}" -n 8 "$BIN" generate --model "$TMP/a" --pp 2 --ep 4 \
        --prompt-ids "0,5,17;9,8,7,6,5,4,3;42;1,2,3,4,5,6,7,8,9,10,11,12" --max-new-tokens 8 --ignore-eos 2>/dev/null)"
if [ -n "$want" ] && [ "$want" == "$got" ]; then
  echo "ok   mpirun -np 8 generate --pp 2 --ep 4: tokens match one rank"
  pass=$((pass + 1))
else
  echo "FAIL pp 2 x ep 4 CLI: got [$got] want [$want]"
  fails=$((fails + 1))
fi

# Token messages above MPI's eager limit (over ~1000 sequences per micro-batch)
# must not deadlock the pipeline: 2400 one-token prompts at pp 2.
many="$(for i in $(seq 0 2399); do printf '%s;' $((i % 500 + 2)); done | sed 's/;$//')"
start=$(date +%s.%N)
out="$(timeout 120 "${MPI[@]}" -n 2 "$BIN" generate --model "$TMP/a" --pp 2 --prompt-ids "$many" \
        --max-new-tokens 3 --ignore-eos 2>/dev/null)"
rc=$?
lines=$(grep -c '^[0-9]*,[0-9]*,[0-9]*$' <<<"$out")
if [ "$rc" -eq 0 ] && [ "$lines" -eq 2400 ]; then
  echo "ok   2400 prompts at pp 2 (1200 per micro-batch): no deadlock, $(echo "$(date +%s.%N) - $start" | bc)s"
  pass=$((pass + 1))
else
  echo "FAIL large micro-batches: exit $rc, $lines result lines"
  fails=$((fails + 1))
fi

# A rank killed mid-run: the job must end non-zero within 30 s.
"$BIN" make-model --preset tiny-v3 --layers 16 --out "$TMP/big" 2>/dev/null || exit 1
prompts="$(for i in $(seq 0 63); do printf '%s' "$((i % 400 + 2))"; for j in $(seq 1 59); do printf ',%s' $(((i * 7 + j * 13) % 500 + 2)); done; [ "$i" -lt 63 ] && printf ';'; done)"
"${MPI[@]}" -n 4 "$BIN" generate --model "$TMP/big" --pp 2 --ep 2 --prompt-ids "$prompts" \
  --max-new-tokens 60 --ignore-eos >"$TMP/kill.out" 2>&1 &
job=$!
victim=""
for _ in $(seq 1 100); do
  sleep 0.1
  victim="$(pgrep -f "generate --model $TMP/big" | while read -r p; do
    [ "$(cat /proc/$p/comm 2>/dev/null)" == "deepshard" ] && echo "$p"; done | tail -1)"
  [ -n "$victim" ] && break
done
sleep 1
if [ -z "$victim" ] || ! kill -0 "$job" 2>/dev/null; then
  echo "FAIL kill: the job was not running (victim '$victim')"
  cat "$TMP/kill.out"
  fails=$((fails + 1))
else
  kill -9 "$victim"
  start=$(date +%s.%N)
  for _ in $(seq 1 300); do
    kill -0 "$job" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$job" 2>/dev/null; then
    echo "FAIL kill: mpiexec still running 30 s after rank $victim was killed"
    kill -9 "$job"
    fails=$((fails + 1))
  else
    wait "$job"
    rc=$?
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    if [ "$rc" -ne 0 ]; then
      echo "ok   rank killed mid-run: job exited $rc ${secs}s after SIGKILL"
      pass=$((pass + 1))
    else
      echo "FAIL kill: job exited 0 after a rank was killed"
      fails=$((fails + 1))
    fi
  fi
fi

# A rank stopped mid-run (SIGSTOP: alive, holding its sockets, silent): the
# heartbeat watchdog must end the job non-zero within ~the heartbeat timeout
# (3 s) with the stopped rank named, not hang forever (issue 16). Once for a
# worker and once for rank 0.
# With a third argument "load", the rank is stopped while loading (as soon as it
# maps a model file), before the job's control plane exists: the start-up watch
# (launcher/rank_setup.cc) covers that window.
stop_case() {
  local want_rank="$1" when="${2:-run}"
  "${MPI[@]}" -n 2 "$BIN" generate --model "$TMP/big" --ep 2 --prompt-ids "$prompts;$prompts;$prompts;$prompts;$prompts;$prompts;$prompts;$prompts" \
    --max-new-tokens 64 --ignore-eos >"$TMP/stop.out" 2>&1 &
  local job=$! victim="" p
  for _ in $(seq 1 100); do
    sleep 0.1
    for p in $(pgrep -f "generate --model $TMP/big"); do
      [ "$(cat /proc/$p/comm 2>/dev/null)" == "deepshard" ] || continue
      if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$want_rank"; then victim="$p"; fi
    done
    [ -n "$victim" ] && break
  done
  if [ "$when" == "load" ]; then
    for _ in $(seq 1 1000); do
      grep -q "$TMP/big/model" "/proc/$victim/maps" 2>/dev/null && break
      sleep 0.005
    done
  else
    sleep 1.5
  fi
  if [ -z "$victim" ] || ! kill -0 "$job" 2>/dev/null; then
    echo "FAIL stop rank $want_rank ($when): the job was not running (victim '$victim')"
    cat "$TMP/stop.out"
    fails=$((fails + 1))
    kill -9 "$job" 2>/dev/null
    return
  fi
  kill -STOP "$victim"
  local start end secs
  start=$(date +%s.%N)
  for _ in $(seq 1 150); do
    kill -0 "$job" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$job" 2>/dev/null; then
    echo "FAIL stop rank $want_rank ($when): mpiexec still running 15 s after SIGSTOP:"
    sed 's/^/     /' "$TMP/stop.out" | tail -20
    kill -CONT "$victim" 2>/dev/null
    kill -9 "$victim" "$job" 2>/dev/null
    wait "$job" 2>/dev/null
    fails=$((fails + 1))
    return
  fi
  wait "$job"
  local rc=$?
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  kill -CONT "$victim" 2>/dev/null
  kill -9 "$victim" 2>/dev/null
  if [ "$rc" -ne 0 ] && grep -q "rank $want_rank" "$TMP/stop.out" && grep -qi "heartbeat" "$TMP/stop.out"; then
    echo "ok   rank $want_rank stopped ($when): job exited $rc ${secs}s after SIGSTOP, naming the rank"
    pass=$((pass + 1))
  else
    echo "FAIL stop rank $want_rank ($when): exit $rc after ${secs}s; output:"
    sed 's/^/     /' "$TMP/stop.out" | tail -20
    fails=$((fails + 1))
  fi
}
stop_case 1
stop_case 0
stop_case 1 load
stop_case 0 load

# A rank stopped before MPI_Init (it stops itself before exec, as a rank whose
# node hangs or cannot be reached would never arrive): the other one waits in
# MPI_Init, which has no timeout, and the start-up watch does not exist yet.
# The start-up deadline (--startup-timeout, launcher/mpi_bootstrap.h) must end
# the job non-zero within the limit + a few seconds, naming the waiting rank
# and where it waits, and mpiexec must leave no process behind (the stopped
# one included). Before it the job hung until killed.
init_stop_case() {
  local want_rank="$1" limit=4 other=$((1 - $1)) start rc secs left
  start=$(date +%s.%N)
  timeout 40 "${MPI[@]}" -n 2 sh -c \
    'if [ "$OMPI_COMM_WORLD_RANK" = "'"$want_rank"'" ]; then kill -STOP $$; fi; exec "$0" "$@"' \
    "$BIN" generate --model "$TMP/big" --ep 2 --prompt-ids 1,2 --startup-timeout "$limit" >"$TMP/init.out" 2>&1
  rc=$?
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  sleep 1  # mpiexec has returned: give a straggler the time to show
  left="$(leftovers)"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$(echo "$secs < $limit + 5" | bc)" -eq 1 ] &&
     grep -q "rank $other (host .*): start-up did not finish within $limit s (stuck in MPI_Init" "$TMP/init.out" &&
     [ -z "$left" ]; then
    echo "ok   rank $want_rank stopped before MPI_Init: job exited $rc in ${secs}s (--startup-timeout $limit)," \
         "rank $other named, nothing left behind"
    pass=$((pass + 1))
  else
    echo "FAIL rank $want_rank stopped before MPI_Init: exit $rc in ${secs}s (limit $limit + 5 s), left behind:" \
         "[${left//$'\n'/ }]; output:"
    sed 's/^/     /' "$TMP/init.out" | tail -20
    [ -n "$left" ] && ps -o pid,stat,args -p "$(echo $left | tr ' ' ,)" | sed 's/^/     /'
    for p in $left; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
    fails=$((fails + 1))
  fi
}
init_stop_case 1
init_stop_case 0

# The deadline ends with start-up: a server that has been up for longer than
# its --startup-timeout keeps serving, and drains to exit 0 on SIGTERM.
init_ok_case() {
  local limit=2 job pid0 port i
  "${MPI[@]}" -n 2 "$BIN" serve --model "$TMP/big" --ep 2 --port 0 --startup-timeout "$limit" \
    >"$TMP/serve.out" 2>&1 &
  job=$!
  for i in $(seq 1 600); do
    grep -q "listening on" "$TMP/serve.out" && break
    kill -0 "$job" 2>/dev/null || break
    sleep 0.1
  done
  sleep $((limit + 2))
  port="$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$TMP/serve.out")"
  pid0="$(sed -n 's/.*rank 0 .*ready, pid \([0-9]*\).*/\1/p' "$TMP/serve.out")"
  if [ -z "$port" ] || [ -z "$pid0" ] || ! kill -0 "$job" 2>/dev/null ||
     [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" != 200 ]; then
    echo "FAIL serve past --startup-timeout $limit: not serving ${limit}+2 s after it listened; output:"
    sed 's/^/     /' "$TMP/serve.out" | tail -20
    kill -9 "$job" 2>/dev/null
    wait "$job" 2>/dev/null
    fails=$((fails + 1))
    return
  fi
  kill -TERM "$pid0"
  for i in $(seq 1 300); do
    kill -0 "$job" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$job" 2>/dev/null
  wait "$job"
  local rc=$?
  if [ "$rc" -eq 0 ] && ! grep -q "start-up did not finish" "$TMP/serve.out"; then
    echo "ok   serve up ${limit}+2 s past --startup-timeout $limit: /health 200, SIGTERM drained it to exit 0"
    pass=$((pass + 1))
  else
    echo "FAIL serve past --startup-timeout $limit: exit $rc after SIGTERM; output:"
    sed 's/^/     /' "$TMP/serve.out" | tail -20
    fails=$((fails + 1))
  fi
}
init_ok_case

# A rank stopped during a normal shutdown (the test hook stops rank 1 right
# before MPI_Finalize): rank 0 waits in MPI_Finalize, which waits for every
# rank. Its finalize watch (kFinalizeTimeoutS = 20 s, launcher/mpi_bootstrap.h)
# must end it non-zero, naming it, and mpiexec must leave nothing behind.
# Before it the job hung until killed.
finalize_stop_case() {
  local limit=20 start rc secs left
  start=$(date +%s.%N)
  timeout 60 "${MPI[@]}" -n 2 -x DEEPSHARD_TEST_STOP_BEFORE_FINALIZE=1 \
    "$BIN" generate --model "$TMP/big" --ep 2 --prompt-ids 1,2 --max-new-tokens 2 >"$TMP/fin.out" 2>&1
  rc=$?
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  sleep 1
  left="$(leftovers)"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$(echo "$secs < $limit + 15" | bc)" -eq 1 ] &&
     grep -q "rank 0: MPI_Finalize did not return within $limit s" "$TMP/fin.out" && [ -z "$left" ]; then
    echo "ok   rank 1 stopped before MPI_Finalize: job exited $rc in ${secs}s, rank 0 said so, nothing left behind"
    pass=$((pass + 1))
  else
    echo "FAIL rank 1 stopped before MPI_Finalize: exit $rc in ${secs}s (limit $limit + 15 s), left behind:" \
         "[${left//$'\n'/ }]; output:"
    sed 's/^/     /' "$TMP/fin.out" | tail -20
    for p in $left; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
    fails=$((fails + 1))
  fi
}
finalize_stop_case

echo "$pass passed, $fails failed"
[ "$fails" -eq 0 ]
