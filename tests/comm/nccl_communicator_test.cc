// The NCCL backend on device buffers, checked against expected values.
//
// Needs one CUDA device per rank. Without one, every test is skipped (and the
// binary exits 77, CTest's SKIP_RETURN_CODE) after checking that
// MakeNcclCommunicator explains why in its error.
#include "comm/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deepshard {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

// Device copy of a host vector (freed at scope exit).
template <typename T>
class DeviceVec {
 public:
  explicit DeviceVec(const std::vector<T>& host) : n_(host.size()) {
    EXPECT_EQ(cudaMalloc(&ptr_, std::max<size_t>(1, n_) * sizeof(T)), cudaSuccess);
    if (n_ > 0) {
      EXPECT_EQ(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  ~DeviceVec() { cudaFree(ptr_); }
  T* get() { return static_cast<T*>(ptr_); }
  std::vector<T> ToHost() const {
    std::vector<T> h(n_);
    if (n_ > 0) {
      EXPECT_EQ(cudaMemcpy(h.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return h;
  }

 private:
  void* ptr_ = nullptr;
  size_t n_;
};

class NcclCommTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto made = MakeNcclCommunicator(MPI_COMM_WORLD);
    if (!made.ok()) {
      // Every rank gets an error when any rank lacks a device (agreed over MPI).
      EXPECT_EQ(made.status().code(), absl::StatusCode::kFailedPrecondition) << made.status();
      EXPECT_THAT(std::string(made.status().message()),
                  AnyOf(HasSubstr("CUDA"), HasSubstr("cuda"), HasSubstr("could not set up")));
      GTEST_SKIP() << "no usable GPU for every rank: " << made.status();
    }
    comm_ = std::move(made).value();
    R = comm_->size();
    me = comm_->rank();
  }
  std::unique_ptr<Communicator> comm_;
  int R = 1, me = 0;
};

int64_t Count(int p, int q) { return (p + 2 * q + 1) % 4 * 3; }
float Value(int p, int q, int64_t i) { return static_cast<float>(p * 10000 + q * 100 + i); }

TEST_F(NcclCommTest, Basics) {
  EXPECT_EQ(comm_->backend(), "nccl");
  EXPECT_NE(NcclStreamOf(*comm_), nullptr);
  int world;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  EXPECT_EQ(R, world);
}

TEST_F(NcclCommTest, AllToAllV) {
  std::vector<int64_t> sc(R), sd(R), rc(R), rd(R);
  int64_t ns = 0, nr = 0;
  for (int q = 0; q < R; ++q) {
    sc[q] = Count(me, q), sd[q] = ns, ns += sc[q];
    rc[q] = Count(q, me), rd[q] = nr + 1, nr += rc[q] + 1;  // gaps in the receive layout
  }
  std::vector<float> send(ns);
  for (int q = 0; q < R; ++q)
    for (int64_t i = 0; i < sc[q]; ++i) send[sd[q] + i] = Value(me, q, i);
  DeviceVec<float> d_send(send), d_recv(std::vector<float>(nr, -1.f));
  ASSERT_TRUE(comm_->AllToAllV(d_send.get(), sc, sd, d_recv.get(), rc, rd, CommDType::kF32).ok());
  const std::vector<float> recv = d_recv.ToHost();
  for (int p = 0; p < R; ++p) {
    EXPECT_EQ(recv[rd[p] - 1], -1.f);
    for (int64_t i = 0; i < rc[p]; ++i) ASSERT_EQ(recv[rd[p] + i], Value(p, me, i));
  }
}

TEST_F(NcclCommTest, AllToAll) {
  const int64_t n = 5;
  std::vector<int64_t> send(R * n);
  for (int q = 0; q < R; ++q)
    for (int64_t i = 0; i < n; ++i) send[q * n + i] = me * 1000 + q * 10 + i;
  DeviceVec<int64_t> d_send(send), d_recv(std::vector<int64_t>(R * n, -1));
  ASSERT_TRUE(comm_->AllToAll(d_send.get(), d_recv.get(), n, CommDType::kI64).ok());
  const auto recv = d_recv.ToHost();
  for (int p = 0; p < R; ++p)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(recv[p * n + i], p * 1000 + me * 10 + i);
}

TEST_F(NcclCommTest, SendRecvPairs) {
  if (R < 2) GTEST_SKIP() << "needs 2 ranks";
  // Pairs (0,1), (2,3), ...: the even rank sends first.
  const int peer = me ^ 1;
  if (peer >= R) return;
  std::vector<int32_t> out(7, me + 1);
  DeviceVec<int32_t> d_out(out), d_in(std::vector<int32_t>(7, 0));
  if (me % 2 == 0) {
    ASSERT_TRUE(comm_->Send(d_out.get(), 7, CommDType::kI32, peer, 0).ok());
    ASSERT_TRUE(comm_->Recv(d_in.get(), 7, CommDType::kI32, peer, 0).ok());
  } else {
    ASSERT_TRUE(comm_->Recv(d_in.get(), 7, CommDType::kI32, peer, 0).ok());
    ASSERT_TRUE(comm_->Send(d_out.get(), 7, CommDType::kI32, peer, 0).ok());
  }
  for (int32_t v : d_in.ToHost()) EXPECT_EQ(v, peer + 1);
}

TEST_F(NcclCommTest, AllGatherAllReduceBroadcastBarrier) {
  DeviceVec<float> d_one(std::vector<float>{static_cast<float>(me), 1.f});
  DeviceVec<float> d_all(std::vector<float>(2 * R, -1.f));
  ASSERT_TRUE(comm_->AllGather(d_one.get(), d_all.get(), 2, CommDType::kF32).ok());
  const auto all = d_all.ToHost();
  for (int p = 0; p < R; ++p) {
    EXPECT_EQ(all[2 * p], static_cast<float>(p));
    EXPECT_EQ(all[2 * p + 1], 1.f);
  }
  DeviceVec<int64_t> d_sum(std::vector<int64_t>{me, me, me});
  ASSERT_TRUE(comm_->AllReduce(d_sum.get(), 3, CommDType::kI64, ReduceOp::kSum).ok());
  for (int64_t v : d_sum.ToHost()) EXPECT_EQ(v, int64_t{R} * (R - 1) / 2);
  DeviceVec<int64_t> d_max(std::vector<int64_t>{me});
  ASSERT_TRUE(comm_->AllReduce(d_max.get(), 1, CommDType::kI64, ReduceOp::kMax).ok());
  EXPECT_EQ(d_max.ToHost()[0], R - 1);
  DeviceVec<uint8_t> d_b(std::vector<uint8_t>(4, static_cast<uint8_t>(me == R - 1 ? 42 : 0)));
  ASSERT_TRUE(comm_->Broadcast(d_b.get(), 4, CommDType::kU8, R - 1).ok());
  for (uint8_t v : d_b.ToHost()) EXPECT_EQ(v, 42);
  EXPECT_TRUE(comm_->Barrier().ok());
}

TEST_F(NcclCommTest, Split) {
  auto sub = comm_->Split(me % 2, me);
  ASSERT_TRUE(sub.ok()) << sub.status();
  EXPECT_EQ((*sub)->backend(), "nccl");
  EXPECT_EQ((*sub)->rank(), me / 2);
  DeviceVec<int32_t> d(std::vector<int32_t>{1});
  ASSERT_TRUE((*sub)->AllReduce(d.get(), 1, CommDType::kI32, ReduceOp::kSum).ok());
  EXPECT_EQ(d.ToHost()[0], (*sub)->size());
}

}  // namespace
}  // namespace deepshard
