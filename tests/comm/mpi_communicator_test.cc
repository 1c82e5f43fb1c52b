// Every Communicator op of the MPI backend against expected values, on the plain
// path and on the large-count (derived datatype) path, which the tests reach with
// small buffers by lowering MpiCommunicatorOptions::max_int_count.
#include "comm/mpi_communicator.h"

#include <mpi.h>

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deepshard {
namespace {

using ::testing::HasSubstr;

int WorldRank() {
  int r;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int WorldSize() {
  int s;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// Param: max_int_count (INT_MAX = plain MPI calls; 5 = derived types / chunks).
class MpiCommTest : public ::testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override {
    MpiCommunicatorOptions o;
    o.max_int_count = GetParam();
    comm_ = MakeMpiCommunicator(MPI_COMM_WORLD, o);
    R = comm_->size();
    me = comm_->rank();
  }
  std::unique_ptr<Communicator> comm_;
  int R = 1, me = 0;
};

TEST_P(MpiCommTest, RankSizeBackend) {
  EXPECT_EQ(comm_->size(), WorldSize());
  EXPECT_EQ(comm_->rank(), WorldRank());
  EXPECT_EQ(comm_->backend(), "mpi");
  EXPECT_NE(MpiCommOf(*comm_), MPI_COMM_NULL);
  EXPECT_NE(MpiCommOf(*comm_), MPI_COMM_WORLD);  // a dup
}

// Rank p sends Count(p, q) elements to q; some are zero.
int64_t Count(int p, int q) { return (p + 2 * q + 1) % 4 * 3; }
int64_t Value(int p, int q, int64_t i) { return p * 100000 + q * 1000 + i; }

template <typename T>
void CheckAllToAllV(Communicator& comm, CommDType dtype) {
  const int R = comm.size(), me = comm.rank();
  // Gaps of one sentinel element between blocks check that nothing spills over.
  std::vector<int64_t> sc(R), sd(R), rc(R), rd(R);
  int64_t ns = 0, nr = 0;
  for (int q = 0; q < R; ++q) {
    sc[q] = Count(me, q), sd[q] = ns + 1, ns += sc[q] + 1;
    rc[q] = Count(q, me), rd[q] = nr + 1, nr += rc[q] + 1;
  }
  const T kSentinel = static_cast<T>(77);
  std::vector<T> send(ns + 1, kSentinel), recv(nr + 1, kSentinel);
  for (int q = 0; q < R; ++q) {
    for (int64_t i = 0; i < sc[q]; ++i) send[sd[q] + i] = static_cast<T>(Value(me, q, i) % 251);
  }
  ASSERT_TRUE(comm.AllToAllV(send.data(), sc, sd, recv.data(), rc, rd, dtype).ok());
  for (int p = 0; p < R; ++p) {
    EXPECT_EQ(recv[rd[p] - 1], kSentinel);
    for (int64_t i = 0; i < rc[p]; ++i) {
      ASSERT_EQ(recv[rd[p] + i], static_cast<T>(Value(p, me, i) % 251)) << "from " << p << " elem " << i;
    }
  }
  EXPECT_EQ(recv[nr], kSentinel);
}

TEST_P(MpiCommTest, AllToAllVEveryDtype) {
  CheckAllToAllV<float>(*comm_, CommDType::kF32);
  CheckAllToAllV<int32_t>(*comm_, CommDType::kI32);
  CheckAllToAllV<int64_t>(*comm_, CommDType::kI64);
  CheckAllToAllV<uint8_t>(*comm_, CommDType::kU8);
}

TEST_P(MpiCommTest, AllToAllVAllZero) {
  std::vector<int64_t> z(R, 0);
  EXPECT_TRUE(comm_->AllToAllV(nullptr, z, z, nullptr, z, z, CommDType::kF32).ok());
}

TEST_P(MpiCommTest, AllToAllVLargeValues) {
  // Larger blocks than max_int_count in the derived-type run (several chunks).
  const int64_t n = 37;
  std::vector<int64_t> c(R, n), d(R);
  for (int q = 0; q < R; ++q) d[q] = q * n;
  std::vector<int64_t> send(R * n), recv(R * n, -1);
  for (int q = 0; q < R; ++q)
    for (int64_t i = 0; i < n; ++i) send[q * n + i] = Value(me, q, i);
  ASSERT_TRUE(comm_->AllToAllV(send.data(), c, d, recv.data(), c, d, CommDType::kI64).ok());
  for (int p = 0; p < R; ++p)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(recv[p * n + i], Value(p, me, i));
}

TEST_P(MpiCommTest, AllToAllVRejectsBadSpans) {
  std::vector<int64_t> ok(R, 0), short_(R + 1, 0), neg(R, 0);
  neg[R - 1] = -1;
  absl::Status st = comm_->AllToAllV(nullptr, short_, ok, nullptr, ok, ok, CommDType::kF32);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("send_counts"));
  st = comm_->AllToAllV(nullptr, ok, ok, nullptr, neg, ok, CommDType::kF32);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("recv_counts"));
}

TEST_P(MpiCommTest, AllToAll) {
  const int64_t n = 11;
  std::vector<int32_t> send(R * n), recv(R * n, -1);
  for (int q = 0; q < R; ++q)
    for (int64_t i = 0; i < n; ++i) send[q * n + i] = static_cast<int32_t>(Value(me, q, i));
  ASSERT_TRUE(comm_->AllToAll(send.data(), recv.data(), n, CommDType::kI32).ok());
  for (int p = 0; p < R; ++p)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(recv[p * n + i], Value(p, me, i));
}

TEST_P(MpiCommTest, SendRecvRing) {
  const int next = (me + 1) % R, prev = (me + R - 1) % R;
  const int64_t n = 23;
  std::vector<float> out(n), in(n, -1.f), out2(3, 9.f + me), in2(3, -1.f);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(me * 1000 + i);
  // Even ranks send first, odd ranks receive first: no cycle of blocking sends.
  auto send = [&] {
    ASSERT_TRUE(comm_->Send(out.data(), n, CommDType::kF32, next, /*tag=*/5).ok());
    ASSERT_TRUE(comm_->Send(out2.data(), 3, CommDType::kF32, next, /*tag=*/6).ok());
  };
  auto recv = [&] {
    // Tags select the message: receive tag 6 first.
    ASSERT_TRUE(comm_->Recv(in2.data(), 3, CommDType::kF32, prev, 6).ok());
    ASSERT_TRUE(comm_->Recv(in.data(), n, CommDType::kF32, prev, 5).ok());
  };
  if (me % 2 == 0) send(), recv();
  else recv(), send();
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(in[i], static_cast<float>(prev * 1000 + i));
  for (float v : in2) ASSERT_EQ(v, 9.f + prev);
}

TEST_P(MpiCommTest, RecvCountMismatchNamesPeer) {
  // Rank 0 sends 4 elements twice to rank 1, which expects 6 (short message)
  // and then 2 (truncation). Both are errors naming the peer.
  if (me == 0) {
    std::vector<int64_t> v(4, 1);
    ASSERT_TRUE(comm_->Send(v.data(), 4, CommDType::kI64, 1, 0).ok());
    ASSERT_TRUE(comm_->Send(v.data(), 4, CommDType::kI64, 1, 0).ok());
  } else if (me == 1) {
    std::vector<int64_t> v(6, 0);
    absl::Status st = comm_->Recv(v.data(), 6, CommDType::kI64, 0, 0);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(st.message()), HasSubstr("peer 0"));
    EXPECT_THAT(std::string(st.message()), HasSubstr("expected 6"));
    st = comm_->Recv(v.data(), 2, CommDType::kI64, 0, 0);
    EXPECT_FALSE(st.ok());
    EXPECT_THAT(std::string(st.message()), HasSubstr("Recv"));
    EXPECT_THAT(std::string(st.message()), HasSubstr("peer 0"));
  }
  // The communicator is still usable after the errors.
  EXPECT_TRUE(comm_->Barrier().ok());
}

TEST_P(MpiCommTest, PointToPointRejectsBadPeer) {
  float v = 0;
  absl::Status st = comm_->Send(&v, 1, CommDType::kF32, R, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("peer " + std::to_string(R)));
  EXPECT_EQ(comm_->Recv(&v, 1, CommDType::kF32, -1, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm_->Send(&v, -1, CommDType::kF32, 0, 0).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(MpiCommTest, AllGather) {
  const int64_t n = 13;
  std::vector<int64_t> send(n), recv(R * n, -1);
  for (int64_t i = 0; i < n; ++i) send[i] = Value(me, 0, i);
  ASSERT_TRUE(comm_->AllGather(send.data(), recv.data(), n, CommDType::kI64).ok());
  for (int p = 0; p < R; ++p)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(recv[p * n + i], Value(p, 0, i));
}

TEST_P(MpiCommTest, AllReduce) {
  const int64_t n = 17;  // > max_int_count in the chunked run
  std::vector<float> f(n);
  std::vector<int64_t> a(n), b(n), c(n);
  for (int64_t i = 0; i < n; ++i) {
    f[i] = static_cast<float>(me + i);
    a[i] = b[i] = c[i] = (me * 7 + i) % 5 + 10 * i;
  }
  ASSERT_TRUE(comm_->AllReduce(f.data(), n, CommDType::kF32, ReduceOp::kSum).ok());
  ASSERT_TRUE(comm_->AllReduce(a.data(), n, CommDType::kI64, ReduceOp::kSum).ok());
  ASSERT_TRUE(comm_->AllReduce(b.data(), n, CommDType::kI64, ReduceOp::kMax).ok());
  ASSERT_TRUE(comm_->AllReduce(c.data(), n, CommDType::kI64, ReduceOp::kMin).ok());
  for (int64_t i = 0; i < n; ++i) {
    int64_t sum = 0, mx = INT64_MIN, mn = INT64_MAX;
    float fsum = 0;
    for (int p = 0; p < R; ++p) {
      const int64_t v = (p * 7 + i) % 5 + 10 * i;
      sum += v, mx = std::max(mx, v), mn = std::min(mn, v);
      fsum += static_cast<float>(p + i);
    }
    EXPECT_EQ(f[i], fsum);
    EXPECT_EQ(a[i], sum);
    EXPECT_EQ(b[i], mx);
    EXPECT_EQ(c[i], mn);
  }
}

TEST_P(MpiCommTest, Broadcast) {
  const int root = R - 1;
  const int64_t n = 19;
  std::vector<uint8_t> v(n, 0);
  if (me == root)
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(200 + i);
  ASSERT_TRUE(comm_->Broadcast(v.data(), n, CommDType::kU8, root).ok());
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(v[i], static_cast<uint8_t>(200 + i));
  EXPECT_EQ(comm_->Broadcast(v.data(), n, CommDType::kU8, R).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(MpiCommTest, Barrier) { EXPECT_TRUE(comm_->Barrier().ok()); }

// The pp x ep grid: ep = 2 when the world is even, else one row.
TEST_P(MpiCommTest, SplitIntoRowsAndColumns) {
  const int ep = R % 2 == 0 ? 2 : R, pp = R / ep;
  const int stage = me / ep, ep_rank = me % ep;
  auto row = comm_->Split(/*color=*/stage, /*key=*/ep_rank);
  auto col = comm_->Split(/*color=*/ep_rank, /*key=*/stage);
  ASSERT_TRUE(row.ok()) << row.status();
  ASSERT_TRUE(col.ok()) << col.status();
  EXPECT_EQ((*row)->size(), ep);
  EXPECT_EQ((*row)->rank(), ep_rank);
  EXPECT_EQ((*col)->size(), pp);
  EXPECT_EQ((*col)->rank(), stage);
  // Row sum of world ranks: stage * ep * ep + (0 + ... + ep - 1).
  int64_t v = me;
  ASSERT_TRUE((*row)->AllReduce(&v, 1, CommDType::kI64, ReduceOp::kSum).ok());
  EXPECT_EQ(v, static_cast<int64_t>(stage) * ep * ep + ep * (ep - 1) / 2);
  // Column gather of world ranks: ep_rank, ep_rank + ep, ...
  std::vector<int64_t> g(pp);
  int64_t mine = me;
  ASSERT_TRUE((*col)->AllGather(&mine, g.data(), 1, CommDType::kI64).ok());
  for (int s = 0; s < pp; ++s) EXPECT_EQ(g[s], static_cast<int64_t>(s) * ep + ep_rank);
  // Sub-communicators split again (keys reverse the order).
  auto rev = (*row)->Split(0, -ep_rank);
  ASSERT_TRUE(rev.ok());
  EXPECT_EQ((*rev)->rank(), ep - 1 - ep_rank);
}

TEST_P(MpiCommTest, SplitNegativeColorIsAnErrorWithoutHanging) {
  auto sub = comm_->Split(me == 0 ? -1 : 1, me);
  if (me == 0) {
    EXPECT_EQ(sub.status().code(), absl::StatusCode::kInvalidArgument);
  } else {
    ASSERT_TRUE(sub.ok());
    EXPECT_EQ((*sub)->size(), R - 1);
    EXPECT_EQ((*sub)->rank(), me - 1);
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, MpiCommTest, ::testing::Values(int64_t{2147483647}, int64_t{5}),
                         [](const ::testing::TestParamInfo<int64_t>& i) {
                           return i.param == 5 ? std::string("LargeCountPath") : std::string("IntPath");
                         });

TEST(CommDTypeTest, Sizes) {
  EXPECT_EQ(CommDTypeSize(CommDType::kF32), 4);
  EXPECT_EQ(CommDTypeSize(CommDType::kI32), 4);
  EXPECT_EQ(CommDTypeSize(CommDType::kI64), 8);
  EXPECT_EQ(CommDTypeSize(CommDType::kU8), 1);
}

}  // namespace
}  // namespace deepshard
