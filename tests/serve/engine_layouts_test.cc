// Correctness across layouts: the same prompts generated through the engine
// (serve::Job + RunOffline, what `deepshard generate` runs) on a pp × ep grid
// and on one rank without the engine (runtime/generate.h) must give identical
// greedy and seeded tokens and logits within 1e-5; with a bf16 KV cache the
// golden fixture's greedy tokens, and its logits within bf16 tolerance. Every
// KV block is free at the end. Run under mpiexec with DS_TEST_PP / DS_TEST_EP
// (see CMakeLists.txt).
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "comm/mpi_communicator.h"
#include "gtest/gtest.h"
#include "runtime/generate.h"
#include "runtime/model/random_model.h"
#include "runtime/parallel/placement.h"
#include "runtime/weights/safetensors.h"
#include "serve/job.h"
#include "serve/offline.h"
#include "tests/util/logits.h"

namespace deepshard {
namespace {

int EnvInt(const char* name, int def) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : def;
}

int Rank() {
  int r;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// Rank 0 writes the model; every rank gets the same path.
std::string SharedModel(RandomModelOptions o, const std::string& tag) {
  char path[512] = {0};
  if (Rank() == 0) {
    const std::string dir = ::testing::TempDir() + "/deepshard_layouts_" + std::to_string(::getpid()) + "_" + tag;
    EXPECT_TRUE(WriteRandomModel(o, dir).ok());
    std::snprintf(path, sizeof(path), "%s", dir.c_str());
  }
  MPI_Bcast(path, sizeof(path), MPI_CHAR, 0, MPI_COMM_WORLD);
  return path;
}

// This rank's share of the layout, and the job over it.
struct Layout {
  ParallelConfig pc;
  PlacementPlan plan;
  std::unique_ptr<DeepseekModel> model;
  std::unique_ptr<Communicator> world, stage;
  std::unique_ptr<serve::Job> job;
};

void StartLayout(const std::string& dir, const RuntimeConfig& rt, int pp, int ep, Layout& l,
                 int64_t block_size = 64) {
  auto pc = ParallelConfig::FromMpi(MPI_COMM_WORLD, pp, ep);
  ASSERT_TRUE(pc.ok()) << pc.status();
  l.pc = *pc;
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  PlacementOptions po;
  po.pp = pp, po.ep = ep;
  auto plan = MakePlacementPlan(*config, po);
  ASSERT_TRUE(plan.ok()) << plan.status();
  l.plan = *std::move(plan);
  auto model = DeepseekModel::Load(dir, rt, l.plan.ranks[l.pc.rank].load);
  ASSERT_TRUE(model.ok()) << model.status();
  l.model = *std::move(model);
  l.world = MakeMpiCommunicator(MPI_COMM_WORLD);
  auto stage = l.world->Split(l.pc.stage, l.pc.ep_rank);
  ASSERT_TRUE(stage.ok()) << stage.status();
  l.stage = *std::move(stage);
  serve::RankResources r;
  r.model = l.model.get();
  r.pc = l.pc;
  r.world = l.pc.world > 1 ? l.world.get() : nullptr;
  r.stage = l.stage.get();
  r.experts = &l.plan.experts;
  serve::JobOptions o;
  o.command = "layouts_test";
  o.kv_bytes = 64 << 20;
  o.block_size = block_size;
  o.max_waiting = 1000;
  o.announce = false;
  int code = 0;
  l.job = serve::Job::Start(r, o, &code);
  ASSERT_NE(l.job, nullptr) << "exit code " << code;
}

// Runs `prompts` on the layout; rank 0 returns each prompt's tokens and logits.
std::vector<serve::OfflineResult> RunOnLayout(Layout& l, const std::vector<std::vector<int32_t>>& prompts,
                                              SamplingParams sp, int64_t steps) {
  if (!l.job->is_root()) {
    EXPECT_EQ(l.job->RunWorker(nullptr), 0);
    return {};
  }
  std::vector<serve::GenerationRequest> requests(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    requests[i].prompt = prompts[i];
    requests[i].max_tokens = steps;
    requests[i].sampling = sp;
    requests[i].sampling.seed = sp.seed + i;  // as `deepshard generate` does
    requests[i].ignore_eos = true;
    requests[i].return_logits = true;
  }
  auto got = serve::RunOffline(l.job->engine(), std::move(requests));
  EXPECT_TRUE(got.ok()) << got.status();
  // Every KV block is back in the pool.
  for (const SlotStats& s : l.job->engine().Snapshot().slots) EXPECT_EQ(s.blocks_used, 0);
  l.job->Shutdown();
  return got.ok() ? *std::move(got) : std::vector<serve::OfflineResult>{};
}

void CheckLayout(const std::string& preset, const std::vector<std::vector<int32_t>>& prompts, SamplingParams sp,
                 const RuntimeConfig& rt = RuntimeConfig{}) {
  const int pp = EnvInt("DS_TEST_PP", 1), ep = EnvInt("DS_TEST_EP", 1);
  RandomModelOptions o;
  o.preset = preset;
  o.num_layers = 4;  // enough layers for pp = 4
  const std::string dir = SharedModel(o, preset);
  Layout l;
  StartLayout(dir, rt, pp, ep, l);
  if (l.job == nullptr) return;
  const int64_t steps = 8;
  const auto got = RunOnLayout(l, prompts, sp, steps);
  if (l.pc.rank != 0) return;
  ASSERT_EQ(got.size(), prompts.size());
  // The single-rank reference, computed on rank 0 without the engine.
  auto full = DeepseekModel::Load(dir, rt);
  ASSERT_TRUE(full.ok());
  const int64_t V = (*full)->config().vocab_size;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateOptions gi;
    gi.max_new_tokens = steps;
    gi.stop_at_eos = false;
    gi.sampling = sp;
    gi.sampling.seed = sp.seed + i;
    std::vector<float> logits;
    gi.step_logits = &logits;
    auto ref = Generate(**full, prompts[i], gi);
    ASSERT_TRUE(ref.ok());
    EXPECT_EQ(got[i].tokens, *ref) << preset << " prompt " << i << " pp " << pp << " ep " << ep;
    ASSERT_EQ(got[i].logits.size(), logits.size());
    const double err = testing_util::RowRelErr(got[i].logits, logits, V);
    EXPECT_LE(err, 1e-5) << preset << " prompt " << i;
    std::printf("[ %s pp=%d ep=%d ] prompt %zu (%zu tokens): tokens %s, max rel logit err %.3g\n", preset.c_str(), pp,
                ep, i, prompts[i].size(), got[i].tokens == *ref ? "identical" : "DIFFER", err);
  }
}

// Five prompts of different lengths in flight at once; with ep = 4 some
// columns hold two sequences, others one.
const std::vector<std::vector<int32_t>> kPrompts = {
    {3, 17, 42}, {5, 9, 200, 11, 7, 88, 301, 45, 6}, {77}, {400, 300, 200, 100, 50, 25, 12, 6, 3, 2, 1, 9, 8, 7, 6, 5, 4},
    {10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 210, 220, 230, 240,
     250, 260, 270, 280, 290, 300, 310, 320, 330, 340, 350, 360, 370, 380, 390, 400}};

TEST(EngineLayouts, TinyV3GreedyMatchesSingleRank) { CheckLayout("tiny-v3", kPrompts, SamplingParams{}); }
TEST(EngineLayouts, TinyV2GreedyMatchesSingleRank) { CheckLayout("tiny-v2", kPrompts, SamplingParams{}); }
// Every rank quantises its own layers and experts at load (--weights int4):
// the same bytes as one rank quantising the whole model, so the same tokens.
TEST(EngineLayouts, Int4WeightsMatchSingleRank) {
  RuntimeConfig rt;
  rt.weights = WeightQuant::kInt4;
  CheckLayout("tiny-v3", kPrompts, SamplingParams{}, rt);
}

TEST(EngineLayouts, SampledTokensMatchSingleRank) {
  SamplingParams sp;
  sp.temperature = 0.9f, sp.top_k = 50, sp.top_p = 0.95f, sp.seed = 5;
  CheckLayout("tiny-v2-lite", kPrompts, sp);
}

// Prefix cache hits and forked n > 1 choices on the grid (4-token blocks):
// choices 1..3 fork choice 0's prompt (sampled with their own seeds), a second
// round finds the first round's blocks in the cache; every request gives the
// tokens and logits of a single-rank run.
TEST(EngineLayouts, PrefixCacheAndForkedChoicesMatchSingleRank) {
  const int pp = EnvInt("DS_TEST_PP", 1), ep = EnvInt("DS_TEST_EP", 1);
  RandomModelOptions o;
  o.preset = "tiny-v3";
  o.num_layers = 4;
  const std::string dir = SharedModel(o, "prefix");
  Layout l;
  StartLayout(dir, RuntimeConfig{}, pp, ep, l, /*block_size=*/4);
  if (l.job == nullptr) return;
  if (!l.job->is_root()) {
    EXPECT_EQ(l.job->RunWorker(nullptr), 0);
    return;
  }
  const std::vector<int32_t>& base = kPrompts[4];  // 40 tokens
  std::vector<int32_t> other(base.begin(), base.begin() + 24);
  other.insert(other.end(), {7, 8, 9});
  SamplingParams sampled;
  sampled.temperature = 0.9f, sampled.top_k = 50, sampled.top_p = 0.95f;
  struct Ask {
    std::vector<int32_t> prompt;
    SamplingParams sp;
    int share = -1;  // index of the request whose prompt KV it shares
  };
  std::vector<Ask> asks = {{base, {}}, {base, sampled, 0}, {base, sampled, 0}, {base, {}, 0}, {other, {}}};
  asks[1].sp.seed = 11, asks[2].sp.seed = 12;
  const int64_t steps = 6;
  serve::Engine& engine = l.job->engine();
  std::vector<serve::OfflineResult> got(asks.size() * 2);
  std::vector<int64_t> cached(got.size(), -1);
  for (int round = 0; round < 2; ++round) {
    std::vector<int64_t> ids;
    for (size_t i = 0; i < asks.size(); ++i) {
      const size_t k = round * asks.size() + i;
      serve::GenerationRequest r;
      r.prompt = asks[i].prompt;
      r.max_tokens = steps;
      r.sampling = asks[i].sp;
      r.ignore_eos = true;
      r.return_logits = true;
      r.share_prompt_with = asks[i].share >= 0 ? ids[asks[i].share] : -1;
      auto id = engine.Submit(r, [&got, &cached, k](serve::TokenEvent ev) {
        got[k].tokens.insert(got[k].tokens.end(), ev.tokens.begin(), ev.tokens.end());
        got[k].logits.insert(got[k].logits.end(), ev.logits.begin(), ev.logits.end());
        if (ev.finished) {
          got[k].reason = ev.reason;
          cached[k] = ev.cached_tokens;
        }
      });
      ASSERT_TRUE(id.ok()) << id.status();
      ids.push_back(*id);
    }
    ASSERT_TRUE(engine.Run(/*until_idle=*/true).ok());
  }
  for (const SlotStats& s : engine.Snapshot().slots) EXPECT_EQ(s.blocks_used, 0);
  EXPECT_GT(engine.Snapshot().prefix_cache_hits, 0);
  l.job->Shutdown();
  auto full = DeepseekModel::Load(dir, RuntimeConfig{});
  ASSERT_TRUE(full.ok());
  const int64_t V = (*full)->config().vocab_size;
  for (size_t k = 0; k < got.size(); ++k) {
    const Ask& a = asks[k % asks.size()];
    GenerateOptions gi;
    gi.max_new_tokens = steps;
    gi.stop_at_eos = false;
    gi.sampling = a.sp;
    std::vector<float> logits;
    gi.step_logits = &logits;
    auto ref = Generate(**full, a.prompt, gi);
    ASSERT_TRUE(ref.ok());
    EXPECT_EQ(got[k].tokens, *ref) << "request " << k << " pp " << pp << " ep " << ep;
    EXPECT_LE(testing_util::RowRelErr(got[k].logits, logits, V), 1e-5) << "request " << k;
    if (a.share >= 0 && k < asks.size()) {
      EXPECT_EQ(cached[k], 39) << "request " << k << " forks its sibling's 39 prompt tokens";
    }
    if (k >= asks.size()) {
      EXPECT_GT(cached[k], 0) << "request " << k << " finds the first round's blocks";
    }
  }
}

// Echo and logprobs (what lm-eval's loglikelihood requests ask): on every
// grid, every prompt position's and every generated token's log-probability
// equals the log-softmax of a single-rank offline forward pass (<= 1e-4), also
// for a prompt whose prefix is in the cache (echo must compute every row).
TEST(EngineLayouts, EchoLogprobsMatchOfflineLogSoftmax) {
  const int pp = EnvInt("DS_TEST_PP", 1), ep = EnvInt("DS_TEST_EP", 1);
  RandomModelOptions o;
  o.preset = "tiny-v3";
  o.num_layers = 4;
  const std::string dir = SharedModel(o, "echo");
  Layout l;
  StartLayout(dir, RuntimeConfig{}, pp, ep, l, /*block_size=*/4);
  if (l.job == nullptr) return;
  if (!l.job->is_root()) {
    EXPECT_EQ(l.job->RunWorker(nullptr), 0);
    return;
  }
  const std::vector<std::vector<int32_t>> prompts = {kPrompts[4], kPrompts[4], kPrompts[1], kPrompts[2]};
  const int64_t steps = 3;
  serve::Engine& engine = l.job->engine();
  struct Got {
    std::vector<int32_t> tokens;
    std::vector<TokenLogprob> lps, prompt_lps;
  };
  std::vector<Got> got(prompts.size());
  for (size_t k = 0; k < prompts.size(); ++k) {
    serve::GenerationRequest r;
    r.prompt = prompts[k];
    r.max_tokens = steps;
    r.ignore_eos = true;
    r.logprobs = 2;
    r.prompt_logprobs = k != 0;  // the first fills the prefix cache for the second
    auto id = engine.Submit(r, [&got, k](serve::TokenEvent ev) {
      got[k].tokens.insert(got[k].tokens.end(), ev.tokens.begin(), ev.tokens.end());
      got[k].lps.insert(got[k].lps.end(), ev.logprobs.begin(), ev.logprobs.end());
      got[k].prompt_lps.insert(got[k].prompt_lps.end(), ev.prompt_logprobs.begin(), ev.prompt_logprobs.end());
    });
    ASSERT_TRUE(id.ok()) << id.status();
    if (k == 0) {
      ASSERT_TRUE(engine.Run(/*until_idle=*/true).ok());
    }
  }
  ASSERT_TRUE(engine.Run(/*until_idle=*/true).ok());
  l.job->Shutdown();
  auto full = DeepseekModel::Load(dir, RuntimeConfig{});
  ASSERT_TRUE(full.ok());
  const int64_t V = (*full)->config().vocab_size;
  auto log_softmax = [V](const float* x, int32_t t) {
    double mx = x[0], sum = 0;
    for (int64_t i = 1; i < V; ++i) mx = std::max<double>(mx, x[i]);
    for (int64_t i = 0; i < V; ++i) sum += std::exp(x[i] - mx);
    return x[t] - mx - std::log(sum);
  };
  for (size_t k = 0; k < prompts.size(); ++k) {
    std::vector<int32_t> all = prompts[k];
    all.insert(all.end(), got[k].tokens.begin(), got[k].tokens.end());
    auto cache = (*full)->NewCache();
    ASSERT_TRUE(cache.ok());
    std::vector<float> logits(all.size() * V);
    const SequenceChunk ch{cache->get(), 0, all.data(), static_cast<int64_t>(all.size())};
    ASSERT_TRUE((*full)->Forward({&ch, 1}, /*all_logits=*/true, logits.data()).ok());
    const size_t P = prompts[k].size();
    ASSERT_EQ(got[k].prompt_lps.size(), k == 0 ? 0 : P - 1) << "request " << k;
    for (size_t i = 0; i < got[k].prompt_lps.size(); ++i) {
      EXPECT_EQ(got[k].prompt_lps[i].token, prompts[k][i + 1]);
      EXPECT_NEAR(got[k].prompt_lps[i].logprob, log_softmax(&logits[i * V], prompts[k][i + 1]), 1e-4)
          << "request " << k << " position " << i + 1 << " pp " << pp << " ep " << ep;
    }
    ASSERT_EQ(got[k].lps.size(), static_cast<size_t>(steps));
    for (int64_t i = 0; i < steps; ++i) {
      EXPECT_NEAR(got[k].lps[i].logprob, log_softmax(&logits[(P - 1 + i) * V], got[k].tokens[i]), 1e-4)
          << "request " << k << " token " << i;
    }
  }
}

// One prompt: every other DP column has no tokens at all, yet takes part in
// every dispatch and combine.
TEST(EngineLayouts, RanksWithNoTokensStillTakePart) { CheckLayout("tiny-v3", {{7, 8, 9, 10, 11}}, SamplingParams{}); }

// --kv-cache-dtype bf16 on the golden fixture tiny-v3-f32 (transformers'
// logits): the same greedy tokens, logits within bf16 tolerance (see
// Bf16KvCacheMatchesReference in tests/runtime/model/golden_test.cc).
TEST(EngineLayouts, Bf16KvCacheMatchesGoldenFixture) {
  const int pp = EnvInt("DS_TEST_PP", 1), ep = EnvInt("DS_TEST_EP", 1);
  auto fx = SafetensorsFile::Open(std::string(DS_SOURCE_DIR) + "/tests/data/golden/tiny-v3-f32.safetensors");
  ASSERT_TRUE(fx.ok()) << fx.status();
  const auto meta = (*fx)->metadata();
  RandomModelOptions o;
  o.preset = meta.at("preset");
  o.seed = std::stoull(meta.at("seed"));
  if (pp > 3) GTEST_SKIP() << "the fixture model has 3 layers";
  const std::string dir = SharedModel(o, "golden");
  auto fp = WeightsFingerprint(dir);
  ASSERT_TRUE(fp.ok());
  ASSERT_EQ(*fp, meta.at("weights_fnv1a64"));
  auto get_i32 = [&](const std::string& name) {
    const TensorInfo* t = (*fx)->Find(name);
    std::vector<int64_t> v(t->numel());
    std::memcpy(v.data(), (*fx)->Data(*t), v.size() * 8);
    return std::vector<int32_t>(v.begin(), v.end());
  };
  const TensorInfo* lt = (*fx)->Find("decode.logits");
  std::vector<float> ref_logits(lt->numel());
  std::memcpy(ref_logits.data(), (*fx)->Data(*lt), ref_logits.size() * 4);
  const auto prompt = get_i32("decode.prompt_ids"), ref_tokens = get_i32("decode.tokens");
  RuntimeConfig rt;
  rt.kv_dtype = DType::kBF16;
  Layout l;
  StartLayout(dir, rt, pp, ep, l);
  if (l.job == nullptr) return;
  const auto got = RunOnLayout(l, {prompt}, SamplingParams{}, static_cast<int64_t>(ref_tokens.size()));
  if (l.pc.rank != 0) return;
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].tokens, ref_tokens);
  ASSERT_EQ(got[0].logits.size(), ref_logits.size());
  const double err = testing_util::RowRelErr(got[0].logits, ref_logits, l.model->config().vocab_size);
  std::printf("[ golden tiny-v3-f32, bf16 KV, pp=%d ep=%d ] %zu greedy steps: tokens %s, max rel logit err %.3g\n",
              pp, ep, ref_tokens.size(), got[0].tokens == ref_tokens ? "identical" : "DIFFER", err);
  EXPECT_LE(err, 1e-2);
}

}  // namespace
}  // namespace deepshard
