#!/usr/bin/env python3
"""End-to-end test of `deepshard serve` under mpirun at pp=2, ep=2.

Run by serve_e2e_test.sh, which makes the model and a venv with the `openai`
package. Every check talks to a real server over HTTP with real clients
(curl, the openai package, raw sockets) and compares greedy outputs with
offline `deepshard generate` on one rank:

  main server    curl and openai, stream and not, completions and chat;
                 64 concurrent streaming requests of mixed lengths, then every
                 KV block free in /metrics; clients that disconnect mid-stream
                 free their blocks; each bad input gets its status code and the
                 server keeps serving; garbage on the control port is dropped;
                 `deepshard chat`; SIGTERM drains: a running stream finishes,
                 new requests get 503, every rank exits 0
  strict server  --api-key (401 / 200, /health exempt), a full queue (429),
                 a drain timeout that ends a running stream with an error
  kill server    SIGKILL one worker rank: /health 503, an error event to the
                 in-flight stream, mpirun exits non-zero within 30 s
  silent server  SIGSTOP one worker (alive but silent): /health 503 within 5 s,
                 mpirun exits non-zero
  layouts        pp x ep = 1x2, 2x1, 1x3: concurrent greedy streams equal offline
  tight          a KV pool far too small: preemption + recompute across ranks
                 still gives offline's tokens, and frees every block
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

try:
    import openai
except ImportError:  # only with --no-openai (no PyPI): those checks are skipped, loudly
    openai = None

ARGS = None
FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)
    return cond


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import deepshard_proc  # noqa: E402
from deepshard_proc import sse_events  # noqa: E402,F401


class Server(deepshard_proc.Server):
    """`mpirun -np 4 deepshard serve --pp 2 --ep 2 ...` in its own session (tools/deepshard_proc.py)."""

    def __init__(self, name, extra, pp=2, ep=2):
        extra = (["--kv-cache-memory", "32MiB"] if "--kv-cache-memory" not in extra else []) + extra
        super().__init__(ARGS.deepshard, ARGS.mpirun, ARGS.model, os.path.join(ARGS.workdir, f"serve-{name}.log"),
                         pp=pp, ep=ep, extra=extra, startup_timeout=120)

    def text_log(self):
        return self.text()

    def metrics(self):
        return super().metrics(headers=getattr(self, "auth", {}))

    def kv_used(self):
        m = self.metrics()
        return sum(v for k, v in m.items() if k.startswith("deepshard_kv_blocks{") and 'state="used"' in k)


def offline(prompts, max_new):
    """Greedy tokens from `deepshard generate` on one rank (the reference)."""
    spec = ";".join(",".join(map(str, p)) for p in prompts)
    out = subprocess.run([ARGS.deepshard, "generate", "--model", ARGS.model, "--prompt-ids", spec,
                          "--max-new-tokens", str(max_new), "--ignore-eos"],
                         check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return [[int(t) for t in line.split(",")] for line in out.stdout.strip().splitlines()]


def offline_chat(message, max_new):
    out = subprocess.run([ARGS.deepshard, "generate", "--model", ARGS.model, "--chat", message, "--max-new-tokens",
                          str(max_new), "--ignore-eos", "--print-ids"],
                         check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return [int(t) for t in out.stdout.strip().splitlines()[-1].split(",")]


def decode(ids):
    out = subprocess.run([ARGS.deepshard, "tokenize", "--model", ARGS.model, "--ids", ",".join(map(str, ids)),
                          "--skip-special"], check=True, capture_output=True, text=True)
    return out.stdout[:-1]  # the trailing newline tokenize adds


def stream_completion(srv, body, headers=None, stop_after=None, started=None):
    """POSTs a streaming completion; returns (status, text, token_ids, finish_reason, error).
    `started` (a threading.Event) is set when the first event arrives."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    conn.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)), headers=h)
    r = conn.getresponse()
    if r.status != 200:
        data = r.read()
        conn.close()
        return r.status, "", [], None, data.decode()
    text, ids, finish, error, n = "", [], None, None, 0
    for ev in sse_events(r):
        if started is not None:
            started.set()
        if "error" in ev:
            error = ev["error"]["message"]
            continue
        for ch in ev.get("choices", []):
            text += ch.get("text", "")
            ids += ch.get("token_ids") or []
            finish = ch.get("finish_reason") or finish
        n += 1
        if stop_after is not None and n >= stop_after:
            conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
            conn.close()
            return 200, text, ids, None, None
    conn.close()
    return 200, text, ids, finish, error


def openai_checks(srv, prompts, ref):
    """The openai package against the server: stream and not, completions and chat."""
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused")
    models = client.models.list()
    check([m.id for m in models.data] == [ARGS.name], "openai: models.list")
    check(client.models.retrieve(ARGS.name).id == ARGS.name, "openai: models.retrieve")
    c = client.completions.create(model=ARGS.name, prompt=prompts[1], max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True, "return_token_ids": True})
    check(c.choices[0].text == decode(ref[1][:12]) and c.choices[0].finish_reason == "length"
          and c.usage.completion_tokens == 12, "openai completions.create (greedy) equals offline")
    s = client.completions.create(model=ARGS.name, prompt=prompts[2], max_tokens=10, temperature=0, stream=True,
                                  extra_body={"ignore_eos": True})
    check("".join(ch.choices[0].text for ch in s if ch.choices) == decode(ref[2][:10]),
          "openai completions stream equals offline")
    chat_ref = offline_chat("Hello! Who are you?", 12)
    cc = client.chat.completions.create(model=ARGS.name, messages=[{"role": "user", "content": "Hello! Who are you?"}],
                                        max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    check(cc.choices[0].message.content == decode(chat_ref) and cc.choices[0].message.role == "assistant",
          "openai chat.completions.create equals offline generate --chat")
    st = client.chat.completions.create(model=ARGS.name, messages=[{"role": "user", "content": "Hello! Who are you?"}],
                                        max_tokens=12, temperature=0, stream=True,
                                        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    parts, usage = [], None
    for ch in st:
        if ch.choices and ch.choices[0].delta.content:
            parts.append(ch.choices[0].delta.content)
        if ch.usage:
            usage = ch.usage
    check("".join(parts) == decode(chat_ref) and usage is not None and usage.completion_tokens == 12,
          "openai chat stream equals offline, with usage")
    # Stop strings through the client too.
    full = decode(ref[3][:24])
    stop = full[5:9] if len(full) > 9 else None
    if stop and full.find(stop) >= 1:
        c = client.completions.create(model=ARGS.name, prompt=prompts[3], max_tokens=24, temperature=0,
                                      stop=[stop], extra_body={"ignore_eos": True})
        check(c.choices[0].text == full[:full.find(stop)] and c.choices[0].finish_reason == "stop",
              f"openai: stop string {stop!r} cuts the text before it")


def api_extras_checks(srv, prompts, ref):
    """n, logprobs and echo, logit_bias / min_tokens / stop_token_ids, structured output,
    tools and prefix-cache usage, through the openai package."""
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused")
    ids = {"ignore_eos": True, "return_token_ids": True}
    # n choices: choice j has seed + j, so it equals a lone request with that seed.
    c = client.completions.create(model=ARGS.name, prompt=prompts[1], max_tokens=8, temperature=0.9, seed=5, n=3,
                                  extra_body=ids)
    lone = [client.completions.create(model=ARGS.name, prompt=prompts[1], max_tokens=8, temperature=0.9, seed=5 + j,
                                      extra_body=ids).choices[0].token_ids for j in range(3)]
    check(sorted(ch.index for ch in c.choices) == [0, 1, 2]
          and [ch.token_ids for ch in sorted(c.choices, key=lambda ch: ch.index)] == lone
          and c.usage.completion_tokens == 24,
          "openai n=3: each choice equals a lone request with seed + index (prompt KV shared)")
    st = client.completions.create(model=ARGS.name, prompt=prompts[1], max_tokens=8, temperature=0.9, seed=5, n=3,
                                   stream=True, extra_body=ids)
    streamed = {0: [], 1: [], 2: []}
    for ch in st:
        for x in ch.choices:
            streamed[x.index] += getattr(x, "token_ids", None) or []
    check([streamed[j] for j in range(3)] == lone, "openai n=3 streamed: the same choices")
    # Prompt lists: one choice per prompt, in order.
    c = client.completions.create(model=ARGS.name, prompt=[prompts[1], prompts[2]], max_tokens=6, temperature=0,
                                  extra_body=ids)
    check([ch.token_ids for ch in sorted(c.choices, key=lambda ch: ch.index)] == [ref[1][:6], ref[2][:6]],
          "openai: a list of prompts gives one choice per prompt, equal to offline")
    # logprobs: greedy tokens are the most likely ones; echo gives the prompt with a null first logprob.
    c = client.completions.create(model=ARGS.name, prompt=prompts[2], max_tokens=6, temperature=0, logprobs=2,
                                  extra_body=ids)
    lp = c.choices[0].logprobs
    check(len(lp.token_logprobs) == 6 and all(abs(v - max(t.values())) < 1e-6 and v <= 0
                                              for v, t in zip(lp.token_logprobs, lp.top_logprobs))
          and all(len(t) >= 1 for t in lp.top_logprobs),
          "openai logprobs=2: each greedy token's logprob is its top-1")
    e = client.completions.create(model=ARGS.name, prompt=prompts[2], max_tokens=0, echo=True, logprobs=1,
                                  temperature=0)
    elp = e.choices[0].logprobs
    check(e.choices[0].text == decode(prompts[2]) and len(elp.token_logprobs) == len(prompts[2])
          and elp.token_logprobs[0] is None and all(v is not None and v <= 0 for v in elp.token_logprobs[1:])
          and e.usage.completion_tokens == 0,
          "openai echo + logprobs + max_tokens 0: the prompt, a logprob per token after the first")
    e2 = client.completions.create(model=ARGS.name, prompt=prompts[2], max_tokens=3, echo=True, logprobs=1,
                                   temperature=0, extra_body={"ignore_eos": True})
    check(e2.choices[0].logprobs.token_logprobs[1:len(prompts[2])] == elp.token_logprobs[1:]
          and len(e2.choices[0].logprobs.token_logprobs) == len(prompts[2]) + 3,
          "openai echo with generation: the same prompt logprobs, then the new tokens'")
    cl = client.chat.completions.create(model=ARGS.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                        temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = cl.choices[0].logprobs.content
    check(len(content) == 5 and all(len(x.top_logprobs) == 3 and x.top_logprobs[0].logprob >= x.logprob - 1e-6
                                    for x in content),
          "openai chat logprobs + top_logprobs=3")
    st = client.chat.completions.create(model=ARGS.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                        temperature=0, logprobs=True, top_logprobs=3, stream=True,
                                        extra_body={"ignore_eos": True})
    streamed = []
    for ch in st:
        if ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.content:
            streamed += ch.choices[0].logprobs.content
    check([(x.token, x.logprob, [t.logprob for t in x.top_logprobs]) for x in streamed]
          == [(x.token, x.logprob, [t.logprob for t in x.top_logprobs]) for x in content],
          "openai chat logprobs streamed equal the non-streamed ones")
    es = client.completions.create(model=ARGS.name, prompt=prompts[2], max_tokens=3, echo=True, logprobs=1,
                                   temperature=0, stream=True, extra_body={"ignore_eos": True})
    es_lp, es_text = [], ""
    for ch in es:
        for x in ch.choices:
            es_text += x.text
            if x.logprobs:
                es_lp += x.logprobs.token_logprobs
    check(es_lp == e2.choices[0].logprobs.token_logprobs and es_text == e2.choices[0].text,
          "openai echo + logprobs streamed equal the non-streamed ones")
    # logit_bias +100 makes greedy pick that token; min_tokens holds off a stop_token_id.
    c = client.completions.create(model=ARGS.name, prompt=prompts[1], max_tokens=5, temperature=0,
                                  logit_bias={"42": 100}, extra_body=ids)
    check(c.choices[0].token_ids == [42] * 5, "openai logit_bias {42: +100}: every greedy token is 42")
    c = client.completions.create(model=ARGS.name, prompt=prompts[1], max_tokens=10, temperature=0,
                                  logit_bias={"42": 100}, extra_body=dict(ids, stop_token_ids=[42], min_tokens=3))
    t = c.choices[0].token_ids
    check(len(t) == 4 and 42 not in t[:3] and t[3] == 42 and c.choices[0].finish_reason == "stop",
          f"min_tokens 3 then stop_token_ids [42]: {t}")
    c = client.completions.create(model=ARGS.name, prompt=prompts[1], max_tokens=6, temperature=0,
                                  presence_penalty=1.5, frequency_penalty=1.0, extra_body=dict(ids, repetition_penalty=1.3))
    check(c.choices[0].finish_reason == "length" and len(c.choices[0].token_ids) == 6, "penalties are accepted")
    # Structured output: a random-weight model, constrained, still writes JSON of the schema.
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3}},
        "required": ["name", "age"]}
    for seed in (1, 2, 3):
        r = client.chat.completions.create(
            model=ARGS.name, messages=[{"role": "user", "content": "A person, as JSON."}], max_tokens=110,
            temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
        txt = r.choices[0].message.content
        try:
            v = json.loads(txt)
            ok = (isinstance(v, dict) and isinstance(v.get("name"), str) and len(v["name"]) <= 12
                  and isinstance(v.get("age"), int) and set(v) <= {"name", "age", "tags"}
                  and all(x in ("red", "green") for x in v.get("tags", [])) and len(v.get("tags", [])) <= 3)
        except ValueError:
            ok = False
        check(ok and r.choices[0].finish_reason == "stop", f"json_schema (seed {seed}) -> {txt!r}")
    status, data = srv.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z]+$"}}}}}})
    check(status == 400 and "pattern" in json.loads(data)["error"]["message"]
          and json.loads(data)["error"]["param"] == "response_format",
          "json_schema with an unsupported keyword -> 400 naming it")
    # Tools: a forced function gives a call with arguments of its schema; history with tool turns renders.
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                         "unit": {"enum": ["C", "F"]}}, "required": ["city", "unit"]}}}]
    r = client.chat.completions.create(model=ARGS.name, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                       tools=tools, max_tokens=100, temperature=0.7, seed=4,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls = r.choices[0].message.tool_calls or []
    try:
        args = json.loads(calls[0].function.arguments) if calls else None
    except ValueError:
        args = None
    check(len(calls) == 1 and calls[0].function.name == "get_weather" and isinstance(args, dict)
          and set(args) == {"city", "unit"} and args["unit"] in ("C", "F"),
          f"tool_choice get_weather -> {calls[0].function.arguments if calls else None!r}")
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"C\"}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"}]
    r = client.chat.completions.create(model=ARGS.name, messages=history, tools=tools, max_tokens=4, temperature=0)
    check(r.choices[0].message is not None and r.choices[0].finish_reason in ("stop", "length", "tool_calls"),
          "a chat with tool_calls and tool turns in its history renders and answers")
    # Prefix caching: the same long prompt again finds its blocks.
    long_prompt = "Tell me everything about the history of the Roman Empire. " * 8  # > one 64-token block
    msgs = [{"role": "user", "content": long_prompt}]
    client.chat.completions.create(model=ARGS.name, messages=msgs, max_tokens=2, temperature=0)
    again = client.chat.completions.create(model=ARGS.name, messages=msgs, max_tokens=2, temperature=0)
    details = again.usage.prompt_tokens_details
    check(details is not None and details.cached_tokens > 0,
          f"usage.prompt_tokens_details.cached_tokens on a repeated prompt: {details}")


def concurrent_greedy_streams(srv, prompts, max_new, model=None):
    """Streams every prompt at once (greedy, ignore_eos, token ids back); returns
    stream_completion's tuple per prompt."""
    results = [None] * len(prompts)

    def one(i):
        body = {"prompt": prompts[i], "max_tokens": max_new[i], "temperature": 0, "ignore_eos": True,
                "return_token_ids": True}
        if model:
            body["model"] = model
        results[i] = stream_completion(srv, body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# ---------------------------------------------------------------------------------------------
def test_main_server():
    srv = Server("main", ["--drain-timeout", "60"])
    try:
        rng = random.Random(7)
        V = 129280
        prompts = [[rng.randrange(V) for _ in range(rng.randint(1, 60))] for _ in range(64)]
        max_new = [rng.randint(1, 32) for _ in range(64)]
        ref = offline(prompts, 32)
        print(f"reference: {len(prompts)} prompts of 1..60 tokens, up to 32 new tokens", flush=True)

        # curl, not streaming and streaming.
        body = {"model": ARGS.name, "prompt": prompts[0], "max_tokens": 16, "temperature": 0, "ignore_eos": True,
                "return_token_ids": True}
        out = subprocess.run(["curl", "-sS", "-f", f"{srv.base}/v1/completions", "-H",
                              "Content-Type: application/json", "-d", json.dumps(body)],
                             capture_output=True, text=True)
        r = json.loads(out.stdout)
        check(r["choices"][0]["token_ids"] == ref[0][:16], "curl completion: greedy tokens equal offline generate")
        check(r["choices"][0]["text"] == decode(ref[0][:16]), "curl completion: text equals decoding those tokens")
        usage = dict(r["usage"])
        details = usage.pop("prompt_tokens_details", None)
        check(usage == {"prompt_tokens": len(prompts[0]), "completion_tokens": 16,
                        "total_tokens": len(prompts[0]) + 16}
              and details is not None and 0 <= details["cached_tokens"] < len(prompts[0]), "curl completion: usage")
        out = subprocess.run(["curl", "-sS", "-N", "-f", f"{srv.base}/v1/completions", "-H",
                              "Content-Type: application/json", "-d", json.dumps(dict(body, stream=True))],
                             capture_output=True, text=True)
        chunks = [json.loads(l[6:]) for l in out.stdout.splitlines() if l.startswith("data: {")]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        check(out.stdout.rstrip().endswith("data: [DONE]") and text == decode(ref[0][:16]),
              "curl streaming completion: SSE ends in [DONE], text equals offline")

        # The openai package.
        if openai is None:
            print("SKIP openai-client checks (--no-openai: the package could not be installed)", flush=True)
        else:
            openai_checks(srv, prompts, ref)
            api_extras_checks(srv, prompts, ref)
        # Stop strings, across token boundaries: stop at a piece of the reference text (raw HTTP).
        full = decode(ref[3][:24])
        stop = full[5:9] if len(full) > 9 else None
        if stop and full.find(stop) >= 1:
            status, data = srv.post("/v1/completions", {"prompt": prompts[3], "max_tokens": 24, "temperature": 0,
                                                        "stop": [stop], "ignore_eos": True})
            c = json.loads(data)["choices"][0]
            check(status == 200 and c["text"] == full[:full.find(stop)] and c["finish_reason"] == "stop",
                  f"stop string {stop!r} cuts the text before it")
        chat_msg = [{"role": "user", "content": "Hello! Who are you?"}]
        status, data = srv.post("/v1/chat/completions", {"messages": chat_msg, "max_tokens": 12, "temperature": 0,
                                                         "ignore_eos": True})
        check(status == 200 and json.loads(data)["choices"][0]["message"]["content"] ==
              decode(offline_chat("Hello! Who are you?", 12)), "raw HTTP chat completion equals offline generate --chat")

        # 64 concurrent streaming requests of mixed lengths.
        t0 = time.time()
        results = concurrent_greedy_streams(srv, prompts, max_new, model=ARGS.name)
        dt = time.time() - t0
        bad = [i for i in range(64) if results[i][0] != 200 or results[i][2] != ref[i][:max_new[i]]
               or results[i][3] != "length"]
        check(not bad, f"64 concurrent streams: greedy tokens equal offline ({sum(max_new)} tokens in {dt:.1f} s)"
              + (f"; wrong: {bad[:8]} e.g. {results[bad[0]]}" if bad else ""))
        texts_ok = all(results[i][1] == decode(ref[i][:max_new[i]]) for i in range(0, 64, 8))
        check(texts_ok, "64 concurrent streams: texts equal decoding (every 8th checked)")
        time.sleep(0.3)
        check(srv.kv_used() == 0, "after the burst /metrics shows every KV block free")

        # Clients that disconnect mid-stream.
        def dropper(i):
            stream_completion(srv, {"model": ARGS.name, "prompt": prompts[i], "max_tokens": 90, "temperature": 0,
                                    "ignore_eos": True}, stop_after=3)

        threads = [threading.Thread(target=dropper, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.time() + 5
        while time.time() < deadline and srv.kv_used() != 0:
            time.sleep(0.1)
        m = srv.metrics()
        running = sum(v for k, v in m.items() if k.startswith("deepshard_sequences{") and 'state="running"' in k)
        check(srv.kv_used() == 0 and running == 0, "8 clients that disconnect mid-stream free their blocks")
        info = [k for k, v in m.items() if k.startswith("deepshard_backend_info{") and v == 1]
        check(len(info) == 1 and 'device="cpu"' in info[0]
              and re.search(r'kernels="(scalar|avx2|avx512|avx512-bf16)"', info[0]) is not None,
              "/metrics names the backend and the CPU kernel level chosen at start-up: "
              + (info[0] if info else "missing"))

        # Bad input: each gets its status, the server keeps serving.
        cases = [
            ("malformed JSON", "{\"prompt\": [1, 2", 400, None),
            ("wrong type", {"prompt": [1, 2], "temperature": "hot"}, 400, "temperature"),
            ("n over the limit", {"prompt": [1, 2], "n": 17}, 400, "n"),
            ("logprobs out of range", {"prompt": [1, 2], "logprobs": 21}, 400, "logprobs"),
            ("unsupported parameter", {"prompt": [1, 2], "suffix": "x"}, 400, "suffix"),
            ("prompt longer than the context", {"prompt": [5] * 200, "max_tokens": 4}, 400, None),
            ("token id outside the vocabulary", {"prompt": [V + 5]}, 400, "prompt"),
            ("unknown model", {"model": "nope", "prompt": [1]}, 404, None),
        ]
        for what, body, code, field in cases:
            status, data = srv.post("/v1/completions", body)
            named = field is None or field in json.loads(data)["error"]["message"] + str(
                json.loads(data)["error"].get("param"))
            check(status == code and named, f"bad input: {what} -> {status} (want {code})")
        # Over the 1 MiB limit: the server answers 413 from Content-Length alone. The client
        # announces 3 MiB, sends the first 64 KiB and reads the answer (sending all of it
        # would race the server's close after its bounded drain: EPIPE instead of the 413).
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 3145728\r\n\r\n" + b'{"prompt": "' + b"x" * 65536)
            head = sock.recv(4096).decode(errors="replace")
        check(head.startswith("HTTP/1.1 413"), f"bad input: body over the limit -> {head.splitlines()[0] if head else ''}")
        status, data = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]})
        check(status == 400 and "messages[0].content" in data.decode(), "bad input: chat content of the wrong type")
        check(srv.get("/nope")[0] == 404, "unknown path -> 404")
        check(srv.get("/health")[0] == 200, "after bad input /health is 200")
        r = stream_completion(srv, {"prompt": prompts[0], "max_tokens": 4, "temperature": 0, "ignore_eos": True,
                                    "return_token_ids": True})
        check(r[2] == ref[0][:4], "after bad input the server still answers correctly")

        # Garbage on the control port: dropped and logged, serving goes on.
        cport = srv.control_port()
        if check(cport is not None, "rank 0 logs its control-plane address"):
            for payload in (b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 64, b"DSCP" + b"\xff" * 12):
                with socket.create_connection(("127.0.0.1", cport)) as s:
                    s.sendall(payload)
                    time.sleep(0.1)
            time.sleep(0.3)
            r = stream_completion(srv, {"prompt": prompts[1], "max_tokens": 6, "temperature": 0, "ignore_eos": True,
                                        "return_token_ids": True})
            check(r[2] == ref[1][:6] and srv.get("/health")[0] == 200,
                  "raw-socket garbage on the control port is dropped; serving goes on")
            check(srv.text_log().count("rejected") + srv.text_log().count("dropped") >= 3,
                  "each bad control connection is logged")

        # The terminal chat client.
        out = subprocess.run([ARGS.deepshard, "chat", "--url", srv.base, "--max-tokens", "8", "--temperature", "0"],
                             input="Hello\nAnd again\n/reset\nHi\n", capture_output=True, text=True, timeout=60)
        check(out.returncode == 0 and len(out.stdout.strip()) > 0, "deepshard chat: three turns and /reset")

        # SIGTERM drains: a running stream finishes, new requests get 503, exit 0.
        drain_prompt = prompts[5][:8]
        ref_drain = offline([drain_prompt], 110)[0]
        holder = {}
        started = threading.Event()
        t = threading.Thread(target=lambda: holder.setdefault("r", stream_completion(
            srv, {"prompt": drain_prompt, "max_tokens": 110, "temperature": 0, "ignore_eos": True,
                  "return_token_ids": True}, started=started)))
        t.start()
        started.wait(30)
        srv.signal_all(signal.SIGTERM)
        # Ask as soon as rank 0 says it is draining: on a fast machine the
        # 110-token stream (and with it the drain) ends within a few tenths of
        # a second, and a fixed sleep could land after it.
        deadline = time.time() + 5
        while ": draining" not in srv.text_log() and time.time() < deadline:
            time.sleep(0.01)
        code = None
        try:
            code = srv.post("/v1/completions", {"prompt": [1, 2], "max_tokens": 2})[0]
        except OSError:
            pass
        check(code == 503, f"while draining a new request gets 503 (got {code})")
        t.join(60)
        r = holder.get("r")
        check(r is not None and r[2] == ref_drain and r[3] == "length",
              "the running stream finishes during the drain"
              + ("" if r is not None and r[2] == ref_drain and r[3] == "length" else f": got {r and (len(r[2]), r[3], r[4])}, "
                 f"first mismatch at {next((i for i, (a, b) in enumerate(zip(r[2], ref_drain)) if a != b), None) if r else None}"))
        rc = srv.wait(30)
        check(rc == 0, f"SIGTERM: every rank exits 0 (mpirun rc {rc})")
    finally:
        srv.kill()


def test_strict_server():
    srv = Server("strict", ["--api-key", "sekret", "--max-num-seqs", "1", "--max-num-batched-tokens", "64",
                            "--max-waiting", "1", "--drain-timeout", "0.05"])
    srv.auth = {"Authorization": "Bearer sekret"}
    try:
        body = {"prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0}
        check(srv.post("/v1/completions", body)[0] == 401, "--api-key: no key -> 401")
        check(srv.post("/v1/completions", body, headers={"Authorization": "Bearer wrong"})[0] == 401,
              "--api-key: wrong key -> 401")
        check(srv.get("/v1/models")[0] == 401, "--api-key: /v1/models needs the key")
        check(srv.post("/v1/completions", body, headers=srv.auth)[0] == 200, "--api-key: right key -> 200")
        check(srv.get("/health")[0] == 200, "--api-key: /health needs no key")
        if openai is not None:
            client = openai.OpenAI(base_url=srv.base + "/v1", api_key="sekret")
            check(client.completions.create(model=ARGS.name, prompt=[1, 2], max_tokens=2).usage.completion_tokens >= 1,
                  "--api-key: the openai client with the key works")

        # A full queue: one running, one waiting, the rest 429.
        codes = []
        lock = threading.Lock()

        def one():
            c = srv.post("/v1/completions", {"prompt": [3, 4, 5], "max_tokens": 40, "ignore_eos": True},
                         headers=srv.auth)[0]
            with lock:
                codes.append(c)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
            time.sleep(0.01)
        for t in threads:
            t.join()
        check(codes.count(429) >= 1 and codes.count(200) >= 2 and set(codes) <= {200, 429},
              f"a full queue gets 429 ({codes.count(200)} x 200, {codes.count(429)} x 429)")

        # Drain timeout: a long stream is ended with an explicit error.
        holder = {}
        started = threading.Event()
        t = threading.Thread(target=lambda: holder.setdefault("r", stream_completion(
            srv, {"prompt": [7, 8, 9], "max_tokens": 120, "ignore_eos": True}, headers=srv.auth, started=started)))
        t.start()
        started.wait(30)
        srv.signal_all(signal.SIGTERM)
        t.join(60)
        r = holder.get("r")
        check(r is not None and r[4] is not None and "drain" in r[4],
              f"past --drain-timeout the running stream gets an error event ({r[4] if r else None})")
        rc = srv.wait(30)
        check(rc == 0, f"after a drain timeout every rank still exits 0 (mpirun rc {rc})")
    finally:
        srv.kill()


def test_kill_worker():
    srv = Server("kill", ["--failure-linger", "3"])
    try:
        holder = {}
        started = threading.Event()
        t = threading.Thread(target=lambda: holder.setdefault("r", stream_completion(
            srv, {"prompt": [7, 8, 9], "max_tokens": 120, "ignore_eos": True}, started=started)))
        t.start()
        # Kill as soon as the stream runs: on a fast machine all 120 tokens take
        # well under a second, so a fixed sleep could land after the end.
        started.wait(30)
        pids = srv.rank_pids()
        check(all(r in pids for r in (0, 1, 2, 3)), f"every rank reports ready ({sorted(pids)})")
        t0 = time.time()
        os.kill(pids[3], signal.SIGKILL)
        saw_503 = None
        while time.time() - t0 < 5:
            try:
                if srv.get("/health", timeout=1)[0] == 503:
                    saw_503 = time.time() - t0
                    break
            except OSError:
                break
            time.sleep(0.05)
        check(saw_503 is not None, f"/health is 503 after a worker dies ({saw_503 and round(saw_503, 2)} s)")
        t.join(30)
        r = holder.get("r")
        check(r is not None and r[4] is not None, f"the in-flight stream gets an error event ({r and r[4]})")
        rc = srv.wait(30)
        check(rc not in (None, 0), f"the job exits non-zero within 30 s (rc {rc}, {time.time() - t0:.1f} s)")
    finally:
        srv.kill()


def test_layouts():
    """Other grids: 16 concurrent greedy streams equal offline, then a clean drain."""
    rng = random.Random(11)
    prompts = [[rng.randrange(129280) for _ in range(rng.randint(1, 40))] for _ in range(16)]
    ref = offline(prompts, 20)
    for pp, ep in ((1, 2), (2, 1), (1, 3)):
        srv = Server(f"layout-{pp}x{ep}", [], pp=pp, ep=ep)
        try:
            results = concurrent_greedy_streams(srv, prompts, [20] * len(prompts))
            bad = [i for i in range(len(prompts)) if results[i][2] != ref[i]]
            check(not bad, f"pp {pp} x ep {ep}: 16 concurrent greedy streams equal offline" + (f"; wrong {bad}" if bad else ""))
            if (pp, ep) == (2, 1):
                # Only a worker gets the signal: it asks rank 0 to drain the job.
                os.kill(srv.rank_pids()[1], signal.SIGTERM)
                what = "SIGTERM to worker rank 1 alone drains the job"
            else:
                srv.signal_all(signal.SIGTERM)
                what = "SIGTERM"
            rc = srv.wait(30)
            check(rc == 0, f"pp {pp} x ep {ep}: {what}, exit 0 (rc {rc})")
        finally:
            srv.kill()


def test_tight_pool():
    """A KV pool far too small for the load: preemption and recompute across ranks
    (pp 2, so plans are in flight on both stages) still give offline's tokens."""
    rng = random.Random(5)
    prompts = [[rng.randrange(129280) for _ in range(rng.randint(1, 40))] for _ in range(24)]
    max_new = [rng.randint(8, 40) for _ in range(24)]
    ref = offline(prompts, 40)
    # 5 blocks of 16 tokens per DP slot fit in 80 KiB per rank (2 layers each).
    srv = Server("tight", ["--block-size", "16", "--kv-cache-memory", "80KiB", "--max-num-seqs", "8"])
    try:
        results = concurrent_greedy_streams(srv, prompts, max_new)
        bad = [i for i in range(len(prompts)) if results[i][2] != ref[i][:max_new[i]]]
        check(not bad, "tight pool: 24 concurrent streams equal offline" + (f"; wrong {bad[:6]}" if bad else ""))
        time.sleep(0.3)
        m = srv.metrics()
        pre = m.get("deepshard_preemptions_total", 0)
        check(pre > 0, f"tight pool: sequences were preempted and recomputed ({pre:.0f} preemptions)")
        check(srv.kv_used() == 0, "tight pool: every block free afterwards")
        # One slot holds 5 blocks of 16 = 80 tokens (the log's "5 KV blocks"), less than the
        # model's 128: max_model_len says 80, and a chat request without max_tokens (the
        # openai client's default) is served with the rest of those 80 tokens rather than
        # refused with a 400 (issue 16).
        status, data = srv.get("/v1/models")
        mml = json.loads(data)["data"][0].get("max_model_len") if status == 200 else None
        check(mml == 80, f"tight pool: /v1/models max_model_len is the slot's 80 tokens (got {mml})")
        status, data = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                         "temperature": 0, "ignore_eos": True})
        usage = json.loads(data).get("usage", {}) if status == 200 else {}
        check(status == 200 and usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0) == 80,
              f"tight pool: a chat without max_tokens fills the slot's 80 tokens ({status}, {usage})")
    finally:
        srv.kill()


def test_silent_worker():
    """A worker that stops heartbeating (SIGSTOP: alive, silent) is treated as dead."""
    srv = Server("silent", ["--heartbeat-timeout", "1.5", "--failure-linger", "2"])
    try:
        pids = srv.rank_pids()
        t0 = time.time()
        os.kill(pids[2], signal.SIGSTOP)
        saw_503 = None
        while time.time() - t0 < 8:
            try:
                if srv.get("/health", timeout=1)[0] == 503:
                    saw_503 = time.time() - t0
                    break
            except OSError:
                break
            time.sleep(0.05)
        check(saw_503 is not None and saw_503 < 5,
              f"/health is 503 within 5 s of a worker going silent ({saw_503 and round(saw_503, 2)} s)")
        rc = srv.wait(30)
        check(rc not in (None, 0), f"the job exits non-zero within 30 s (rc {rc}, {time.time() - t0:.1f} s)")
    finally:
        srv.kill()


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--deepshard", required=True)
    p.add_argument("--mpirun", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--only", default="")
    p.add_argument("--no-openai", action="store_true", help="the openai package is missing: skip its checks")
    ARGS = p.parse_args()
    if ARGS.no_openai:
        global openai
        openai = None
    ARGS.name = os.path.basename(os.path.normpath(ARGS.model))
    for name, fn in [("main", test_main_server), ("strict", test_strict_server), ("kill", test_kill_worker),
                     ("silent", test_silent_worker), ("layouts", test_layouts),
                     ("tight", test_tight_pool)]:
        if ARGS.only and name not in ARGS.only.split(","):
            continue
        print(f"== {name}", flush=True)
        try:
            fn()
        except Exception as e:  # a crash is a failure, with the server log for context
            import traceback
            traceback.print_exc()
            FAILURES.append(f"{name}: {e}")
    if FAILURES:
        print(f"\n{len(FAILURES)} FAILED:\n  " + "\n  ".join(FAILURES))
        for f in os.listdir(ARGS.workdir):
            if f.startswith("serve-") and f.endswith(".log"):
                print(f"\n--- {f} (tail)")
                print("".join(open(os.path.join(ARGS.workdir, f)).readlines()[-40:]))
        sys.exit(1)
    print("\nall serve e2e checks passed")


if __name__ == "__main__":
    main()
