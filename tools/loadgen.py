#!/usr/bin/env python3
"""Load generator for `deepshard serve` (or any OpenAI-compatible server).

For each concurrency level C, C client threads send streaming /v1/completions
requests from a fixed prompt set (seeded, so every run and every server sees
the same input) until `--requests-per-client` each are done, and the tool
reports:

  throughput   generated tokens / wall time of the level
  TTFT         time from sending the request to the first token, p50 / p99
  ITL          time between consecutive tokens of one stream, p50 / p99

Tokens are counted from `token_ids` (deepshard's `return_token_ids`
extension, as in vLLM) when the server sends them, else one per SSE event.
Standard library only:

  python3 tools/loadgen.py --url http://127.0.0.1:8000 --concurrency 1,4,16,64
"""
import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(host, port, body, headers):
    """Returns (ttft_s, [itl_s...], n_tokens, error)."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
    r = conn.getresponse()
    if r.status != 200:
        err = r.read().decode(errors="replace")
        conn.close()
        return None, [], 0, f"HTTP {r.status}: {err[:200]}"
    ttft, last, itl, n = None, None, [], 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if "error" in ev:
            conn.close()
            return ttft, itl, n, ev["error"].get("message")
        if not ev.get("choices"):
            continue
        ch = ev["choices"][0]
        k = len(ch.get("token_ids") or []) or (1 if ch.get("text") else 0)
        if k == 0:
            continue
        now = time.perf_counter()
        if ttft is None:
            ttft = now - t0
        elif last is not None:
            # k tokens arrived together: k - 1 zero gaps would be wrong, spread the gap.
            itl.extend([(now - last) / k] * k)
        last = now
        n += k
    conn.close()
    return ttft, itl, n, None


def run_level(args, host, port, prompts, concurrency):
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    ttfts, itls, tokens, errors = [], [], [0], []
    lock = threading.Lock()

    def client(cid):
        for j in range(args.requests_per_client):
            prompt = prompts[(cid * args.requests_per_client + j) % len(prompts)]
            body = {"model": args.model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True, "return_token_ids": True}
            if args.model is None:
                del body["model"]
            ttft, itl, n, err = one_request(host, port, body, headers)
            with lock:
                if err:
                    errors.append(err)
                if ttft is not None:
                    ttfts.append(ttft)
                itls.extend(itl)
                tokens[0] += n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": concurrency * args.requests_per_client,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "tokens": tokens[0],
        "wall_s": wall,
        "tok_s": tokens[0] / wall if wall > 0 else 0.0,
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
        "itl_p50_ms": percentile(itls, 50) * 1e3,
        "itl_p99_ms": percentile(itls, 99) * 1e3,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model name to send (default: none)")
    p.add_argument("--api-key", default="")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompts", type=int, default=64, help="size of the fixed prompt set")
    p.add_argument("--prompt-len", default="8,64", help="min,max prompt tokens")
    p.add_argument("--vocab", type=int, default=129280)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per level instead of a table")
    p.add_argument("--print-prompts", action="store_true",
                   help="print the prompt set as `deepshard generate --prompt-ids` text and exit")
    args = p.parse_args()
    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname, u.port or 80
    lo, hi = map(int, args.prompt_len.split(","))
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(1, args.vocab) for _ in range(rng.randint(lo, hi))] for _ in range(args.prompts)]
    if args.print_prompts:
        print(";".join(",".join(map(str, p)) for p in prompts))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    if not args.json:
        print(f"# {args.url}: {args.prompts} prompts of {lo}..{hi} tokens (seed {args.seed}), "
              f"{args.max_tokens} new tokens each (greedy, ignore_eos), {args.requests_per_client} requests per client")
        print("| clients | requests | errors | gen tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        r = run_level(args, host, port, prompts, c)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"| {c} | {r['requests']} | {r['errors']} | {r['tok_s']:.1f} | {r['ttft_p50_ms']:.1f} | "
                  f"{r['ttft_p99_ms']:.1f} | {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} |", flush=True)
        if r["errors"]:
            print(f"  first error: {r['first_error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
