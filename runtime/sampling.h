// Token sampling: greedy, or seeded temperature / top-k / top-p.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"

namespace deepshard {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax, lowest id on ties)
  int64_t top_k = 0;         // 0 = no limit
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  uint64_t seed = 0;

  // Names the offending field for out-of-range values.
  absl::Status Validate() const;
};

// Draws tokens from logits. Buffers are sized once for the vocabulary, so
// sampling allocates nothing per token.
class Sampler {
 public:
  Sampler(int64_t vocab_size, const SamplingParams& params);
  int32_t Sample(const float* logits);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;
  std::vector<float> probs_;
};

}  // namespace deepshard
