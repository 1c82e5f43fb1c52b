// YaRN tables against the formulas written out independently in double precision.
#include "runtime/model/rope.h"

#include <cmath>

#include "gtest/gtest.h"

namespace deepshard {
namespace {

TEST(Rope, PlainRopeFrequencies) {
  RopeTable t = BuildRopeTable(8, 10000.0, std::nullopt, 5);
  for (int i = 0; i < 4; ++i) {
    const double f = std::pow(10000.0, -2.0 * i / 8);
    EXPECT_NEAR(t.inv_freq[i], f, 1e-7 * f);
    EXPECT_NEAR(t.cos[3 * 4 + i], std::cos(3 * f), 1e-6);
    EXPECT_NEAR(t.sin[3 * 4 + i], std::sin(3 * f), 1e-6);
  }
}

TEST(Rope, YarnBlendsFrequenciesAndScalesByMscaleRatio) {
  YarnConfig y;
  y.factor = 40, y.beta_fast = 32, y.beta_slow = 1, y.mscale = 1.0, y.mscale_all_dim = 0.8;
  y.original_max_position_embeddings = 4096;
  const int dim = 64;
  RopeTable t = BuildRopeTable(dim, 10000.0, y, 3);
  auto corr = [&](double rot) { return dim * std::log(4096 / (rot * 2 * M_PI)) / (2 * std::log(10000.0)); };
  const double low = std::max(std::floor(corr(32)), 0.0), high = std::min(std::ceil(corr(1)), dim - 1.0);
  for (int i = 0; i < dim / 2; ++i) {
    const double extra = std::pow(10000.0, -2.0 * i / dim), inter = extra / 40;
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double expect = inter * ramp + extra * (1 - ramp);  // mask = 1 - ramp keeps high freqs
    EXPECT_NEAR(t.inv_freq[i], expect, 2e-6 * expect) << i;
  }
  const double m = (0.1 * 1.0 * std::log(40) + 1) / (0.1 * 0.8 * std::log(40) + 1);
  EXPECT_NEAR(t.cos[0], m, 1e-6);  // position 0: cos = 1 × mscale ratio
  EXPECT_NEAR(t.sin[0], 0.0, 1e-7);
}

TEST(Rope, SoftmaxScaleIncludesMscaleSquared) {
  ModelConfig c;
  c.family = ModelFamily::kDeepseekV3;
  c.qk_nope_head_dim = 128, c.qk_rope_head_dim = 64;
  EXPECT_NEAR(c.softmax_scale(), 1 / std::sqrt(192.0), 1e-12);
  c.yarn = YarnConfig{};
  c.yarn->factor = 40, c.yarn->mscale_all_dim = 1.0;
  const double m = 0.1 * std::log(40.0) + 1;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(192.0), 1e-12);
}

}  // namespace
}  // namespace deepshard
