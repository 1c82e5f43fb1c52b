#include "runtime/model/mla_attention.h"

#include <cstring>

namespace deepshard {
namespace {
// Both latent norms use eps 1e-6 whatever rms_norm_eps says: the published
// modeling code constructs them with the RMSNorm default.
constexpr float kLatentNormEps = 1e-6f;

// Points attention at the cache's blocks. A contiguous cache needs no table.
void SetKvBlocks(const KvCache& cache, AttentionParams& p) {
  if (cache.contiguous()) return;
  p.kv_block_table = cache.block_table().blocks.data();
  p.kv_block_size = cache.block_size();
  p.kv_block_stride = cache.block_stride();
}
}  // namespace

void MlaAttentionForward(const ModelConfig& c, const AttentionWeights& w, Backend& be,
                         const RopeTable& rope, const float* x_norm, std::span<const SequenceChunk> batch,
                         int64_t local_layer, MlaMode mode, Workspace& ws, float* out) {
  int64_t T = 0;
  for (const auto& ch : batch) T += ch.n_tokens;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads;
  const int64_t nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim, vd = c.v_head_dim;
  const int64_t lora = c.kv_lora_rank, qk = nope + rd, W = lora + rd;
  const int32_t* pos = ws.positions.data();

  // Queries.                                                    q: [T, nh, nope + rope]
  float* q = Workspace::Get(ws.q, T * nh * qk);
  if (c.q_lora_rank > 0) {
    float* qa = Workspace::Get(ws.qa, T * c.q_lora_rank);      // [T, q_lora_rank]
    be.Linear(x_norm, T, H, w.q_a_proj, qa, c.q_lora_rank);
    be.RmsNorm(qa, T, c.q_lora_rank, c.q_lora_rank, w.q_a_layernorm, kLatentNormEps, qa, c.q_lora_rank);
    be.Linear(qa, T, c.q_lora_rank, w.q_b_proj, q, nh * qk);
  } else {
    be.Linear(x_norm, T, H, w.q_proj, q, nh * qk);
  }
  be.Rope(q + nope, T, nh, nh * qk, qk, rd, pos, rope.cos.data(), rope.sin.data(), RopeLayout::kInterleaved);

  // Latent KV.                                                  kv_a: [T, kv_lora + rope]
  float* kv_a = Workspace::Get(ws.kv_a, T * W);
  be.Linear(x_norm, T, H, w.kv_a_proj_with_mqa, kv_a, W);
  be.RmsNorm(kv_a, T, lora, W, w.kv_a_layernorm, kLatentNormEps, kv_a, W);
  be.Rope(kv_a + lora, T, 1, W, 0, rd, pos, rope.cos.data(), rope.sin.data(), RopeLayout::kInterleaved);

  float* attn_out = Workspace::Get(ws.attn_out, T * nh * vd);  // [T, nh, v_head_dim]
  const float scale = static_cast<float>(c.softmax_scale());
  int64_t t0 = 0;
  for (const SequenceChunk& ch : batch) {
    const int64_t n = ch.n_tokens, S = ch.start_pos + n;
    KvCache& kvc = *ch.cache;
    WriteKvRows(kvc, local_layer, ch.start_pos, n, kv_a + t0 * W);
    const float* qc = q + t0 * nh * qk;
    float* oc = attn_out + t0 * nh * vd;
    const bool naive = mode == MlaMode::kNaive || (mode == MlaMode::kAuto && n > 1);
    if (naive) {
      // The latents [S, kv_lora + rope]: in place if contiguous, else gathered from the blocks.
      const float* cache = kvc.layer_base(local_layer);
      if (!kvc.contiguous()) {
        float* rows = Workspace::Get(ws.kv_rows, S * W);
        GatherKvRows(kvc, local_layer, S, rows);
        cache = rows;
      }
      // Expand every cached latent to per-head keys and values.
      float* kvb = Workspace::Get(ws.kvb, S * nh * (nope + vd));  // [S, nh, nope + v]
      be.Linear(cache, S, W, w.kv_b_proj, kvb, nh * (nope + vd));
      float* k = Workspace::Get(ws.kfull, S * nh * qk);           // [S, nh, nope + rope]
      for (int64_t j = 0; j < S; ++j) {
        for (int64_t h = 0; h < nh; ++h) {
          float* kj = k + (j * nh + h) * qk;
          std::memcpy(kj, kvb + (j * nh + h) * (nope + vd), nope * sizeof(float));
          std::memcpy(kj + nope, cache + j * W + lora, rd * sizeof(float));
        }
      }
      AttentionParams p;
      p.q = qc, p.q_token_stride = nh * qk, p.q_head_stride = qk;
      p.n_q = n, p.n_heads = nh, p.head_dim_qk = qk;
      p.k = k, p.k_token_stride = nh * qk, p.k_head_stride = qk;
      p.v = kvb + nope, p.v_token_stride = nh * (nope + vd), p.v_head_stride = nope + vd;
      p.n_kv = S, p.n_kv_heads = nh, p.head_dim_v = vd;
      p.q_pos0 = ch.start_pos, p.scale = scale;
      p.out = oc, p.out_token_stride = nh * vd, p.out_head_stride = vd;
      be.Attention(p);
    } else {
      // Absorb W_UK into the query: q_abs[:, h] = [q_nope_h · W_UK_h, q_pe_h].  [n, nh, W]
      float* q_abs = Workspace::Get(ws.q_abs, n * nh * W);
      for (int64_t h = 0; h < nh; ++h) {
        const WeightView w_uk = w.kv_b_proj.Rows(h * (nope + vd), nope);  // [nope, lora]
        be.LinearT(qc + h * qk, n, nh * qk, w_uk, q_abs + h * W, nh * W);
        for (int64_t i = 0; i < n; ++i) {
          std::memcpy(q_abs + (i * nh + h) * W + lora, qc + i * nh * qk + h * qk + nope, rd * sizeof(float));
        }
      }
      float* out_lat = Workspace::Get(ws.out_lat, n * nh * lora);  // [n, nh, lora]
      AttentionParams p;
      p.q = q_abs, p.q_token_stride = nh * W, p.q_head_stride = W;
      p.n_q = n, p.n_heads = nh, p.head_dim_qk = W;
      // One latent KV head read through the block table: k = [c_kv, k_pe], v = c_kv.
      const float* cache = kvc.layer_base(local_layer);
      p.k = cache, p.k_token_stride = W, p.k_head_stride = 0;
      p.v = cache, p.v_token_stride = W, p.v_head_stride = 0;
      p.n_kv = S, p.n_kv_heads = 1, p.head_dim_v = lora;
      SetKvBlocks(kvc, p);
      p.q_pos0 = ch.start_pos, p.scale = scale;
      p.out = out_lat, p.out_token_stride = nh * lora, p.out_head_stride = lora;
      be.Attention(p);
      // Apply W_UV per head: o_h = out_lat_h · W_UV_hᵀ.
      for (int64_t h = 0; h < nh; ++h) {
        const WeightView w_uv = w.kv_b_proj.Rows(h * (nope + vd) + nope, vd);  // [v, lora]
        be.Linear(out_lat + h * lora, n, nh * lora, w_uv, oc + h * vd, nh * vd);
      }
    }
    t0 += n;
  }
  be.Linear(attn_out, T, nh * vd, w.o_proj, out, H);
}

void MhaAttentionForward(const ModelConfig& c, const AttentionWeights& w, Backend& be,
                         const RopeTable& rope, const float* x_norm, std::span<const SequenceChunk> batch,
                         int64_t local_layer, Workspace& ws, float* out) {
  int64_t T = 0;
  for (const auto& ch : batch) T += ch.n_tokens;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads, nkv = c.num_key_value_heads;
  const int64_t hd = c.head_dim, Wc = 2 * nkv * hd;
  const int32_t* pos = ws.positions.data();

  float* q = Workspace::Get(ws.q, T * nh * hd);   // [T, nh, hd]
  float* kv = Workspace::Get(ws.kv_a, T * Wc);    // [T, (k | v), nkv, hd]
  be.Linear(x_norm, T, H, w.q_proj, q, nh * hd);
  be.Linear(x_norm, T, H, w.k_proj, kv, Wc);
  be.Linear(x_norm, T, H, w.v_proj, kv + nkv * hd, Wc);
  be.Rope(q, T, nh, nh * hd, hd, hd, pos, rope.cos.data(), rope.sin.data(), RopeLayout::kHalf);
  be.Rope(kv, T, nkv, Wc, hd, hd, pos, rope.cos.data(), rope.sin.data(), RopeLayout::kHalf);

  float* attn_out = Workspace::Get(ws.attn_out, T * nh * hd);
  int64_t t0 = 0;
  for (const SequenceChunk& ch : batch) {
    const int64_t n = ch.n_tokens;
    WriteKvRows(*ch.cache, local_layer, ch.start_pos, n, kv + t0 * Wc);
    const float* cache = ch.cache->layer_base(local_layer);  // rows [k | v], through the block table
    AttentionParams p;
    p.q = q + t0 * nh * hd, p.q_token_stride = nh * hd, p.q_head_stride = hd;
    p.n_q = n, p.n_heads = nh, p.head_dim_qk = hd;
    p.k = cache, p.k_token_stride = Wc, p.k_head_stride = hd;
    p.v = cache + nkv * hd, p.v_token_stride = Wc, p.v_head_stride = hd;
    p.n_kv = ch.start_pos + n, p.n_kv_heads = nkv, p.head_dim_v = hd;
    SetKvBlocks(*ch.cache, p);
    p.q_pos0 = ch.start_pos, p.scale = static_cast<float>(c.softmax_scale());
    p.out = attn_out + t0 * nh * hd, p.out_token_stride = nh * hd, p.out_head_stride = hd;
    be.Attention(p);
    t0 += n;
  }
  be.Linear(attn_out, T, nh * hd, w.o_proj, out, H);
}

}  // namespace deepshard
