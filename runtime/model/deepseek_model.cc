#include "runtime/model/deepseek_model.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "runtime/model/mla_attention.h"
#include "runtime/model/moe.h"

namespace deepshard {

absl::StatusOr<std::unique_ptr<DeepseekModel>> DeepseekModel::Load(const std::string& dir,
                                                                   const RuntimeConfig& rt, LoadSpec spec) {
  auto m = std::unique_ptr<DeepseekModel>(new DeepseekModel());
  ASSIGN_OR_RETURN(m->config_, LoadModelConfig(dir));
  m->rt_ = rt;
  ASSIGN_OR_RETURN(m->ckpt_, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(m->weights_, LoadModelWeights(m->config_, *m->ckpt_, spec));
  if (rt.prefault) m->ckpt_->Prefault();
  const ModelConfig& c = m->config_;
  m->max_context_ = rt.max_context > 0 ? rt.max_context : std::min<int64_t>(c.max_position_embeddings, 16384);
  if (m->max_context_ > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--max-context ", m->max_context_, " exceeds the model's ",
                                                   "max_position_embeddings (", c.max_position_embeddings, ")"));
  }
  const int64_t rope_dim = c.is_mla() ? c.qk_rope_head_dim : c.head_dim;
  m->rope_ = BuildRopeTable(rope_dim, c.rope_theta, c.yarn, m->max_context_);
  m->backend_ = MakeCpuBackend(rt.math, rt.threads);
  m->backend_->ReserveAttention(m->max_context_);
  return m;
}

std::unique_ptr<KvCache> DeepseekModel::NewCache(int64_t capacity) const {
  return std::make_unique<KvCache>(config_, n_local_layers(), capacity > 0 ? capacity : max_context_);
}

absl::StatusOr<int64_t> DeepseekModel::CheckBatch(std::span<const SequenceChunk> batch, bool need_tokens) const {
  int64_t T = 0;
  for (const SequenceChunk& ch : batch) {
    if (ch.cache == nullptr || ch.n_tokens <= 0) return absl::InvalidArgumentError("empty sequence chunk");
    if (ch.start_pos != ch.cache->length()) {
      return absl::InvalidArgumentError(absl::StrCat("chunk starts at position ", ch.start_pos,
                                                     " but its cache holds ", ch.cache->length(), " tokens"));
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

absl::Status DeepseekModel::Embed(std::span<const SequenceChunk> batch, float* x) {
  if (!weights_.spec.embedding) return absl::FailedPreconditionError("this rank holds no embedding");
  RETURN_IF_ERROR(CheckBatch(batch, /*need_tokens=*/true).status());
  EmbedChecked(batch, x);
  return absl::OkStatus();
}

void DeepseekModel::EmbedChecked(std::span<const SequenceChunk> batch, float* x) {
  int64_t t = 0;
  for (const SequenceChunk& ch : batch) {
    backend_->Embedding(weights_.embed_tokens, ch.tokens, ch.n_tokens, x + t * config_.hidden_size);
    t += ch.n_tokens;
  }
}

absl::Status DeepseekModel::RunLayers(std::span<const SequenceChunk> batch, float* x, MoeExchange* exchange) {
  ASSIGN_OR_RETURN(const int64_t T, CheckBatch(batch, /*need_tokens=*/false));
  return RunLayersChecked(batch, T, x, exchange);
}

absl::Status DeepseekModel::RunLayersChecked(std::span<const SequenceChunk> batch, int64_t T, float* x,
                                             MoeExchange* exchange) {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size;
  int32_t* pos = Workspace::Get(ws_.positions, T);
  int64_t t = 0;
  for (const SequenceChunk& ch : batch) {
    for (int64_t i = 0; i < ch.n_tokens; ++i) pos[t++] = static_cast<int32_t>(ch.start_pos + i);
  }
  float* xn = Workspace::Get(ws_.xn, T * H);
  float* h = Workspace::Get(ws_.h, T * H);
  const float eps = static_cast<float>(c.rms_norm_eps);
  using Clock = std::chrono::steady_clock;
  StepProfile* prof = ws_.profile;
  for (int64_t l = 0; l < n_local_layers(); ++l) {
    const LayerWeights& L = weights_.layers[l];
    ws_.profile_layer = weights_.spec.layer_begin + l;
    const auto t0 = prof ? Clock::now() : Clock::time_point{};
    backend_->RmsNorm(x, T, H, H, L.input_layernorm, eps, xn, H);
    if (c.is_mla()) {
      MlaAttentionForward(c, L.attn, *backend_, rope_, xn, batch, l, rt_.mla_mode, ws_, h);
    } else {
      MhaAttentionForward(c, L.attn, *backend_, rope_, xn, batch, l, ws_, h);
    }
    for (int64_t i = 0; i < T * H; ++i) x[i] += h[i];
    const auto t1 = prof ? Clock::now() : Clock::time_point{};
    if (prof) prof->attention_s += std::chrono::duration<double>(t1 - t0).count();
    backend_->RmsNorm(x, T, H, H, L.post_attention_layernorm, eps, xn, H);
    if (L.is_moe && exchange != nullptr) {
      // Every rank of the stage takes part, also with T == 0.
      RETURN_IF_ERROR(MoeForwardExchange(c, L.moe, *backend_, xn, T, ws_, *exchange, h));
    } else if (L.is_moe) {
      MoeForward(c, L.moe, *backend_, xn, T, ws_, h);
    } else {
      MlpForward(L.mlp, *backend_, xn, T, H, c.intermediate_size, ws_, h);
    }
    for (int64_t i = 0; i < T * H; ++i) x[i] += h[i];
    if (prof) prof->experts_s += std::chrono::duration<double>(Clock::now() - t1).count();
  }
  for (const SequenceChunk& ch : batch) ch.cache->set_length(ch.start_pos + ch.n_tokens);
  return absl::OkStatus();
}

absl::Status DeepseekModel::Head(std::span<const SequenceChunk> batch, const float* x, bool all_logits,
                                 float* logits) {
  if (!weights_.spec.head) return absl::FailedPreconditionError("this rank holds no lm_head");
  const int64_t H = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  int64_t T = 0;
  for (const SequenceChunk& ch : batch) T += ch.n_tokens;
  const int64_t n_out = all_logits ? T : static_cast<int64_t>(batch.size());
  float* last = Workspace::Get(ws_.last_hidden, n_out * H);
  if (all_logits) {
    backend_->RmsNorm(x, T, H, H, weights_.norm, eps, last, H);
  } else {
    int64_t t = 0;
    for (size_t b = 0; b < batch.size(); ++b) {
      t += batch[b].n_tokens;
      backend_->RmsNorm(x + (t - 1) * H, 1, H, H, weights_.norm, eps, last + b * H, H);
    }
  }
  backend_->Linear(last, n_out, H, weights_.lm_head, logits, config_.vocab_size);
  return absl::OkStatus();
}

absl::Status DeepseekModel::Forward(std::span<const SequenceChunk> batch, bool all_logits, float* logits) {
  if (!weights_.spec.embedding || !weights_.spec.head) {
    return absl::FailedPreconditionError("Forward needs the embedding and lm_head on this rank");
  }
  ASSIGN_OR_RETURN(const int64_t T, CheckBatch(batch, /*need_tokens=*/true));
  float* x = Workspace::Get(ws_.x, T * config_.hidden_size);  // residual stream [T, H]
  EmbedChecked(batch, x);  // the batch is checked once per step
  RETURN_IF_ERROR(RunLayersChecked(batch, T, x, nullptr));
  return Head(batch, x, all_logits, logits);
}

}  // namespace deepshard
