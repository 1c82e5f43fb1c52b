#include "runtime/model/deepseek_model.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/checked_math.h"
#include "base/status_macros.h"
#include "runtime/model/mla_attention.h"
#include "runtime/model/moe.h"
#include "runtime/model/moe_router.h"

namespace deepshard {

absl::StatusOr<std::unique_ptr<DeepseekModel>> DeepseekModel::Load(const std::string& dir, const RuntimeConfig& rt,
                                                                   LoadSpec spec) {
  ASSIGN_OR_RETURN(auto backend, MakeBackend(rt.device, rt.math, HostThreads{rt.threads, rt.numa}));
  return Load(dir, rt, std::move(spec), std::move(backend));
}

absl::StatusOr<std::unique_ptr<DeepseekModel>> DeepseekModel::Load(const std::string& dir, const RuntimeConfig& rt,
                                                                   LoadSpec spec, std::unique_ptr<Backend> backend) {
  if (backend == nullptr) return absl::InvalidArgumentError("DeepseekModel::Load: no backend");
  if (rt.kv_dtype != DType::kF32 && rt.kv_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("--kv-cache-dtype ", DTypeName(rt.kv_dtype), " is not f32 or bf16"));
  }
  auto m = std::unique_ptr<DeepseekModel>(new DeepseekModel());
  m->backend_ = std::move(backend);
  ASSIGN_OR_RETURN(m->config_, LoadModelConfig(dir));
  m->rt_ = rt;
  ASSIGN_OR_RETURN(m->ckpt_, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(m->weights_, LoadModelWeights(m->config_, *m->ckpt_, spec));
  // NaN/Inf weights would only show as garbage text: one scan of every tensor
  // this rank holds (it faults every page in too, so it replaces Prefault).
  RETURN_IF_ERROR(m->ckpt_->CheckFinite());
  const ModelConfig& c = m->config_;
  m->max_context_ = rt.max_context > 0 ? rt.max_context : std::min<int64_t>(c.max_position_embeddings, 16384);
  if (m->max_context_ > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--max-context ", m->max_context_, " exceeds the model's ",
                                                   "max_position_embeddings (", c.max_position_embeddings, ")"));
  }
  const int64_t rope_dim = c.is_mla() ? c.qk_rope_head_dim : c.head_dim;
  {
    // The RoPE tables (host and backend copies, cos and sin) and the attention
    // scratch grow with the context: check them before allocating.
    const std::string what = absl::StrCat("the RoPE tables and attention scratch for --max-context ", m->max_context_);
    ASSIGN_OR_RETURN(const int64_t rope_bytes, CheckedMul({m->max_context_, rope_dim, 2 * 4}, what));
    ASSIGN_OR_RETURN(const int64_t scratch_bytes,
                     CheckedMul({m->max_context_, std::max(1, omp_get_max_threads()), 4}, what));
    ASSIGN_OR_RETURN(const int64_t total, CheckedAdd(rope_bytes, scratch_bytes, what));
    RETURN_IF_ERROR(CheckFitsInMemory(total, what));
  }
  m->rope_ = BuildRopeTable(rope_dim, c.rope_theta, c.yarn, m->max_context_);
  m->router_ = MakeRouterParams(c);
  RETURN_IF_ERROR(m->UploadWeights());
  m->backend_->ReserveAttention(m->max_context_);
  return m;
}

absl::Status DeepseekModel::UploadWeights() {
  Backend& be = *backend_;
  auto up = [&be](auto& view) -> absl::Status {
    if (view.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(view, be.Upload(view));
    return absl::OkStatus();
  };
  // --weights int8|int4 quantises the projections that GEMVs stream every
  // step: attention's q/kv_a/o (and MHA's q/k/v), every MLP and expert, and
  // the LM head. Kept as stored: kv_b_proj (absorbed MLA reads it per head,
  // column-wise, and it is small), the router (its scores decide discrete
  // choices), the embedding (one row per token) and the norms.
  const DType target = rt_.weights == WeightQuant::kInt8 ? DType::kQ8 : DType::kQ4;
  int64_t n_quantized = 0, n_fp8_kept = 0, n_indivisible = 0;
  double bytes_before = 0, bytes_after = 0;
  auto up_q = [&](WeightView& view) -> absl::Status {
    if (view.empty()) return absl::OkStatus();
    if (rt_.weights == WeightQuant::kStored) return up(view);
    if (view.dtype == DType::kF8E4M3 && !rt_.quantize_fp8) {
      ++n_fp8_kept;
      return up(view);
    }
    if (view.cols % rt_.quant_group != 0) {
      ++n_indivisible;
      return up(view);
    }
    bytes_before += static_cast<double>(view.bytes());
    ASSIGN_OR_RETURN(view, be.UploadQuantized(view, target, rt_.quant_group));
    bytes_after += static_cast<double>(view.bytes() + view.qscale_bytes());
    ++n_quantized;
    return absl::OkStatus();
  };
  auto up_mlp = [&up_q](MlpWeights& w) -> absl::Status {
    RETURN_IF_ERROR(up_q(w.gate_proj));
    RETURN_IF_ERROR(up_q(w.up_proj));
    return up_q(w.down_proj);
  };
  ModelWeights& w = weights_;
  RETURN_IF_ERROR(up(w.embed_tokens));
  RETURN_IF_ERROR(up(w.norm));
  RETURN_IF_ERROR(up_q(w.lm_head));
  router_bias_.resize(w.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    LayerWeights& L = w.layers[l];
    RETURN_IF_ERROR(up(L.input_layernorm));
    RETURN_IF_ERROR(up(L.post_attention_layernorm));
    AttentionWeights& a = L.attn;
    for (WeightView* v : {&a.q_proj, &a.q_a_proj, &a.q_b_proj, &a.kv_a_proj_with_mqa, &a.k_proj, &a.v_proj,
                          &a.o_proj}) {
      RETURN_IF_ERROR(up_q(*v));
    }
    RETURN_IF_ERROR(up(a.kv_b_proj));
    RETURN_IF_ERROR(up(a.q_a_layernorm));
    RETURN_IF_ERROR(up(a.kv_a_layernorm));
    RETURN_IF_ERROR(up_mlp(L.mlp));
    if (!L.is_moe) continue;
    RETURN_IF_ERROR(up(L.moe.gate));
    for (MlpWeights& e : L.moe.experts) RETURN_IF_ERROR(up_mlp(e));
    if (L.moe.has_shared) RETURN_IF_ERROR(up_mlp(L.moe.shared));
    // The router reads its bias as f32 (noaux_tc only: the bias affects selection).
    const VectorView& bias = L.moe.e_score_correction_bias;
    if (config_.topk_method == TopkMethod::kNoauxTc && !bias.empty()) {
      std::vector<float> f(bias.size);
      ConvertToF32(bias.dtype, bias.data, f.data(), bias.size);
      ASSIGN_OR_RETURN(router_bias_[l], be.Allocate(bias.size * sizeof(float), "the router bias"));
      be.CopyFromHost(router_bias_[l].data(), f.data(), bias.size * sizeof(float));
    }
  }
  if (rt_.weights == WeightQuant::kStored) {
    weights_summary_ = "weights as stored";
  } else {
    const double unit = bytes_before >= 1e8 ? 1e9 : 1e6;
    weights_summary_ = absl::StrFormat("weights %s (group %d): %d tensors quantised, %.2f %s -> %.2f %s",
                                       WeightQuantName(rt_.weights), rt_.quant_group, n_quantized,
                                       bytes_before / unit, unit == 1e9 ? "GB" : "MB", bytes_after / unit,
                                       unit == 1e9 ? "GB" : "MB");
    if (n_fp8_kept > 0) absl::StrAppend(&weights_summary_, "; ", n_fp8_kept, " fp8 kept as fp8 (--quantize-fp8)");
    if (n_indivisible > 0) {
      absl::StrAppend(&weights_summary_, "; ", n_indivisible, " kept as stored (columns not a multiple of ",
                      rt_.quant_group, ")");
    }
  }
  const int64_t table_bytes = static_cast<int64_t>(rope_.cos.size() * sizeof(float));
  ASSIGN_OR_RETURN(rope_cos_, be.Allocate(table_bytes, "the RoPE cos table"));
  ASSIGN_OR_RETURN(rope_sin_, be.Allocate(table_bytes, "the RoPE sin table"));
  be.CopyFromHost(rope_cos_.data(), rope_.cos.data(), table_bytes);
  be.CopyFromHost(rope_sin_.data(), rope_.sin.data(), table_bytes);
  return be.Synchronize();
}

absl::StatusOr<std::unique_ptr<KvCache>> DeepseekModel::NewCache(int64_t capacity) {
  return KvCache::Contiguous(*backend_, config_, n_local_layers(), capacity > 0 ? capacity : max_context_,
                             rt_.kv_dtype);
}

absl::StatusOr<int64_t> DeepseekModel::CheckBatch(std::span<const SequenceChunk> batch, bool need_tokens) const {
  int64_t T = 0;
  for (const SequenceChunk& ch : batch) {
    if (ch.cache == nullptr || ch.n_tokens <= 0) return absl::InvalidArgumentError("empty sequence chunk");
    if (ch.start_pos != ch.cache->length()) {
      return absl::InvalidArgumentError(absl::StrCat("chunk starts at position ", ch.start_pos,
                                                     " but its cache holds ", ch.cache->length(), " tokens"));
    }
    if (ch.cache->dtype() != rt_.kv_dtype || ch.cache->width() != config_.kv_cache_width()) {
      return absl::InvalidArgumentError(absl::StrCat("a KV cache of ", DTypeName(ch.cache->dtype()), " x ",
                                                     ch.cache->width(), " does not fit this model (",
                                                     DTypeName(rt_.kv_dtype), " x ", config_.kv_cache_width(), ")"));
    }
    const int64_t end = ch.start_pos + ch.n_tokens;
    if (ch.cache->paged() && end > ch.cache->capacity() && end <= max_context_) {
      return absl::FailedPreconditionError(absl::StrCat("sequence length ", end, " needs KV slots that were not ",
                                                        "reserved: its block table holds ", ch.cache->capacity(),
                                                        " tokens"));
    }
    if (end > ch.cache->capacity() || end > max_context_) {
      return absl::OutOfRangeError(absl::StrCat("sequence length ", end, " exceeds the context limit of ",
                                                std::min(ch.cache->capacity(), max_context_), " tokens"));
    }
    for (int64_t i = 0; need_tokens && i < ch.n_tokens; ++i) {
      if (ch.tokens[i] < 0 || ch.tokens[i] >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", ch.tokens[i], " is outside the vocabulary [0, ",
                                                       config_.vocab_size, ")"));
      }
    }
    T += ch.n_tokens;
  }
  return T;
}

absl::Status DeepseekModel::Embed(std::span<const SequenceChunk> batch) {
  if (!weights_.spec.embedding) return absl::FailedPreconditionError("this rank holds no embedding");
  ASSIGN_OR_RETURN(const int64_t T, CheckBatch(batch, /*need_tokens=*/true));
  RETURN_IF_ERROR(EmbedChecked(batch, T));
  return backend_->Synchronize();
}

absl::Status DeepseekModel::EmbedChecked(std::span<const SequenceChunk> batch, int64_t T) {
  Backend& be = *backend_;
  ASSIGN_OR_RETURN(float* x, ws_.x.Get<float>(be, std::max<int64_t>(1, T * config_.hidden_size), "activations"));
  ASSIGN_OR_RETURN(int32_t* ids, ws_.ids.Get<int32_t>(be, std::max<int64_t>(1, T), "token ids"));
  int64_t t = 0;
  for (const SequenceChunk& ch : batch) {
    be.CopyFromHost(ids + t, ch.tokens, ch.n_tokens * sizeof(int32_t));
    t += ch.n_tokens;
  }
  if (T > 0) be.Embedding(weights_.embed_tokens, ids, T, x);
  hidden_tokens_ = T;
  return absl::OkStatus();
}

absl::Status DeepseekModel::WriteHidden(const float* host, int64_t n_tokens) {
  const int64_t H = config_.hidden_size;
  ASSIGN_OR_RETURN(float* x, ws_.x.Get<float>(*backend_, std::max<int64_t>(1, n_tokens * H), "activations"));
  backend_->CopyFromHost(x, host, n_tokens * H * sizeof(float));
  hidden_tokens_ = n_tokens;
  return backend_->Synchronize();
}

absl::Status DeepseekModel::ReadHidden(float* host, int64_t n_tokens) {
  if (n_tokens > hidden_tokens_) {
    return absl::FailedPreconditionError(absl::StrCat("ReadHidden: ", n_tokens, " rows asked, the residual stream "
                                                      "holds ", hidden_tokens_));
  }
  RETURN_IF_ERROR(backend_->Synchronize());
  if (n_tokens == 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(float* x, ws_.x.Get<float>(*backend_, 1, "activations"));
  backend_->CopyToHost(host, x, n_tokens * config_.hidden_size * sizeof(float));
  return absl::OkStatus();
}

absl::Status DeepseekModel::PrepareStep(std::span<const SequenceChunk> batch, int64_t T) {
  StepLayout& st = ws_.step;
  st.n_tokens = T;
  st.positions.clear(), st.slots.clear(), st.tables.clear(), st.cached.clear(), st.naive.clear();
  st.naive_slots.clear(), st.naive_chunk.clear(), st.absorbed_rows.clear(), st.groups.clear();
  st.max_kv = 0;
  st.one_storage = true;
  const bool mla = config_.is_mla();
  const void* storage0 = batch.empty() ? nullptr : batch.front().cache->layer(0).data;
  for (const SequenceChunk& ch : batch) st.one_storage &= ch.cache->layer(0).data == storage0;
  std::vector<int32_t>& group_of = st.cached_group;  // group of each `cached` entry
  group_of.clear();
  int64_t t0 = 0;
  bool all_absorbed = true;
  int32_t n_absorbed = 0;
  for (size_t c = 0; c < batch.size(); ++c) {
    const SequenceChunk& ch = batch[c];
    const KvCache& kv = *ch.cache;
    const int64_t n = ch.n_tokens, S = ch.start_pos + n;
    st.max_kv = std::max(st.max_kv, S);
    for (int64_t i = 0; i < n; ++i) {
      st.positions.push_back(static_cast<int32_t>(ch.start_pos + i));
      st.slots.push_back(static_cast<int32_t>(kv.slot(ch.start_pos + i)));
    }
    const bool naive = mla && (rt_.mla_mode == MlaMode::kNaive || (rt_.mla_mode == MlaMode::kAuto && n > 1));
    if (naive) {
      // Attention over this chunk's latents [0, S), gathered and expanded.
      st.naive.push_back({static_cast<int32_t>(t0), static_cast<int32_t>(n), static_cast<int32_t>(ch.start_pos),
                          static_cast<int32_t>(st.naive_slots.size())});
      st.naive_chunk.push_back(static_cast<int32_t>(c));
      for (int64_t j = 0; j < S; ++j) st.naive_slots.push_back(static_cast<int32_t>(kv.slot(j)));
      all_absorbed = false;
    } else {
      // Attention over the cache through the block table. For absorbed MLA the
      // queries are the absorbed rows only, numbered in their own order.
      const int32_t q_begin = mla ? n_absorbed : static_cast<int32_t>(t0);
      st.cached.push_back({q_begin, static_cast<int32_t>(n), static_cast<int32_t>(ch.start_pos),
                           static_cast<int32_t>(st.tables.size())});
      const int64_t n_blocks = (S + kv.block_size() - 1) / kv.block_size();
      st.tables.insert(st.tables.end(), kv.block_table().blocks.begin(), kv.block_table().blocks.begin() + n_blocks);
      for (int64_t i = 0; i < n; ++i) st.absorbed_rows.push_back(static_cast<int32_t>(t0 + i));
      n_absorbed += static_cast<int32_t>(n);
      // Group by storage (one group when every chunk views one pool).
      size_t g = 0;
      while (g < st.groups.size() && st.groups[g].cache->layer(0).data != kv.layer(0).data) ++g;
      if (g == st.groups.size()) st.groups.push_back({&kv, 0, 0});
      ++st.groups[g].n_seqs;
      group_of.push_back(static_cast<int32_t>(g));
    }
    t0 += n;
  }
  if (st.groups.size() > 1) {
    // Order `cached` by group; entries keep their q_begin and table offsets.
    std::vector<AttentionSeq> ordered;
    for (size_t g = 0; g < st.groups.size(); ++g) {
      st.groups[g].seq_begin = static_cast<int32_t>(ordered.size());
      for (size_t i = 0; i < st.cached.size(); ++i) {
        if (group_of[i] == static_cast<int32_t>(g)) ordered.push_back(st.cached[i]);
      }
    }
    st.cached.swap(ordered);
  }
  if (all_absorbed) st.absorbed_rows.clear();  // the absorbed rows are all rows: no gather
  // One upload for all of it.
  auto bytes = [](const auto& v) { return static_cast<int64_t>(v.size() * sizeof(v[0])); };
  auto aligned = [](int64_t b) { return (b + 63) / 64 * 64; };
  const int64_t total = aligned(bytes(st.positions)) + aligned(bytes(st.slots)) + aligned(bytes(st.tables)) +
                        aligned(bytes(st.cached)) + aligned(bytes(st.naive)) + aligned(bytes(st.naive_slots)) +
                        aligned(bytes(st.absorbed_rows));
  Backend& be = *backend_;
  ASSIGN_OR_RETURN(uint8_t* base, ws_.layout.Get<uint8_t>(be, std::max<int64_t>(64, total), "the step layout"));
  int64_t off = 0;
  auto put = [&](const auto& v) -> uint8_t* {
    if (v.empty()) return nullptr;
    uint8_t* p = base + off;
    be.CopyFromHost(p, v.data(), bytes(v));
    off += aligned(bytes(v));
    return p;
  };
  st.d_positions = reinterpret_cast<const int32_t*>(put(st.positions));
  st.d_slots = reinterpret_cast<const int32_t*>(put(st.slots));
  st.d_tables = reinterpret_cast<const int32_t*>(put(st.tables));
  st.d_cached = reinterpret_cast<const AttentionSeq*>(put(st.cached));
  st.d_naive = reinterpret_cast<const AttentionSeq*>(put(st.naive));
  st.d_naive_slots = reinterpret_cast<const int32_t*>(put(st.naive_slots));
  st.d_absorbed_rows = reinterpret_cast<const int32_t*>(put(st.absorbed_rows));
  return absl::OkStatus();
}

absl::Status DeepseekModel::RunLayers(std::span<const SequenceChunk> batch, ExpertExchange* exchange) {
  ASSIGN_OR_RETURN(const int64_t T, CheckBatch(batch, /*need_tokens=*/false));
  if (T > hidden_tokens_) {
    return absl::FailedPreconditionError(absl::StrCat("RunLayers: the batch has ", T, " tokens but the residual "
                                                      "stream holds ", hidden_tokens_, " (Embed or WriteHidden first)"));
  }
  return RunLayersChecked(batch, T, exchange);
}

absl::Status DeepseekModel::RunLayersChecked(std::span<const SequenceChunk> batch, int64_t T,
                                             ExpertExchange* exchange) {
  const ModelConfig& c = config_;
  Backend& be = *backend_;
  const int64_t H = c.hidden_size, rows = std::max<int64_t>(1, T);
  RETURN_IF_ERROR(PrepareStep(batch, T));
  ASSIGN_OR_RETURN(float* x, ws_.x.Get<float>(be, rows * H, "activations"));
  ASSIGN_OR_RETURN(float* xn, ws_.xn.Get<float>(be, rows * H, "activations"));
  ASSIGN_OR_RETURN(float* h, ws_.h.Get<float>(be, rows * H, "activations"));
  const float eps = static_cast<float>(c.rms_norm_eps);
  const RopeTables rope{rope_cos_.as<float>(), rope_sin_.as<float>()};
  using Clock = std::chrono::steady_clock;
  StepProfile* prof = ws_.profile;
  const int64_t L = n_local_layers();
  if (L > 0 && T > 0) be.RmsNorm(x, T, H, H, weights_.layers[0].input_layernorm, eps, xn, H);
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    ws_.profile_layer = weights_.spec.layer_begin + l;
    const auto t0 = prof ? Clock::now() : Clock::time_point{};
    if (T > 0) {
      if (c.is_mla()) {
        RETURN_IF_ERROR(MlaAttentionForward(c, lw.attn, be, rope, xn, batch, l, ws_, h));
      } else {
        RETURN_IF_ERROR(MhaAttentionForward(c, lw.attn, be, rope, xn, batch, l, ws_, h));
      }
      // x += attention; xn = RMSNorm(x) for the FFN.
      be.AddRmsNorm(x, h, T, H, lw.post_attention_layernorm, eps, xn);
    }
    if (prof) RETURN_IF_ERROR(be.Synchronize());
    const auto t1 = prof ? Clock::now() : Clock::time_point{};
    if (prof) prof->attention_s += std::chrono::duration<double>(t1 - t0).count();
    if (lw.is_moe && exchange != nullptr) {
      // Every rank of the stage takes part, also with T == 0.
      RETURN_IF_ERROR(MoeForwardExchange(c, router_, lw.moe, router_bias_[l].as<float>(), be, xn, T, ws_,
                                         *exchange, h));
    } else if (lw.is_moe) {
      RETURN_IF_ERROR(MoeForward(c, router_, lw.moe, router_bias_[l].as<float>(), be, xn, T, ws_, h));
    } else {
      RETURN_IF_ERROR(MlpForward(lw.mlp, be, xn, T, H, c.intermediate_size, h));
    }
    // x += FFN; xn = the next layer's input norm (fused), or just the add after the last.
    if (T > 0 && l + 1 < L) {
      be.AddRmsNorm(x, h, T, H, weights_.layers[l + 1].input_layernorm, eps, xn);
    } else if (T > 0) {
      be.Add(x, h, T * H);
    }
    RETURN_IF_ERROR(be.Synchronize());
    if (prof) prof->experts_s += std::chrono::duration<double>(Clock::now() - t1).count();
  }
  for (const SequenceChunk& ch : batch) ch.cache->set_length(ch.start_pos + ch.n_tokens);
  return absl::OkStatus();
}

absl::Status DeepseekModel::Head(std::span<const int32_t> rows, float* logits) {
  if (!weights_.spec.head) return absl::FailedPreconditionError("this rank holds no lm_head");
  for (int32_t r : rows) {
    if (r < 0 || r >= hidden_tokens_) {
      return absl::InvalidArgumentError(absl::StrCat("Head: row ", r, " outside the residual stream's ",
                                                     hidden_tokens_, " rows"));
    }
  }
  const int64_t H = config_.hidden_size, V = config_.vocab_size, n = static_cast<int64_t>(rows.size());
  if (n == 0) return absl::OkStatus();
  Backend& be = *backend_;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  ASSIGN_OR_RETURN(float* x, ws_.x.Get<float>(be, 1, "activations"));
  ASSIGN_OR_RETURN(float* last, ws_.last_hidden.Get<float>(be, n * H, "the head's input"));
  ASSIGN_OR_RETURN(int32_t* d_rows, ws_.head_rows.Get<int32_t>(be, n, "the head's rows"));
  ASSIGN_OR_RETURN(float* out, ws_.logits.Get<float>(be, n * V, "logits"));
  be.CopyFromHost(d_rows, rows.data(), n * sizeof(int32_t));
  be.GatherRows(last, H, x, H, d_rows, n, H, 1);
  be.RmsNorm(last, n, H, H, weights_.norm, eps, last, H);
  be.Linear(last, n, H, weights_.lm_head, out, V);
  RETURN_IF_ERROR(be.Synchronize());
  be.CopyToHost(logits, out, n * V * sizeof(float));
  return absl::OkStatus();
}

absl::Status DeepseekModel::Forward(std::span<const SequenceChunk> batch, bool all_logits, float* logits) {
  if (!weights_.spec.embedding || !weights_.spec.head) {
    return absl::FailedPreconditionError("Forward needs the embedding and lm_head on this rank");
  }
  ASSIGN_OR_RETURN(const int64_t T, CheckBatch(batch, /*need_tokens=*/true));
  RETURN_IF_ERROR(EmbedChecked(batch, T));  // the batch is checked once per step
  RETURN_IF_ERROR(RunLayersChecked(batch, T, nullptr));
  std::vector<int32_t>& rows = ws_.host_rows;
  rows.clear();
  int64_t t = 0;
  for (const SequenceChunk& ch : batch) {
    if (all_logits) {
      for (int64_t i = 0; i < ch.n_tokens; ++i) rows.push_back(static_cast<int32_t>(t + i));
    } else {
      rows.push_back(static_cast<int32_t>(t + ch.n_tokens - 1));
    }
    t += ch.n_tokens;
  }
  return Head(rows, logits);
}

}  // namespace deepshard
