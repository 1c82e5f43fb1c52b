// The weights of one rank's share of a DeepSeek model, as views into the
// memory-mapped checkpoint (stored dtype kept), found by Hugging Face names.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "runtime/config/model_config.h"
#include "runtime/weights/safetensors.h"

namespace deepshard {

struct AttentionWeights {
  // MLA (deepseek_v2 / deepseek_v3).
  WeightView q_proj;              // [heads * qk_head_dim, hidden] when q_lora_rank is null
  WeightView q_a_proj;            // [q_lora_rank, hidden]
  VectorView q_a_layernorm;       // [q_lora_rank]
  WeightView q_b_proj;            // [heads * qk_head_dim, q_lora_rank]
  WeightView kv_a_proj_with_mqa;  // [kv_lora_rank + qk_rope_head_dim, hidden]
  VectorView kv_a_layernorm;      // [kv_lora_rank]
  WeightView kv_b_proj;           // [heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank]
  // MHA (deepseek): q_proj above plus
  WeightView k_proj;              // [kv_heads * head_dim, hidden]
  WeightView v_proj;              // [kv_heads * head_dim, hidden]
  WeightView o_proj;              // [hidden, heads * v_head_dim]
};

struct MoeWeights {
  WeightView gate;                       // router [n_routed_experts, hidden]
  VectorView e_score_correction_bias;    // [n_routed_experts], noaux_tc only (F32)
  std::vector<int32_t> expert_ids;       // routed experts this rank holds, ascending
  std::vector<int32_t> local_of;         // [n_routed_experts] -> index into experts, or -1
  std::vector<MlpWeights> experts;       // experts[local_of[e]]
  bool has_shared = false;
  MlpWeights shared;                     // [moe_inter * n_shared_experts, hidden]
};

struct LayerWeights {
  int64_t index = 0;
  VectorView input_layernorm;           // [hidden]
  VectorView post_attention_layernorm;  // [hidden]
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights mlp;                       // dense layers
  MoeWeights moe;                       // MoE layers
};

// Which part of the model a rank loads.
struct LoadSpec {
  int64_t layer_begin = 0;
  int64_t layer_end = -1;     // -1: num_hidden_layers
  int64_t expert_begin = 0;
  int64_t expert_end = -1;    // -1: n_routed_experts
  std::vector<int32_t> expert_list;  // if non-empty: exactly these experts (overrides the range)
  bool embedding = true;      // first pipeline stage
  bool head = true;           // last pipeline stage: final norm + lm_head
};

struct ModelWeights {
  LoadSpec spec;
  WeightView embed_tokens;  // [vocab, hidden]
  VectorView norm;          // [hidden]
  WeightView lm_head;       // [vocab, hidden]
  std::vector<LayerWeights> layers;  // layers[i - spec.layer_begin]
};

// Loads the tensors `spec` selects from `ckpt` (nothing else is touched; MTP
// layers at index >= num_hidden_layers are never read). Shapes are checked
// against `config`; errors name the file and tensor.
absl::StatusOr<ModelWeights> LoadModelWeights(const ModelConfig& config, Checkpoint& ckpt,
                                              LoadSpec spec = {});

}  // namespace deepshard
