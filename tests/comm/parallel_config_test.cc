// ParallelConfig::FromMpi on the real MPI world (every layout that fits it) and
// its error when the layout does not.
#include "comm/parallel_config.h"

#include <mpi.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deepshard {
namespace {

using ::testing::HasSubstr;

TEST(ParallelConfigTest, Single) {
  const ParallelConfig pc = ParallelConfig::Single();
  EXPECT_EQ(pc.world, 1);
  EXPECT_EQ(pc.pp, 1);
  EXPECT_EQ(pc.ep, 1);
  EXPECT_EQ(pc.RankOf(0, 0), 0);
  EXPECT_TRUE(pc.is_first_stage());
  EXPECT_TRUE(pc.is_last_stage());
  EXPECT_EQ(pc.local_size, 1);
  EXPECT_EQ(pc.n_nodes, 1);
}

TEST(ParallelConfigTest, EveryLayoutThatFitsTheWorld) {
  int world, rank;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  for (int pp = 1; pp <= world; ++pp) {
    if (world % pp != 0) continue;
    const int ep = world / pp;
    SCOPED_TRACE(testing::Message() << "pp=" << pp << " ep=" << ep);
    auto pc = ParallelConfig::FromMpi(MPI_COMM_WORLD, pp, ep);
    ASSERT_TRUE(pc.ok()) << pc.status();
    EXPECT_EQ(pc->world, world);
    EXPECT_EQ(pc->rank, rank);
    EXPECT_EQ(pc->pp, pp);
    EXPECT_EQ(pc->ep, ep);
    EXPECT_EQ(pc->stage, rank / ep);
    EXPECT_EQ(pc->ep_rank, rank % ep);
    EXPECT_EQ(pc->RankOf(pc->stage, pc->ep_rank), rank);
    EXPECT_EQ(pc->is_first_stage(), pc->stage == 0);
    EXPECT_EQ(pc->is_last_stage(), pc->stage == pp - 1);
    // RankOf covers the grid exactly once.
    std::vector<int> hits(world, 0);
    for (int s = 0; s < pp; ++s)
      for (int e = 0; e < ep; ++e) ++hits[pc->RankOf(s, e)];
    for (int h : hits) EXPECT_EQ(h, 1);
    // One machine: one node holding every rank.
    EXPECT_EQ(pc->n_nodes, 1);
    EXPECT_EQ(pc->node, 0);
    EXPECT_EQ(pc->local_size, world);
    EXPECT_EQ(pc->local_rank, rank);
    EXPECT_THAT(pc->DebugString(), HasSubstr("stage " + std::to_string(pc->stage)));
  }
}

TEST(ParallelConfigTest, LayoutThatDoesNotFitIsAnError) {
  int world;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  auto pc = ParallelConfig::FromMpi(MPI_COMM_WORLD, 2, world);  // 2 * world != world
  ASSERT_FALSE(pc.ok());
  EXPECT_EQ(pc.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(pc.status().message());
  EXPECT_THAT(msg, HasSubstr("pp=2"));
  EXPECT_THAT(msg, HasSubstr("ep=" + std::to_string(world)));
  EXPECT_THAT(msg, HasSubstr("world of " + std::to_string(world)));
  EXPECT_FALSE(ParallelConfig::FromMpi(MPI_COMM_WORLD, 0, world).ok());
  EXPECT_FALSE(ParallelConfig::FromMpi(MPI_COMM_WORLD, world, 0).ok());
  EXPECT_FALSE(ParallelConfig::FromMpi(MPI_COMM_WORLD, -1, -world).ok());
  // Still collective-safe afterwards: a valid layout works.
  EXPECT_TRUE(ParallelConfig::FromMpi(MPI_COMM_WORLD, 1, world).ok());
}

}  // namespace
}  // namespace deepshard
