// DeepseekModel: one rank's share of a DeepSeek model, ready to run forward steps.
//
//   x = embed(tokens)
//   for each layer:  x += Attention(RMSNorm(x));  x += FFN(RMSNorm(x))
//   logits = lm_head(RMSNorm(x))
// Attention is MLA (V2/V3) or MHA (DeepSeekMoE 16B); the FFN is the dense
// SwiGLU MLP in the first first_k_dense_replace layers and DeepSeekMoE after.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "comm/moe_exchange.h"
#include "kernels/backend.h"
#include "runtime/config/model_config.h"
#include "runtime/model/forward_batch.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/model_weights.h"
#include "runtime/model/rope.h"
#include "runtime/weights/safetensors.h"

namespace deepshard {

// Run settings (from the command line), as opposed to the checkpoint's facts.
struct RuntimeConfig {
  MathMode math = MathMode::kExact;  // kFast: bf16 activations for bf16/fp8 weights on AMX
  MlaMode mla_mode = MlaMode::kAuto;
  int threads = 0;                   // OpenMP threads; 0 = default
  int64_t max_context = 0;           // longest sequence; 0 = min(max_position_embeddings, 16384)
  bool prefault = true;              // touch every weight page at load (not during the first steps)
};

class DeepseekModel {
 public:
  // Loads config.json and the tensors `spec` selects from `dir`.
  static absl::StatusOr<std::unique_ptr<DeepseekModel>> Load(const std::string& dir,
                                                             const RuntimeConfig& rt, LoadSpec spec = {});

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const RuntimeConfig& runtime() const { return rt_; }
  Backend& backend() { return *backend_; }
  int64_t max_context() const { return max_context_; }
  int64_t n_local_layers() const { return static_cast<int64_t>(weights_.layers.size()); }
  // Bytes of tensor data this rank asked the checkpoint for.
  uint64_t weight_bytes() const { return ckpt_->bytes_requested(); }

  // A cache for one sequence of up to `capacity` tokens (0 = max_context()).
  std::unique_ptr<KvCache> NewCache(int64_t capacity = 0) const;

  // Runs the new tokens of `batch` through the model and appends them to each
  // chunk's cache (each chunk's start_pos must equal its cache's length).
  // Writes logits [n_out, vocab]: n_out is the number of chunks (the last token
  // of each) or, with all_logits, the total number of tokens.
  absl::Status Forward(std::span<const SequenceChunk> batch, bool all_logits, float* logits);

  // The pieces of Forward, for pipeline stages (Forward = Embed, RunLayers, Head).
  // x is the residual stream [T, hidden] of the batch's concatenated tokens.
  absl::Status Embed(std::span<const SequenceChunk> batch, float* x);  // first stage
  // Runs this rank's layers in place on x and appends to the chunks' caches.
  // With `exchange`, MoE layers dispatch tokens to the ranks that own their
  // experts (a collective over the stage: call it on every rank of the stage,
  // also with an empty batch); without, all experts must be local.
  absl::Status RunLayers(std::span<const SequenceChunk> batch, float* x, MoeExchange* exchange);
  absl::Status Head(std::span<const SequenceChunk> batch, const float* x, bool all_logits, float* logits);

  // Accumulate per-phase time and routed-expert counts into `profile` from now
  // on (nullptr: stop). The caller owns it.
  void set_profile(StepProfile* profile) { ws_.profile = profile; }

 private:
  DeepseekModel() = default;
  // Validates a batch and returns its token count; the *Checked pieces assume it passed.
  absl::StatusOr<int64_t> CheckBatch(std::span<const SequenceChunk> batch, bool need_tokens) const;
  void EmbedChecked(std::span<const SequenceChunk> batch, float* x);
  absl::Status RunLayersChecked(std::span<const SequenceChunk> batch, int64_t T, float* x, MoeExchange* exchange);
  ModelConfig config_;
  RuntimeConfig rt_;
  std::unique_ptr<Checkpoint> ckpt_;
  ModelWeights weights_;
  std::unique_ptr<Backend> backend_;
  RopeTable rope_;
  int64_t max_context_ = 0;
  Workspace ws_;
};

}  // namespace deepshard
