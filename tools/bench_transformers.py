#!/usr/bin/env python3
"""Prefill and batch-1 decode speed of Hugging Face transformers (PyTorch, CPU, bf16) on a model directory.

The reference side of tools/bench_cpu_engines.sh, timed the way deepshard_bench_forward times
deepshard, on the same token ids:

  prefill   --prompt tokens (ids (i * 7919 + 13) % (vocab - 2) + 2), a fresh cache each time,
            median of 3; only the last position's logits are computed (logits_to_keep=1, what
            generate() does), as deepshard and llama.cpp do;
  decode    --decode-steps greedy steps with past_key_values after the last prefill, each step
            timed on its own; the median step counts.

Prints one JSON object on stdout (tok/s, the raw times, versions). When transformers cannot
load or run the model it prints {"error": "..."} and exits with status 3: no number is made up.

  python tools/bench_transformers.py --model DIR [--threads N] [--prompt 512] [--decode-steps 32]
"""

import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face layout model directory")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    ap.add_argument("--prompt", type=int, default=512, help="prefill length (default 512)")
    ap.add_argument("--decode-steps", type=int, default=32, help="decode steps after the prompt (default 32)")
    ap.add_argument("--prefill-reps", type=int, default=3, help="prefills, median counts (default 3)")
    args = ap.parse_args()
    if args.threads < 1 or args.prompt < 1 or args.decode_steps < 1 or args.prefill_reps < 1:
        ap.error("--threads, --prompt, --decode-steps and --prefill-reps must be >= 1")

    def fail(msg):
        print(json.dumps({"engine": "transformers", "error": msg}))
        sys.exit(3)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    try:
        cfg = AutoConfig.from_pretrained(args.model)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        fail(f"transformers {transformers.__version__} cannot read {args.model}/config.json: {type(e).__name__}: {e}")
    t0 = time.perf_counter()
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
        except TypeError:  # transformers before 4.56 only knows torch_dtype
            model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.bfloat16)
    except Exception as e:  # noqa: BLE001
        fail(f"transformers {transformers.__version__} cannot load model_type {getattr(cfg, 'model_type', '?')!r}: "
             f"{type(e).__name__}: {e}")
    model.eval()
    load_s = time.perf_counter() - t0

    vocab = cfg.vocab_size
    ids = torch.tensor([[(i * 7919 + 13) % (vocab - 2) + 2 for i in range(args.prompt)]], dtype=torch.long)

    def forward(input_ids, past=None):
        return model(input_ids=input_ids, past_key_values=past, use_cache=True, logits_to_keep=1)

    prefill_s = []
    try:
        with torch.inference_mode():
            for _ in range(args.prefill_reps):
                t = time.perf_counter()
                out = forward(ids)
                prefill_s.append(time.perf_counter() - t)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            step_s = []
            nonfinite = 0
            for _ in range(args.decode_steps):
                t = time.perf_counter()
                out = forward(tok, past)
                step_s.append(time.perf_counter() - t)
                past = out.past_key_values
                nonfinite += int((~torch.isfinite(out.logits.float())).sum())
                tok = out.logits[:, -1:].argmax(-1)
    except Exception as e:  # noqa: BLE001
        fail(f"forward failed: {type(e).__name__}: {e}")

    pre = statistics.median(prefill_s)
    dec = statistics.median(step_s)
    print(json.dumps({
        "engine": "transformers",
        "weights": "bf16",
        "prefill_tok_s": args.prompt / pre,
        "decode_tok_s": 1.0 / dec,
        "prefill_s": prefill_s,
        "decode_step_s": step_s,
        "nonfinite_logits": nonfinite,
        "load_s": load_s,
        "threads": torch.get_num_threads(),
        "model_type": cfg.model_type,
        "model_class": type(model).__name__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()
