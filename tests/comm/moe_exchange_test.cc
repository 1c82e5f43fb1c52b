// MoeExchange against a direct single-rank computation.
//
// Expert e's "output" for a row is f(row, e) = row * (e + 1) + e, elementwise, so
// every slot's expected result is known without any communication; a row sent to
// the wrong expert, or brought back to the wrong slot, shows up as a wrong value.
// Each case runs with both row-moving modes (and kAuto).
#include "comm/moe_exchange.h"

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deepshard {
namespace {

using ::testing::HasSubstr;
using Mode = MoeExchange::Mode;

float ExpertFn(float v, int e) { return v * static_cast<float>(e + 1) + static_cast<float>(e); }

struct Routing {
  int64_t T = 0, k = 1;
  std::vector<float> x;      // [T, H]
  std::vector<int32_t> ids;  // [T, k]
};

Routing RandomRouting(std::mt19937& rng, int64_t T, int64_t k, int64_t H, int64_t n_experts,
                      bool distinct = true) {
  Routing r;
  r.T = T, r.k = k;
  r.x.resize(T * H);
  std::uniform_real_distribution<float> val(-2.f, 2.f);
  for (float& v : r.x) v = std::round(val(rng) * 64.f) / 64.f;  // exact in float arithmetic
  std::uniform_int_distribution<int32_t> ex(0, static_cast<int32_t>(n_experts - 1));
  r.ids.resize(T * k);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < k; ++i) {
      int32_t e;
      do {
        e = ex(rng);
      } while (distinct && k <= n_experts &&
               std::find(r.ids.begin() + t * k, r.ids.begin() + t * k + i, e) != r.ids.begin() + t * k + i);
      r.ids[t * k + i] = e;
    }
  }
  return r;
}

// Global expert id of each of this rank's local experts.
std::vector<int> LocalExperts(const ExpertPlacement& p, int rank) {
  std::vector<int> g(p.n_local[rank], -1);
  for (int64_t e = 0; e < p.n_experts(); ++e)
    if (p.owner[e] == rank) g[p.local_index[e]] = static_cast<int>(e);
  return g;
}

class MoeExchangeTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    comm_ = MakeMpiCommunicator(MPI_COMM_WORLD);
    R = comm_->size();
    me = comm_->rank();
  }

  // Dispatch, run f on the received rows, combine, check every slot, and check
  // that each local expert received exactly the global number of slots routed to it.
  void RunAndCheck(MoeExchange& ex, const Routing& r) {
    const int64_t H = ex.hidden();
    const ExpertPlacement& p = ex.placement();
    absl::Status st = ex.Dispatch(r.x.data(), r.T, r.ids.data(), r.k);
    ASSERT_TRUE(st.ok()) << st;
    // All ranks of these tests share one machine, so kAuto takes shared memory.
    const bool single_call = *std::max_element(p.n_local.begin(), p.n_local.end()) <= 1;
    if (GetParam() == Mode::kAuto || GetParam() == Mode::kSharedMemory) {
      EXPECT_EQ(ex.last_mode(), Mode::kSharedMemory);
    } else {
      EXPECT_EQ(ex.last_mode(), single_call ? Mode::kPerExpert : GetParam());
    }
    // Global histogram of expert ids vs what each local expert got.
    std::vector<int64_t> hist(p.n_experts(), 0);
    for (int32_t e : r.ids) ++hist[e];
    ASSERT_TRUE(comm_->AllReduce(hist.data(), p.n_experts(), CommDType::kI64, ReduceOp::kSum).ok());
    const std::vector<int> local = LocalExperts(p, me);
    auto off = ex.local_expert_offsets();
    ASSERT_EQ(static_cast<int64_t>(off.size()), p.n_local[me] + 1);
    EXPECT_EQ(off[0], 0);
    EXPECT_EQ(off.back(), ex.n_received());
    for (size_t l = 0; l < local.size(); ++l) EXPECT_EQ(off[l + 1] - off[l], hist[local[l]]) << "expert " << local[l];
    // Run the experts.
    const float* in = ex.received();
    float* out = ex.expert_output();
    for (size_t l = 0; l < local.size(); ++l)
      for (int64_t i = off[l] * H; i < off[l + 1] * H; ++i) out[i] = ExpertFn(in[i], local[l]);
    std::vector<float> combined(r.T * r.k * H, -12345.f);
    st = ex.Combine(combined.data());
    ASSERT_TRUE(st.ok()) << st;
    int64_t wrong = 0;
    for (int64_t s = 0; s < r.T * r.k; ++s) {
      const int64_t t = s / r.k;
      for (int64_t h = 0; h < H; ++h) {
        const float want = ExpertFn(r.x[t * H + h], r.ids[s]);
        if (combined[s * H + h] != want) ++wrong;
      }
    }
    EXPECT_EQ(wrong, 0) << "of " << r.T * r.k * H << " values";
  }

  MoeExchange Make(ExpertPlacement p, int64_t H) {
    MoeExchange ex(*comm_, std::move(p), H);
    ex.set_mode(GetParam());
    return ex;
  }

  std::unique_ptr<Communicator> comm_;
  int R = 1, me = 0;
};

TEST(ExpertPlacementTest, ContiguousEven) {
  const ExpertPlacement p = ExpertPlacement::Contiguous(8, 4);
  EXPECT_EQ(p.n_experts(), 8);
  EXPECT_EQ(p.n_local, (std::vector<int64_t>{2, 2, 2, 2}));
  EXPECT_EQ(p.owner, (std::vector<int>{0, 0, 1, 1, 2, 2, 3, 3}));
  EXPECT_EQ(p.local_index, (std::vector<int64_t>{0, 1, 0, 1, 0, 1, 0, 1}));
}

TEST(ExpertPlacementTest, ContiguousUnevenFirstRanksGetOneMore) {
  const ExpertPlacement p = ExpertPlacement::Contiguous(10, 4);
  EXPECT_EQ(p.n_local, (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_EQ(p.owner, (std::vector<int>{0, 0, 0, 1, 1, 1, 2, 2, 3, 3}));
  EXPECT_EQ(p.local_index, (std::vector<int64_t>{0, 1, 2, 0, 1, 2, 0, 1, 0, 1}));
  const ExpertPlacement q = ExpertPlacement::Contiguous(2, 3);  // one rank owns none
  EXPECT_EQ(q.n_local, (std::vector<int64_t>{1, 1, 0}));
}

TEST(ExpertPlacementTest, FromOwners) {
  const ExpertPlacement p = ExpertPlacement::FromOwners({1, 0, 1, 2, 1}, 3);
  EXPECT_EQ(p.n_local, (std::vector<int64_t>{1, 3, 1}));
  EXPECT_EQ(p.local_index, (std::vector<int64_t>{0, 0, 1, 0, 2}));
}

TEST_P(MoeExchangeTest, RandomRouting) {
  std::mt19937 rng(1234 + me);
  MoeExchange ex = Make(ExpertPlacement::Contiguous(8, R), 5);
  for (int iter = 0; iter < 4; ++iter) {
    const int64_t T = std::uniform_int_distribution<int64_t>(0, 20)(rng);
    RunAndCheck(ex, RandomRouting(rng, T, 3, 5, 8));
  }
}

TEST_P(MoeExchangeTest, DeepSeekShapes) {
  // Real widths are larger; the shape of the problem (64 experts, top-6) is the point.
  std::mt19937 rng(99 + me);
  MoeExchange ex = Make(ExpertPlacement::Contiguous(64, R), 16);
  RunAndCheck(ex, RandomRouting(rng, 40 + 3 * me, 6, 16, 64));
}

TEST_P(MoeExchangeTest, SomeRanksHaveZeroTokens) {
  std::mt19937 rng(77 + me);
  MoeExchange ex = Make(ExpertPlacement::Contiguous(6, R), 4);
  RunAndCheck(ex, RandomRouting(rng, me % 2 == 0 ? 0 : 9, 2, 4, 6));
}

TEST_P(MoeExchangeTest, EveryRankHasZeroTokens) {
  MoeExchange ex = Make(ExpertPlacement::Contiguous(6, R), 4);
  RunAndCheck(ex, Routing{});
  RunAndCheck(ex, Routing{});
}

TEST_P(MoeExchangeTest, AllTokensToOneRank) {
  // Every slot goes to the last rank's experts.
  std::mt19937 rng(5 + me);
  const ExpertPlacement p = ExpertPlacement::Contiguous(4 * R, R);
  const std::vector<int> last = LocalExperts(p, R - 1);
  Routing r = RandomRouting(rng, 11, 2, 3, 4 * R);
  for (size_t s = 0; s < r.ids.size(); ++s) r.ids[s] = last[s % last.size()];
  MoeExchange ex = Make(p, 3);
  RunAndCheck(ex, r);
}

TEST_P(MoeExchangeTest, UnevenExpertCounts) {
  std::mt19937 rng(31 + me);
  for (int64_t E : {7, 2, 1, 5}) {  // 7 % R != 0 for R = 2, 3, 4; E < R leaves ranks without experts
    SCOPED_TRACE(testing::Message() << "E=" << E);
    MoeExchange ex = Make(ExpertPlacement::Contiguous(E, R), 3);
    RunAndCheck(ex, RandomRouting(rng, 6 + me, std::min<int64_t>(2, E), 3, E));
  }
}

TEST_P(MoeExchangeTest, ScatteredPlacement) {
  // Experts dealt round-robin (every rank holds a non-contiguous set).
  std::vector<int> owner(9);
  for (int e = 0; e < 9; ++e) owner[e] = (e * 5) % R;
  std::mt19937 rng(8 + me);
  MoeExchange ex = Make(ExpertPlacement::FromOwners(owner, R), 4);
  RunAndCheck(ex, RandomRouting(rng, 13, 3, 4, 9));
}

TEST_P(MoeExchangeTest, RepeatedTokensToOneExpert) {
  // k slots of a token may name the same expert (not DeepSeek, but allowed).
  std::mt19937 rng(3 + me);
  MoeExchange ex = Make(ExpertPlacement::Contiguous(3, R), 2);
  RunAndCheck(ex, RandomRouting(rng, 10, 4, 2, 3, /*distinct=*/false));
}

TEST_P(MoeExchangeTest, RepeatedCallsDoNotGrowBuffers) {
  std::mt19937 rng(21 + me);
  MoeExchange ex = Make(ExpertPlacement::Contiguous(8, R), 8);
  const Routing big = RandomRouting(rng, 32, 4, 8, 8);
  const Routing small = RandomRouting(rng, 5, 4, 8, 8);
  RunAndCheck(ex, big);  // warm-up
  const int64_t bytes = ex.buffer_bytes();
  EXPECT_GT(bytes, 0);
  for (int i = 0; i < 3; ++i) {
    RunAndCheck(ex, big);
    RunAndCheck(ex, small);
    RunAndCheck(ex, Routing{});
    EXPECT_EQ(ex.buffer_bytes(), bytes) << "call " << i;
  }
}

TEST_P(MoeExchangeTest, ManyStepsWithVaryingLoad) {
  // Back-to-back steps whose load grows and shrinks (buffers regrow mid-run), with
  // k changing between calls and some ranks idle in some steps.
  std::mt19937 rng(55 + me);
  std::mt19937 shared_rng(55);  // the same sequence on every rank
  MoeExchange ex = Make(ExpertPlacement::Contiguous(12, R), 6);
  for (int step = 0; step < 30; ++step) {
    const int64_t k = 1 + static_cast<int64_t>(shared_rng() % 4);
    const int64_t max_t = 1 + static_cast<int64_t>(shared_rng() % 60);
    const int64_t T = std::uniform_int_distribution<int64_t>(0, max_t)(rng);
    RunAndCheck(ex, RandomRouting(rng, T, k, 6, 12));
  }
}

TEST_P(MoeExchangeTest, InvalidIdOnOneRankFailsEveryRankWithoutHanging) {
  std::mt19937 rng(4 + me);
  MoeExchange ex = Make(ExpertPlacement::Contiguous(4, R), 2);
  Routing r = RandomRouting(rng, 5, 2, 2, 4);
  if (me == R - 1) r.ids[3] = 4;  // out of range
  absl::Status st = ex.Dispatch(r.x.data(), r.T, r.ids.data(), r.k);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  if (me == R - 1) {
    EXPECT_THAT(std::string(st.message()), HasSubstr("ids[1, 1] = 4"));
  } else {
    EXPECT_THAT(std::string(st.message()), HasSubstr("rank " + std::to_string(R - 1)));
  }
  std::vector<float> out(10 * 2);
  EXPECT_EQ(ex.Combine(out.data()).code(), absl::StatusCode::kFailedPrecondition);
  // The exchange is usable again.
  RunAndCheck(ex, RandomRouting(rng, 5, 2, 2, 4));
}

TEST_P(MoeExchangeTest, PlacementForAnotherRankCountIsAnError) {
  MoeExchange ex = Make(ExpertPlacement::Contiguous(4, R + 1), 2);
  Routing r;
  absl::Status st = ex.Dispatch(nullptr, 0, nullptr, 1);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("placement is for " + std::to_string(R + 1)));
}

TEST_P(MoeExchangeTest, CombineWithoutDispatch) {
  MoeExchange ex = Make(ExpertPlacement::Contiguous(4, R), 2);
  EXPECT_EQ(ex.Combine(nullptr).code(), absl::StatusCode::kFailedPrecondition);
}

INSTANTIATE_TEST_SUITE_P(Modes, MoeExchangeTest,
                         ::testing::Values(Mode::kOneExchange, Mode::kPerExpert, Mode::kSharedMemory,
                                           Mode::kAuto),
                         [](const ::testing::TestParamInfo<Mode>& i) {
                           switch (i.param) {
                             case Mode::kOneExchange: return std::string("OneExchange");
                             case Mode::kPerExpert: return std::string("PerExpert");
                             case Mode::kSharedMemory: return std::string("SharedMemory");
                             default: return std::string("Auto");
                           }
                         });

}  // namespace
}  // namespace deepshard
