#!/usr/bin/env python3
"""Golden-logit fixtures for deepshard, computed with PyTorch + Hugging Face transformers.

For every variant in VARIANTS this script
  1. runs `deepshard make-model` to write a small random checkpoint (config.json + safetensors),
  2. loads it in float32 (FP8 blocks dequantised, BF16 upcast, the V3 MTP layer dropped),
  3. runs the reference model (eager attention, float32, CPU) on three fixed prompts and a
     16-step greedy decode through the KV cache,
  4. writes tests/data/golden/<variant>.safetensors.

The reference follows the semantics of DeepSeek's original `modeling_deepseek.py` files (the ones
published with the checkpoints). Native transformers classes are used where they exist, with every
known disagreement patched (see `build_native` and docs/reference-models.md); when the original
files are given, the original code is run as well and the patched native numbers must match it.

Usage (from the repository root, inside the venv of tools/reference/requirements.txt):
  python tools/reference/make_fixtures.py                 # regenerate all fixtures
  python tools/reference/make_fixtures.py --check         # compare with committed fixtures, write nothing
  python tools/reference/make_fixtures.py --variants tiny-v3-f32,tiny-v2-f32

Quantised variants (QUANT_VARIANTS, e.g. tiny-v3-bf16-int4) use the checkpoint of their base
variant with every tensor that `--weights int8|int4` quantises replaced by its quantise-dequantise
image (kernels/quant.h, reimplemented here in numpy); they also print the accuracy of that format
against the unquantised reference.
"""

import argparse
import copy
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch
import torch.nn.functional as F

import safetensors
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# ----------------------------------------------------------------------------------------------
# What gets generated.
# ----------------------------------------------------------------------------------------------

# (variant name, make-model preset, make-model dtype, extra make-model flags)
VARIANTS = [
    ("tiny-v3-f32", "tiny-v3", "f32", []),
    ("tiny-v3-fp8", "tiny-v3", "fp8", []),
    ("tiny-v3-bf16", "tiny-v3", "bf16", []),
    ("tiny-v3-noyarn-f32", "tiny-v3", "f32", ["--no-yarn"]),
    ("tiny-v2-f32", "tiny-v2", "f32", []),
    ("tiny-v2-lite-f32", "tiny-v2-lite", "f32", []),
    ("tiny-moe16b-f32", "tiny-moe16b", "f32", []),
]
# Quantised variants (--weights int8|int4): the reference runs the quantise-dequantise image of the
# tensors deepshard quantises at load (see quantize_state_dict). variant -> (base variant, format).
QUANT_VARIANTS = {
    "tiny-v3-bf16-int8": ("tiny-v3-bf16", "int8"),
    "tiny-v3-bf16-int4": ("tiny-v3-bf16", "int4"),
    "tiny-v2-lite-f32-int4": ("tiny-v2-lite-f32", "int4"),
}
QUANT_GROUP = 32            # --weights-group for every quantised variant
VARIANTS += [(name, *next(v[1:] for v in VARIANTS if v[0] == base)) for name, (base, _) in QUANT_VARIANTS.items()]
SEED = 1                    # make-model --seed for every variant
PROMPT_SEED = 1234          # numpy RandomState seed for the prompt token ids
PROMPT_LENGTHS = (5, 17, 45)  # drawn in this order: RandomState(1234).randint(2, vocab, size=L)
DECODE_PROMPT = 2           # greedy decode starts from prompt 2 (length 45)
DECODE_STEPS = 16
DECODE_RECOMPUTE_TOL = 1e-4  # cached decode vs full recompute (float32; typically ~1e-6)
ORIGINAL_MATCH_TOL = 1e-4    # patched native vs original code (float32; typically ~1e-6)

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_ORIGINALS = "/work/ref-originals"

# Keys whose defaults differ between the original config classes and the native ones (or that the
# C++ runtime must not guess): a checkpoint for the fixtures has to spell them out.
REQUIRED_KEYS_COMMON = [
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings", "hidden_act",
    "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
    "first_k_dense_replace", "norm_topk_prob", "scoring_func",
]
REQUIRED_KEYS_MLA = [
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "topk_method", "n_group", "topk_group", "routed_scaling_factor",
]
REQUIRED_KEYS = {
    "deepseek_v3": REQUIRED_KEYS_COMMON + REQUIRED_KEYS_MLA,
    "deepseek_v2": REQUIRED_KEYS_COMMON + REQUIRED_KEYS_MLA,
    "deepseek": REQUIRED_KEYS_COMMON + ["num_key_value_heads"],
}

# ----------------------------------------------------------------------------------------------
# Checkpoint handling.
# ----------------------------------------------------------------------------------------------


def fnv1a64_of_model_dir(model_dir):
    """FNV-1a 64 over the bytes of all *.safetensors files, concatenated in sorted filename order."""
    h, prime, mask = 0xCBF29CE484222325, 0x100000001B3, 0xFFFFFFFFFFFFFFFF
    for name in sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors")):
        with open(os.path.join(model_dir, name), "rb") as f:
            data = f.read()
        for b in data:
            h = ((h ^ b) * prime) & mask
    return "%016x" % h


def dequantize_fp8_block(w8, scale_inv, block):
    """w8: F8_E4M3 [N, K]; scale_inv: F32 [ceil(N/bn), ceil(K/bk)]; returns w8 * scale_inv per block.

    Partial edge blocks use the scale of the block they fall in (the expanded scale grid is cut to
    [N, K]). The product is one float32 multiply per element.
    """
    bn, bk = block
    n, k = w8.shape
    want = (-(-n // bn), -(-k // bk))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"scale_inv shape {tuple(scale_inv.shape)} != {want} for weight {tuple(w8.shape)}")
    s = scale_inv.float().repeat_interleave(bn, dim=0).repeat_interleave(bk, dim=1)[:n, :k]
    return w8.float() * s


def load_checkpoint(model_dir, cfg):
    """Reads all tensors of a checkpoint directory as float32, ready for load_state_dict(strict=True)."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = ["model.safetensors"]
        weight_map = None
    raw = {}
    for fn in files:
        with safe_open(os.path.join(model_dir, fn), framework="pt") as f:
            for key in f.keys():
                if key in raw:
                    raise ValueError(f"tensor {key} appears in more than one shard")
                if weight_map is not None and weight_map.get(key) != fn:
                    raise ValueError(f"tensor {key} is in {fn} but the index says {weight_map.get(key)}")
                raw[key] = f.get_tensor(key)
    if weight_map is not None and set(weight_map) != set(raw):
        raise ValueError(f"index lists tensors that are missing: {sorted(set(weight_map) - set(raw))[:5]}")

    qc = cfg.get("quantization_config")
    block = None
    if qc is not None:
        if qc.get("quant_method") != "fp8" or qc.get("fmt", "e4m3") != "e4m3":
            raise ValueError(f"unsupported quantization_config {qc}")
        block = tuple(qc.get("weight_block_size", [128, 128]))

    # MTP: V3 checkpoints carry num_nextn_predict_layers extra layers after the last decoder layer.
    n_layers = cfg["num_hidden_layers"]
    n_mtp = cfg.get("num_nextn_predict_layers", 0) or 0
    mtp_prefixes = tuple(f"model.layers.{n_layers + i}." for i in range(n_mtp))

    out, dropped = {}, 0
    for key, t in raw.items():
        if key.endswith("_scale_inv"):
            if key[: -len("_scale_inv")] not in raw:
                raise ValueError(f"{key} has no weight tensor")
            continue
        if mtp_prefixes and key.startswith(mtp_prefixes):
            dropped += 1
            continue
        if t.dtype == torch.float8_e4m3fn:
            if block is None:
                raise ValueError(f"{key} is F8_E4M3 but config.json has no quantization_config")
            if key + "_scale_inv" not in raw:
                raise ValueError(f"{key} is F8_E4M3 but {key}_scale_inv is missing")
            out[key] = dequantize_fp8_block(t, raw[key + "_scale_inv"], block)
        elif t.dtype in (torch.float32, torch.bfloat16, torch.float16):
            if key + "_scale_inv" in raw:
                raise ValueError(f"{key} has a _scale_inv but is {t.dtype}")
            out[key] = t.to(torch.float32)  # exact for bf16/f16
        else:
            raise ValueError(f"{key}: unsupported dtype {t.dtype}")
    return out, dropped


def model_config_for_torch(cfg):
    """config.json as the torch model should see it: no quantization (weights are already float32)."""
    c = copy.deepcopy(cfg)
    c.pop("quantization_config", None)
    c["torch_dtype"] = "float32"
    for k in ("auto_map",):
        c.pop(k, None)
    return c


# ----------------------------------------------------------------------------------------------
# --weights int8|int4: group quantisation as specified in kernels/quant.h, written out independently.
# ----------------------------------------------------------------------------------------------

# The tensors deepshard quantises (runtime/model/deepseek_model.cc, UploadWeights): attention's
# q/q_a/q_b/kv_a/o (MHA: q/k/v/o), every dense, routed-expert and shared-expert MLP projection, and
# the LM head. Not kv_b_proj, the router (mlp.gate.weight), the embedding, norms or biases.
QUANTIZED_TENSOR_RE = re.compile(
    r"^lm_head\.weight$"
    r"|^model\.layers\.\d+\.self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|k_proj|v_proj|o_proj)\.weight$"
    r"|^model\.layers\.\d+\.mlp\.(experts\.\d+\.|shared_experts\.)?(gate_proj|up_proj|down_proj)\.weight$")


def f16_scale_up(d):
    """float32 scales -> float16 bits: round to nearest even, then one f16 step away from zero where
    that rounding made the magnitude smaller (so no |w / d| exceeds 127 or 8)."""
    h = d.astype(np.float16)  # IEEE round-to-nearest-even, subnormals included
    ht = torch.from_numpy(d).to(torch.float16).numpy()  # second opinion on the rounding
    if not np.array_equal(h.view(np.uint16), ht.view(np.uint16)):
        raise AssertionError("numpy and torch disagree on float32 -> float16 rounding")
    bits = h.view(np.uint16).copy()
    shrunk = np.abs(h.astype(np.float32)) < np.abs(d)
    bits[shrunk] += 1  # same sign bit: the next magnitude up
    return bits.view(np.float16)


def quantize_dequantize(w, fmt, group):
    """The float32 image of a [N, K] float32 weight after --weights int8|int4 with `group` columns
    per scale (kernels/quant.h):

      int8: d = f16up(amax / 127), q = clamp(rint(w / d), -127, 127),      w' = q * d
      int4: d = f16up(m / -8),     q = clamp(rint(w / d) + 8, 0, 15),      w' = (q - 8) * d
            m = the group's value of largest magnitude, the first one on ties

    d is computed in float32; w / d is a float32 division by the f16 scale; rint is half-to-even.
    An all-zero group has d = 0 (int4: -0.0) and w' = 0. q * d is exact in float32.
    """
    x = w.detach().to(torch.float32).contiguous().numpy()
    n, k = x.shape
    if k % group:
        raise ValueError(f"{k} columns are not a multiple of the group {group}")
    g = x.reshape(n, k // group, group)
    first = np.argmax(np.abs(g), axis=-1)[..., None]  # argmax returns the first maximum
    m = np.take_along_axis(g, first, axis=-1)[..., 0]
    m = np.where(np.abs(m) > 0, m, np.float32(0.0)).astype(np.float32)  # all-zero group: m = +0
    if fmt == "int8":
        d32 = (np.abs(m) / np.float32(127.0)).astype(np.float32)
    elif fmt == "int4":
        d32 = (m / np.float32(-8.0)).astype(np.float32)
    else:
        raise ValueError(f"unknown weight format {fmt!r}")
    assert d32.dtype == np.float32
    d = f16_scale_up(d32).astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (g / d).astype(np.float32)  # float32 / float32: one IEEE division
    assert ratio.dtype == np.float32
    v = np.where(d == 0, np.float32(0.0), np.rint(ratio)).astype(np.float32)
    # q is stored as an integer (so a rint of -0.0 is plain 0) and widened back to float32.
    if fmt == "int8":
        q = np.clip(v, -127.0, 127.0).astype(np.int32)
    else:
        q = np.clip(v + np.float32(8.0), 0.0, 15.0).astype(np.int32) - 8
    out = (q.astype(np.float32) * d).astype(np.float32)
    if fmt == "int8":
        assert np.all(np.abs(np.rint(ratio[np.broadcast_to(d != 0, ratio.shape)])) <= 127)
    return torch.from_numpy(out.reshape(n, k))


def quantize_state_dict(state, cfg, fmt, group):
    """Replaces, in place, every tensor that deepshard quantises by its quantise-dequantise image.
    Returns (quantised tensor names, names kept because their columns are not a multiple of group)."""
    if cfg.get("tie_word_embeddings"):
        raise ValueError("tied embeddings: deepshard quantises lm_head but not embed_tokens")
    if cfg.get("quantization_config") is not None:
        raise ValueError("fp8 checkpoint: the quantised fixtures assume weights deepshard would quantise "
                         "without --quantize-fp8")
    done, kept = [], []
    for key in sorted(state):
        if not QUANTIZED_TENSOR_RE.match(key):
            continue
        t = state[key]
        if t.dim() != 2:
            raise ValueError(f"{key}: expected a matrix, got shape {tuple(t.shape)}")
        if t.shape[1] % group:
            kept.append(key)
            continue
        state[key] = quantize_dequantize(t, fmt, group)
        done.append(key)
    return done, kept


def rel_logit_err(ours, ref):
    """Max over rows of max|ours - ref| / max|ref| (the C++ tests' RowRelErr)."""
    ours, ref = ours.reshape(-1, ref.shape[-1]).double(), ref.reshape(-1, ref.shape[-1]).double()
    return float(((ours - ref).abs().amax(dim=-1) / ref.abs().amax(dim=-1)).max())


def quant_accuracy(q_rec, ref_rec):
    """How far the quantised reference is from the unquantised one (same model and prompts)."""
    out, prompt_errs, agree, rows = {}, [], 0, 0
    for i in range(len(PROMPT_LENGTHS)):
        a, b = q_rec[f"prompt{i}.logits"], ref_rec[f"prompt{i}.logits"]
        prompt_errs.append(rel_logit_err(a, b))
        agree += int((a.argmax(dim=-1) == b.argmax(dim=-1)).sum())
        rows += a.shape[0]
    out["prompt_max_rel_logit_err"] = max(prompt_errs)
    out["prompt_rel_logit_err"] = prompt_errs
    out["prompt_argmax_agree"] = f"{agree}/{rows}"
    qt, rt = q_rec["decode.tokens"], ref_rec["decode.tokens"]
    same = (qt == rt).tolist()
    first = same.index(False) if False in same else len(same)
    out["decode_tokens_identical"] = f"{sum(same)}/{len(same)}"
    out["decode_first_divergent_step"] = first if first < len(same) else None
    # Decode logits compared while both greedy paths share their context (up to the first divergence).
    n = min(first + 1, len(same))
    out["decode_max_rel_logit_err"] = rel_logit_err(q_rec["decode.logits"][:n], ref_rec["decode.logits"][:n])
    return out


# ----------------------------------------------------------------------------------------------
# The semantics of the original modeling_deepseek.py, written out where native code is patched.
# ----------------------------------------------------------------------------------------------


def yarn_get_mscale(scale=1.0, mscale=1.0):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def original_rope(cfg):
    """(inv_freq [d/2], cos/sin multiplier) exactly as the original DeepseekV{2,3}YarnRotaryEmbedding.

    Differences from native `_compute_yarn_parameters` that matter only for unusual configs:
    missing original_max_position_embeddings defaults to 4096 (native: max_position_embeddings);
    missing mscale / mscale_all_dim default to 1 / 0 (native: falls back to get_mscale(factor)).
    """
    dim = cfg["qk_rope_head_dim"]
    base = float(cfg["rope_theta"])
    exponent = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    rs = cfg.get("rope_scaling")
    if rs is None:
        return 1.0 / (base ** exponent), 1.0
    kind = rs.get("type", rs.get("rope_type"))
    if kind != "yarn":
        raise NotImplementedError(f"rope_scaling type {kind!r} is not supported by the fixtures")
    factor = rs["factor"]
    orig_max = rs.get("original_max_position_embeddings", 4096)
    beta_fast, beta_slow = rs.get("beta_fast", 32), rs.get("beta_slow", 1)
    mscale, mscale_all_dim = rs.get("mscale", 1), rs.get("mscale_all_dim", 0)

    freq_extra = 1.0 / (base ** exponent)
    freq_inter = 1.0 / (factor * base ** exponent)

    def corr_dim(rot):
        return (dim * math.log(orig_max / (rot * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(corr_dim(beta_fast)), 0)
    high = min(math.ceil(corr_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    mask = 1.0 - ramp
    inv_freq = freq_inter * (1 - mask) + freq_extra * mask
    return inv_freq, float(yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim))


def original_softmax_scale(cfg):
    """q_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 when rope_scaling has mscale_all_dim."""
    scale = (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]) ** -0.5
    rs = cfg.get("rope_scaling")
    if rs is not None:
        mscale_all_dim = rs.get("mscale_all_dim", 0)
        if mscale_all_dim:
            m = yarn_get_mscale(rs["factor"], mscale_all_dim)
            scale = scale * m * m
    return scale


def original_is_moe_layer(cfg, layer_idx):
    return (cfg.get("n_routed_experts") is not None
            and layer_idx >= cfg["first_k_dense_replace"]
            and layer_idx % cfg.get("moe_layer_freq", 1) == 0)


# Counts tokens whose expert choice would differ with DeepSeek inference/model.py's -inf masking of
# unselected groups (HF original and native both mask with 0.0). Reported per variant.
ROUTER_STATS = {"tokens": 0, "neg_inf_mask_differs": 0}


def _group_limited_choice(choice, n_group, topk_group, top_k, group_score):
    """Original group-limited top-k: keep topk_group groups, mask the rest with 0.0, then top-k."""
    n, e = choice.shape
    grouped = choice.view(n, n_group, e // n_group)
    if group_score == "max":
        gs = grouped.max(dim=-1).values
    else:  # "top2sum"
        gs = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    gidx = torch.topk(gs, k=topk_group, dim=-1, sorted=False)[1]
    gmask = torch.zeros_like(gs).scatter_(1, gidx, 1)
    smask = gmask.unsqueeze(-1).expand(n, n_group, e // n_group).reshape(n, e).bool()
    idx = torch.topk(choice.masked_fill(~smask, 0.0), k=top_k, dim=-1, sorted=False)[1]
    idx_inf = torch.topk(choice.masked_fill(~smask, float("-inf")), k=top_k, dim=-1, sorted=False)[1]
    differs = (idx.sort(dim=-1).values != idx_inf.sort(dim=-1).values).any(dim=-1)
    ROUTER_STATS["tokens"] += n
    ROUTER_STATS["neg_inf_mask_differs"] += int(differs.sum())
    return idx


def original_v2_gate_forward(self, hidden_states):
    """Original V2 MoEGate.forward (inference part); returns (topk_idx, topk_weight) like native."""
    cfg = self._ds_cfg
    h = hidden_states.shape[-1]
    logits = F.linear(hidden_states.reshape(-1, h).float(), self.weight.float())
    if cfg["scoring_func"] != "softmax":
        raise NotImplementedError(f"V2 scoring_func {cfg['scoring_func']}")
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    top_k = cfg["num_experts_per_tok"]
    if cfg["topk_method"] == "greedy":
        topk_weight, topk_idx = torch.topk(scores, k=top_k, dim=-1, sorted=False)
    elif cfg["topk_method"] == "group_limited_greedy":
        topk_idx = _group_limited_choice(scores, cfg["n_group"], cfg["topk_group"], top_k, "max")
        topk_weight = scores.gather(1, topk_idx)
    else:
        raise NotImplementedError(f"V2 topk_method {cfg['topk_method']}")
    # The original applies routed_scaling_factor only when it does NOT normalise.
    if top_k > 1 and cfg["norm_topk_prob"]:
        topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
    else:
        topk_weight = topk_weight * cfg["routed_scaling_factor"]
    return topk_idx, topk_weight


def original_v3_gate_forward(self, hidden_states):
    """Original V3 MoEGate.forward: sigmoid, noaux_tc; bias for selection only; norm then scale."""
    cfg = self._ds_cfg
    h = hidden_states.shape[-1]
    logits = F.linear(hidden_states.reshape(-1, h).float(), self.weight.float())
    if cfg["scoring_func"] != "sigmoid":
        raise NotImplementedError(f"V3 scoring_func {cfg['scoring_func']}")
    if cfg["topk_method"] != "noaux_tc":
        raise NotImplementedError(f"V3 topk_method {cfg['topk_method']}")
    scores = logits.sigmoid()
    top_k = cfg["num_experts_per_tok"]
    choice = scores + self.e_score_correction_bias.float().unsqueeze(0)
    topk_idx = _group_limited_choice(choice, cfg["n_group"], cfg["topk_group"], top_k, "top2sum")
    topk_weight = scores.gather(1, topk_idx)
    if top_k > 1 and cfg["norm_topk_prob"]:
        topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
    topk_weight = topk_weight * cfg["routed_scaling_factor"]
    return topk_idx, topk_weight


def moe_forward_without_shared(self, hidden_states):
    """Native MoE forward for n_shared_experts = null (the original skips shared experts)."""
    orig_shape = hidden_states.shape
    topk_indices, topk_weights = self.gate(hidden_states)
    flat = hidden_states.view(-1, hidden_states.shape[-1])
    return self.moe(flat, topk_indices, topk_weights).view(*orig_shape)


# ----------------------------------------------------------------------------------------------
# Building models.
# ----------------------------------------------------------------------------------------------


def build_native(cfg, state, patch):
    """Native transformers model; with patch=True every disagreement with the original is fixed.

    Returns (model, list of patch descriptions that changed something).
    """
    mt = cfg["model_type"]
    if mt == "deepseek_v3":
        from transformers import DeepseekV3Config as Cfg, DeepseekV3ForCausalLM as Model
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mod
        mlp_cls, moe_cls = mod.DeepseekV3MLP, mod.DeepseekV3MoE
    elif mt == "deepseek_v2":
        from transformers import DeepseekV2Config as Cfg, DeepseekV2ForCausalLM as Model
        from transformers.models.deepseek_v2 import modeling_deepseek_v2 as mod
        mlp_cls, moe_cls = mod.DeepseekV2MLP, mod.DeepseekV2MoE
    else:
        raise ValueError(f"no native transformers class for model_type {mt}")
    kw = model_config_for_torch(cfg)
    no_shared = kw.get("n_shared_experts") in (None, 0)
    applied = []
    if patch:
        if mt == "deepseek_v3" and kw.get("rope_interleave", True) is not True:
            # Original always de-interleaves the rope dims (checkpoint layout is interleaved).
            applied.append("rope_interleave forced to true")
        if mt == "deepseek_v3":
            kw["rope_interleave"] = True
        if no_shared:
            kw["n_shared_experts"] = 1  # build, then drop the module and skip it in forward
    config = Cfg(**kw)
    config._attn_implementation = "eager"
    model = Model(config)
    assert model.config._attn_implementation == "eager"

    if patch:
        layers = model.model.layers
        # (1) MoE layer condition: original also needs layer_idx % moe_layer_freq == 0 and
        #     n_routed_experts not null; native only checks first_k_dense_replace.
        for i, layer in enumerate(layers):
            want_moe = original_is_moe_layer(cfg, i)
            if want_moe != isinstance(layer.mlp, moe_cls):
                layer.mlp = moe_cls(config) if want_moe else mlp_cls(config)
                applied.append(f"layer {i}: mlp rebuilt as {'MoE' if want_moe else 'dense'} (moe_layer_freq)")
        # (2) Rotary: inv_freq and cos/sin multiplier from the original YaRN formula.
        inv_freq, rope_mult = original_rope(cfg)
        rot = model.model.rotary_emb
        if not torch.allclose(rot.inv_freq.float(), inv_freq, rtol=1e-6, atol=0):
            applied.append("rotary inv_freq replaced (YaRN defaults of the original)")
        if abs(rot.attention_scaling - rope_mult) > 1e-12:
            applied.append(f"rotary cos/sin multiplier {rot.attention_scaling!r} -> {rope_mult!r}")
        rot.inv_freq = inv_freq.clone()
        rot.original_inv_freq = rot.inv_freq
        rot.attention_scaling = rope_mult
        want_scale = original_softmax_scale(cfg)
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            # (3) Softmax scale with the YaRN mscale(factor, mscale_all_dim)^2 factor.
            if abs(attn.scaling - want_scale) > 1e-12 * want_scale:
                if i == 0:
                    applied.append(f"attention softmax scale {attn.scaling!r} -> {want_scale!r} (mscale^2)")
                attn.scaling = want_scale
            # (4) MLA has one K/V per query head: original ignores num_key_value_heads.
            if attn.num_key_value_groups != 1:
                if i == 0:
                    applied.append("num_key_value_groups forced to 1 (MLA ignores num_key_value_heads)")
                attn.num_key_value_groups = 1
            # (5) q_a_layernorm / kv_a_layernorm use eps 1e-6 whatever rms_norm_eps is.
            for name in ("q_a_layernorm", "kv_a_layernorm"):
                norm = getattr(attn, name, None)
                if norm is not None and norm.variance_epsilon != 1e-6:
                    norm.variance_epsilon = 1e-6
                    applied.append(f"layer {i} {name} eps -> 1e-6")
            # (6) Router: original gate semantics (see original_v{2,3}_gate_forward).
            if isinstance(layer.mlp, moe_cls):
                gate = layer.mlp.gate
                gate._ds_cfg = cfg
                fwd = original_v3_gate_forward if mt == "deepseek_v3" else original_v2_gate_forward
                gate.forward = types.MethodType(fwd, gate)
                # (7) n_shared_experts null: no shared expert (native would crash or add one).
                if no_shared:
                    del layer.mlp.shared_experts
                    layer.mlp.forward = types.MethodType(moe_forward_without_shared, layer.mlp)
                    applied.append(f"layer {i}: shared experts removed (n_shared_experts null)")
        if any(isinstance(layer.mlp, moe_cls) for layer in layers):
            top_k, norm = cfg["num_experts_per_tok"], cfg["norm_topk_prob"]
            if mt == "deepseek_v2":
                differs = top_k > 1 and norm  # native ignores norm_topk_prob and always scales
            else:
                differs = top_k == 1 and norm  # native normalises even for top_k == 1
            applied.append("router: original MoEGate semantics" +
                           ("" if differs else " (same numbers as native for this config)"))

    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"native {mt}: missing {sorted(missing)[:8]} unexpected {sorted(unexpected)[:8]}")
    return model.eval(), applied


_ORIGINAL_MODULES = {}


def import_original(path, tag):
    """Imports an original modeling_deepseek.py (with its configuration_deepseek.py beside it)."""
    if tag in _ORIGINAL_MODULES:
        return _ORIGINAL_MODULES[tag]
    from transformers.cache_utils import DynamicCache
    # Compatibility shim: the originals were written for transformers ~4.36-4.40 and call
    # Cache.get_usable_length, removed since. For a DynamicCache it is the cached length.
    if not hasattr(DynamicCache, "get_usable_length"):
        DynamicCache.get_usable_length = lambda self, new_len, layer_idx=0: self.get_seq_length(layer_idx)
    directory = os.path.dirname(os.path.abspath(path))
    pkg_name = f"_deepshard_original_{tag}"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = [directory]  # lets `from .configuration_deepseek import ...` resolve
    sys.modules[pkg_name] = pkg
    spec = importlib.util.spec_from_file_location(f"{pkg_name}.modeling_deepseek", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    config_module = sys.modules[f"{pkg_name}.configuration_deepseek"]
    _ORIGINAL_MODULES[tag] = (module, config_module)
    return module, config_module


def build_original(cfg, state, path):
    mt = cfg["model_type"]
    names = {"deepseek_v3": ("v3", "DeepseekV3Config", "DeepseekV3ForCausalLM"),
             "deepseek_v2": ("v2", "DeepseekV2Config", "DeepseekV2ForCausalLM"),
             "deepseek": ("moe16b", "DeepseekConfig", "DeepseekForCausalLM")}[mt]
    module, config_module = import_original(path, names[0])
    kw = model_config_for_torch(cfg)
    rs = kw.get("rope_scaling")
    if rs is not None and "type" not in rs and "rope_type" in rs:
        rs["type"] = rs["rope_type"]  # the originals read rope_scaling["type"]
    config = getattr(config_module, names[1])(**kw)
    config._attn_implementation = "eager"
    model = getattr(module, names[2])(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"original {mt}: missing {sorted(missing)[:8]} unexpected {sorted(unexpected)[:8]}")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Running.
# ----------------------------------------------------------------------------------------------


def make_prompts(vocab_size):
    rs = np.random.RandomState(PROMPT_SEED)
    return [rs.randint(2, vocab_size, size=n).astype(np.int64) for n in PROMPT_LENGTHS]


@torch.no_grad()
def forward_logits(model, ids, past=None, past_len=0):
    """Logits [T, vocab] for ids [T] (appended to `past` when given)."""
    x = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
    mask = torch.ones(1, past_len + x.shape[1], dtype=torch.long)  # the originals need a mask
    if past is None:
        out = model(input_ids=x, attention_mask=mask, use_cache=False)
    else:
        out = model(input_ids=x, attention_mask=mask, past_key_values=past, use_cache=True)
    return out.logits[0].float()


@torch.no_grad()
def greedy_decode(model, prompt, steps):
    """Greedy decode through the KV cache: prompt once, then one token per step."""
    from transformers.cache_utils import DynamicCache
    cache = DynamicCache()
    logits = forward_logits(model, prompt, past=cache, past_len=0)[-1]
    tokens, step_logits = [], []
    pos = len(prompt)
    for step in range(steps):
        step_logits.append(logits)
        tok = int(torch.argmax(logits))
        tokens.append(tok)
        if step + 1 < steps:
            logits = forward_logits(model, [tok], past=cache, past_len=pos)[-1]
            pos += 1
    return torch.tensor(tokens, dtype=torch.long), torch.stack(step_logits)


def compute_records(model, vocab_size, check_recompute=True):
    prompts = make_prompts(vocab_size)
    rec = {}
    for i, p in enumerate(prompts):
        rec[f"prompt{i}.ids"] = torch.from_numpy(p)
        rec[f"prompt{i}.logits"] = forward_logits(model, p).contiguous()
    dp = prompts[DECODE_PROMPT]
    tokens, logits = greedy_decode(model, dp, DECODE_STEPS)
    rec["decode.prompt_ids"] = torch.from_numpy(dp)
    rec["decode.tokens"] = tokens
    rec["decode.logits"] = logits.contiguous()
    recompute_diff = None
    if check_recompute:
        recompute_diff = 0.0
        for step in range(DECODE_STEPS):
            seq = np.concatenate([dp, tokens[:step].numpy()])
            full = forward_logits(model, seq)[-1]
            recompute_diff = max(recompute_diff, float((full - logits[step]).abs().max()))
    return rec, recompute_diff


def max_diffs(a, b):
    """Per-key max |a-b| over float tensors; exact match flags for integer tensors."""
    out = {}
    for k in sorted(a):
        if k not in b:
            out[k] = "missing"
        elif a[k].dtype == torch.long:
            out[k] = "equal" if torch.equal(a[k], b[k]) else "DIFFERENT"
        elif a[k].shape != b[k].shape:
            out[k] = f"shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        else:
            out[k] = float((a[k] - b[k]).abs().max())
    return out


def worst(diffs):
    bad = [k for k, v in diffs.items() if isinstance(v, str) and v != "equal"]
    floats = [v for v in diffs.values() if isinstance(v, float)]
    return (max(floats) if floats else 0.0), bad


def run_make_model(binary, preset, dtype, extra, out_dir):
    argv = [binary, "make-model", "--preset", preset, "--seed", str(SEED), "--dtype", dtype,
            "--out", out_dir] + list(extra)
    subprocess.run(argv, check=True)
    recorded = ["deepshard", "make-model", "--preset", preset, "--seed", str(SEED), "--dtype", dtype,
                "--out", "OUT_DIR"] + list(extra)
    return " ".join(shlex.quote(a) for a in recorded)


def process_variant(args, variant, preset, dtype, extra, tmp_root):
    print(f"\n=== {variant}: preset {preset}, dtype {dtype} {' '.join(extra)}")
    model_dir = os.path.join(tmp_root, variant)
    cmdline = run_make_model(args.deepshard, preset, dtype, extra, model_dir)
    digest = fnv1a64_of_model_dir(model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    mt = cfg.get("model_type")
    missing_keys = [k for k in REQUIRED_KEYS.get(mt, []) if k not in cfg]
    if mt not in REQUIRED_KEYS:
        raise ValueError(f"{variant}: unsupported model_type {mt!r}")
    if missing_keys:
        raise ValueError(f"{variant}: config.json lacks {missing_keys}; original and native defaults differ")
    state, n_mtp = load_checkpoint(model_dir, cfg)
    print(f"weights_fnv1a64 {digest}; {len(state)} tensors (dropped {n_mtp} MTP tensors)")
    quant = QUANT_VARIANTS.get(variant)
    unquantized_state = None
    if quant is not None:
        unquantized_state = {k: v.clone() for k, v in state.items()}
        done, kept = quantize_state_dict(state, cfg, quant[1], QUANT_GROUP)
        print(f"weights {quant[1]} (group {QUANT_GROUP}): {len(done)} tensors quantised"
              + (f"; {len(kept)} kept as stored (columns not a multiple of {QUANT_GROUP}, e.g. {kept[0]})"
                 if kept else ""))

    original_path = {"deepseek_v3": args.original_v3, "deepseek_v2": args.original_v2,
                     "deepseek": args.original_moe16b}[mt]
    have_original = bool(original_path) and os.path.exists(original_path)
    impl = args.impl
    if impl == "auto":
        impl = "original" if mt == "deepseek" else "patched-native"
    if impl == "original" and not have_original:
        raise FileNotFoundError(f"{variant}: original modeling file {original_path!r} not found")
    if impl != "original" and mt == "deepseek":
        raise ValueError("model_type deepseek has no native transformers class; use --impl original/auto")
    if not have_original:
        print(f"WARNING: no original modeling file for {mt} ({original_path}); not cross-checked")

    torch.manual_seed(0)
    ROUTER_STATS.update(tokens=0, neg_inf_mask_differs=0)
    patches = []
    if impl == "patched-native":
        model, patches = build_native(cfg, state, patch=True)
    elif impl == "native":
        model, _ = build_native(cfg, state, patch=False)
    else:
        model = build_original(cfg, state, original_path)
    for p in patches:
        print(f"  patch: {p}")
    records, recompute_diff = compute_records(model, cfg["vocab_size"])
    print(f"decode: tokens {records['decode.tokens'].tolist()}")
    print(f"decode: cached vs full recompute max |diff| = {recompute_diff:.3e}")
    if recompute_diff > DECODE_RECOMPUTE_TOL:
        raise AssertionError(f"{variant}: cached decode differs from recompute by {recompute_diff}")
    if ROUTER_STATS["tokens"]:
        print(f"router: {ROUTER_STATS['neg_inf_mask_differs']} of {ROUTER_STATS['tokens']} token routings would "
              f"differ with inference/model.py's -inf group masking")
    del model

    summary = {}
    if quant is not None:
        # Accuracy of the format on this model: the quantised reference against the unquantised one.
        torch.manual_seed(0)
        if impl == "patched-native":
            ref_model, _ = build_native(cfg, unquantized_state, patch=True)
        elif impl == "native":
            ref_model, _ = build_native(cfg, unquantized_state, patch=False)
        else:
            ref_model = build_original(cfg, unquantized_state, original_path)
        ref_records, _ = compute_records(ref_model, cfg["vocab_size"], check_recompute=False)
        del ref_model
        acc = quant_accuracy(records, ref_records)
        summary["quant_accuracy"] = acc
        print(f"ACCURACY {variant} ({quant[1]}, group {QUANT_GROUP}) vs unquantised reference: "
              f"prompt logits max rel err {acc['prompt_max_rel_logit_err']:.3e} "
              f"(per prompt {', '.join(f'{e:.3e}' for e in acc['prompt_rel_logit_err'])}), "
              f"prompt argmax agreement {acc['prompt_argmax_agree']}; "
              f"greedy decode tokens identical {acc['decode_tokens_identical']}"
              + (f" (first divergence at step {acc['decode_first_divergent_step']})"
                 if acc["decode_first_divergent_step"] is not None else "")
              + f", decode logits max rel err {acc['decode_max_rel_logit_err']:.3e} (shared-context steps)")
    if have_original and impl != "original":
        orig_records, _ = compute_records(build_original(cfg, state, original_path), cfg["vocab_size"],
                                          check_recompute=False)
        d, bad = worst(max_diffs(records, orig_records))
        summary["max_diff_vs_original"] = d
        print(f"{impl} vs original: max |diff| {d:.3e}" + (f"; mismatched {bad}" if bad else ""))
        if bad or d > ORIGINAL_MATCH_TOL:
            raise AssertionError(f"{variant}: {impl} disagrees with the original code")
    if mt != "deepseek" and impl != "native":
        # Informative: how far unpatched native transformers is from the reference numbers.
        try:
            native_model, _ = build_native(cfg, state, patch=False)
            native_records, _ = compute_records(native_model, cfg["vocab_size"], check_recompute=False)
            d, bad = worst(max_diffs(records, native_records))
            summary["unpatched_native_max_diff"] = d
            print(f"unpatched native vs reference: max |diff| {d:.3e}" + (f"; mismatched {bad}" if bad else ""))
        except Exception as e:  # noqa: BLE001 - report, the fixture does not depend on it
            print(f"unpatched native could not run: {e}")

    meta = {
        "variant": variant, "preset": preset, "seed": str(SEED), "dtype": dtype,
        "make_model_cmd": cmdline,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "implementation": impl,
        "patches": "; ".join(patches) if patches else "none",
        "weights_fnv1a64": digest,
        "model_type": mt,
        "prompt_seed": str(PROMPT_SEED),
        "prompt_lengths": ",".join(str(n) for n in PROMPT_LENGTHS),
        "decode_prompt": str(DECODE_PROMPT),
        "decode_steps": str(DECODE_STEPS),
        "generator": "tools/reference/make_fixtures.py",
        # config.json is not covered by weights_fnv1a64 (e.g. --no-yarn changes only the config).
        "config_json": json.dumps(cfg, sort_keys=True, separators=(",", ":")),
    }
    if quant is not None:  # only quantised variants carry these keys (the others stay byte-identical)
        acc = summary["quant_accuracy"]
        meta.update({
            "weights": quant[1],
            "weights_group": str(QUANT_GROUP),
            "weights_quantized_tensors": str(len(done)),
            "quant_accuracy_vs_unquantized": json.dumps(
                {k: acc[k] for k in ("prompt_max_rel_logit_err", "prompt_argmax_agree",
                                     "decode_tokens_identical", "decode_max_rel_logit_err")},
                sort_keys=True, separators=(",", ":")),
        })
    return records, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deepshard", default=os.path.join(REPO_ROOT, "build", "launcher", "deepshard"),
                    help="deepshard binary (make-model)")
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "data", "golden"), help="fixture directory")
    ap.add_argument("--variants", default="", help="comma-separated subset of variants (default: all)")
    ap.add_argument("--original-v3", default=os.path.join(DEFAULT_ORIGINALS, "v3", "modeling_deepseek.py"))
    ap.add_argument("--original-v2", default=os.path.join(DEFAULT_ORIGINALS, "v2", "modeling_deepseek.py"))
    ap.add_argument("--original-moe16b", default=os.path.join(DEFAULT_ORIGINALS, "moe16b", "modeling_deepseek.py"))
    ap.add_argument("--impl", default="auto", choices=["auto", "patched-native", "original", "native"],
                    help="which implementation produces the numbers (auto: patched-native for V2/V3, "
                         "original for deepseek); 'native' is unpatched and only for experiments")
    ap.add_argument("--check", action="store_true", help="regenerate and compare with existing fixtures")
    ap.add_argument("--tol", type=float, default=1e-4, help="--check tolerance on logits (max abs)")
    ap.add_argument("--keep-models", default="", help="write make-model output here instead of a temp dir")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()

    torch.set_default_dtype(torch.float32)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    chosen = [v for v in VARIANTS if not args.variants or v[0] in args.variants.split(",")]
    unknown = set(filter(None, args.variants.split(","))) - {v[0] for v in VARIANTS}
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"safetensors {safetensors.__version__}, numpy {np.__version__}")

    failures = []
    with tempfile.TemporaryDirectory(prefix="deepshard-fixtures-") as tmp:
        root = args.keep_models or tmp
        for variant, preset, dtype, extra in chosen:
            records, meta = process_variant(args, variant, preset, dtype, extra, root)
            path = os.path.join(args.out, f"{variant}.safetensors")
            if args.check:
                if not os.path.exists(path):
                    print(f"CHECK {variant}: no fixture at {path}")
                    failures.append(variant)
                    continue
                old = load_file(path)
                with safe_open(path, framework="pt") as f:
                    old_meta = f.metadata() or {}
                diffs = max_diffs(records, old)
                extra_keys = sorted(set(old) - set(records))
                d, bad = worst(diffs)
                same_digest = old_meta.get("weights_fnv1a64") == meta["weights_fnv1a64"]
                same_config = old_meta.get("config_json", meta["config_json"]) == meta["config_json"]
                same_config = same_config and all(old_meta.get(k) == meta.get(k) for k in ("weights", "weights_group"))
                for k, v in diffs.items():
                    print(f"  {k:22s} {v if isinstance(v, str) else f'{v:.3e}'}")
                ok = not bad and not extra_keys and d <= args.tol and same_digest and same_config
                print(f"CHECK {variant}: max |diff| {d:.3e}, weights digest "
                      f"{'same' if same_digest else 'DIFFERENT'}, config {'same' if same_config else 'DIFFERENT'}"
                      f" -> {'OK' if ok else 'FAILED'}")
                if not ok:
                    failures.append(variant)
            else:
                os.makedirs(args.out, exist_ok=True)
                save_file({k: v.clone().contiguous() for k, v in records.items()}, path, metadata=meta)
                print(f"wrote {os.path.relpath(path)}")
    if failures:
        sys.exit(f"FAILED: {failures}")


if __name__ == "__main__":
    main()
