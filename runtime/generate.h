// Single-sequence generation: prefill the prompt, then decode token by token.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/model/deepseek_model.h"
#include "runtime/sampling.h"

namespace deepshard {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  SamplingParams sampling;
  bool stop_at_eos = true;
  // Called with each new token as soon as it is sampled.
  std::function<void(int32_t)> on_token;
  // Optional: receives the logits of every generated step ([steps, vocab]).
  std::vector<float>* step_logits = nullptr;
};

// Returns the new token ids. The prompt is one prefill step (naive MLA unless
// the runtime forces a mode); each new token is a one-token decode step over
// the latent cache (absorbed MLA). Buffers are sized before the loop, so the
// decode loop does not allocate.
absl::StatusOr<std::vector<int32_t>> Generate(DeepseekModel& model, const std::vector<int32_t>& prompt,
                                              const GenerateOptions& opts);

}  // namespace deepshard
