// Random-weight models in the exact Hugging Face layout, for tests, demos and
// benchmarks (`deepshard make-model`). No weights are ever downloaded.
//
// Presets:
//   tiny-v3       deepseek_v3: q_lora, sigmoid + noaux_tc, 4 groups, YaRN, MTP layer
//   tiny-v2       deepseek_v2: q_lora, softmax + group_limited_greedy, YaRN mscale 0.707
//   tiny-v2-lite  deepseek_v2: q_lora_rank null, softmax + greedy
//   tiny-moe16b   deepseek:    MHA with RoPE, softmax + greedy
//   bench-v2-lite deepseek_v2 at real V2-Lite widths (hidden 2048, 64 experts), 4 layers
// Weights are uniform with a per-tensor scale that keeps activations and logits
// O(1), so outputs are non-degenerate; e_score_correction_bias is non-zero so
// routing depends on it. The stream of random numbers uses only integer
// arithmetic, so a (preset, seed, dtype) triple gives the same bytes anywhere.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace deepshard {

struct RandomModelOptions {
  std::string preset = "tiny-v3";
  uint64_t seed = 1;
  DType dtype = DType::kF32;  // kF32, kBF16, or kF8E4M3 (block-scaled, as V3 ships)
  int shards = 1;             // > 1 writes model-0000i-of-0000N.safetensors + index
  bool yarn = true;           // false drops rope_scaling
  int64_t num_layers = 0;     // > 0 overrides num_hidden_layers
  int64_t vocab_size = 0;     // > 0 overrides vocab_size (e.g. to fit a tokenizer)
  int64_t bos_token_id = -1;  // >= 0 overrides bos_token_id (from a tokenizer)
  int64_t eos_token_id = -1;  // >= 0 overrides eos_token_id
};

std::vector<std::string> RandomModelPresets();

// The config.json text the preset produces (after overrides).
absl::StatusOr<std::string> RandomModelConfigJson(const RandomModelOptions& opts);

// Writes config.json and the safetensors files into `dir`.
absl::Status WriteRandomModel(const RandomModelOptions& opts, const std::string& dir);

// FNV-1a 64 over the bytes of every *.safetensors file in `dir`, in sorted
// file-name order, as 16 hex digits: the fingerprint golden fixtures record.
absl::StatusOr<std::string> WeightsFingerprint(const std::string& dir);

}  // namespace deepshard
