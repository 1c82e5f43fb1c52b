#include "runtime/model/model_weights.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {
namespace {

absl::StatusOr<MlpWeights> LoadMlp(Checkpoint& ck, const std::string& prefix, int64_t hidden,
                                   int64_t inter, int64_t block) {
  MlpWeights m;
  ASSIGN_OR_RETURN(m.gate_proj, ck.GetWeight(prefix + "gate_proj.weight", inter, hidden, block));
  ASSIGN_OR_RETURN(m.up_proj, ck.GetWeight(prefix + "up_proj.weight", inter, hidden, block));
  ASSIGN_OR_RETURN(m.down_proj, ck.GetWeight(prefix + "down_proj.weight", hidden, inter, block));
  return m;
}

absl::StatusOr<AttentionWeights> LoadAttention(const ModelConfig& c, Checkpoint& ck,
                                               const std::string& p, int64_t block) {
  AttentionWeights a;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads;
  if (c.is_mla()) {
    const int64_t qk = c.qk_head_dim();
    if (c.q_lora_rank > 0) {
      ASSIGN_OR_RETURN(a.q_a_proj, ck.GetWeight(p + "q_a_proj.weight", c.q_lora_rank, H, block));
      ASSIGN_OR_RETURN(a.q_a_layernorm, ck.GetVector(p + "q_a_layernorm.weight", c.q_lora_rank));
      ASSIGN_OR_RETURN(a.q_b_proj, ck.GetWeight(p + "q_b_proj.weight", nh * qk, c.q_lora_rank, block));
    } else {
      ASSIGN_OR_RETURN(a.q_proj, ck.GetWeight(p + "q_proj.weight", nh * qk, H, block));
    }
    ASSIGN_OR_RETURN(a.kv_a_proj_with_mqa, ck.GetWeight(p + "kv_a_proj_with_mqa.weight",
                                                        c.kv_lora_rank + c.qk_rope_head_dim, H, block));
    ASSIGN_OR_RETURN(a.kv_a_layernorm, ck.GetVector(p + "kv_a_layernorm.weight", c.kv_lora_rank));
    ASSIGN_OR_RETURN(a.kv_b_proj, ck.GetWeight(p + "kv_b_proj.weight",
                                               nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, block));
    ASSIGN_OR_RETURN(a.o_proj, ck.GetWeight(p + "o_proj.weight", H, nh * c.v_head_dim, block));
  } else {
    const int64_t hd = c.head_dim, nkv = c.num_key_value_heads;
    ASSIGN_OR_RETURN(a.q_proj, ck.GetWeight(p + "q_proj.weight", nh * hd, H, block));
    ASSIGN_OR_RETURN(a.k_proj, ck.GetWeight(p + "k_proj.weight", nkv * hd, H, block));
    ASSIGN_OR_RETURN(a.v_proj, ck.GetWeight(p + "v_proj.weight", nkv * hd, H, block));
    ASSIGN_OR_RETURN(a.o_proj, ck.GetWeight(p + "o_proj.weight", H, nh * hd, block));
  }
  return a;
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const ModelConfig& c, Checkpoint& ck, LoadSpec spec) {
  if (spec.layer_end < 0) spec.layer_end = c.num_hidden_layers;
  if (spec.expert_end < 0) spec.expert_end = c.n_routed_experts;
  if (spec.layer_begin < 0 || spec.layer_begin > spec.layer_end || spec.layer_end > c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer range [", spec.layer_begin, ", ", spec.layer_end,
                                                   ") is outside the model's ", c.num_hidden_layers, " layers"));
  }
  if (spec.expert_begin < 0 || spec.expert_begin > spec.expert_end || spec.expert_end > c.n_routed_experts) {
    return absl::InvalidArgumentError(absl::StrCat("expert range [", spec.expert_begin, ", ", spec.expert_end,
                                                   ") is outside the model's ", c.n_routed_experts, " experts"));
  }
  std::vector<int32_t> experts = spec.expert_list;
  if (experts.empty()) {
    for (int64_t e = spec.expert_begin; e < spec.expert_end; ++e) experts.push_back(static_cast<int32_t>(e));
  }
  std::sort(experts.begin(), experts.end());
  for (size_t i = 0; i < experts.size(); ++i) {
    if (experts[i] < 0 || experts[i] >= c.n_routed_experts || (i > 0 && experts[i] == experts[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat("expert list names expert ", experts[i], " twice or out of [0, ",
                                                     c.n_routed_experts, ")"));
    }
  }
  const int64_t block = c.fp8 ? c.fp8->block_rows : 128;
  const int64_t H = c.hidden_size;
  ModelWeights w;
  w.spec = spec;
  if (spec.embedding) {
    ASSIGN_OR_RETURN(w.embed_tokens, ck.GetWeight("model.embed_tokens.weight", c.vocab_size, H, block));
  }
  if (spec.head) {
    ASSIGN_OR_RETURN(w.norm, ck.GetVector("model.norm.weight", H));
    if (c.tie_word_embeddings) {
      ASSIGN_OR_RETURN(w.lm_head, ck.GetWeight("model.embed_tokens.weight", c.vocab_size, H, block));
    } else {
      ASSIGN_OR_RETURN(w.lm_head, ck.GetWeight("lm_head.weight", c.vocab_size, H, block));
    }
  }
  for (int64_t l = spec.layer_begin; l < spec.layer_end; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights L;
    L.index = l;
    ASSIGN_OR_RETURN(L.input_layernorm, ck.GetVector(p + "input_layernorm.weight", H));
    ASSIGN_OR_RETURN(L.post_attention_layernorm, ck.GetVector(p + "post_attention_layernorm.weight", H));
    ASSIGN_OR_RETURN(L.attn, LoadAttention(c, ck, p + "self_attn.", block));
    L.is_moe = c.is_moe_layer(l);
    if (!L.is_moe) {
      ASSIGN_OR_RETURN(L.mlp, LoadMlp(ck, p + "mlp.", H, c.intermediate_size, block));
    } else {
      MoeWeights& m = L.moe;
      ASSIGN_OR_RETURN(m.gate, ck.GetWeight(p + "mlp.gate.weight", c.n_routed_experts, H, block));
      if (c.topk_method == TopkMethod::kNoauxTc) {
        ASSIGN_OR_RETURN(m.e_score_correction_bias,
                         ck.GetVector(p + "mlp.gate.e_score_correction_bias", c.n_routed_experts));
      }
      m.local_of.assign(c.n_routed_experts, -1);
      for (int32_t e : experts) {
        ASSIGN_OR_RETURN(MlpWeights ew, LoadMlp(ck, absl::StrCat(p, "mlp.experts.", e, "."), H,
                                                c.moe_intermediate_size, block));
        m.local_of[e] = static_cast<int32_t>(m.experts.size());
        m.expert_ids.push_back(e);
        m.experts.push_back(ew);
      }
      if (c.n_shared_experts > 0) {
        m.has_shared = true;
        ASSIGN_OR_RETURN(m.shared, LoadMlp(ck, p + "mlp.shared_experts.", H,
                                           c.moe_intermediate_size * c.n_shared_experts, block));
      }
    }
    w.layers.push_back(std::move(L));
  }
  return w;
}

}  // namespace deepshard
