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
#include "comm/expert_exchange.h"
#include "kernels/backend.h"
#include "kernels/quant.h"
#include "runtime/config/model_config.h"
#include "runtime/model/forward_batch.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/model_weights.h"
#include "runtime/model/rope.h"
#include "runtime/weights/safetensors.h"

namespace deepshard {

// Run settings (from the command line), as opposed to the checkpoint's facts.
struct RuntimeConfig {
  std::string device = "cpu";        // the backend (--device)
  MathMode math = MathMode::kExact;  // kFast: bf16 activations for bf16/fp8 weights on AMX
  MlaMode mla_mode = MlaMode::kAuto;
  int threads = 0;                   // OpenMP threads; 0 = one per core of this rank's share
  NumaMode numa = NumaMode::kAuto;   // thread pinning (--numa, kernels/cpu/numa.h)
  int64_t max_context = 0;           // longest sequence; 0 = min(max_position_embeddings, 16384)
  bool prefault = true;              // touch every weight page at load (not during the first steps)
  DType kv_dtype = DType::kF32;      // latent KV cache values: f32 or bf16 (--kv-cache-dtype)
  // --weights: quantise the projections at load (kernels/quant.h). fp8
  // weights stay fp8 unless quantize_fp8.
  WeightQuant weights = WeightQuant::kStored;
  int64_t quant_group = kDefaultQuantGroup;
  bool quantize_fp8 = false;
};

class DeepseekModel {
 public:
  // Loads config.json and the tensors `spec` selects from `dir`, and uploads
  // them to `backend`, which the model keeps and computes with.
  static absl::StatusOr<std::unique_ptr<DeepseekModel>> Load(const std::string& dir, const RuntimeConfig& rt,
                                                             LoadSpec spec, std::unique_ptr<Backend> backend);
  // The same with the backend rt.device names (MakeBackend).
  static absl::StatusOr<std::unique_ptr<DeepseekModel>> Load(const std::string& dir, const RuntimeConfig& rt,
                                                             LoadSpec spec = {});

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const RuntimeConfig& runtime() const { return rt_; }
  Backend& backend() { return *backend_; }
  int64_t max_context() const { return max_context_; }
  int64_t n_local_layers() const { return static_cast<int64_t>(weights_.layers.size()); }
  // One line on the weights' format: "weights as stored", or what --weights
  // quantised (tensors, bytes before and after) and what it kept.
  const std::string& weights_summary() const { return weights_summary_; }
  // Bytes of tensor data this rank asked the checkpoint for.
  uint64_t weight_bytes() const { return ckpt_->bytes_requested(); }

  // A contiguous cache (rt.kv_dtype, backend memory) for one sequence of up
  // to `capacity` tokens (0 = max_context()).
  absl::StatusOr<std::unique_ptr<KvCache>> NewCache(int64_t capacity = 0);

  // Runs the new tokens of `batch` through the model and appends them to each
  // chunk's cache (each chunk's start_pos must equal its cache's length).
  // Writes logits [n_out, vocab] to host memory: n_out is the number of chunks
  // (the last token of each) or, with all_logits, the total number of tokens.
  absl::Status Forward(std::span<const SequenceChunk> batch, bool all_logits, float* logits);

  // The pieces of Forward, for pipeline stages: Forward = Embed, RunLayers,
  // Head. They work on the model's residual stream [T, hidden] of the batch's
  // concatenated tokens, which lives in backend memory; a stage boundary moves
  // it through host memory with ReadHidden / WriteHidden.
  absl::Status Embed(std::span<const SequenceChunk> batch);  // first stage
  absl::Status WriteHidden(const float* host, int64_t n_tokens);  // stages after the first
  absl::Status ReadHidden(float* host, int64_t n_tokens);         // stages before the last
  // Runs this rank's layers on the residual stream and appends to the chunks'
  // caches. With `exchange`, MoE layers dispatch tokens to the ranks that own
  // their experts (a collective over the stage: call it on every rank of the
  // stage, also with an empty batch); without, all experts must be local.
  absl::Status RunLayers(std::span<const SequenceChunk> batch, ExpertExchange* exchange);
  // Final norm + lm_head for the given token rows of the residual stream;
  // logits [rows.size(), vocab] to host memory.
  absl::Status Head(std::span<const int32_t> rows, float* logits);

  // Accumulate per-phase time and routed-expert counts into `profile` from now
  // on (nullptr: stop). The caller owns it.
  void set_profile(StepProfile* profile) { ws_.profile = profile; }

 private:
  DeepseekModel() = default;
  // Validates a batch and returns its token count; the *Checked pieces assume it passed.
  absl::StatusOr<int64_t> CheckBatch(std::span<const SequenceChunk> batch, bool need_tokens) const;
  absl::Status EmbedChecked(std::span<const SequenceChunk> batch, int64_t T);
  absl::Status PrepareStep(std::span<const SequenceChunk> batch, int64_t T);
  absl::Status RunLayersChecked(std::span<const SequenceChunk> batch, int64_t T, ExpertExchange* exchange);
  absl::Status UploadWeights();
  ModelConfig config_;
  RuntimeConfig rt_;
  std::unique_ptr<Backend> backend_;  // declared before every Buffer: destroyed after them
  std::unique_ptr<Checkpoint> ckpt_;
  ModelWeights weights_;
  RopeTable rope_;
  Buffer rope_cos_, rope_sin_;          // the tables in backend memory
  std::vector<Buffer> router_bias_;     // [local layer]: e_score_correction_bias as f32 (noaux_tc)
  RouterParams router_;
  int64_t max_context_ = 0;
  std::string weights_summary_;
  int64_t hidden_tokens_ = 0;           // rows of ws_.x the last Embed/WriteHidden filled
  Workspace ws_;
};

}  // namespace deepshard
