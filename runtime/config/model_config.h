// ModelConfig: the facts of a checkpoint, parsed once from its config.json.
//
// Three families share one struct:
//   deepseek_v3  DeepSeek-V3 / R1: MLA, sigmoid router with noaux_tc, FP8 blocks, MTP layer
//   deepseek_v2  DeepSeek-V2 / V2-Lite: MLA (q_lora_rank may be null), softmax router
//   deepseek     DeepSeekMoE 16B: standard multi-head attention with RoPE, softmax router
// Every field the forward pass reads is validated here; run settings live in
// RuntimeConfig, never here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace deepshard {

enum class ModelFamily { kDeepseekV3, kDeepseekV2, kDeepseekMoE };
enum class TopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };
enum class ScoringFunc { kSoftmax, kSigmoid };

// YaRN rope scaling ("type"/"rope_type": "yarn").
struct YarnConfig {
  double factor = 1.0;                          // e.g. 40
  double beta_fast = 32.0;                      // e.g. 32
  double beta_slow = 1.0;                       // e.g. 1
  double mscale = 1.0;                          // e.g. 1.0 (V3), 0.707 (V2)
  double mscale_all_dim = 0.0;                  // e.g. 1.0 (V3), 0.707 (V2); 0 = unset
  int64_t original_max_position_embeddings = 4096;  // e.g. 4096
};

// FP8 block quantisation ("quantization_config").
struct Fp8Config {
  int64_t block_rows = 128;  // weight_block_size[0]
  int64_t block_cols = 128;  // weight_block_size[1]
};

struct ModelConfig {
  ModelFamily family = ModelFamily::kDeepseekV3;
  std::string model_type;  // "deepseek_v3"

  int64_t vocab_size = 0;             // 129280
  int64_t hidden_size = 0;            // 7168
  int64_t intermediate_size = 0;      // 18432 (dense MLP)
  int64_t moe_intermediate_size = 0;  // 2048 (per routed expert)
  int64_t num_hidden_layers = 0;      // 61
  int64_t num_nextn_predict_layers = 0;  // 1 (MTP layers stored after the last layer)
  int64_t num_attention_heads = 0;    // 128
  int64_t num_key_value_heads = 0;    // 128 (MHA family only matters)
  int64_t max_position_embeddings = 0;  // 163840
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<YarnConfig> yarn;     // absent when rope_scaling is null
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;

  // MLA (V2/V3). q_lora_rank == 0 means no low-rank query (V2-Lite: q_proj).
  int64_t q_lora_rank = 0;            // 1536, or 0 for null
  int64_t kv_lora_rank = 0;           // 512
  int64_t qk_nope_head_dim = 0;       // 128
  int64_t qk_rope_head_dim = 0;       // 64
  int64_t v_head_dim = 0;             // 128
  // MHA (deepseek): head_dim = hidden_size / num_attention_heads.
  int64_t head_dim = 0;

  // MoE.
  int64_t n_routed_experts = 0;       // 256
  int64_t n_shared_experts = 0;       // 1
  int64_t num_experts_per_tok = 0;    // 8
  int64_t first_k_dense_replace = 0;  // 3
  int64_t moe_layer_freq = 1;         // 1
  TopkMethod topk_method = TopkMethod::kGreedy;
  ScoringFunc scoring_func = ScoringFunc::kSoftmax;
  int64_t n_group = 1;                // 8
  int64_t topk_group = 1;             // 4
  bool norm_topk_prob = false;        // true (V3)
  double routed_scaling_factor = 1.0; // 2.5 (V3)

  std::optional<Fp8Config> fp8;       // quantization_config, fp8 e4m3 only
  std::string torch_dtype = "bfloat16";  // stored dtype of unquantised weights: bfloat16, float16, float32

  bool is_mla() const { return family != ModelFamily::kDeepseekMoE; }
  // Width of one query/key head: nope + rope for MLA, head_dim for MHA.
  int64_t qk_head_dim() const { return is_mla() ? qk_nope_head_dim + qk_rope_head_dim : head_dim; }
  // Values cached per token per layer: kv_lora_rank + qk_rope_head_dim for MLA,
  // 2 * kv_heads * head_dim for MHA.
  int64_t kv_cache_width() const {
    return is_mla() ? kv_lora_rank + qk_rope_head_dim : 2 * num_key_value_heads * head_dim;
  }
  // True if layer `i` uses DeepSeekMoE (else the dense SwiGLU MLP).
  bool is_moe_layer(int64_t i) const {
    return n_routed_experts > 0 && i >= first_k_dense_replace && i % moe_layer_freq == 0;
  }
  // The softmax scale: qk_head_dim^-1/2, times mscale(factor, mscale_all_dim)² under YaRN.
  double softmax_scale() const;
};

// YaRN's attention-temperature factor, 0.1 * mscale * ln(scale) + 1 (1 for scale <= 1).
double YarnGetMscale(double scale, double mscale);

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source);
// Reads and parses `path` (a config.json, or a directory that contains one).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

}  // namespace deepshard
