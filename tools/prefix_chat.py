#!/usr/bin/env python3
"""Multi-turn chat workload for the prefix-cache benchmark (tools/bench_prefix_cache.sh).

Drives two OpenAI-compatible servers side by side, usually the same `deepshard serve`
layout with and without `--no-prefix-cache`, through the same conversations:

  N conversations x T turns, each conversation starting with the same long system
  prompt; turn t sends the system prompt, the t previous user messages and assistant
  replies, and a new user message, via streaming /v1/chat/completions (temperature 0).

Requests go one at a time, turn-major (turn 0 of every conversation, then turn 1, ...),
and each request is sent to both servers back to back, alternating which goes first,
so both see the same machine load. Each server's conversation continues with its own
replies; the replies of the two servers are compared (greedy decoding: a cache must not
change them). TTFT = time from sending the request to the first chunk carrying a token.

`--reps R` repeats the whole workload with a different first line in the system prompt
(so no block of one repetition is a prefix of another's). Per turn index the tool
reports the median TTFT of each server over all repetitions and conversations, their
ratio, and each server's prefix-cache hit rate for that turn from /metrics
(deepshard_prefix_cache_hits_total / deepshard_prefix_cache_queries_total, deltas
around the turn). "block bound" is the hit rate the cache can reach from turn 2 on: the
previous turn's prompt and reply, in whole blocks (--block-size), at most prompt - 1
tokens (the last token is always computed). Standard library only:

  python3 tools/prefix_chat.py --url http://127.0.0.1:8001 --label cache \\
      --url http://127.0.0.1:8002 --label no-cache
"""
import argparse
import http.client
import json
import random
import statistics
import sys
import time
import urllib.parse

WORDS = ("the a of to and in is for on with as by at from that this be are was it or an which not have "
         "model server request token cache block prefix layer expert rank pipeline stage batch context "
         "answer question user assistant policy rule must should never always only when if then else "
         "data file system network memory disk time date language code test build error result value "
         "customer order invoice account payment refund shipping address product price support ticket "
         "polite short clear exact careful helpful honest safe brief formal friendly precise").split()


def text(rng, n_words):
    out, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(WORDS))
        if len(line) >= rng.randint(8, 16):
            s = " ".join(line)
            out.append(s[0].upper() + s[1:] + ".")
            line = []
    if line:
        s = " ".join(line)
        out.append(s[0].upper() + s[1:] + ".")
    return " ".join(out)


def metrics(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    vals = {}
    for line in body.splitlines():
        for name in ("deepshard_prefix_cache_queries_total", "deepshard_prefix_cache_hits_total"):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                vals[name] = vals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return vals.get("deepshard_prefix_cache_hits_total", 0.0), vals.get("deepshard_prefix_cache_queries_total", 0.0)


def chat(host, port, messages, max_tokens):
    """Returns (ttft_s, reply_text, reasoning_text, prompt_tokens, cached_tokens or None)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"{host}:{port}: HTTP {r.status}: {r.read().decode(errors='replace')[:300]}")
    ttft, content, reasoning, usage = None, [], [], None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if "error" in ev:
            raise RuntimeError(f"{host}:{port}: {ev['error']}")
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices") or []:
            d = ch.get("delta") or {}
            c, rc = d.get("content") or "", d.get("reasoning_content") or ""
            if ttft is None and (c or rc or ch.get("token_ids")):
                ttft = time.perf_counter() - t0
            content.append(c)
            reasoning.append(rc)
    conn.close()
    usage = usage or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    return ttft, "".join(content), "".join(reasoning), usage.get("prompt_tokens"), cached


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", action="append", required=True, help="server URL (give two)")
    p.add_argument("--label", action="append", help="name of each server, in --url order")
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--system-words", type=int, default=800, help="words of the shared system prompt")
    p.add_argument("--user-words", type=int, default=30, help="words of each user message")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens of each reply (ignore_eos)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-size", type=int, default=64, help="the server's KV block size (for the bound)")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    args = p.parse_args()
    if len(args.url) != 2:
        p.error("give exactly two --url")
    labels = args.label or ["A", "B"]
    servers = []
    for u in args.url:
        pu = urllib.parse.urlparse(u)
        servers.append((pu.hostname, pu.port or 80))

    T, N = args.turns, args.conversations
    ttft = [[[] for _ in range(T)] for _ in servers]       # [server][turn] -> seconds
    hits = [[[0.0, 0.0] for _ in range(T)] for _ in servers]  # [server][turn] -> [hits, queries]
    cached = [[0 for _ in range(T)] for _ in servers]      # usage.prompt_tokens_details, when sent
    cached_seen = [False, False]
    prompt_tokens = [[] for _ in range(T)]
    # Hit bound for turns >= 2: the previous turn's prompt and reply (if the reply's text
    # re-tokenizes to the generated ids), in whole blocks, at most prompt - 1 tokens.
    bound = [[0, 0] for _ in range(T)]
    mismatches, first_mismatch, n_req = 0, None, 0
    for rep in range(args.reps):
        rng = random.Random(f"{args.seed}-{rep}")
        system = f"Session {rep + 1}. You are assistant number {rng.randint(100, 999)}. " + text(rng, args.system_words)
        users = [[text(rng, args.user_words) for _ in range(T)] for _ in range(N)]
        hist = [[[{"role": "system", "content": system}] for _ in range(N)] for _ in servers]
        prev = [None] * N  # conversation -> prompt tokens of its previous turn (first server)
        for t in range(T):
            before = [metrics(*s) for s in servers]
            for c in range(N):
                replies = [None, None]
                order = (0, 1) if n_req % 2 == 0 else (1, 0)
                n_req += 1
                for i in order:
                    msgs = hist[i][c] + [{"role": "user", "content": users[c][t]}]
                    tt, content, reasoning, ptoks, ctoks = chat(*servers[i], msgs, args.max_tokens)
                    ttft[i][t].append(tt)
                    if ctoks is not None:
                        cached[i][t] += ctoks
                        cached_seen[i] = True
                    if i == 0 and ptoks is not None:
                        prompt_tokens[t].append(ptoks)
                        if prev[c] is not None:
                            bs = args.block_size
                            bound[t][0] += min(prev[c] + args.max_tokens, ptoks - 1) // bs * bs
                            bound[t][1] += ptoks
                        prev[c] = ptoks
                    replies[i] = (content, reasoning)
                    hist[i][c] = msgs + [{"role": "assistant", "content": content}]
                if replies[0] != replies[1]:
                    mismatches += 1
                    if first_mismatch is None:
                        first_mismatch = (rep, c, t, replies[0], replies[1])
            after = [metrics(*s) for s in servers]
            for i in range(2):
                hits[i][t][0] += after[i][0] - before[i][0]
                hits[i][t][1] += after[i][1] - before[i][1]
        print(f"# rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)

    def rate(h):
        return f"{100.0 * h[0] / h[1]:.1f}%" if h[1] > 0 else "off"

    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    print(f"# {N} conversations x {T} turns x {args.reps} reps, system prompt {args.system_words} words, "
          f"user messages {args.user_words} words, replies {args.max_tokens} tokens (greedy, ignore_eos)")
    print(f"| turn | prompt tokens (median) | TTFT {labels[0]} ms | TTFT {labels[1]} ms | "
          f"{labels[1]} / {labels[0]} | hit rate {labels[0]} | hit rate {labels[1]} | block bound |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {"turns": []}
    for t in range(T):
        a, b = med(ttft[0][t]), med(ttft[1][t])
        pt = statistics.median(prompt_tokens[t]) if prompt_tokens[t] else float("nan")
        print(f"| {t + 1} | {pt:.0f} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {rate(hits[0][t])} | {rate(hits[1][t])} | {rate(bound[t]) if bound[t][1] else '-'} |")
        summary["turns"].append({"turn": t + 1, "prompt_tokens": pt, "ttft_ms": [a, b],
                                 "hits": hits[0][t][0], "queries": hits[0][t][1]})
    a = med([x for row in ttft[0] for x in row])
    b = med([x for row in ttft[1] for x in row])
    tot = [[sum(h[0] for h in hits[i]), sum(h[1] for h in hits[i])] for i in range(2)]
    print(f"| all | | {a:.1f} | {b:.1f} | {b / a:.2f}x | {rate(tot[0])} | {rate(tot[1])} | |")
    summary.update({"ttft_ms": [a, b], "hit_rate": [tot[i][0] / tot[i][1] if tot[i][1] else None for i in range(2)],
                    "mismatches": mismatches, "requests": n_req})
    for i in range(2):
        if cached_seen[i]:
            print(f"# {labels[i]}: usage.prompt_tokens_details.cached_tokens per turn: {cached[i]}")
        else:
            print(f"# {labels[i]}: no usage.prompt_tokens_details.cached_tokens in the responses")
    if mismatches == 0:
        print(f"# replies identical between {labels[0]} and {labels[1]}: all {n_req} requests")
    else:
        rep, c, t, r0, r1 = first_mismatch
        print(f"# REPLIES DIFFER in {mismatches} of {n_req} requests; first: rep {rep + 1}, conversation {c + 1}, "
              f"turn {t + 1}:\n#   {labels[0]}: {r0!r}\n#   {labels[1]}: {r1!r}")
    if args.json:
        print(json.dumps(summary))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
