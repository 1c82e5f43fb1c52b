// Rotary position tables: plain RoPE and YaRN, as the DeepSeek checkpoints define them.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/config/model_config.h"

namespace deepshard {

// cos/sin tables [max_positions, dim / 2] for rotary dims of width `dim`.
//
// YaRN (rope_scaling type "yarn"), following the published modeling code:
//   freq_extra[i] = theta^(-2i/dim), freq_inter[i] = freq_extra[i] / factor
//   [low, high]   = correction range of beta_fast / beta_slow at original_max_position_embeddings
//   mask[i]       = 1 - clamp((i - low) / (high - low), 0, 1)
//   inv_freq[i]   = freq_inter[i] * (1 - mask[i]) + freq_extra[i] * mask[i]
//   cos, sin      = cos(p * inv_freq), sin(p * inv_freq), times mscale(factor, mscale) /
//                   mscale(factor, mscale_all_dim)
// Angles are computed in float32 as torch does, so positions far beyond the
// original context round the same way as the reference.
struct RopeTable {
  int64_t dim = 0;
  int64_t max_positions = 0;
  std::vector<float> inv_freq;  // [dim / 2]
  std::vector<float> cos;       // [max_positions, dim / 2]
  std::vector<float> sin;
};

RopeTable BuildRopeTable(int64_t dim, double theta, const std::optional<YarnConfig>& yarn,
                         int64_t max_positions);

}  // namespace deepshard
