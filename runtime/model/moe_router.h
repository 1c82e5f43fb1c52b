// The DeepSeekMoE router: scores every routed expert and picks the top k.
//
//   scores   = softmax(logits)            (V2, DeepSeekMoE)     or sigmoid(logits) (V3)
//   choice   = scores (+ e_score_correction_bias under noaux_tc: selection only)
//   groups   : greedy            -> all experts eligible
//              group_limited_greedy -> keep topk_group groups by max(scores in group)   (V2)
//              noaux_tc          -> keep topk_group groups by sum of top-2 choice     (V3)
//   ids      = top k of choice among eligible experts (others masked to -inf)
//   weights  = scores[ids]  (unbiased)
//   normalise: sigmoid always (DeepSeek-V3 inference); softmax only if norm_topk_prob
//   scale    : × routed_scaling_factor (V3 always; V2 only when not normalised, as
//              the published V2 modeling code does)
//
// The rule runs as a backend op (Backend::RouteTopK); this file turns a config
// into its parameters.
#pragma once

#include <cstdint>

#include "kernels/backend.h"
#include "runtime/config/model_config.h"

namespace deepshard {

RouterParams MakeRouterParams(const ModelConfig& c);

// Host reference (the CPU op): logits [T, n_routed_experts] (f32) → ids [T, k],
// weights [T, k]. `bias` is used under noaux_tc only.
void RouteTokens(const ModelConfig& c, const float* logits, const VectorView& bias, int64_t T, int32_t* ids,
                 float* weights);

}  // namespace deepshard
