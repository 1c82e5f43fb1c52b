#!/usr/bin/env python3
"""Fault injection for `deepshard serve` and `deepshard generate` on 4 ranks (pp 2 x ep 2).

Each round starts a fresh job on a tiny random model (made here: tiny-v3, 8 layers, its
context raised to 4096 tokens so that prompts can be long), loads it, and at a random
step of a random phase sends a random rank SIGKILL ("kill": the rank dies) or SIGSTOP
("stop": alive, holding its sockets, silent):

  serve     6 concurrent completions (3 streaming, 3 not; prompts of 500-700 tokens
            prefilled 16 tokens a step, so >= 31 steps each; 150-250 new tokens,
            greedy, ignore_eos), sent by a child process; phases, timed by rank 0's
            /metrics (the clients can trail the server by seconds on a busy machine):
              prefill  k steps (deepshard_steps_total) after every request is in
                       flight, k below 2/3 of the fewest steps a prefill takes
              decode   k steps after every request has its first token (the count
                       of deepshard_time_to_first_token_seconds), k below half the
                       fewest new tokens (a sequence gets a token every step or two)
              drain    SIGTERM to rank 0 once every request decodes, then k steps
                       into the drain (--drain-timeout 60: the requests still run)
  generate  one 2400-token prompt, 200 new tokens streamed to stdout; phases:
              prefill  a random time after start-up (measured by a calibration run
                       with --max-new-tokens 0) and before the first token came in
                       an unfaulted calibration run
              decode   after k tokens

Just before the fault the phase is checked on the server (every request still in
flight; none / all with a first token); when it is over, no fault is sent and the round
runs again on a fresh job with half the step (at most 3 attempts). So does a round
where a request still turns out complete (or a generate that exits 0 with every token):
it was finished before the fault. Then, from the moment of the fault:

  - the whole job (mpirun) ends within --deadline (30) seconds, non-zero;
  - the log names the rank and says what happened: a killed worker is lost with its
    connection closed, a stopped one by a heartbeat timeout, and no other rank is
    reported lost before it; for rank 0, the workers say they lost rank 0 (closed /
    heartbeat timeout), and nothing says "rank N is lost";
  - serve: every accepted request (all of them were running) ends with an explicit
    error (an HTTP error status with an error object, or an SSE error event followed
    by [DONE]) within the deadline: none hangs, none ends as a success, none with a
    malformed answer; only when rank 0 itself (the HTTP server) is the victim may a
    connection just close;
  - no process of the job is left (its whole session, stopped ranks included).

--disk-full adds two rounds with output on /dev/full (every write fails, ENOSPC):
serve with every rank's stdout and stderr there must still answer requests and exit 0
on SIGTERM; generate with its stdout there must exit non-zero saying "cannot write
the output: No space left on device" (on one rank, and on 4 with rank 0's own stdout
on /dev/full).

Rounds are drawn from --seed (printed, with the command to repeat one round), or
--cover gives a fixed list: "ci", every phase x action once with rank 0 and workers
alternating (6 serve + 4 generate rounds), or "full", every phase x action on rank 0
and on a worker (12 + 8). The random choices repeat exactly with the same seed; the
timing of a real machine does not, so the step reached is reported with each round.
Standard library only. Exits 1 on any failed check:

  tools/fault_inject.py --deepshard build/launcher/deepshard --cover ci --disk-full
  tools/fault_inject.py --deepshard build/launcher/deepshard --rounds 100 --seed 7
  tools/fault_inject.py --deepshard build/launcher/deepshard --seed 7 --round 42   # repeat one
"""
import argparse
import http.client
import json
import multiprocessing
import os
import queue
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deepshard_proc  # noqa: E402

ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
SERVE_PHASES = ("prefill", "decode", "drain")
GENERATE_PHASES = ("prefill", "decode")
N_RANKS = 4
VOCAB = 512          # tiny-v3; ids 2.. (0 and 1 are BOS/EOS)
PREFILL_CHUNK = 16   # tokens of one prompt per step: a 500-token prompt needs >= 31 steps
SERVE_REQUESTS, SERVE_PROMPT, SERVE_MAX_TOKENS = 6, (500, 701), (150, 251)


class Round:
    def __init__(self, index, kind, rank, action, phase, rng):
        self.index, self.kind, self.rank, self.action, self.phase, self.rng = index, kind, rank, action, phase, rng
        self.failures = []
        self.notes = []
        self.time_to_end = None
        self.outcome = ""
        self.retries = 0  # attempts without a fault: the phase was over at the drawn step

    def title(self):
        return f"{self.kind}: {ACTIONS[self.action].name} rank {self.rank} during {self.phase}"

    def check(self, cond, what):
        if not cond:
            self.failures.append(what)
        return cond


# ------------------------------------------------------------------ requests ----

class Request:
    """One HTTP request of the load and what became of it."""

    def __init__(self, index, stream, prompt, max_tokens):
        self.index, self.stream, self.prompt, self.max_tokens = index, stream, prompt, max_tokens
        self.sent = None        # time the request was written
        self.accepted = None    # streaming: time the 200 header arrived
        self.first_token = None
        self.tokens = 0
        self.finish = None
        self.error = None       # an explicit error: SSE error event or HTTP error status
        self.status = None
        self.done = False       # streaming: [DONE] seen
        self.cut = None         # the connection ended without a complete answer
        self.malformed = None   # a 200 answer that contradicts itself
        self.ended = None

    def run(self, port, timeout):
        body = {"prompt": self.prompt, "max_tokens": self.max_tokens, "temperature": 0, "ignore_eos": True,
                "return_token_ids": True, "stream": self.stream}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
            self.sent = time.time()
            r = conn.getresponse()
            self.status = r.status
            if not self.stream or r.status != 200:
                data = r.read()
                if r.status != 200:
                    try:
                        self.error = json.loads(data)["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        self.error = f"HTTP {r.status} without an error object: {data[:200]!r}"
                else:
                    d = json.loads(data)
                    ch = d["choices"][0]
                    self.tokens = len(ch.get("token_ids") or [])
                    self.finish = ch.get("finish_reason")
                    if d.get("usage", {}).get("completion_tokens") != self.tokens:
                        self.malformed = f"usage says {d.get('usage')} but {self.tokens} token ids"
            else:
                self.accepted = time.time()
                for raw in r:
                    line = raw.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: "):]
                    if data == "[DONE]":
                        self.done = True
                        break
                    ev = json.loads(data)
                    if "error" in ev:
                        self.error = ev["error"].get("message", str(ev["error"]))
                    for ch in ev.get("choices", []):
                        n = len(ch.get("token_ids") or [])
                        if n and self.first_token is None:
                            self.first_token = time.time()
                        self.tokens += n
                        self.finish = ch.get("finish_reason") or self.finish
                if not self.done:
                    self.cut = "the stream ended without [DONE]"
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.cut = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
            self.ended = time.time()

    def complete(self):
        """A whole answer: every token asked for, finish "length", no error."""
        if self.stream:
            return self.done and self.error is None and self.finish == "length" and self.tokens == self.max_tokens
        return self.status == 200 and self.error is None and self.finish == "length" and self.tokens == self.max_tokens

    def verdict(self, victim_is_http_server):
        """'complete', 'error', 'cut' or a failure ('BAD: ...')."""
        if self.ended is None:
            return "BAD: still running (hung)"
        if self.malformed is not None:
            return f"BAD: {self.malformed}"
        if self.complete():
            return "complete"
        if self.error is not None:
            # An error event must end the stream properly; a plain error has a status.
            if self.stream and self.status == 200 and not self.done and not victim_is_http_server:
                return f"BAD: error event but no [DONE] ({self.cut})"
            return "error"
        if self.cut is not None:
            if victim_is_http_server:
                return "cut"
            return f"BAD: connection ended with no explicit error ({self.cut}; {self.tokens} tokens)"
        return (f"BAD: a success with the wrong shape: status {self.status}, {self.tokens}/{self.max_tokens} tokens, "
                f"finish {self.finish}, [DONE] {self.done}")


def _run_load(port, reqs, timeout, out):
    """In a child process: every request on its own thread; each sends back what
    became of it as soon as it ends."""
    def one(q):
        q.run(port, timeout)
        out.put(q.__dict__)
    threads = [threading.Thread(target=one, args=(q,)) for q in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class Load:
    """The requests, run by a child process: parsing the streams takes the clients'
    interpreter, and a loaded machine would otherwise starve the driver's own polling of
    /metrics (one GIL) and with it the timing of the fault."""

    def __init__(self, port, reqs, timeout):
        ctx = multiprocessing.get_context("fork")
        self.reqs = reqs
        self.out = ctx.Queue()
        self.proc = ctx.Process(target=_run_load, args=(port, reqs, timeout, self.out), daemon=True)
        self.proc.start()

    def collect(self, until):
        """Fills in every request that ended before `until` (time.time())."""
        done = sum(1 for q in self.reqs if q.ended is not None)
        while done < len(self.reqs):
            try:
                d = self.out.get(timeout=max(0.01, until - time.time()))
            except queue.Empty:
                break
            self.reqs[d["index"]].__dict__.update(d)
            done += 1

    def stop(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()


class ServerState:
    """Rank 0's counters from /metrics over one keep-alive connection (a new connection
    per poll lags far behind the steps on a busy machine): engine steps completed,
    tokens generated, requests in flight. The server's view, which the clients' may
    trail by seconds on a loaded machine (their threads read the streams late)."""

    NAMES = {"deepshard_steps_total": "steps", "deepshard_generation_tokens_total": "tokens",
             "deepshard_requests_in_flight": "in_flight",
             "deepshard_time_to_first_token_seconds_count": "first_tokens"}

    def __init__(self, port):
        self.port = port
        self.conn = None

    def read(self):
        """{"steps", "tokens", "in_flight", "first_tokens"}, or None if /metrics does not answer."""
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                self.conn.request("GET", "/metrics")
                data = self.conn.getresponse().read()
                out = {v: 0 for v in self.NAMES.values()}  # a family shows no sample before its first
                for line in data.decode().splitlines():
                    name, _, value = line.partition(" ")
                    if name in self.NAMES:
                        out[self.NAMES[name]] = int(float(value))
                return out
            except (OSError, http.client.HTTPException, ValueError):
                self.close()
        return None

    def wait(self, key, target, deadline):
        """Polls until `key` reaches target; returns the last reading (or None). Gives up
        when rank 0 stops answering for a second (e.g. a drain that already ended)."""
        last, answered = None, time.time()
        while time.time() < deadline and time.time() - answered < 1.0:
            m = self.read()
            if m is not None:
                last, answered = m, time.time()
                if m[key] >= target:
                    return m
            time.sleep(0.002)
        return last

    def draining(self):
        """True once /health says so (503): rank 0 took the signal."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            self.conn.request("GET", "/health")
            r = self.conn.getresponse()
            r.read()
            return r.status == 503
        except (OSError, http.client.HTTPException):
            self.close()
            return False

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def describe_log_line(text, pattern):
    m = re.search(pattern, text)
    if not m:
        return None
    start = text.rfind("\n", 0, m.start()) + 1
    end = text.find("\n", m.end())
    return text[start:end if end >= 0 else len(text)]


def check_named(rnd, log, victim, action):
    """The log must name the victim first and say what happened to it."""
    # Rank 0's view of a worker: "rank N is lost (why)" (the engine) and
    # "lost rank N (peer): why" (the control plane).
    reports = sorted([(m.start(), int(m.group(1)), m.group(2), m.group(0))
                      for m in re.finditer(r"rank (\d+) is lost \((.*)\)", log)]
                     + [(m.start(), int(m.group(1)), m.group(2), m.group(0))
                        for m in re.finditer(r"lost rank (\d+) \([^)]*\): (.*)", log)])
    if victim != 0:
        first = reports[0] if reports else (0, None, "", None)
        line = describe_log_line(log, re.escape(first[3])) if first[3] else None
        rnd.notes.append(f"log: {line}")
        if not rnd.check(first[1] == victim, f"the first rank reported lost is {first[1]}, not {victim}: {line}"):
            return
        rnd.check("rank 0 did not run" not in log, "rank 0 blames its own stall for a worker's fault: "
                  + str(describe_log_line(log, "rank 0 did not run")))
        why = first[2]
        if action == "stop":
            rnd.check("heartbeat timeout" in why, f"a stopped rank {victim} is not reported as silent: {why}")
        else:
            rnd.check("heartbeat timeout" not in why and ("closed" in why or "reset" in why or "fatal" in why),
                      f"a killed rank {victim} is not reported as gone: {why}")
        return
    # Rank 0 is the victim: the workers say so; rank 0 (if it ran again) must not blame a worker.
    worker = describe_log_line(log, r"(lost the connection to rank 0|connection to rank 0 lost|rank 0 stopped)")
    rnd.notes.append(f"log: {worker}")
    if not rnd.check(worker is not None, "no worker says it lost rank 0"):
        return
    if action == "stop":
        rnd.check("heartbeat timeout" in log and re.search(r"no frame from rank 0", log) is not None,
                  f"a stopped rank 0 is not reported as silent by its workers: {worker}")
    else:
        rnd.check(re.search(r"(lost the connection to rank 0|connection to rank 0 lost): (connection closed|"
                            r"read failed|write failed)", log) is not None,
                  f"a killed rank 0 is not reported as gone by its workers: {worker}")
    for _, r, why, text in reports:
        rnd.check(False, f"rank 0 was the victim but the log blames rank {r}: {text}")


def wait_job(fault_at, deadline, wait_fn):
    """(mpirun's exit status or None if it still runs `deadline` s after the fault, seconds)."""
    rc = wait_fn(max(0.0, fault_at + deadline - time.time()))
    return rc, time.time() - fault_at


def check_ended(rnd, rc, ended, left_behind, deadline):
    if rnd.check(rc is not None, f"mpirun still runs {deadline:.0f} s after the fault"):
        rnd.time_to_end = ended
        rnd.check(rc != 0, f"the job exited 0 after losing rank {rnd.rank}")
        rnd.notes.append(f"job ended {ended:.2f} s after the fault (mpirun exit {rc})")
    # The ranks are mpirun's children: they are gone when it is, or soon after.
    t = time.time()
    left = left_behind()
    while left and time.time() - t < 2:
        time.sleep(0.1)
        left = left_behind()
    rnd.check(not left, f"processes left behind: {left}")
    return rc


# ---------------------------------------------------------------------- serve ----

def serve_round(rnd, args, model):
    """Draws the load and the step, then runs it; when the phase is already over at the
    step (the machine was faster or slower than the draw assumed), no fault is sent and
    the round runs again on a fresh server with half the step (at most twice)."""
    rng = rnd.rng
    load = []
    for i in range(SERVE_REQUESTS):
        plen = rng.randrange(*SERVE_PROMPT)
        load.append((i % 2 == 0, [rng.randrange(2, VOCAB) for _ in range(plen)], rng.randrange(*SERVE_MAX_TOKENS)))
    min_prefill_steps = min(len(p) for _, p, _ in load) // PREFILL_CHUNK
    if rnd.phase == "prefill":
        k = rng.randrange(1, max(2, min_prefill_steps * 2 // 3))  # steps
    else:
        # Steps into decode: a sequence gets a token every plan or two (--micro-batches 2),
        # so up to half the fewest new tokens is inside the window.
        k = rng.randrange(1, min(m for _, _, m in load) // 2)
    for attempt in range(3):
        if attempt:
            k = max(1, k // 2)
            rnd.retries += 1
            rnd.notes.append(f"phase missed before the fault: again with k = {k}")
        if serve_attempt(rnd, args, model, [Request(i, *x) for i, x in enumerate(load)], k, min_prefill_steps, attempt):
            return
    rnd.check(False, f"the {rnd.phase} phase was over before the fault in 3 attempts")


def serve_attempt(rnd, args, model, reqs, k, min_prefill_steps, attempt):
    """One server, the load, the fault at step k of the phase. False: the phase was over
    before the fault (no fault sent)."""
    log_path = os.path.join(args.workdir, f"fault-{rnd.index:03d}-serve" + (f"-{attempt}" if attempt else "") + ".log")
    t_start = time.time()
    srv = deepshard_proc.Server(args.deepshard, args.mpirun, model, log_path, pp=2, ep=2,
                                extra=["--kv-cache-memory", "64MiB", "--prefill-chunk", str(PREFILL_CHUNK),
                                       "--max-num-batched-tokens", "64", "--drain-timeout", "60"])
    load = None
    try:
        pids = srv.rank_pids()
        if not rnd.check(sorted(pids) == list(range(N_RANKS)), f"rank pids {pids}"):
            return True
        t_up = time.time()
        state = ServerState(srv.port)
        before = state.read()
        if not rnd.check(before is not None, "rank 0's /metrics did not answer"):
            return True
        load = Load(srv.port, reqs, args.deadline + 30)
        # Everything is timed by the server's counters: the clients can trail it by seconds
        # when the ranks take every core.
        base = state.wait("in_flight", len(reqs), time.time() + 30)
        if not rnd.check(base is not None and base["in_flight"] == len(reqs),
                         f"the requests were not all accepted ({base})"):
            return True
        if rnd.phase == "prefill":
            what = f"{k} steps after every request was accepted (a prompt needs >= {min_prefill_steps} steps of prefill)"
        else:
            # Every request has its first token (the time-to-first-token histogram counts
            # them); the decode window closes when the first request ends.
            base = state.wait("first_tokens", before["first_tokens"] + len(reqs), time.time() + 60)
            if rnd.phase == "drain":
                os.kill(pids[0], signal.SIGTERM)
                t2 = time.time()
                while time.time() - t2 < 10 and not state.draining():
                    time.sleep(0.002)
                base = state.read() or base
            what = f"{k} steps after " + ("the drain began" if rnd.phase == "drain" else
                                          "every request had its first token")
        at = state.wait("steps", base["steps"] + k, time.time() + 60) if base else None
        if not rnd.check(at is not None, "rank 0's /metrics did not answer"):
            return True
        where = f"step {at['steps']} (+{at['steps'] - before['steps']} since the load began)"
        # The server's view, just before the fault: the clients may trail it by seconds.
        now = state.read() or {}
        state.close()
        started = now.get("first_tokens", 0) - before["first_tokens"]
        ok = now.get("in_flight") == len(reqs) and (started == 0 if rnd.phase == "prefill" else started == len(reqs))
        if not ok:
            load.collect(time.time() + 0.5)
            ended = [f"{q.index}: {q.tokens}/{q.max_tokens} {q.verdict(False)[:60]}" for q in reqs if q.ended]
            rnd.notes.append(f"{where}: {now.get('in_flight')} requests in flight, {started} with a first token: "
                             f"not in {rnd.phase}" + (f" (ended: {'; '.join(ended)})" if ended else ""))
            return False
        fault_at = time.time()
        os.kill(pids[rnd.rank], ACTIONS[rnd.action])
        rc, ended = wait_job(fault_at, args.deadline, srv.wait)
        load.collect(fault_at + args.deadline)
        verdicts = [q.verdict(rnd.rank == 0) for q in reqs]
        if "complete" in verdicts:
            # Only a request the server had finished before the fault can be complete:
            # the phase was over (the clients and /metrics trailed the server).
            rnd.notes.append(f"{where}: {verdicts.count('complete')} requests turned out complete: the server had "
                             f"finished them before the fault; not in {rnd.phase}")
            return False
        rnd.notes.append(f"step: {what}")
        rnd.notes.append(f"server up in {t_up - t_start:.2f} s; fault {fault_at - t_up:.2f} s into the load, {where}: "
                         f"{now['in_flight']} requests in flight, {started} with a first token")
        check_ended(rnd, rc, ended, srv.left_behind, args.deadline)
        for q, v in zip(reqs, verdicts):
            if v.startswith("BAD"):
                rnd.check(False, f"request {q.index} ({'stream' if q.stream else 'plain'}): {v}")
            elif q.ended - fault_at > args.deadline:
                rnd.check(False, f"request {q.index} ended {q.ended - fault_at:.1f} s after the fault")
        counts = {v: verdicts.count(v) for v in ("complete", "error", "cut")}
        after = [q.ended - fault_at for q in reqs if q.ended]
        rnd.notes.append(f"requests: {len(reqs)} accepted: {counts['error']} explicit errors, {counts['cut']} cut"
                         + (f"; the last ended {max(after):.2f} s after the fault" if after else ""))
        errs = sorted({q.error for q in reqs if q.error})
        if errs:
            rnd.notes.append(f"error seen by clients: {errs[0][:160]}")
        rnd.outcome = f"{counts['error']} error / {counts['cut']} cut"
        if rnd.phase == "drain":
            rnd.check(": draining" in srv.text(), "rank 0 did not log that it is draining")
        check_named(rnd, srv.text(), rnd.rank, rnd.action)
        return True
    finally:
        srv.kill()
        if load is not None:
            load.stop()
        if rnd.failures:
            rnd.notes.append("--- log tail\n" + "".join(srv.text().splitlines(True)[-25:]))


# ------------------------------------------------------------------- generate ----

class GenerateJob:
    """`mpirun -np 4 deepshard generate ...` with one prompt: its tokens stream to stdout."""

    def __init__(self, args, model, prompt, max_new, log_path):
        self.log = open(log_path, "w")
        self.log_path = log_path
        cmd = deepshard_proc.mpirun_command(args.mpirun, N_RANKS, [
            args.deepshard, "generate", "--model", model, "--pp", "2", "--ep", "2", "--prompt-ids",
            ",".join(map(str, prompt)), "--max-new-tokens", str(max_new), "--ignore-eos",
            "--prefill-chunk", str(PREFILL_CHUNK), "--kv-cache-memory", "64MiB"])
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=deepshard_proc.job_env(),
                                     start_new_session=True)
        self.sid = self.proc.pid
        self.tokens = 0
        self.first_token = None
        self.out = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            b = self.proc.stdout.read1(4096) if hasattr(self.proc.stdout, "read1") else self.proc.stdout.read(1)
            if not b:
                return
            self.out += b
            n = self.out.count(b",") + (1 if self.out.strip() else 0)
            if n and self.first_token is None:
                self.first_token = time.time()
            self.tokens = n

    def wait(self, timeout):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.reader.join(5)
        return rc

    def text(self):
        return deepshard_proc.read_log(self.log, self.log_path)

    def left_behind(self):
        return deepshard_proc.session_processes(self.sid)

    def kill(self):
        deepshard_proc.kill_session(self.sid)
        self.proc.wait()
        self.log.close()


GEN_PROMPT_LEN, GEN_MAX_NEW = 2400, 200  # prefill: seconds, on a 2-core machine


def calibrate_generate(args, model):
    """(start-up seconds, seconds to the first token) of the generate job, unfaulted."""
    rng = random.Random(0)
    prompt = [rng.randrange(2, VOCAB) for _ in range(GEN_PROMPT_LEN)]
    t = time.time()
    subprocess.run(deepshard_proc.mpirun_command(args.mpirun, N_RANKS, [
        args.deepshard, "generate", "--model", model, "--pp", "2", "--ep", "2", "--prompt-ids", "2,3",
        "--max-new-tokens", "0", "--kv-cache-memory", "64MiB"]), env=deepshard_proc.job_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=120)
    startup = time.time() - t
    job = GenerateJob(args, model, prompt, 8, os.path.join(args.workdir, "fault-calibration.log"))
    rc = job.wait(120)
    first = (job.first_token or time.time()) - job.started
    job.kill()
    if rc != 0:
        raise RuntimeError(f"the calibration generate run exited {rc}:\n{job.text()}")
    return startup, first


def generate_round(rnd, args, model, calibration):
    """As serve_round: a step drawn once; when the phase is over at it, no fault, and
    again on a fresh job with the step halved (at most twice)."""
    rng = rnd.rng
    startup, first = calibration
    prompt = [rng.randrange(2, VOCAB) for _ in range(GEN_PROMPT_LEN)]
    # Prefill: after the whole start-up (with a margin), before the first token came unfaulted.
    lo, hi = startup * 1.5 + 0.3, first * 0.8
    if rnd.phase == "prefill":
        if not rnd.check(hi - lo >= 0.5, f"no prefill window to aim at: start-up {startup:.2f} s, first token at "
                                         f"{first:.2f} s"):
            return
        step = rng.uniform(lo, hi)
    else:
        step = rng.randrange(1, GEN_MAX_NEW // 2)
    for attempt in range(3):
        if attempt:
            step = lo + (step - lo) / 2 if rnd.phase == "prefill" else max(1, step // 2)
            rnd.retries += 1
            rnd.notes.append(f"phase missed before the fault: again with step {step:.2f}")
        if generate_attempt(rnd, args, model, prompt, step, (startup, first), attempt):
            return
    rnd.check(False, f"the {rnd.phase} phase was over before the fault in 3 attempts")


def generate_attempt(rnd, args, model, prompt, step, calibration, attempt):
    startup, first = calibration
    job = GenerateJob(args, model, prompt, GEN_MAX_NEW, os.path.join(
        args.workdir, f"fault-{rnd.index:03d}-generate" + (f"-{attempt}" if attempt else "") + ".log"))
    try:
        if rnd.phase == "prefill":
            what = f"{step:.2f} s after launch (start-up {startup:.2f} s, first token unfaulted at {first:.2f} s)"
            while time.time() < job.started + step and job.proc.poll() is None:
                time.sleep(0.002)
        else:
            what = f"after {step} tokens"
            t = time.time()
            while time.time() - t < 120 and job.tokens < step and job.proc.poll() is None:
                time.sleep(0.002)
        pids = deepshard_proc.rank_pids_in_session(job.sid)
        if not rnd.check(sorted(pids) == list(range(N_RANKS)) and job.proc.poll() is None,
                         f"the job was not running at the fault (ranks {sorted(pids)})"):
            return True
        tokens_then = job.tokens
        if (tokens_then > 0) if rnd.phase == "prefill" else not (0 < tokens_then < GEN_MAX_NEW):
            rnd.notes.append(f"{tokens_then} tokens out {time.time() - job.started:.2f} s after launch: "
                             f"not in {rnd.phase}")
            return False
        fault_at = time.time()
        os.kill(pids[rnd.rank], ACTIONS[rnd.action])
        rc, ended = wait_job(fault_at, args.deadline, job.wait)
        if rc == 0 and job.tokens == GEN_MAX_NEW:
            # All done before the fault (its output reached us late): not in the phase.
            rnd.notes.append(f"{tokens_then} tokens seen at the fault, but the job had finished: not in {rnd.phase}")
            return False
        rnd.notes.append(f"step: {what}")
        rnd.notes.append(f"fault {fault_at - job.started:.2f} s after launch, {tokens_then} tokens out")
        check_ended(rnd, rc, ended, job.left_behind, args.deadline)
        rnd.outcome = f"exit {rc}, {job.tokens} of {GEN_MAX_NEW} tokens printed"
        check_named(rnd, job.text(), rnd.rank, rnd.action)
        return True
    finally:
        job.kill()
        if rnd.failures:
            rnd.notes.append("--- log tail\n" + "".join(job.text().splitlines(True)[-25:]))


# ------------------------------------------------------------------ full disk ----

def disk_full_serve(rnd, args, model):
    """Every rank's stdout and stderr on /dev/full (each log line fails with ENOSPC):
    serving goes on, and SIGTERM to rank 0 still drains the job to exit 0."""
    port = deepshard_proc.free_port()
    srv = deepshard_proc.Server(args.deepshard, args.mpirun, model, os.path.join(args.workdir, "disk-full-mpirun.log"),
                                pp=2, ep=2, port=port, wrap=deepshard_proc.redirect_rank_output("/dev/full"),
                                extra=["--kv-cache-memory", "64MiB"])
    try:
        pids = srv.rank_pids()
        rnd.check(sorted(pids) == list(range(N_RANKS)), f"rank pids from /proc: {pids}")
        for rank, pid in sorted(pids.items()):
            target = os.readlink(f"/proc/{pid}/fd/2")
            rnd.check(target == "/dev/full", f"rank {rank}'s stderr is {target}, not /dev/full")
        reqs = [Request(i, i % 2 == 0, [2 + (i * 7 + j) % 500 for j in range(40)], 20) for i in range(6)]
        threads = [threading.Thread(target=q.run, args=(srv.port, 60), daemon=True) for q in reqs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        bad = [f"{q.index}: {q.verdict(False)}" for q in reqs if not q.complete()]
        rnd.check(not bad, f"requests not answered with the log on /dev/full: {bad}")
        t = time.time()
        os.kill(pids[0], signal.SIGTERM)
        rc = srv.wait(30)
        rnd.time_to_end = time.time() - t
        rnd.check(rc == 0, f"SIGTERM with the log on /dev/full: mpirun exit {rc}")
        left = srv.left_behind()
        rnd.check(not left, f"processes left behind: {left}")
        rnd.outcome = f"{sum(q.complete() for q in reqs)}/{len(reqs)} complete, SIGTERM: exit {rc}"
        rnd.notes.append(f"{rnd.outcome} {rnd.time_to_end:.2f} s after the signal")
    finally:
        srv.kill()


def disk_full_generate(rnd, args, model):
    """stdout on /dev/full: the tokens cannot be written, so generate must fail, saying so
    on stderr. On one rank, and on 4 with rank 0's own stdout on /dev/full."""
    outcomes = []
    for ranks in (1, N_RANKS):
        argv = [args.deepshard, "generate", "--model", model, "--prompt-ids", "5,6,7;8,9", "--max-new-tokens", "4",
                "--kv-cache-memory", "64MiB"]
        if ranks == 1:
            cmd, stdout = argv, "/dev/full"
        else:
            # The rank's own stdout on /dev/full, its stderr back through mpirun.
            cmd = deepshard_proc.mpirun_command(args.mpirun, ranks, ["sh", "-c", 'exec "$@" >/dev/full', "sh"]
                                                + argv + ["--pp", "2", "--ep", "2"])
            stdout = "/dev/null"
        with open(stdout, "w") as out:
            t = time.time()
            p = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, env=deepshard_proc.job_env(), timeout=120,
                               start_new_session=True)
        err = p.stderr.decode(errors="replace")
        line = describe_log_line(err, r"cannot write") or (err.strip().splitlines() or [""])[-1]
        rnd.notes.append(f"{ranks} rank(s): exit {p.returncode} in {time.time() - t:.2f} s: {line}")
        outcomes.append(f"{ranks} rank(s): exit {p.returncode}")
        rnd.check(p.returncode != 0, f"generate on {ranks} rank(s) with stdout on /dev/full exited 0")
        rnd.check("cannot write the output: No space left on device" in err,
                  f"generate on {ranks} rank(s) does not say it cannot write its output: {err[-300:]!r}")
    rnd.outcome = ", ".join(outcomes)


# ---------------------------------------------------------------------- plan ----

def draw_round(seed, index, kinds):
    rng = random.Random(f"{seed}/{index}")
    kind = rng.choice(kinds)
    rank = rng.randrange(N_RANKS)
    action = rng.choice(sorted(ACTIONS))
    phase = rng.choice(SERVE_PHASES if kind == "serve" else GENERATE_PHASES)
    return Round(index, kind, rank, action, phase, rng)


def cover_rounds(seed, kinds, full):
    """ci: every phase x action once, rank 0 and a worker alternating so that each phase
    and each action meets both; full: every phase x action on rank 0 and on a worker."""
    plan = []
    if full:
        plan += [("serve", ph, a, root) for ph in SERVE_PHASES for a in ("kill", "stop") for root in (True, False)]
        plan += [("generate", ph, a, root) for ph in GENERATE_PHASES for a in ("kill", "stop") for root in (True, False)]
    else:
        plan += [("serve", "prefill", "kill", False), ("serve", "prefill", "stop", True),
                 ("serve", "decode", "kill", True), ("serve", "decode", "stop", False),
                 ("serve", "drain", "kill", False), ("serve", "drain", "stop", True),
                 ("generate", "prefill", "kill", False), ("generate", "prefill", "stop", True),
                 ("generate", "decode", "kill", True), ("generate", "decode", "stop", False)]
    rounds = []
    for i, (kind, phase, action, on_root) in enumerate(plan):
        if kind not in kinds:
            continue
        rng = random.Random(f"{seed}/cover/{i}")
        rank = 0 if on_root else rng.randrange(1, N_RANKS)
        rounds.append(Round(i, kind, rank, action, phase, rng))
    return rounds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deepshard", required=True)
    p.add_argument("--mpirun", default=shutil.which("mpiexec") or "mpirun")
    p.add_argument("--workdir", default=None, help="logs and the model (default: a temporary directory)")
    p.add_argument("--model", default=None, help="use this model (tiny-v3 with a long context) instead of making one")
    p.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--round", type=int, default=None, help="run only this round of the seed's sequence")
    p.add_argument("--cover", choices=("ci", "full"), default=None,
                   help="a fixed list instead of random rounds: ci, every phase x action once (rank 0 and workers "
                        "alternating); full, every phase x action on rank 0 and on a worker")
    p.add_argument("--kinds", default="serve,generate")
    p.add_argument("--only", default=None, help="with --cover: only the rounds whose title contains this, "
                                                "e.g. 'SIGSTOP rank 0 during drain'")
    p.add_argument("--disk-full", action="store_true", help="also the log-on-/dev/full rounds")
    p.add_argument("--deadline", type=float, default=30.0, help="seconds from the fault to the end of the job")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    kinds = [k for k in args.kinds.split(",") if k]
    own_workdir = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="fault-inject-")
    os.makedirs(args.workdir, exist_ok=True)
    model = args.model
    if model is None:
        model = deepshard_proc.make_model(args.deepshard, os.path.join(args.workdir, "tiny-v3-long"), layers=8,
                                          seed=3, max_position_embeddings=4096)
    print(f"fault_inject: seed {args.seed}; logs in {args.workdir}", flush=True)

    if args.cover:
        rounds = [r for r in cover_rounds(args.seed, kinds, args.cover == "full")
                  if args.only is None or args.only in r.title()]
    elif args.round is not None:
        rounds = [draw_round(args.seed, args.round, kinds)]
    else:
        rounds = [draw_round(args.seed, i, kinds) for i in range(args.rounds)]
    calibration = None
    if any(r.kind == "generate" for r in rounds):
        calibration = calibrate_generate(args, model)
        print(f"generate calibration: start-up {calibration[0]:.2f} s, first token at {calibration[1]:.2f} s",
              flush=True)
    if args.disk_full:
        rounds.append(Round(len(rounds), "disk-full serve", 0, "-", "-", None))
        rounds.append(Round(len(rounds), "disk-full generate", 0, "-", "-", None))

    t_all = time.time()
    for rnd in rounds:
        if rnd.kind.startswith("disk-full"):
            print(f"\n== round {rnd.index}: {rnd.kind}", flush=True)
        else:
            again = (f"--seed {args.seed} --cover {args.cover} --only '{rnd.title()}'" if args.cover
                     else f"--seed {args.seed} --round {rnd.index}")
            print(f"\n== round {rnd.index} ({again}): {rnd.title()}", flush=True)
        t = time.time()
        try:
            if rnd.kind == "serve":
                serve_round(rnd, args, model)
            elif rnd.kind == "generate":
                generate_round(rnd, args, model, calibration)
            elif rnd.kind == "disk-full serve":
                disk_full_serve(rnd, args, model)
            else:
                disk_full_generate(rnd, args, model)
        except Exception as e:  # a crash of the driver is a failure of the round, with context
            import traceback
            traceback.print_exc()
            rnd.failures.append(f"{type(e).__name__}: {e}")
        for n in rnd.notes:
            print("   " + n.replace("\n", "\n   "), flush=True)
        print(("ok   " if not rnd.failures else "FAIL ") + f"({time.time() - t:.1f} s)"
              + "".join(f"\n     - {f}" for f in rnd.failures), flush=True)

    print(f"\nfault_inject: seed {args.seed}, {len(rounds)} rounds in {time.time() - t_all:.0f} s")
    print(f"{'kind':<19}{'phase':<9}{'action':<7}{'rank':<6}{'time to end':<13}outcome")
    for r in rounds:
        tte = f"{r.time_to_end:.2f} s" if r.time_to_end is not None else "-"
        print(f"{r.kind:<19}{r.phase:<9}{r.action:<7}{r.rank:<6}{tte:<13}{r.outcome}"
              + ("  FAILED" if r.failures else ""))
    by = {}
    for r in rounds:
        if r.time_to_end is not None and r.action in ACTIONS:
            by.setdefault((r.kind, r.action, r.rank == 0), []).append(r.time_to_end)
    for (kind, action, root), v in sorted(by.items()):
        print(f"  {kind} {action} {'rank 0' if root else 'worker'}: time to end median {statistics.median(v):.2f} s, "
              f"max {max(v):.2f} s over {len(v)}")
    retried = sum(r.retries for r in rounds)
    if retried:
        print(f"  {retried} attempts ran again: the phase was over at the drawn step (no fault sent, or a request "
              f"already complete)")
    failed = [r for r in rounds if r.failures]
    if failed:
        print(f"\n{len(failed)} of {len(rounds)} rounds FAILED (logs in {args.workdir})")
        sys.exit(1)
    print("\nevery round ended as documented")
    if own_workdir:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
