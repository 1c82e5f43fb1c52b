// Correctness across layouts: the same prompts generated on a pp × ep grid and
// on one rank must give identical greedy tokens and logits within 1e-5.
// Run under mpiexec with DS_TEST_PP / DS_TEST_EP (see CMakeLists.txt).
#include "runtime/parallel/distributed_generate.h"

#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "comm/mpi_communicator.h"
#include "gtest/gtest.h"
#include "tests/util/logits.h"
#include "runtime/model/random_model.h"
#include "runtime/parallel/placement.h"

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
std::string SharedModel(const std::string& preset) {
  char path[512] = {0};
  if (Rank() == 0) {
    const std::string dir = ::testing::TempDir() + "/deepshard_dist_" + std::to_string(::getpid()) + "_" + preset;
    RandomModelOptions o;
    o.preset = preset;
    o.num_layers = 4;  // enough layers for pp = 4
    EXPECT_TRUE(WriteRandomModel(o, dir).ok());
    std::snprintf(path, sizeof(path), "%s", dir.c_str());
  }
  MPI_Bcast(path, sizeof(path), MPI_CHAR, 0, MPI_COMM_WORLD);
  return path;
}


void CheckLayout(const std::string& preset, const std::vector<std::vector<int32_t>>& prompts, SamplingParams sp) {
  const int pp = EnvInt("DS_TEST_PP", 1), ep = EnvInt("DS_TEST_EP", 1);
  const std::string dir = SharedModel(preset);
  auto pc = ParallelConfig::FromMpi(MPI_COMM_WORLD, pp, ep);
  ASSERT_TRUE(pc.ok()) << pc.status();
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  PlacementOptions po;
  po.pp = pp, po.ep = ep;
  auto plan = MakePlacementPlan(*config, po);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto model = DeepseekModel::Load(dir, RuntimeConfig{}, plan->ranks[pc->rank].load);
  ASSERT_TRUE(model.ok()) << model.status();
  auto world = MakeMpiCommunicator(MPI_COMM_WORLD);
  auto stage = world->Split(pc->stage, pc->ep_rank);
  ASSERT_TRUE(stage.ok()) << stage.status();
  GenerateOptions g;
  g.max_new_tokens = 8;
  g.stop_at_eos = false;
  g.sampling = sp;
  auto got = DistributedGenerate(**model, *pc, *world, **stage, plan->experts, prompts, g, /*want_logits=*/true);
  ASSERT_TRUE(got.ok()) << got.status();
  if (pc->rank != 0) return;
  // The single-rank reference, computed on rank 0.
  auto full = DeepseekModel::Load(dir, RuntimeConfig{});
  ASSERT_TRUE(full.ok());
  const int64_t V = (*full)->config().vocab_size;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateOptions gi = g;
    gi.sampling.seed = sp.seed + i;
    std::vector<float> logits;
    gi.step_logits = &logits;
    auto ref = Generate(**full, prompts[i], gi);
    ASSERT_TRUE(ref.ok());
    EXPECT_EQ(got->tokens[i], *ref) << preset << " prompt " << i << " pp " << pp << " ep " << ep;
    const double err = testing_util::RowRelErr(got->step_logits[i], logits, V);
    EXPECT_LE(err, 1e-5) << preset << " prompt " << i;
    std::printf("[ %s pp=%d ep=%d ] prompt %zu (%zu tokens): tokens %s, max rel logit err %.3g\n", preset.c_str(), pp,
                ep, i, prompts[i].size(), got->tokens[i] == *ref ? "identical" : "DIFFER", err);
  }
}

// Five prompts of different lengths in flight at once; with ep = 4 some
// columns hold two sequences, others one.
const std::vector<std::vector<int32_t>> kPrompts = {
    {3, 17, 42}, {5, 9, 200, 11, 7, 88, 301, 45, 6}, {77}, {400, 300, 200, 100, 50, 25, 12, 6, 3, 2, 1, 9, 8, 7, 6, 5, 4},
    {10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 210, 220, 230, 240,
     250, 260, 270, 280, 290, 300, 310, 320, 330, 340, 350, 360, 370, 380, 390, 400}};

TEST(DistributedGenerate, TinyV3GreedyMatchesSingleRank) { CheckLayout("tiny-v3", kPrompts, SamplingParams{}); }
TEST(DistributedGenerate, TinyV2GreedyMatchesSingleRank) { CheckLayout("tiny-v2", kPrompts, SamplingParams{}); }

TEST(DistributedGenerate, SampledTokensMatchSingleRank) {
  SamplingParams sp;
  sp.temperature = 0.9f, sp.top_k = 50, sp.top_p = 0.95f, sp.seed = 5;
  CheckLayout("tiny-v2-lite", kPrompts, sp);
}

// One prompt: every other DP column has no tokens at all, yet takes part in
// every dispatch and combine.
TEST(DistributedGenerate, RanksWithNoTokensStillTakePart) {
  CheckLayout("tiny-v3", {{7, 8, 9, 10, 11}}, SamplingParams{});
}

}  // namespace
}  // namespace deepshard
