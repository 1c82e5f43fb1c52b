// MoE top-k expert selection on the CPU (the rule is documented at RouterParams
// in kernels/backend.h).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace deepshard::cpu {

// `taken` is scratch of at least max(n_experts, n_groups) entries.
void RouteTopK(const RouterParams& p, const float* logits, const float* bias, int64_t T, int32_t* ids,
               float* weights, std::vector<char>& taken, std::vector<float>& scratch);

}  // namespace deepshard::cpu
