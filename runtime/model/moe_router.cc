#include "runtime/model/moe_router.h"

#include <vector>

#include "kernels/cpu/router.h"

namespace deepshard {

RouterParams MakeRouterParams(const ModelConfig& c) {
  RouterParams p;
  p.n_experts = c.n_routed_experts;
  p.top_k = c.num_experts_per_tok;
  p.n_groups = c.topk_method == TopkMethod::kGreedy ? 1 : c.n_group;
  p.topk_groups = c.topk_group;
  p.sigmoid = c.scoring_func == ScoringFunc::kSigmoid;
  p.group_top2_sum = c.topk_method == TopkMethod::kNoauxTc;
  p.normalize = c.scoring_func == ScoringFunc::kSigmoid || (c.norm_topk_prob && p.top_k > 1);
  const bool scale = c.family != ModelFamily::kDeepseekV2 || !p.normalize;
  p.scale = scale ? static_cast<float>(c.routed_scaling_factor) : 1.0f;
  return p;
}

void RouteTokens(const ModelConfig& c, const float* logits, const VectorView& bias, int64_t T, int32_t* ids,
                 float* weights) {
  std::vector<float> b;
  if (c.topk_method == TopkMethod::kNoauxTc && !bias.empty()) {
    b.resize(bias.size);
    ConvertToF32(bias.dtype, bias.data, b.data(), bias.size);
  }
  std::vector<char> taken;
  std::vector<float> scratch;
  cpu::RouteTopK(MakeRouterParams(c), logits, b.empty() ? nullptr : b.data(), T, ids, weights, taken, scratch);
}

}  // namespace deepshard
