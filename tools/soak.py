#!/usr/bin/env python3
"""Soak test of `deepshard serve`: a steady mixed load for a set time, then checks.

Starts `mpirun -np 4 deepshard serve --pp 2 --ep 2` on a model, runs --clients
threads for --duration seconds, each looping over a random mix of

  stream      a streaming completion to its end (greedy, ignore_eos): it must end
              with finish_reason "length" and exactly max_tokens tokens
  chat        a non-streaming chat completion (200, a message, usage)
  cancel      a stream the client drops after a few events
  disconnect  a request whose client goes away before any answer
  bad         a malformed or invalid request: it must get its 4xx
  choices     n = 2 with logprobs: two choices, a logprob per token
  json        response_format json_schema: when it stops by itself, it parses

and checks at the end:

  - no unexpected answer (any 5xx, a wrong status, a missing finish, a wrong token
    count) and every request answered (sent == answered + deliberately dropped);
  - /metrics: every KV block free (none "used"), no running or waiting sequence, no
    request in flight;
  - the ranks' total resident memory at the end within --rss-tolerance (5%) of its
    value after the warm-up (the first quarter of the run);
  - SIGTERM to every rank: all exit 0.

Standard library only. Prints a summary and exits 1 on any failed check:

  tools/soak.py --deepshard build/launcher/deepshard --model DIR --duration 120
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deepshard_proc import Server as JobServer, sse_events as sse  # noqa: E402


class Server(JobServer):
    def __init__(self, args):
        super().__init__(args.deepshard, args.mpirun, args.model, os.path.join(args.workdir, "soak-serve.log"),
                         pp=2, ep=2, extra=["--kv-cache-memory", args.kv_cache_memory], startup_timeout=180)

    def pids(self):
        return list(self.rank_pids().values())

    def rss_kib(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
            except (OSError, AttributeError):
                pass
        return total

    def request(self, method, path, body=None, headers=None, timeout=120):
        return super().request(method, path, body, headers=headers, timeout=timeout)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.answered = 0
        self.dropped = 0
        self.by_kind = {}
        self.failures = []

    def add(self, kind, ok, why=""):
        with self.lock:
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            if not ok:
                self.failures.append(f"{kind}: {why}")


def run_client(srv, args, stats, stop_at, seed):
    rng = random.Random(seed)
    kinds = ["stream"] * 4 + ["chat"] * 2 + ["cancel", "disconnect", "bad", "choices", "json"]
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}},
              "required": ["name", "n"]}
    while time.time() < stop_at:
        kind = rng.choice(kinds)
        prompt = [rng.randrange(100, 20000) for _ in range(rng.randrange(1, 40))]
        n_tok = rng.randrange(1, 24)
        with stats.lock:
            stats.sent += 1
        try:
            if kind == "stream":
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
                conn.request("POST", "/v1/completions", json.dumps(
                    {"prompt": prompt, "max_tokens": n_tok, "temperature": 0, "ignore_eos": True, "stream": True,
                     "return_token_ids": True}), {"Content-Type": "application/json"})
                r = conn.getresponse()
                ids, finish, error = [], None, None
                if r.status == 200:
                    for ev in sse(r):
                        if "error" in ev:
                            error = ev["error"]["message"]
                        for ch in ev.get("choices", []):
                            ids += ch.get("token_ids") or []
                            finish = ch.get("finish_reason") or finish
                conn.close()
                ok = r.status == 200 and error is None and finish == "length" and len(ids) == n_tok
                stats.add(kind, ok, f"status {r.status}, {len(ids)}/{n_tok} tokens, finish {finish}, error {error}")
            elif kind == "chat":
                st, data = srv.request("POST", "/v1/chat/completions", {
                    "messages": [{"role": "user", "content": "Hello number %d" % rng.randrange(1000)}],
                    "max_tokens": n_tok, "temperature": 0.7, "seed": rng.randrange(1 << 30)})
                d = json.loads(data) if st == 200 else {}
                ok = st == 200 and d["choices"][0]["finish_reason"] in ("stop", "length") and "usage" in d
                stats.add(kind, ok, f"status {st}: {data[:200]!r}")
            elif kind == "cancel":
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
                conn.request("POST", "/v1/completions", json.dumps(
                    {"prompt": prompt, "max_tokens": 80, "temperature": 0,
                     "ignore_eos": True, "stream": True}), {"Content-Type": "application/json"})
                r = conn.getresponse()
                got = 0
                if r.status == 200:
                    for _ in sse(r):
                        got += 1
                        if got >= 3:
                            break
                conn.sock.shutdown(socket.SHUT_RDWR)
                conn.close()
                with stats.lock:
                    stats.dropped += 1
                stats.add(kind, r.status == 200, f"status {r.status}")
                continue
            elif kind == "disconnect":
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
                body = json.dumps({"prompt": prompt, "max_tokens": 30, "temperature": 0, "ignore_eos": True})
                s.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
                s.close()
                with stats.lock:
                    stats.dropped += 1
                stats.add(kind, True)
                continue
            elif kind == "bad":
                body, want = rng.choice([('{"prompt": [1, 2', 400), ({"prompt": [1], "temperature": "hot"}, 400),
                                         ({"prompt": [1], "n": 99}, 400), ({"prompt": [10 ** 7]}, 400),
                                         ({"prompt": [1], "suffix": "x"}, 400), ({"model": "nope", "prompt": [1]}, 404)])
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
                conn.request("POST", "/v1/completions", body if isinstance(body, str) else json.dumps(body),
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                conn.close()
                stats.add(kind, r.status == want, f"status {r.status}, want {want}")
            elif kind == "choices":
                st, data = srv.request("POST", "/v1/completions", {
                    "prompt": prompt, "max_tokens": n_tok, "n": 2, "logprobs": 2, "temperature": 0.8,
                    "seed": rng.randrange(1 << 30), "ignore_eos": True})
                d = json.loads(data) if st == 200 else {}
                ok = st == 200 and len(d["choices"]) == 2 and all(
                    len(c["logprobs"]["token_logprobs"]) == n_tok for c in d["choices"])
                stats.add(kind, ok, f"status {st}: {data[:200]!r}")
            elif kind == "json":
                st, data = srv.request("POST", "/v1/chat/completions", {
                    "messages": [{"role": "user", "content": "JSON please"}], "max_tokens": 60, "temperature": 1.0,
                    "seed": rng.randrange(1 << 30),
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
                d = json.loads(data) if st == 200 else {}
                ok = st == 200
                if ok and d["choices"][0]["finish_reason"] == "stop":
                    try:
                        v = json.loads(d["choices"][0]["message"]["content"])
                        ok = isinstance(v, dict) and isinstance(v.get("n"), int)
                    except ValueError:
                        ok = False
                stats.add(kind, ok, f"status {st}: {data[:200]!r}")
            with stats.lock:
                stats.answered += 1
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            stats.add(kind, False, f"{type(e).__name__}: {e}")
            with stats.lock:
                stats.answered += 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deepshard", required=True)
    p.add_argument("--mpirun", default="mpirun")
    p.add_argument("--model", required=True)
    p.add_argument("--workdir", default="/tmp")
    p.add_argument("--duration", type=float, default=120)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--kv-cache-memory", default="16MiB")
    p.add_argument("--rss-tolerance", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    srv = Server(args)
    stats = Stats()
    failures = []
    try:
        start = time.time()
        stop_at = start + args.duration
        threads = [threading.Thread(target=run_client, args=(srv, args, stats, stop_at, args.seed * 1000 + i))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        # RSS: sampled every 2 s; the warm-up value is the median of the second quarter's samples.
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append((time.time() - start, srv.rss_kib()))
            time.sleep(2)
        for t in threads:
            t.join()
        # Dropped clients' sequences end within a step; give the engine a moment.
        deadline = time.time() + 30
        while time.time() < deadline:
            m = srv.metrics()
            busy = sum(v for k, v in m.items() if (k.startswith("deepshard_kv_blocks{") and 'state="used"' in k)
                       or k.startswith("deepshard_sequences{") or k.startswith("deepshard_requests_in_flight"))
            if busy == 0:
                break
            time.sleep(0.5)
        end_rss = srv.rss_kib()
        warm = [r for t, r in samples if args.duration * 0.25 <= t < args.duration * 0.5] or [samples[-1][1]]
        warm_rss = statistics.median(warm)
        m = srv.metrics()
        used = sum(v for k, v in m.items() if k.startswith("deepshard_kv_blocks{") and 'state="used"' in k)
        seqs = sum(v for k, v in m.items() if k.startswith("deepshard_sequences{"))
        inflight = sum(v for k, v in m.items() if k.startswith("deepshard_requests_in_flight"))
        growth = (end_rss - warm_rss) / warm_rss if warm_rss else 0.0
        print(f"soak: {args.duration:.0f} s, {args.clients} clients, {stats.sent} requests "
              f"({stats.answered} answered, {stats.dropped} dropped by their clients)")
        print("  by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.by_kind.items())))
        print(f"  RSS of the 4 ranks: {warm_rss / 1024:.1f} MiB after warm-up, {end_rss / 1024:.1f} MiB at the end "
              f"({growth * 100:+.2f}%)")
        print(f"  at the end: {used:.0f} KV blocks used, {seqs:.0f} sequences, {inflight:.0f} in flight")
        if stats.failures:
            failures.append(f"{len(stats.failures)} unexpected answers, e.g. " + "; ".join(stats.failures[:5]))
        if stats.sent != stats.answered + stats.dropped:
            failures.append(f"{stats.sent} sent but {stats.answered} answered + {stats.dropped} dropped")
        if used or seqs or inflight:
            failures.append(f"leaked: {used} KV blocks used, {seqs} sequences, {inflight} in flight")
        if abs(growth) > args.rss_tolerance:
            failures.append(f"RSS moved {growth * 100:+.2f}% after the warm-up (tolerance {args.rss_tolerance * 100}%)")
        for pid in srv.pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            rc = srv.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0:
            failures.append(f"after SIGTERM mpirun exited with {rc}")
    finally:
        srv.kill()
    if failures:
        print("soak FAILED:\n  " + "\n  ".join(failures))
        print("--- server log (tail)\n" + "".join(srv.text().splitlines(True)[-30:]))
        sys.exit(1)
    print("soak passed")


if __name__ == "__main__":
    main()
