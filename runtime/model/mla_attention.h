// Multi-head latent attention (DeepSeek-V2 §2.1, DeepSeek-V3 §2.1.1).
//
// Per token t with normed input x_t:
//   q_t            = q_b_proj(RMSNorm_1e-6(q_a_proj(x_t)))   or q_proj(x_t)   [heads, nope + rope]
//   [c_kv, k_pe]_t = kv_a_proj_with_mqa(x_t)                                  [kv_lora + rope]
//   c_kv           = RMSNorm_1e-6(c_kv) (kv_a_layernorm);  q_pe, k_pe rotated (interleaved pairs)
//   cache[t]       = [c_kv, k_pe]                                  exactly kv_lora + rope floats
// Naive form (prefill): [k_nope, v] = kv_b_proj(c_kv) per head; k = [k_nope, k_pe];
//   o = softmax(q·k * scale) v.
// Absorbed form (decode): with W_UK, W_UV the per-head slices of kv_b_proj,
//   q_lat = q_nope · W_UK (kv_lora wide); score = q_lat·c_kv + q_pe·k_pe;
//   o = (Σ p c_kv) · W_UVᵀ — attention runs over the cache like one 576-wide MQA head.
// scale = qk_head_dim^-1/2 · mscale(factor, mscale_all_dim)² under YaRN.
#pragma once

#include <span>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "runtime/config/model_config.h"
#include "runtime/model/forward_batch.h"
#include "runtime/model/model_weights.h"

namespace deepshard {

// The RoPE tables [max_position, rope_dim / 2] in backend memory.
struct RopeTables {
  const float* cos = nullptr;
  const float* sin = nullptr;
};

// out[T, hidden] = MLA(x_norm[T, hidden]) for the concatenated tokens of `batch`
// (its layout prepared in ws.step); writes each chunk's new cache entries into
// layer `local_layer` of its cache. All chunks' attention runs in one call per
// form: absorbed over the paged latent cache, naive over the expanded latents.
absl::Status MlaAttentionForward(const ModelConfig& c, const AttentionWeights& w, Backend& be,
                                 const RopeTables& rope, const float* x_norm, std::span<const SequenceChunk> batch,
                                 int64_t local_layer, Workspace& ws, float* out);

// Standard multi-head attention with LLaMA-style RoPE (DeepSeekMoE 16B). The
// cache row holds K for every KV head, then V.
absl::Status MhaAttentionForward(const ModelConfig& c, const AttentionWeights& w, Backend& be,
                                 const RopeTables& rope, const float* x_norm, std::span<const SequenceChunk> batch,
                                 int64_t local_layer, Workspace& ws, float* out);

}  // namespace deepshard
