// The router against hand-worked cases: each asserts a detail where reference
// implementations have differed.
#include "runtime/model/moe_router.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace deepshard {
namespace {

ModelConfig Router(ModelFamily fam, TopkMethod m, ScoringFunc s, int64_t E, int64_t k, int64_t groups,
                   int64_t topk_group, bool norm, double scale) {
  ModelConfig c;
  c.family = fam;
  c.topk_method = m;
  c.scoring_func = s;
  c.n_routed_experts = E;
  c.num_experts_per_tok = k;
  c.n_group = groups;
  c.topk_group = topk_group;
  c.norm_topk_prob = norm;
  c.routed_scaling_factor = scale;
  return c;
}

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> w;
};

Routed RouteAll(const ModelConfig& c, const std::vector<float>& logits, const std::vector<float>& bias = {}) {
  const int64_t T = static_cast<int64_t>(logits.size()) / c.n_routed_experts;
  Routed r{std::vector<int32_t>(T * c.num_experts_per_tok), std::vector<float>(T * c.num_experts_per_tok)};
  VectorView b{DType::kF32, bias.empty() ? nullptr : bias.data(), static_cast<int64_t>(bias.size())};
  RouteTokens(c, logits.data(), b, T, r.ids.data(), r.w.data());
  return r;
}

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

TEST(MoeRouter, GreedySoftmaxUnnormalisedIsScaled) {
  // V2-Lite style: softmax, greedy, norm_topk_prob false, weights × factor.
  auto c = Router(ModelFamily::kDeepseekV2, TopkMethod::kGreedy, ScoringFunc::kSoftmax, 4, 2, 1, 1, false, 1.5);
  Routed r = RouteAll(c, {1.0f, 3.0f, 2.0f, 0.0f});
  const double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + std::exp(0.0);
  EXPECT_EQ(r.ids[0], 1);
  EXPECT_EQ(r.ids[1], 2);
  EXPECT_NEAR(r.w[0], 1.5 * std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(r.w[1], 1.5 * std::exp(2.0) / z, 1e-6);
}

TEST(MoeRouter, SoftmaxNormalisedOnlyWithNormTopkProb) {
  // V2 original: when normalising, routed_scaling_factor is not applied.
  auto c = Router(ModelFamily::kDeepseekV2, TopkMethod::kGreedy, ScoringFunc::kSoftmax, 4, 2, 1, 1, true, 16.0);
  Routed r = RouteAll(c, {1.0f, 3.0f, 2.0f, 0.0f});
  EXPECT_NEAR(r.w[0] + r.w[1], 1.0, 1e-6);
  EXPECT_NEAR(r.w[0] / r.w[1], std::exp(1.0), 1e-5);
  // DeepSeekMoE 16B (family deepseek) has no factor in its config (1.0).
}

TEST(MoeRouter, GroupLimitedGreedyScoresGroupsByMax) {
  // 8 experts in 4 groups of 2; keep 1 group. Group 0 = {e0, e1} has the single
  // best expert; group 1 = {e2, e3} has the best pair. By max, group 0 wins.
  auto c = Router(ModelFamily::kDeepseekV2, TopkMethod::kGroupLimitedGreedy, ScoringFunc::kSoftmax, 8, 2, 4, 1,
                  false, 1.0);
  Routed r = RouteAll(c, {3.0f, -5.0f, 2.5f, 2.5f, 0.0f, 0.0f, 0.0f, 0.0f});
  std::vector<int32_t> ids = r.ids;
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 1}));  // the whole winning group, even its weak e1
}

TEST(MoeRouter, NoauxTcScoresGroupsByTop2SumAndUsesBiasForSelectionOnly) {
  // Same logits under V3 rules: group 1 (2.5, 2.5) beats group 0 (3.0, -5.0) on
  // the sum of its top-2 sigmoid scores, so the pick is {e2, e3}.
  auto c = Router(ModelFamily::kDeepseekV3, TopkMethod::kNoauxTc, ScoringFunc::kSigmoid, 8, 2, 4, 1, true, 2.5);
  std::vector<float> logits = {3.0f, -5.0f, 2.5f, 2.5f, 0.0f, 0.0f, 0.0f, 0.0f};
  Routed r = RouteAll(c, logits, std::vector<float>(8, 0.0f));
  std::vector<int32_t> ids = r.ids;
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<int32_t>{2, 3}));

  // A bias on e4 and e5 moves selection to group 2 but the weights stay the
  // unbiased sigmoid scores, normalised over the chosen k, times 2.5.
  std::vector<float> bias = {0, 0, 0, 0, 0.9f, 0.8f, 0, 0};
  r = RouteAll(c, logits, bias);
  ids = r.ids;
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<int32_t>{4, 5}));
  EXPECT_NEAR(r.w[0], 2.5 * 0.5, 1e-6);  // sigmoid(0) / (2 sigmoid(0)) × 2.5
  EXPECT_NEAR(r.w[1], 2.5 * 0.5, 1e-6);
}

TEST(MoeRouter, SigmoidIsAlwaysNormalised) {
  // DeepSeek-V3's inference code normalises sigmoid weights whatever norm_topk_prob says.
  auto c = Router(ModelFamily::kDeepseekV3, TopkMethod::kGreedy, ScoringFunc::kSigmoid, 4, 2, 1, 1, false, 1.0);
  Routed r = RouteAll(c, {1.0f, -1.0f, 0.5f, 0.0f});
  const double a = Sigmoid(1.0), b = Sigmoid(0.5);
  EXPECT_EQ(r.ids[0], 0);
  EXPECT_EQ(r.ids[1], 2);
  EXPECT_NEAR(r.w[0], a / (a + b), 1e-6);
  EXPECT_NEAR(r.w[1], b / (a + b), 1e-6);
}

TEST(MoeRouter, SeveralTokensAreIndependent) {
  auto c = Router(ModelFamily::kDeepseekV2, TopkMethod::kGreedy, ScoringFunc::kSoftmax, 4, 1, 1, 1, false, 1.0);
  Routed r = RouteAll(c, {0, 0, 5, 0, /*t1*/ 9, 0, 0, 0, /*t2*/ 0, 0, 0, 1});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 0, 3}));
}

}  // namespace
}  // namespace deepshard
