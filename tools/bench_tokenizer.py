#!/usr/bin/env python3
"""Encode throughput of deepshard's tokenizer next to Hugging Face `tokenizers`, in one run.

Both encode the same inputs on one thread (HF: TOKENIZERS_PARALLELISM=false and
RAYON_NUM_THREADS=1), without special tokens, after one warm-up pass (which fills both
BPE caches); the best of --reps passes counts. The reference ids are handed to the C++
benchmark, which checks every sequence (#wrong) and prints the table.

Input sets:
  corpus        the tokenizer test corpus (tests/data/tokenizers/corpus.json, 573 entries),
                each string encoded on its own (short strings: per-call overhead matters)
  long-doc      one long document: this repository's Markdown docs and C++ sources,
                concatenated in sorted path order (English prose and code)
  long-multi    one long multilingual document: the corpus texts joined by newlines, 8 times

Usage (from the repository root, after building deepshard_bench_tokenizer):
  /work/venv-ref/bin/python tools/bench_tokenizer.py [--tokenizer DIR] [--reps N]
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import tokenizers  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def load_corpus():
    with open(os.path.join(ROOT, "tests/data/tokenizers/corpus.json"), encoding="utf-8") as f:
        entries = json.load(f)
    inputs, texts = [], []
    for e in entries:
        if "text" in e:
            inputs.append({"text": e["text"]})
            texts.append(e["text"])
        else:
            inputs.append({"hex": e["hex"]})
            texts.append(bytes.fromhex(e["hex"]).decode("utf-8", errors="replace"))
    return inputs, texts


def long_doc():
    paths = []
    for pattern in ("*.md", "docs/**/*.md", "runtime/**/*.md", "kernels/**/*.h", "kernels/**/*.cc",
                    "comm/**/*.h", "comm/**/*.cc", "runtime/**/*.h", "runtime/**/*.cc",
                    "launcher/**/*.h", "launcher/**/*.cc"):
        paths += glob.glob(os.path.join(ROOT, pattern), recursive=True)
    parts = []
    for p in sorted(set(paths)):
        with open(p, encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
    return "\n".join(parts)


def best_time(fn, reps):
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "tests/data/tokenizers/deepseek-v3"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "build/tests/bench/deepshard_bench_tokenizer"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default="", help="also write the C++ benchmark's JSON summary here")
    args = ap.parse_args()

    tok = tokenizers.Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    corpus_inputs, corpus_texts = load_corpus()
    doc = long_doc()
    multi = "\n".join(corpus_texts) * 8
    sets = [("corpus", corpus_inputs, corpus_texts), ("long-doc", [{"text": doc}], [doc]),
            ("long-multi", [{"text": multi}], [multi])]

    out_sets = []
    for name, inputs, texts in sets:
        def encode_each(texts=texts):
            return [tok.encode(t, add_special_tokens=False).ids for t in texts]

        def encode_batch(texts=texts):
            return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

        ids = encode_each()
        t_each = best_time(encode_each, args.reps)
        t_batch = best_time(encode_batch, args.reps)
        out_sets.append({"name": name, "inputs": inputs, "ids": ids,
                         "ref_seconds": {"encode": t_each, "encode_batch": t_batch}})
        mb = sum(len(t.encode()) for t in texts) / 1e6
        print(f"# reference {name}: {mb:.3f} MB, encode {mb / t_each:.2f} MB/s, "
              f"encode_batch {mb / t_batch:.2f} MB/s (tokenizers {tokenizers.__version__})", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"sets": out_sets}, f, ensure_ascii=False)
        cmd = [args.bench, "--tokenizer", args.tokenizer, "--inputs", path, "--reps", str(args.reps)]
        if args.json:
            cmd += ["--json", args.json]
        return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
