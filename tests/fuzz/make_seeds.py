#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/ (checked in; rerun to regenerate)."""
import json, os, struct

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(ROOT, "..", "data")
C = os.path.join(ROOT, "corpus")


def put(target, name, data):
    d = os.path.join(C, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# safetensors: u64 header length, JSON header, data.
def safetensors(tensors, meta=None):
    hdr, data = {}, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I64": 8, "I32": 4, "U8": 1}
    for name, dt, shape in tensors:
        n = 1
        for s in shape:
            n *= s
        b = bytes((i * 37 + 11) & 255 for i in range(n * sizes[dt]))
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

put("safetensors_fuzz", "basic", safetensors([("w", "F32", [2, 3]), ("b", "BF16", [3])], {"format": "pt"}))
put("safetensors_fuzz", "fp8", safetensors([("q.weight", "F8_E4M3", [3, 5]), ("q.weight_scale_inv", "F32", [1, 1]),
                                            ("ids", "I64", [2]), ("empty", "F16", [2, 0])]))
put("safetensors_fuzz", "empty", safetensors([]))
put("safetensors_fuzz", "scalar", safetensors([("s", "F32", []), ("u", "U8", [4])], {}))

# config.json: the committed DeepSeek configs.
for m in sorted(os.listdir(os.path.join(DATA, "configs"))):
    p = os.path.join(DATA, "configs", m, "config.json")
    if os.path.exists(p):
        put("config_fuzz", m, open(p, "rb").read())

# tokenizer.json: tiny hand-made ones (byte-level BPE, Metaspace BPE, WordLevel-ish), then NUL and text.
bytelevel_vocab = {}
def bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return dict(zip(bs, [chr(c) for c in cs]))
b2u = bytes_to_unicode()
for i, b in enumerate(sorted(b2u)):
    bytelevel_vocab[b2u[b]] = i
merges = [("H", "e"), ("l", "l"), ("He", "ll"), ("Hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"),
          ("Ġwor", "ld")]
for a, b in merges:
    bytelevel_vocab.setdefault(a + b, len(bytelevel_vocab))
BEGIN = len(bytelevel_vocab)  # added tokens take the next ids
bl = {
    "version": "1.0",
    "added_tokens": [
        {"id": BEGIN, "content": "<|begin|>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True},
        {"id": BEGIN + 1, "content": "<|x|>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}]},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<|begin|>", "type_id": 0}},
                                  {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                       "special_tokens": {"<|begin|>": {"id": "<|begin|>", "ids": [BEGIN], "tokens": ["<|begin|>"]}}},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": bytelevel_vocab, "merges": [a + " " + b for a, b in merges]},
}
put("tokenizer_fuzz", "bytelevel", json.dumps(bl) + "\0Hello world 12345 <|x|> caf\u00e9")
sp_vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3, "a": 4, "b": 5, "c": 6, "\u2581a": 7, "ab": 8, "<0x41>": 9,
            "<0xE4>": 10, "<0xBD>": 11, "<0xA0>": 12}
sp = {
    "version": "1.0",
    "added_tokens": [{"id": 0, "content": "<unk>", "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True},
                     {"id": 1, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                        {"type": "Replace", "pattern": {"String": " "},
                                                         "content": "\u2581"}]},
    "pre_tokenizer": None,
    "post_processor": None,
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
              "vocab": sp_vocab, "merges": [["\u2581", "a"], ["a", "b"]]},
}
put("tokenizer_fuzz", "sentencepiece", json.dumps(sp) + "\0ab a cab A\u4f60 z")
put("tokenizer_fuzz", "no_text", json.dumps(sp))

# chat templates: the committed fixtures' templates, each with its first case's messages.
t = json.load(open(os.path.join(DATA, "chat_templates", "templates.json")))
for name, src in t["templates"].items():
    msgs = next((c["messages"] for c in t["cases"] if c["template"] == name), [])
    put("chat_template_fuzz", name, src + "\0" + json.dumps(msgs))
v3 = json.load(open(os.path.join(DATA, "chat_templates", "deepseek_v3.json")))
put("chat_template_fuzz", "deepseek_v3", v3["template"])
put("chat_template_fuzz", "snippet", "{% set ns = namespace(x=0) %}{% for m in messages %}{{ loop.index }}:"
    "{{ m.role | upper }} {{ m.content | tojson }}{% if m.tool_calls %}{{ m.tool_calls[0].function.name }}"
    "{% endif %}{% set ns.x = ns.x + 1 %}{% endfor %}{{ ns.x }}{{ 'a,b' .split(',') | join('-') }}"
    "{% if add_generation_prompt %}<assistant>{% endif %}{{ raise_exception('x') if false }}")

# OpenAI request bodies.
reqs = {
    "completion": {"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9,
                   "stop": ["\n", "."], "logprobs": 2, "echo": True, "n": 2, "seed": 3},
    "completion_ids": {"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 4, "logit_bias": {"5": -100},
                       "stream": True, "stream_options": {"include_usage": True}},
    "chat": {"model": "tiny", "messages": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
             "max_tokens": 16, "logprobs": True, "top_logprobs": 3, "stop_token_ids": [7],
             "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                 "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}},
    "chat_tools": {"messages": [{"role": "user", "content": "weather?"},
                                {"role": "assistant", "content": None, "tool_calls": [
                                    {"id": "c1", "type": "function",
                                     "function": {"name": "get", "arguments": "{\"city\": \"Paris\"}"}}]},
                                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
                   "tools": [{"type": "function", "function": {"name": "get", "parameters": {
                       "type": "object", "properties": {"city": {"type": "string"}}}}}],
                   "tool_choice": "required", "parallel_tool_calls": False,
                   "chat_template_kwargs": {"thinking": True}, "presence_penalty": 0.5,
                   "repetition_penalty": 1.1, "min_p": 0.05, "top_k": -1},
}
for k, v in reqs.items():
    put("openai_request_fuzz", k, json.dumps(v))

# wire: a plan, results and stats in the step_plan.cc format (first byte picks the decoder).
def u8(v): return struct.pack("<B", v)
def i32(v): return struct.pack("<i", v)
def i64(v): return struct.pack("<q", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)
def f32(v): return struct.pack("<f", v)
def f64(v): return struct.pack("<d", v)
def i32v(xs): return u64(len(xs)) + b"".join(i32(x) for x in xs)
sampling = f32(0.7) + i64(5) + f32(0.9) + f32(0.0) + u64(42) + f32(0) + f32(0) + f32(1.0) + i64(0) + i32v([2]) + \
    u64(1) + i32(3) + f32(-1.5)
chunk = i64(7) + i64(0) + u8(1 | 8) + i32(2) + i64(3) + i32(5) + sampling + i32v([1, 2, 3]) + u64(1) + u64(0xff) + \
    i32v([1, 2, 3]) + i32v([0])
plan = u32(2) + i64(11) + u64(2) + u64(1) + chunk + u64(0) + u64(2) + u64(1) + i32(0) + i32(1) + u64(0) + u64(1) + i64(4)
put("wire_fuzz", "plan", u8(0) + plan)
logprob = i32(3) + f32(-0.5) + u64(1) + i32(4) + f32(-1.0)
res = i64(7) + i64(3) + i32(9) + u8(1 | 2 | 4) + u64(2) + f32(0.5) + f32(-1) + logprob + u64(1) + logprob
put("wire_fuzz", "results", u8(1) + u32(2) + i64(11) + i32(0) + u64(1) + res)
put("wire_fuzz", "stats", u8(2) + u32(1) + f64(0.1) * 5 + i64(3) + i64(1) + i64(2) + u64(4) + i64(1) * 4)
put("wire_fuzz", "reader", u8(3) + bytes([0, 1, 2, 3, 7, 8, 9 + 16, 4]) + b"\x01" + i32(5) + i64(6) + u32(7) +
    u64(2) + b"ab" + i32v([1]) + b"x")

# wire: a worker's connection as rank 0 reads it (first byte 4): hello, results,
# heartbeat with stats, plan, drain.
def frame(ftype, payload):
    return u32(0x50435344) + u32(ftype) + u64(len(payload)) + payload
stats = u32(1) + f64(0.1) * 5 + i64(3) + i64(1) + i64(2) + u64(4) + i64(1) * 4
put("wire_fuzz", "connection", u8(4) + frame(1, i32(1) + b"0123456789abcdef" * 4) +
    frame(4, u32(2) + i64(11) + i32(0) + u64(1) + res) + frame(5, stats) + frame(5, b"") + frame(3, plan) +
    frame(8, b""))
put("wire_fuzz", "connection_bad_hello", u8(4) + frame(1, b"ab"))

# HTTP: one byte of server options (bit 0 API key "sk-fuzz", bits 1-2 CORS off / one
# origin / "*", bit 3 small limits), then what a client sends on one connection.
H = "deepseek-ai/DeepSeek-V3"
body = json.dumps(reqs["completion"] | {"model": H})
chat = json.dumps(reqs["chat"] | {"model": H})
http_seeds = {
    "health": (0, "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    "keepalive_pipeline": (1, "GET /v1/models HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer sk-fuzz\r\n\r\n"
                              "POST /v1/completions HTTP/1.1\r\nHost: a\r\nAuthorization: bearer sk-fuzz\r\n"
                              "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                              "POST /v1/chat/completions?x=1 HTTP/1.1\r\nAuthorization: Bearer sk-fuzz\r\n"
                              "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                              % (len(body), body, len(chat), chat)),
    "preflight": (2, "OPTIONS /v1/chat/completions HTTP/1.1\r\nOrigin: https://app.example\r\n"
                     "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n"
                     "OPTIONS /v1/models HTTP/1.1\r\nOrigin: https://evil.example\r\n\r\n"),
    "any_origin_head_model": (4, "HEAD /v1/models/deepseek-ai%2FDeepSeek-V3 HTTP/1.0\r\nOrigin: https://x\r\n"
                                 "Connection: keep-alive\r\n\r\nGET /v1/models/gpt-4 HTTP/1.1\r\n\r\n"
                                 "GET /v1/models/%zz HTTP/1.1\r\n\r\n"),
    "errors_405_404_401": (1, "GET /v1/completions HTTP/1.1\r\nAuthorization: Bearer sk-fuzz\r\n\r\n"
                              "DELETE /metrics HTTP/1.1\r\nAuthorization: Bearer sk-fuzz\r\n\r\n"
                              "GET /nowhere HTTP/1.1\r\nAuthorization: Bearer sk-fuzz\r\n\r\n"
                              "GET /metrics HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n"),
    "expect_continue_tokenize": (0, "POST /tokenize HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 18\r\n\r\n"
                                    "{\"prompt\": \"hi\"}  POST /detokenize HTTP/1.1\r\nContent-Length: 16\r\n\r\n"
                                    "{\"tokens\": [1]} "),
    "body_413": (8, "POST /v1/completions HTTP/1.1\r\nContent-Length: 300\r\n\r\n" + "x" * 300),
    "chunked_413": (8, "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "100\r\n" + "y" * 256 + "\r\n10\r\n" + "z" * 16 + "\r\n0\r\n\r\n"),
    "header_431": (8, "GET /health HTTP/1.1\r\nX-Filler: " + "f" * 600 + "\r\n\r\n"),
    "malformed": (0, "GET /health HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"),
    "truncated": (0, "POST /v1/completions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"prompt\":"),
}
for name, (opt, text) in http_seeds.items():
    put("http_request_fuzz", name, bytes([opt]) + text.encode())
