// Sampler: greedy picks the first maximum; seeded sampling is reproducible and
// follows softmax(logits / T) restricted by top-k and top-p.
#include "runtime/sampling.h"

#include <cmath>
#include <algorithm>
#include <functional>
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

TEST(Sampler, LogitBiasMovesTheArgmax) {
  SamplingParams p;
  p.logit_bias = {{2, 5.0f}, {1, -100.0f}};
  Sampler s(4, p);
  const float logits[4] = {1.0f, 3.0f, -1.0f, 2.0f};  // biased: {1, -97, 4, 2}
  EXPECT_EQ(s.Sample(logits), 2);
}

TEST(Sampler, MinTokensBansEosAndStopIdsUntilReached) {
  SamplingParams p;
  p.min_tokens = 2;
  p.stop_token_ids = {3};
  Sampler s(5, p, /*eos_id=*/0);
  const float logits[5] = {9.0f, 1.0f, 2.0f, 8.0f, 0.0f};
  EXPECT_EQ(s.Sample(logits), 2);  // 0 and 3 banned
  EXPECT_EQ(s.Sample(logits), 2);
  EXPECT_EQ(s.Sample(logits), 0);  // two sampled: EOS allowed again
  EXPECT_TRUE(s.IsStop(0));
  EXPECT_TRUE(s.IsStop(3));
  EXPECT_FALSE(s.IsStop(2));
}

TEST(Sampler, FrequencyAndPresencePenaltiesCountTheOutput) {
  SamplingParams p;
  p.frequency_penalty = 0.5f, p.presence_penalty = 0.25f;
  Sampler s(3, p);
  const float logits[3] = {2.0f, 1.5f, 0.0f};
  // Token 0 once: 2 - 0.5 - 0.25 = 1.25 < 1.5, so token 1 next; then
  // token 1 at 1.5 - 0.75 = 0.75 < 1.25: token 0; then 0 at 2 - 1 - 0.25 = 0.75
  // ties token 1's 0.75: the lower id wins.
  EXPECT_EQ(s.Sample(logits), 0);
  EXPECT_EQ(s.Sample(logits), 1);
  EXPECT_EQ(s.Sample(logits), 0);
  EXPECT_EQ(s.Sample(logits), 0);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  const float logits[3] = {3.0f, 2.0f, -1.0f};
  Sampler s(3, p);
  const int32_t prompt[1] = {0};
  s.SetPrompt(prompt);  // 3 -> 1.5 < 2
  EXPECT_EQ(s.Sample(logits), 1);
  EXPECT_EQ(s.Sample(logits), 0);  // 1 -> 1.0 < 1.5
  const float negative[3] = {-1.0f, -1.5f, -3.0f};
  Sampler n(3, p);
  const int32_t seen[1] = {0};
  n.SetPrompt(seen);  // -1 -> -2 < -1.5
  EXPECT_EQ(n.Sample(negative), 1);
}

TEST(Sampler, AllowedMaskRestrictsAndWinsOverMinTokens) {
  std::vector<uint64_t> mask(2, 0);  // 70 tokens: two words
  mask[1] |= uint64_t{1} << (65 - 64);
  mask[0] |= uint64_t{1} << 7;
  std::vector<float> logits(70, 0.0f);
  logits[3] = 10.0f, logits[7] = 1.0f, logits[65] = 2.0f;
  SamplingParams p;
  Sampler s(70, p);
  EXPECT_EQ(s.Sample(logits.data(), mask.data()), 65);
  p.temperature = 1.0f, p.seed = 5;
  Sampler t(70, p);
  for (int i = 0; i < 200; ++i) {
    const int32_t x = t.Sample(logits.data(), mask.data());
    EXPECT_TRUE(x == 7 || x == 65) << x;
  }
  // Only EOS allowed, min_tokens not reached: the mask wins.
  std::vector<uint64_t> only_eos(2, 0);
  only_eos[0] = 1;  // token 0 = EOS
  SamplingParams m;
  m.min_tokens = 5;
  Sampler u(70, m, /*eos_id=*/0);
  EXPECT_EQ(u.Sample(logits.data(), only_eos.data()), 0);
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.temperature = 1.0f, p.min_p = 0.3f, p.seed = 9;
  // p ∝ e^{0}, e^{-1} (0.37 of the top), e^{-2} (0.14), e^{-3}: min_p 0.3 keeps {0, 1}.
  const float logits[4] = {0.0f, -1.0f, -2.0f, -3.0f};
  Sampler s(4, p);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 3000; ++i) ++seen[s.Sample(logits)];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[0], seen[1]);
  EXPECT_GT(seen[1], 0);
}

TEST(LogSoftmaxAt, MatchesDoublePrecisionAndOrdersTheTop) {
  std::vector<float> logits(1000);
  for (int i = 0; i < 1000; ++i) logits[i] = std::sin(i * 1.7f) * 8.0f;
  logits[10] = logits[20] = 12.0f;  // a tie: the lower id first
  double z = 0;
  for (float l : logits) z += std::exp(static_cast<double>(l));
  const TokenLogprob r = LogSoftmaxAt(logits.data(), 1000, 123, 5);
  EXPECT_NEAR(r.logprob, logits[123] - std::log(z), 1e-5);
  ASSERT_EQ(r.top.size(), 5u);
  EXPECT_EQ(r.top[0].first, 10);
  EXPECT_EQ(r.top[1].first, 20);
  for (size_t i = 1; i < r.top.size(); ++i) EXPECT_GE(r.top[i - 1].second, r.top[i].second);
  std::vector<float> sorted = logits;
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  for (size_t i = 0; i < r.top.size(); ++i) EXPECT_NEAR(r.top[i].second, sorted[i] - std::log(z), 1e-5);
  EXPECT_TRUE(LogSoftmaxAt(logits.data(), 1000, 5, 0).top.empty());
}

TEST(SamplingParams, ValidateNamesTheNewFields) {
  auto message = [](SamplingParams p, int64_t vocab = 0) { return std::string(p.Validate(vocab).message()); };
  SamplingParams p;
  p.presence_penalty = 3;
  EXPECT_NE(message(p).find("presence_penalty"), std::string::npos);
  p = {};
  p.frequency_penalty = -2.5f;
  EXPECT_NE(message(p).find("frequency_penalty"), std::string::npos);
  p = {};
  p.repetition_penalty = 0;
  EXPECT_NE(message(p).find("repetition_penalty"), std::string::npos);
  p = {};
  p.min_p = 1.5f;
  EXPECT_NE(message(p).find("min_p"), std::string::npos);
  p = {};
  p.logit_bias = {{5, 101.0f}};
  EXPECT_NE(message(p).find("logit_bias"), std::string::npos);
  p = {};
  p.logit_bias = {{50, 1.0f}};
  EXPECT_TRUE(p.Validate().ok());
  EXPECT_NE(message(p, 50).find("logit_bias: token 50"), std::string::npos);
  p = {};
  p.stop_token_ids = {-1};
  EXPECT_NE(message(p).find("stop_token_ids"), std::string::npos);
}

}  // namespace
}  // namespace deepshard
