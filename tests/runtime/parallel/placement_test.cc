// The placement plan on the real configs: balanced splits, expert shards,
// memory accounting, and errors that name the flag.
#include "runtime/parallel/placement.h"

#include <chrono>
#include <numeric>

#include "gtest/gtest.h"

namespace deepshard {
namespace {

ModelConfig Real(const std::string& name) {
  auto c = LoadModelConfig(std::string(DS_SOURCE_DIR) + "/tests/data/configs/" + name + "/config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

TEST(Placement, V3On32RanksCoversEveryLayerAndExpertOnce) {
  const ModelConfig c = Real("deepseek-v3");
  PlacementOptions o;
  o.pp = 4, o.ep = 8, o.nodes = 4;
  auto p = MakePlacementPlan(c, o);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->stages.size(), 4u);
  EXPECT_EQ(p->stages.front().layer_begin, 0);
  EXPECT_EQ(p->stages.back().layer_end, 61);  // the MTP layer (61) is not placed
  for (size_t s = 1; s < p->stages.size(); ++s) EXPECT_EQ(p->stages[s].layer_begin, p->stages[s - 1].layer_end);
  // Each stage's ranks hold all 256 experts between them, 32 each, disjoint.
  for (int s = 0; s < 4; ++s) {
    std::vector<int> seen(256, 0);
    for (int e = 0; e < 8; ++e) {
      const RankPlan& r = p->ranks[s * 8 + e];
      EXPECT_EQ(r.experts.size(), 32u);
      EXPECT_EQ(r.node, (s * 8 + e) / 8);
      for (int32_t x : r.experts) ++seen[x];
    }
    for (int v : seen) EXPECT_EQ(v, 1);
  }
  // Balance: the bottleneck stage is within 10% of the mean (61 layers, 3 dense).
  double total = 0, worst = 0;
  for (const auto& st : p->stages) total += st.cost, worst = std::max(worst, st.cost);
  EXPECT_LT(worst, 1.10 * total / 4);
  // FP8 V3 is ~671 GB; 32 ranks hold ~ (replicated attention etc. × 8) + experts.
  uint64_t bytes = 0;
  for (const auto& r : p->ranks) bytes += r.weight_bytes;
  EXPECT_GT(bytes, 650ull << 30);
  // KV per 1K tokens on a stage-0 rank: 576 floats × layers × 1024 × 4 bytes.
  const RankPlan& r0 = p->ranks[0];
  EXPECT_EQ(r0.kv_bytes_per_1k, 4ull * 1024 * 576 * (r0.load.layer_end - r0.load.layer_begin));
}

TEST(Placement, BalancedSplitGivesTheLmHeadStageFewerLayers) {
  const ModelConfig c = Real("deepseek-v2-lite");
  PlacementOptions o;
  o.pp = 3, o.ep = 1;
  auto p = MakePlacementPlan(c, o);
  ASSERT_TRUE(p.ok());
  // Dense layer 0 is cheaper per token than a MoE layer, and the last stage
  // carries the 102400 × 2048 lm_head: it gets no more layers than the first.
  EXPECT_LE(p->stages[2].layer_end - p->stages[2].layer_begin, p->stages[0].layer_end - p->stages[0].layer_begin);
}

TEST(Placement, UnevenExpertShards) {
  const ModelConfig c = Real("deepseek-v2-lite");  // 64 experts
  PlacementOptions o;
  o.ep = 3;
  auto p = MakePlacementPlan(c, o);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ranks[0].experts.size(), 22u);
  EXPECT_EQ(p->ranks[1].experts.size(), 21u);
  EXPECT_EQ(p->ranks[2].experts.size(), 21u);
}

TEST(Placement, OverridesAndErrorsNameTheFlag) {
  const ModelConfig c = Real("deepseek-v2-lite");  // 27 layers
  PlacementOptions o;
  o.pp = 2;
  o.layer_split = {20, 7};
  auto p = MakePlacementPlan(c, o);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->stages[1].layer_begin, 20);
  auto err = [&](PlacementOptions x, const std::string& needle) {
    auto r = MakePlacementPlan(c, x);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(std::string(r.status().message()).find(needle), std::string::npos) << r.status();
  };
  PlacementOptions bad = o;
  bad.layer_split = {20, 8};
  err(bad, "--layer-split");
  bad = PlacementOptions{};
  bad.pp = 28;
  err(bad, "--pp 28 exceeds");
  bad = PlacementOptions{};
  bad.ep = 65;
  err(bad, "--ep 65");
  bad = PlacementOptions{};
  bad.ep = 2, bad.nodes = 3;
  err(bad, "--nodes");
  bad = PlacementOptions{};
  bad.ep = 2;
  bad.expert_owner.assign(64, 0);
  err(bad, "gives rank 1 no experts");
  bad.expert_owner.assign(63, 0);
  err(bad, "--expert-map lists 63");
}

// Issue 16: the split search is bounded in the layers (2e5 layers and --pp 2
// took minutes in the O(pp L^2) search), and absurd grids are errors.
TEST(Placement, ManyLayersSplitQuicklyAndBalanced) {
  ModelConfig c = Real("deepseek-v3");
  c.num_hidden_layers = 200000;
  for (int pp : {2, 7, 4096}) {
    SCOPED_TRACE(pp);
    PlacementOptions o;
    o.pp = pp;
    const auto t0 = std::chrono::steady_clock::now();
    auto p = MakePlacementPlan(c, o);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_LT(s, 5.0);
    ASSERT_EQ(p->stages.size(), static_cast<size_t>(pp));
    EXPECT_EQ(p->stages.back().layer_end, 200000);
    double total = 0, worst = 0;
    for (size_t i = 0; i < p->stages.size(); ++i) {
      EXPECT_GT(p->stages[i].layer_end, p->stages[i].layer_begin);
      if (i > 0) {
        EXPECT_EQ(p->stages[i].layer_begin, p->stages[i - 1].layer_end);
      }
      total += p->stages[i].cost, worst = std::max(worst, p->stages[i].cost);
    }
    // Within a few layers of the ideal (the head stage holds fewer).
    EXPECT_LT(worst, total / pp + 4 * total / 200000 + 2e9);  // + the lm head (1.9 GB)
  }
  PlacementOptions big;
  big.pp = 4096, big.ep = 256;
  auto p = MakePlacementPlan(c, big);
  EXPECT_FALSE(p.ok());
  EXPECT_NE(std::string(p.status().message()).find("ranks"), std::string::npos) << p.status();
}

// --weights: an fp8 checkpoint keeps its fp8 layers (int8 without
// --quantize-fp8 only changes the bf16 LM head: V·H·2 bytes become V·H
// values plus one f16 scale per 32), and the quantised formats shrink a bf16
// model in order.
TEST(Placement, WeightFormatsChangeTheBytesAsUploadWeightsHoldsThem) {
  const ModelConfig v3 = Real("deepseek-v3");
  PlacementOptions stored, int8, int4_all;
  int8.weights = WeightQuant::kInt8;
  int4_all.weights = WeightQuant::kInt4;
  int4_all.quantize_fp8 = true;
  auto a = MakePlacementPlan(v3, stored), b = MakePlacementPlan(v3, int8), q = MakePlacementPlan(v3, int4_all);
  ASSERT_TRUE(a.ok() && b.ok() && q.ok());
  const double V = static_cast<double>(v3.vocab_size), H = static_cast<double>(v3.hidden_size);
  EXPECT_DOUBLE_EQ(static_cast<double>(a->ranks[0].weight_bytes) - static_cast<double>(b->ranks[0].weight_bytes),
                   V * H * 2 - (V * H + 2 * V * H / 32));
  EXPECT_LT(q->ranks[0].weight_bytes, b->ranks[0].weight_bytes * 0.6);
  const ModelConfig lite = Real("deepseek-v2-lite");
  PlacementOptions l8, l4;
  l8.weights = WeightQuant::kInt8;
  l4.weights = WeightQuant::kInt4;
  auto s0 = MakePlacementPlan(lite, PlacementOptions{}), s8 = MakePlacementPlan(lite, l8), s4 = MakePlacementPlan(lite, l4);
  ASSERT_TRUE(s0.ok() && s8.ok() && s4.ok());
  EXPECT_LT(s8->ranks[0].weight_bytes, s0->ranks[0].weight_bytes * 0.6);
  EXPECT_LT(s4->ranks[0].weight_bytes, s8->ranks[0].weight_bytes * 0.6);
  EXPECT_NE(FormatPlacementPlan(lite, *s4).find("--weights int4 (group 32)"), std::string::npos);
}

}  // namespace
}  // namespace deepshard
