// The feed-forward blocks: the dense SwiGLU MLP and DeepSeekMoE.
//
// DeepSeekMoE (DeepSeekMoE §3, DeepSeek-V3 §2.1.2):
//   y_t = Σ_{i in topk(t)} w_{t,i} · Expert_i(x_t)  +  SharedExperts(x_t)
// where every expert is a SwiGLU MLP and the shared experts are one MLP of
// width moe_intermediate_size × n_shared_experts.
//
// Both MoE paths have the same shape (as DeepEP's dispatch / combine):
//   route → rows grouped by expert (locally: a counting sort; across ranks: the
//   dispatch) → every local expert in one grouped call → rows back to their
//   (token, choice) slot (un-permute, or the combine) → weighted sum over the
//   k choices in slot order → + shared experts.
#pragma once

#include "absl/status/status.h"
#include "comm/expert_exchange.h"
#include "kernels/backend.h"
#include "runtime/config/model_config.h"
#include "runtime/model/forward_batch.h"
#include "runtime/model/model_weights.h"

namespace deepshard {

// out[m, hidden] = down(silu(gate(x)) * up(x)) for x[m, hidden].
absl::Status MlpForward(const MlpWeights& w, Backend& be, const float* x, int64_t m, int64_t hidden, int64_t inter,
                        float* out);

// out[T, hidden] = DeepSeekMoE(x[T, hidden]) with every routed expert on this
// rank. `bias` is the router's f32 e_score_correction_bias (noaux_tc) or null.
absl::Status MoeForward(const ModelConfig& c, const RouterParams& router, const MoeWeights& w, const float* bias,
                        Backend& be, const float* x, int64_t T, Workspace& ws, float* out);

// DeepSeekMoE with the routed experts spread over the ranks of a stage: route
// locally, dispatch each (token, choice) to its expert's owner, run the local
// experts on what arrived, combine back, then weight and add the shared
// experts. Collective over the exchange's ranks (T may be 0).
absl::Status MoeForwardExchange(const ModelConfig& c, const RouterParams& router, const MoeWeights& w,
                                const float* bias, Backend& be, const float* x, int64_t T, Workspace& ws,
                                ExpertExchange& ex, float* out);

}  // namespace deepshard
