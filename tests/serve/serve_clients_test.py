#!/usr/bin/env python3
"""Real client libraries, unmodified, against `deepshard serve` under mpirun at pp=2, ep=2.

Run by serve_clients_test.sh, which makes the tiny model and the venv of
tests/serve/requirements-clients.txt (the pinned clients). The model has random
weights, so texts are gibberish; what is checked is that each library accepts the
server's answers: structured outputs and forced tool calls (constrained to JSON)
validate against their schemas, streams arrive in chunks, n choices come back,
and lm-eval scores a multiple-choice task through echo + logprobs.

  LangChain  ChatOpenAI: bind_tools (a pydantic class, a @tool function; a named
             tool_choice, "any" with parallel_tool_calls=False; streamed tool-call
             chunks), with_structured_output (json_schema, the default, and
             function_calling; a nested model with $defs/$ref), .stream
  LiteLLM    completion with tools (named and "required"), n=2, streaming
  lm-eval    local-completions on tests/serve/lm_eval_task (10 questions, 40
             loglikelihood requests) through a recording proxy: every request is
             echo + logprobs and every answer has the shape lm-eval relies on
"""
import argparse
import glob
import http.client
import http.server
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Literal

ARGS = None
FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)
    return cond


def attempt(what, fn):
    """Runs fn(); an exception is a failure named `what` (with the exception text)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- any client error is a test failure, reported
        check(False, f"{what}: {type(e).__name__}: {str(e)[:2000]}")
        return None


class Server:
    """`mpirun -np 4 deepshard serve --pp 2 --ep 2 ...` in its own process group."""

    def __init__(self):
        self.log_path = os.path.join(ARGS.workdir, "serve-clients.log")
        self.log = open(self.log_path, "w")
        cmd = [ARGS.mpirun, "--oversubscribe", "--allow-run-as-root", "--mca", "pml", "ob1", "--bind-to", "none",
               "-np", "4", ARGS.deepshard, "serve", "--model", ARGS.model, "--pp", "2", "--ep", "2",
               "--port", "0", "--kv-cache-memory", "32MiB"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.text_log()}")
            m = re.search(r"listening on http://[0-9.]+:(\d+) \(model \"([^\"]+)\"", self.text_log())
            if m:
                self.port, self.name = int(m.group(1)), m.group(2)
                return
            time.sleep(0.2)
        raise RuntimeError(f"server did not come up:\n{self.text_log()}")

    def text_log(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def metrics(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/metrics")
        data = conn.getresponse().read().decode()
        conn.close()
        out = {}
        for line in data.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def stop(self):
        """SIGTERM to rank 0 drains the job and every rank exits 0."""
        m = re.search(r"rank 0 \(stage \d+, column \d+\) ready, pid (\d+)", self.text_log())
        if m and self.proc.poll() is None:
            os.kill(int(m.group(1)), signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None


# ---- LangChain ------------------------------------------------------------------------------------

def langchain_checks(srv):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    base = f"http://127.0.0.1:{srv.port}/v1"
    # max_tokens bounds every answer: the tiny model's context is 128 tokens.
    def llm(seed):
        return ChatOpenAI(base_url=base, api_key="x", model=srv.name, temperature=0.7, seed=seed, max_tokens=90)

    # The supported JSON Schema subset (docs/structured-output.md): no minimum/maximum/pattern.
    class GetWeather(BaseModel):
        """Get the current weather in a city."""
        city: str = Field(max_length=10, description="the city")
        unit: Literal["C", "F"]

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    class Person(BaseModel):
        name: str = Field(max_length=8)
        age: int
        married: bool

    class Pet(BaseModel):  # nested: its JSON schema has $defs and a $ref
        kind: Literal["cat", "dog", "fish"]
        owner: Person

    check("$defs" in Pet.model_json_schema(), "the nested pydantic model's schema has $defs / $ref")

    # bind_tools with a forced tool: tool_calls with that name, args that validate.
    for seed in (1, 2):
        msg = attempt(f"langchain bind_tools(GetWeather, tool_choice=GetWeather) seed {seed}",
                      lambda: llm(seed).bind_tools([GetWeather], tool_choice="GetWeather").invoke("Weather in Paris?"))
        if msg is not None:
            calls = msg.tool_calls
            ok = len(calls) == 1 and calls[0]["name"] == "GetWeather"
            ok = ok and attempt("GetWeather args validate", lambda: GetWeather.model_validate(calls[0]["args"]))
            check(bool(ok), f"langchain bind_tools pydantic, forced (seed {seed}) -> {calls}")
    msg = attempt("langchain bind_tools(@tool add, tool_choice=add)",
                  lambda: llm(3).bind_tools([add], tool_choice="add").invoke("What is 2 + 3?"))
    if msg is not None:
        calls = msg.tool_calls
        ok = len(calls) == 1 and calls[0]["name"] == "add"
        ok = ok and attempt("add args validate", lambda: add.args_schema.model_validate(calls[0]["args"]))
        check(bool(ok), f"langchain bind_tools @tool, forced -> {calls}")
    # tool_choice "any" is "required"; parallel_tool_calls=False holds it to one call.
    msg = attempt("langchain bind_tools(tool_choice=any, parallel_tool_calls=False)",
                  lambda: llm(4).bind_tools([add, GetWeather], tool_choice="any", parallel_tool_calls=False)
                  .invoke("Weather in Paris?"))
    if msg is not None:
        calls = msg.tool_calls
        ok = len(calls) == 1 and calls[0]["name"] in ("add", "GetWeather")
        if ok:
            schema = GetWeather if calls[0]["name"] == "GetWeather" else add.args_schema
            ok = attempt("the call's args validate", lambda: schema.model_validate(calls[0]["args"]))
        check(bool(ok), f"langchain bind_tools tool_choice=any, parallel_tool_calls=False: one call -> {calls}")
    # Streamed tool-call chunks add up to the same kind of call.
    def stream_tool():
        total = None
        n = 0
        for chunk in llm(5).bind_tools([GetWeather], tool_choice="GetWeather").stream("Weather in Rome?"):
            total = chunk if total is None else total + chunk
            n += 1
        return n, total
    got = attempt("langchain bind_tools .stream", stream_tool)
    if got is not None:
        n, total = got
        calls = total.tool_calls if total is not None else []
        ok = n > 1 and len(calls) == 1 and calls[0]["name"] == "GetWeather"
        ok = ok and attempt("streamed args validate", lambda: GetWeather.model_validate(calls[0]["args"]))
        check(bool(ok), f"langchain streamed forced tool call ({n} chunks) -> {calls}")

    # with_structured_output: every method, flat and nested. include_raw shows the finish
    # reason: a random model may run out of max_tokens inside the JSON (another seed then),
    # but a complete answer must parse and validate.
    for method in (None, "json_schema", "function_calling"):
        for model in (Person, Pet):
            label = f"langchain with_structured_output({model.__name__}, method={method or 'default'})"
            kw = {} if method is None else {"method": method}
            result, tries = None, []
            for seed in (11, 12, 13):
                out = attempt(label, lambda: llm(seed).with_structured_output(model, include_raw=True, **kw)
                              .invoke(f"Describe a {model.__name__.lower()}."))
                if out is None:
                    break
                finish = out["raw"].response_metadata.get("finish_reason")
                tries.append((seed, finish))
                if finish == "length":
                    continue
                result = out
                break
            if result is None:
                check(False, f"{label}: no complete answer ({tries})")
                continue
            check(isinstance(result["parsed"], model) and result["parsing_error"] is None,
                  f"{label} -> {result['parsed']!r} (error {result['parsing_error']!r}, tries {tries})")

    # Plain streaming chat.
    chunks = attempt("langchain .stream", lambda: list(llm(7).stream("Hello!")))
    if chunks is not None:
        text = "".join(c.content for c in chunks)
        check(len(chunks) > 3 and len(text) > 0, f"langchain .stream: {len(chunks)} chunks, {len(text)} chars")
    msg = attempt("langchain .invoke", lambda: llm(8).invoke("Hello!"))
    if msg is not None:
        usage = msg.usage_metadata or {}
        check(isinstance(msg.content, str) and usage.get("input_tokens", 0) > 0 and usage.get("output_tokens", 0) > 0,
              f"langchain .invoke: text and usage {usage}")
    # stream_usage sends stream_options.include_usage: the usage chunk adds up into the message.
    def stream_usage():
        total = None
        for chunk in ChatOpenAI(base_url=base, api_key="x", model=srv.name, max_tokens=5, seed=9,
                                stream_usage=True).stream("Hello!"):
            total = chunk if total is None else total + chunk
        return total
    total = attempt("langchain .stream(stream_usage=True)", stream_usage)
    if total is not None:
        usage = total.usage_metadata or {}
        check(usage.get("output_tokens") == 5 and usage.get("input_tokens", 0) > 0,
              f"langchain .stream with stream_usage: usage {usage}")
    msg = attempt("langchain logprobs", lambda: ChatOpenAI(base_url=base, api_key="x", model=srv.name, max_tokens=4,
                                                         seed=9, logprobs=True, top_logprobs=2).invoke("Hello!"))
    if msg is not None:
        content = (msg.response_metadata.get("logprobs") or {}).get("content") or []
        check(len(content) == 4 and all(len(x["top_logprobs"]) == 2 for x in content),
              f"langchain logprobs=True, top_logprobs=2: {len(content)} tokens")
    from langchain_core.messages import HumanMessage
    res = attempt("langchain n=2", lambda: ChatOpenAI(base_url=base, api_key="x", model=srv.name, max_tokens=4,
                                                      seed=9, n=2).generate([[HumanMessage("Hello!")]]))
    if res is not None:
        check(len(res.generations) == 1 and len(res.generations[0]) == 2, "langchain n=2: two generations")


# ---- LiteLLM --------------------------------------------------------------------------------------

def litellm_checks(srv):
    import jsonschema
    import litellm

    common = dict(model=f"openai/{srv.name}", api_base=f"http://127.0.0.1:{srv.port}/v1", api_key="x")
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                               "unit": {"enum": ["C", "F"]}},
              "required": ["city", "unit"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": params}},
             {"type": "function", "function": {"name": "get_time", "description": "Time in a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string", "maxLength": 10}},
                                                   "required": ["city"]}}}]
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]

    def valid_call(call, schemas):
        try:
            args = json.loads(call.function.arguments)
            jsonschema.validate(args, schemas[call.function.name])
            return True
        except Exception as e:  # noqa: BLE001
            print(f"     {call.function.name} {call.function.arguments!r}: {e}")
            return False

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    r = attempt("litellm tools, named tool_choice", lambda: litellm.completion(
        **common, messages=msgs, tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=90, temperature=0.7, seed=2))
    if r is not None:
        calls = r.choices[0].message.tool_calls or []
        check(len(calls) == 1 and calls[0].function.name == "get_weather" and valid_call(calls[0], schemas)
              and r.choices[0].finish_reason == "tool_calls",
              f"litellm forced get_weather -> {[(c.function.name, c.function.arguments) for c in calls]}"
              f" ({r.choices[0].finish_reason})")
    r = attempt("litellm tools, tool_choice required", lambda: litellm.completion(
        **common, messages=msgs, tools=tools, tool_choice="required", parallel_tool_calls=False,
        max_tokens=90, temperature=0.7, seed=3))
    if r is not None:
        calls = r.choices[0].message.tool_calls or []
        check(len(calls) == 1 and valid_call(calls[0], schemas),
              f"litellm tool_choice required, parallel_tool_calls false -> "
              f"{[(c.function.name, c.function.arguments) for c in calls]}")
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=10)
        country: Literal["FR", "IT", "DE"]
        capital: bool

    r = attempt("litellm response_format=<pydantic>", lambda: litellm.completion(
        **common, messages=msgs, response_format=City, max_tokens=90, temperature=0.7, seed=6))
    if r is not None:
        ok = r.choices[0].finish_reason == "stop" and attempt(
            "litellm response_format content validates", lambda: City.model_validate_json(r.choices[0].message.content))
        check(bool(ok), f"litellm response_format=City (json_schema) -> {r.choices[0].message.content!r}")
    r = attempt("litellm n=2", lambda: litellm.completion(**common, messages=msgs, n=2, max_tokens=6, seed=4))
    if r is not None:
        check(len(r.choices) == 2 and sorted(c.index for c in r.choices) == [0, 1]
              and all(isinstance(c.message.content, str) for c in r.choices),
              f"litellm n=2 -> {len(r.choices)} choices {[c.message.content for c in r.choices]}")
    def stream():
        return list(litellm.completion(**common, messages=msgs, max_tokens=6, seed=5, stream=True,
                                       stream_options={"include_usage": True}))
    chunks = attempt("litellm stream", stream)
    if chunks is not None:
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = [c.usage for c in chunks if getattr(c, "usage", None)]
        check(len(chunks) > 3 and len(text) > 0 and usage and usage[-1].completion_tokens == 6,
              f"litellm stream: {len(chunks)} chunks -> {text!r}, usage {usage[-1] if usage else None}")


# ---- lm-eval --------------------------------------------------------------------------------------

class Recorder(http.server.ThreadingHTTPServer):
    """A pass-through HTTP proxy that keeps every (request body, status, response body)."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.exchanges = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), RecorderHandler)


class RecorderHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _forward(self, method):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=300)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
        conn.request(method, self.path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if ARGS.mangle_logprobs and method == "POST" and r.status == 200:
            # Self-test of the checks: a server one logprob short (the generated token's).
            resp = json.loads(data)
            for c in resp.get("choices", []):
                for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    del c["logprobs"][key][-1]
            data = json.dumps(resp).encode()
        with self.server.lock:
            self.server.exchanges.append((method, self.path, body, r.status, data))
        self.send_response(r.status)
        self.send_header("Content-Type", r.getheader("Content-Type") or "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._forward("GET")

    def do_POST(self):
        self._forward("POST")


def completions_ok(srv):
    return srv.metrics().get('deepshard_http_requests_total{endpoint="/v1/completions",status="200"}', 0)


def lm_eval_checks(srv):
    proxy = Recorder(srv.port)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    out_dir = os.path.join(ARGS.workdir, "lm-eval-out")
    shutil.rmtree(out_dir, ignore_errors=True)
    before = completions_ok(srv)
    model_args = ",".join([
        f"model={srv.name}", f"base_url=http://127.0.0.1:{proxy.server_address[1]}/v1/completions",
        "tokenizer_backend=huggingface", f"tokenizer={ARGS.model}", "num_concurrent=1", "max_retries=1",
        "max_length=128"])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=os.path.join(ARGS.workdir, "hf-home"), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
           "--tasks", "deepshard_mc", "--include_path", ARGS.task_dir, "--output_path", out_dir, "--log_samples"]
    t0 = time.time()
    # data_files in the task YAML is relative: run in the task's folder.
    p = subprocess.run(cmd, cwd=ARGS.task_dir, env=env, capture_output=True, text=True, timeout=600)
    proxy.shutdown()
    print(p.stdout[-3000:])
    if not check(p.returncode == 0, f"lm-eval local-completions exits 0 ({time.time() - t0:.1f} s)"):
        print(p.stderr[-6000:])
        return
    results = sorted(glob.glob(os.path.join(out_dir, "**", "results_*.json"), recursive=True))
    samples = sorted(glob.glob(os.path.join(out_dir, "**", "samples_deepshard_mc_*.jsonl"), recursive=True))
    if not check(results and samples, f"lm-eval wrote results and samples under {out_dir}"):
        return
    with open(results[-1]) as f:
        acc = json.load(f)["results"]["deepshard_mc"].get("acc,none")
    check(isinstance(acc, (int, float)) and 0 <= acc <= 1, f"lm-eval deepshard_mc acc = {acc}")
    with open(samples[-1]) as f:
        docs = [json.loads(line) for line in f if line.strip()]
    # resps: per choice [[loglikelihood, is_greedy]], logged as strings.
    lls = [float(r[0][0]) for d in docs for r in d["resps"]]
    check(len(docs) == 10 and len(lls) == 40 and all(math.isfinite(x) and x < 0 for x in lls),
          f"lm-eval: 10 questions, 40 loglikelihoods, each finite and < 0 (a non-empty continuation)")
    argmax_acc = sum(max(range(len(d["resps"])), key=lambda i: float(d["resps"][i][0][0])) == int(d["target"])
                     for d in docs) / max(len(docs), 1)
    check(acc is not None and abs(argmax_acc - acc) < 1e-9, f"acc is the argmax of the loglikelihoods ({argmax_acc})")

    # What lm-eval sent and got: echo + logprobs; one logprob per prompt token (the first
    # null) plus the generated token, with top_logprobs and tokens of the same length.
    posts = [x for x in proxy.exchanges if x[0] == "POST"]
    check(len(posts) == 40 and all(x[1] == "/v1/completions" and x[3] == 200 for x in posts),
          f"the server answered lm-eval's 40 /v1/completions requests with 200 "
          f"({[(x[1], x[3]) for x in posts if x[3] != 200][:3]})")
    shapes_ok, bad = True, None
    for _, _, body, _, data in posts:
        req, resp = json.loads(body), json.loads(data)
        prompt = req.get("prompt")
        if prompt and isinstance(prompt[0], list):
            prompt = prompt[0]
        try:
            lp = resp["choices"][0]["logprobs"]
            n = len(prompt) + req["max_tokens"]
            ok = (req.get("echo") is True and req.get("logprobs", 0) >= 1 and all(isinstance(t, int) for t in prompt)
                  and len(lp["token_logprobs"]) == n and lp["token_logprobs"][0] is None
                  and all(isinstance(x, float) and x <= 0 for x in lp["token_logprobs"][1:])
                  and len(lp["top_logprobs"]) == n and len(lp["tokens"]) == n and len(lp["text_offset"]) == n
                  and all(len(t) >= 1 and max(t.values()) >= lp["token_logprobs"][i] - 1e-5
                          for i, t in enumerate(lp["top_logprobs"]) if i > 0))
        except (KeyError, TypeError, IndexError) as e:
            ok = False
            print(f"     {type(e).__name__}: {e}")
        if not ok:
            shapes_ok, bad = False, (req, resp)
            break
    check(shapes_ok, "every request is echo + logprobs with token-id prompts; every answer has a logprob per prompt "
                     "token (the first null) and per generated token, tokens/top_logprobs/text_offset alike"
                     + (f"\n     request {json.dumps(bad[0])[:600]}\n     response {json.dumps(bad[1])[:1500]}"
                        if bad else ""))
    # Each loglikelihood lm-eval reports is the sum of the server's logprobs of exactly the
    # continuation's tokens: the echoed tokens spell context + continuation (then the one
    # generated token), and the continuation is a suffix of them.
    answers = []
    for _, _, body, _, data in posts:
        try:
            lp = json.loads(data)["choices"][0]["logprobs"]
            answers.append((lp["tokens"][:-1], lp["token_logprobs"][:-1]))
        except (KeyError, TypeError, IndexError, ValueError):
            pass
    mismatched = []
    for d in docs:
        for i, r in enumerate(d["resps"]):
            ctx, cont = d["arguments"][f"gen_args_{i}"]["arg_0"], d["arguments"][f"gen_args_{i}"]["arg_1"]
            sums = [sum(tlp[k:]) for toks, tlp in answers if "".join(toks) == ctx + cont
                    for k in range(1, len(toks)) if "".join(toks[k:]) == cont]
            if not any(abs(x - float(r[0][0])) < 1e-4 for x in sums):
                mismatched.append((d["doc_id"], cont, r[0][0], sums))
    check(not mismatched, f"every lm-eval loglikelihood = the sum of the echoed logprobs of its continuation's "
                          f"tokens {mismatched[:3]}")
    after = completions_ok(srv)
    check(after - before == 40, f"/metrics: {after - before:.0f} more /v1/completions 200s")


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--deepshard", required=True)
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--task-dir", required=True)
    ap.add_argument("--only", default="langchain,litellm,lm-eval")
    ap.add_argument("--mangle-logprobs", action="store_true",
                    help="self-test: the proxy drops the last logprob of each answer lm-eval gets (must FAIL)")
    ARGS = ap.parse_args()
    only = set(ARGS.only.split(","))
    import importlib.metadata as md
    print("clients: " + ", ".join(f"{p} {md.version(p)}" for p in
                                   ("langchain-openai", "langchain-core", "openai", "litellm", "lm_eval",
                                    "transformers", "datasets")), flush=True)
    t0 = time.time()
    srv = Server()
    print(f"server up on port {srv.port} (model {srv.name!r}) in {time.time() - t0:.1f} s", flush=True)
    try:
        for name, fn in (("langchain", langchain_checks), ("litellm", litellm_checks), ("lm-eval", lm_eval_checks)):
            if name in only:
                t = time.time()
                print(f"--- {name}", flush=True)
                attempt(name, lambda: fn(srv))
                print(f"--- {name}: {time.time() - t:.1f} s", flush=True)
    finally:
        rc = srv.stop()
    check(rc == 0, f"server drained on SIGTERM, mpirun exit {rc}")
    if FAILURES:
        print(f"\n{len(FAILURES)} FAILED (server log: {srv.log_path}):")
        for f in FAILURES:
            print("  " + f.splitlines()[0][:300])
        sys.exit(1)
    print(f"\nall client checks passed in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
