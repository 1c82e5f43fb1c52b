// Sampler: greedy picks the first maximum; seeded sampling is reproducible and
// follows softmax(logits / T) restricted by top-k and top-p.
#include "runtime/sampling.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace deepshard {
namespace {

TEST(Sampler, GreedyIsFirstArgmax) {
  Sampler s(5, SamplingParams{});
  const float logits[5] = {0.1f, 3.0f, -1.0f, 3.0f, 2.0f};
  EXPECT_EQ(s.Sample(logits), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  SamplingParams p;
  p.temperature = 1.0f, p.seed = 42;
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.37f);
  Sampler a(100, p), b(100, p);
  p.seed = 43;
  Sampler c(100, p);
  int differ = 0;
  for (int i = 0; i < 50; ++i) {
    const int32_t x = a.Sample(logits.data());
    EXPECT_EQ(x, b.Sample(logits.data()));
    differ += x != c.Sample(logits.data());
  }
  EXPECT_GT(differ, 0);  // another seed gives another stream
}

TEST(Sampler, FrequenciesFollowTemperatureSoftmax) {
  SamplingParams p;
  p.temperature = 0.5f, p.seed = 1;
  const float logits[4] = {0.0f, 0.5f, 1.0f, -0.5f};
  Sampler s(4, p);
  std::vector<int> count(4, 0);
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++count[s.Sample(logits)];
  double z = 0;
  for (float l : logits) z += std::exp(l / 0.5);
  for (int i = 0; i < 4; ++i) {
    const double expect = std::exp(logits[i] / 0.5) / z;
    // 5 standard deviations of a binomial proportion.
    EXPECT_NEAR(count[i] / double(n), expect, 5 * std::sqrt(expect * (1 - expect) / n)) << i;
  }
}

TEST(Sampler, TopKAndTopPRestrictTheCandidates) {
  const float logits[6] = {1.0f, 4.0f, 3.0f, 2.0f, 0.0f, 3.5f};
  SamplingParams p;
  p.temperature = 1.0f, p.top_k = 2, p.seed = 3;
  Sampler k2(6, p);
  for (int i = 0; i < 500; ++i) {
    const int32_t t = k2.Sample(logits);
    EXPECT_TRUE(t == 1 || t == 5) << t;
  }
  // softmax mass: token 1 ≈ 0.47, token 5 ≈ 0.28, token 2 ≈ 0.17: top_p 0.6 keeps {1, 5}.
  p.top_k = 0, p.top_p = 0.6f;
  Sampler nucleus(6, p);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[nucleus.Sample(logits)];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[1], 0);
  EXPECT_GT(seen[5], 0);
  p.top_p = 0.01f;  // only the most likely token survives
  Sampler tiny(6, p);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(tiny.Sample(logits), 1);
}

TEST(SamplingParams, ValidateNamesTheField) {
  SamplingParams p;
  p.temperature = -1;
  EXPECT_NE(std::string(p.Validate().message()).find("temperature"), std::string::npos);
  p = SamplingParams{};
  p.top_p = 0;
  EXPECT_NE(std::string(p.Validate().message()).find("top_p"), std::string::npos);
  p = SamplingParams{};
  p.top_k = -2;
  EXPECT_NE(std::string(p.Validate().message()).find("top_k"), std::string::npos);
}

}  // namespace
}  // namespace deepshard
