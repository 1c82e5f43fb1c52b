#include "runtime/model/mla_attention.h"

#include "base/status_macros.h"

namespace deepshard {
namespace {
// Both latent norms use eps 1e-6 whatever rms_norm_eps says: the published
// modeling code constructs them with the RMSNorm default.
constexpr float kLatentNormEps = 1e-6f;

// The new tokens' KV rows [T, ld] into their caches: one call when every
// chunk views one pool, else one per chunk.
void WriteKv(Backend& be, const StepLayout& st, std::span<const SequenceChunk> batch, int64_t l, const float* src,
             int64_t ld) {
  if (st.one_storage) {
    be.KvWrite(batch.front().cache->layer(l), st.d_slots, st.n_tokens, src, ld);
    return;
  }
  int64_t t0 = 0;
  for (const SequenceChunk& ch : batch) {
    be.KvWrite(ch.cache->layer(l), st.d_slots + t0, ch.n_tokens, src + t0 * ld, ld);
    t0 += ch.n_tokens;
  }
}

// Attention over the caches (absorbed MLA, MHA): one call per cache storage
// (one in all for a paged pool). `p` has everything but the KV pointers and
// sequences; v_offset is the value's offset in a row, in elements.
void CachedAttention(Backend& be, const StepLayout& st, int64_t l, int64_t v_offset, AttentionParams p) {
  for (const StepLayout::Group& g : st.groups) {
    const KvLayer kv = g.cache->layer(l);
    p.k = kv.data;
    p.v = static_cast<const uint8_t*>(kv.data) + v_offset * DTypeSize(kv.dtype);
    p.kv_dtype = kv.dtype;
    p.seqs = st.d_cached + g.seq_begin, p.n_seqs = g.n_seqs, p.max_kv = st.max_kv;
    p.block_tables = st.d_tables, p.block_size = g.cache->block_size();
    be.Attention(p);
  }
}
}  // namespace

absl::Status MlaAttentionForward(const ModelConfig& c, const AttentionWeights& w, Backend& be,
                                 const RopeTables& rope, const float* x_norm, std::span<const SequenceChunk> batch,
                                 int64_t local_layer, Workspace& ws, float* out) {
  const StepLayout& st = ws.step;
  const int64_t T = st.n_tokens;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads;
  const int64_t nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim, vd = c.v_head_dim;
  const int64_t lora = c.kv_lora_rank, qk = nope + rd, W = lora + rd;
  const int32_t* pos = st.d_positions;

  // Queries.                                                    q: [T, nh, nope + rope]
  ASSIGN_OR_RETURN(float* q, ws.q.Get<float>(be, T * nh * qk, "MLA queries"));
  if (c.q_lora_rank > 0) {
    ASSIGN_OR_RETURN(float* qa, ws.qa.Get<float>(be, T * c.q_lora_rank, "MLA query latents"));
    be.Linear(x_norm, T, H, w.q_a_proj, qa, c.q_lora_rank);
    be.RmsNorm(qa, T, c.q_lora_rank, c.q_lora_rank, w.q_a_layernorm, kLatentNormEps, qa, c.q_lora_rank);
    be.Linear(qa, T, c.q_lora_rank, w.q_b_proj, q, nh * qk);
  } else {
    be.Linear(x_norm, T, H, w.q_proj, q, nh * qk);
  }
  be.Rope(q + nope, T, nh, nh * qk, qk, rd, pos, rope.cos, rope.sin, RopeLayout::kInterleaved);

  // Latent KV, written to every chunk's cache.                  kv_a: [T, kv_lora + rope]
  ASSIGN_OR_RETURN(float* kv_a, ws.kv_a.Get<float>(be, T * W, "MLA KV latents"));
  be.Linear(x_norm, T, H, w.kv_a_proj_with_mqa, kv_a, W);
  be.RmsNorm(kv_a, T, lora, W, w.kv_a_layernorm, kLatentNormEps, kv_a, W);
  be.Rope(kv_a + lora, T, 1, W, 0, rd, pos, rope.cos, rope.sin, RopeLayout::kInterleaved);
  WriteKv(be, st, batch, local_layer, kv_a, W);

  ASSIGN_OR_RETURN(float* attn_out, ws.attn_out.Get<float>(be, T * nh * vd, "MLA outputs"));  // [T, nh, v]
  const float scale = static_cast<float>(c.softmax_scale());

  if (!st.naive.empty()) {
    // Naive form: every naive chunk's latents [0, S) gathered (widened to f32)
    // and expanded per head to keys and values in one product.
    const int64_t Sn = static_cast<int64_t>(st.naive_slots.size());
    ASSIGN_OR_RETURN(float* rows, ws.kv_rows.Get<float>(be, Sn * W, "gathered latents"));
    // Per naive chunk: the earlier tokens' latents from its cache, its own new
    // ones fresh from kv_a (as they were computed: with a bf16 cache only the
    // context is rounded, as in vLLM's MLA prefill).
    for (size_t i = 0; i < st.naive.size(); ++i) {
      const AttentionSeq& sq = st.naive[i];
      const KvCache& kvc = *batch[st.naive_chunk[i]].cache;
      float* dst = rows + static_cast<int64_t>(sq.kv_begin) * W;
      if (sq.pos0 > 0) be.KvGather(kvc.layer(local_layer), st.d_naive_slots + sq.kv_begin, sq.pos0, dst, W);
      be.CopyRows({dst + static_cast<int64_t>(sq.pos0) * W, kv_a + static_cast<int64_t>(sq.q_begin) * W, 1, sq.n_q, W,
                   0, W, 0, W});
    }
    ASSIGN_OR_RETURN(float* kvb, ws.kvb.Get<float>(be, Sn * nh * (nope + vd), "expanded K/V"));  // [Sn, nh, nope + v]
    be.Linear(rows, Sn, W, w.kv_b_proj, kvb, nh * (nope + vd));
    ASSIGN_OR_RETURN(float* k, ws.kfull.Get<float>(be, Sn * nh * qk, "expanded keys"));  // [Sn, nh, nope + rope]
    be.CopyRows({k, kvb, Sn, nh, nope, nh * qk, qk, nh * (nope + vd), nope + vd});      // k_nope per head
    be.CopyRows({k + nope, rows + lora, Sn, nh, rd, nh * qk, qk, W, 0});                 // shared k_pe, broadcast
    AttentionParams p;
    p.q = q, p.q_token_stride = nh * qk, p.q_head_stride = qk;
    p.n_heads = nh, p.head_dim_qk = qk;
    p.k = k, p.k_token_stride = nh * qk, p.k_head_stride = qk;
    p.v = kvb + nope, p.v_token_stride = nh * (nope + vd), p.v_head_stride = nope + vd;
    p.kv_dtype = DType::kF32, p.n_kv_heads = nh, p.head_dim_v = vd;
    p.seqs = st.d_naive, p.n_seqs = static_cast<int64_t>(st.naive.size()), p.max_kv = st.max_kv;
    p.scale = scale;
    p.out = attn_out, p.out_token_stride = nh * vd, p.out_head_stride = vd;
    be.Attention(p);
  }

  if (!st.cached.empty()) {
    // Absorbed form over the latent cache. A = the absorbed tokens (all of T,
    // or gathered when the step also has naive chunks).
    const bool subset = !st.absorbed_rows.empty();
    const int64_t A = subset ? static_cast<int64_t>(st.absorbed_rows.size()) : T;
    const float* qs = q;
    if (subset) {
      ASSIGN_OR_RETURN(float* g, ws.q_sel.Get<float>(be, A * nh * qk, "absorbed queries"));
      be.GatherRows(g, nh * qk, q, nh * qk, st.d_absorbed_rows, A, nh * qk, 1);
      qs = g;
    }
    // q_abs[:, h] = [q_nope_h · W_UK_h, q_pe_h].                   [A, nh, W]
    ASSIGN_OR_RETURN(float* q_abs, ws.q_abs.Get<float>(be, A * nh * W, "absorbed queries"));
    HeadsLinearParams uk;
    uk.x = qs, uk.m = A, uk.ldx = nh * qk, uk.x_head_stride = qk;
    uk.w = w.kv_b_proj, uk.n_heads = nh, uk.head_row_stride = nope + vd, uk.row_offset = 0, uk.rows_per_head = nope;
    uk.transposed = true;
    uk.y = q_abs, uk.ldy = nh * W, uk.y_head_stride = W;
    be.LinearHeads(uk);
    be.CopyRows({q_abs + lora, qs + nope, A, nh, rd, nh * W, W, nh * qk, qk});
    ASSIGN_OR_RETURN(float* out_lat, ws.out_lat.Get<float>(be, A * nh * lora, "latent outputs"));  // [A, nh, lora]
    AttentionParams p;
    p.q = q_abs, p.q_token_stride = nh * W, p.q_head_stride = W;
    p.n_heads = nh, p.head_dim_qk = W;
    // One latent KV head read through the block tables: k = [c_kv, k_pe], v = c_kv.
    p.k_token_stride = W, p.k_head_stride = 0;
    p.v_token_stride = W, p.v_head_stride = 0;
    p.n_kv_heads = 1, p.head_dim_v = lora;
    p.scale = scale;
    p.out = out_lat, p.out_token_stride = nh * lora, p.out_head_stride = lora;
    CachedAttention(be, st, local_layer, /*v_offset=*/0, p);
    // o_h = out_lat_h · W_UV_hᵀ, all heads in one call.
    float* o = attn_out;
    if (subset) {
      ASSIGN_OR_RETURN(o, ws.o_sel.Get<float>(be, A * nh * vd, "absorbed outputs"));
    }
    HeadsLinearParams uv;
    uv.x = out_lat, uv.m = A, uv.ldx = nh * lora, uv.x_head_stride = lora;
    uv.w = w.kv_b_proj, uv.n_heads = nh, uv.head_row_stride = nope + vd, uv.row_offset = nope, uv.rows_per_head = vd;
    uv.transposed = false;
    uv.y = o, uv.ldy = nh * vd, uv.y_head_stride = vd;
    be.LinearHeads(uv);
    if (subset) be.ScatterRows(attn_out, nh * vd, o, nh * vd, st.d_absorbed_rows, A, nh * vd);
  }
  be.Linear(attn_out, T, nh * vd, w.o_proj, out, H);
  return absl::OkStatus();
}

absl::Status MhaAttentionForward(const ModelConfig& c, const AttentionWeights& w, Backend& be,
                                 const RopeTables& rope, const float* x_norm, std::span<const SequenceChunk> batch,
                                 int64_t local_layer, Workspace& ws, float* out) {
  const StepLayout& st = ws.step;
  const int64_t T = st.n_tokens;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads, nkv = c.num_key_value_heads;
  const int64_t hd = c.head_dim, Wc = 2 * nkv * hd;
  const int32_t* pos = st.d_positions;

  ASSIGN_OR_RETURN(float* q, ws.q.Get<float>(be, T * nh * hd, "queries"));  // [T, nh, hd]
  ASSIGN_OR_RETURN(float* kvr, ws.kv_a.Get<float>(be, T * Wc, "keys and values"));  // [T, (k | v), nkv, hd]
  be.Linear(x_norm, T, H, w.q_proj, q, nh * hd);
  be.Linear(x_norm, T, H, w.k_proj, kvr, Wc);
  be.Linear(x_norm, T, H, w.v_proj, kvr + nkv * hd, Wc);
  be.Rope(q, T, nh, nh * hd, hd, hd, pos, rope.cos, rope.sin, RopeLayout::kHalf);
  be.Rope(kvr, T, nkv, Wc, hd, hd, pos, rope.cos, rope.sin, RopeLayout::kHalf);
  WriteKv(be, st, batch, local_layer, kvr, Wc);

  ASSIGN_OR_RETURN(float* attn_out, ws.attn_out.Get<float>(be, T * nh * hd, "attention outputs"));
  AttentionParams p;  // every chunk's rows [k | v] through its block table
  p.q = q, p.q_token_stride = nh * hd, p.q_head_stride = hd;
  p.n_heads = nh, p.head_dim_qk = hd;
  p.k_token_stride = Wc, p.k_head_stride = hd;
  p.v_token_stride = Wc, p.v_head_stride = hd;
  p.n_kv_heads = nkv, p.head_dim_v = hd;
  p.scale = static_cast<float>(c.softmax_scale());
  p.out = attn_out, p.out_token_stride = nh * hd, p.out_head_stride = hd;
  CachedAttention(be, st, local_layer, /*v_offset=*/nkv * hd, p);
  be.Linear(attn_out, T, nh * hd, w.o_proj, out, H);
  return absl::OkStatus();
}

}  // namespace deepshard
