#include "runtime/model/rope.h"

#include <algorithm>
#include <cmath>

namespace deepshard {
namespace {

// The rotary dim index whose wavelength completes `num_rotations` turns over
// `max_pos` positions (YaRN's correction dimension).
double CorrectionDim(double num_rotations, int64_t dim, double base, int64_t max_pos) {
  return (dim * std::log(max_pos / (num_rotations * 2 * M_PI))) / (2 * std::log(base));
}

}  // namespace

RopeTable BuildRopeTable(int64_t dim, double theta, const std::optional<YarnConfig>& yarn,
                         int64_t max_positions) {
  RopeTable t;
  t.dim = dim;
  t.max_positions = max_positions;
  const int64_t half = dim / 2;
  t.inv_freq.resize(half);
  float attn_mscale = 1.0f;
  for (int64_t i = 0; i < half; ++i) {
    // torch: 1.0 / (base ** (arange(0, dim, 2, dtype=float32) / dim)), in float32.
    const float expo = static_cast<float>(2 * i) / static_cast<float>(dim);
    t.inv_freq[i] = 1.0f / std::pow(static_cast<float>(theta), expo);
  }
  if (yarn) {
    const double factor = yarn->factor;
    double low = std::floor(CorrectionDim(yarn->beta_fast, dim, theta, yarn->original_max_position_embeddings));
    double high = std::ceil(CorrectionDim(yarn->beta_slow, dim, theta, yarn->original_max_position_embeddings));
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;  // avoid a zero-width ramp
    for (int64_t i = 0; i < half; ++i) {
      const float extra = t.inv_freq[i];
      const float inter = 1.0f / (static_cast<float>(factor) *
                                  std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / static_cast<float>(dim)));
      const float ramp = std::clamp(static_cast<float>((i - low) / (high - low)), 0.0f, 1.0f);
      const float mask = 1.0f - ramp;
      t.inv_freq[i] = inter * (1.0f - mask) + extra * mask;
    }
    // mscale_all_dim == 0 (unset) gives a denominator of 1, as in the reference.
    attn_mscale = static_cast<float>(YarnGetMscale(factor, yarn->mscale) /
                                     YarnGetMscale(factor, yarn->mscale_all_dim));
  }
  t.cos.resize(max_positions * half);
  t.sin.resize(max_positions * half);
  for (int64_t p = 0; p < max_positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * t.inv_freq[i];  // float32 product, as torch.outer
      t.cos[p * half + i] = static_cast<float>(std::cos(static_cast<double>(angle))) * attn_mscale;
      t.sin[p * half + i] = static_cast<float>(std::sin(static_cast<double>(angle))) * attn_mscale;
    }
  }
  return t;
}

}  // namespace deepshard
