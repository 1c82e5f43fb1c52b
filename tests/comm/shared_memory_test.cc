// SharedSegments: every rank sees every other rank's segment, and nothing is left
// behind in /dev/shm.
#include "comm/shared_memory.h"

#include <mpi.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <string>

#include "comm/mpi_communicator.h"
#include "gtest/gtest.h"

namespace deepshard {
namespace {

TEST(SharedSegmentsTest, EveryRankSeesEveryRanksWrites) {
  auto comm = MakeMpiCommunicator(MPI_COMM_WORLD);
  const int R = comm->size(), me = comm->rank();
  const int64_t bytes = 3 * 4096 + 100;  // not a page multiple
  auto seg = SharedSegments::Create(*comm, bytes);
  ASSERT_TRUE(seg.ok()) << seg.status();  // one machine here
  EXPECT_EQ((*seg)->bytes(), bytes);
  // Rank p writes p + 1 at the start and the end of the segment of rank (p + 1) % R.
  char* target = (*seg)->segment((me + 1) % R);
  target[0] = static_cast<char>(me + 1);
  target[bytes - 1] = static_cast<char>(me + 1);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  ASSERT_TRUE(comm->Barrier().ok());
  const char* mine = (*seg)->segment(me);
  const int writer = (me + R - 1) % R;
  EXPECT_EQ(mine[0], static_cast<char>(writer + 1));
  EXPECT_EQ(mine[bytes - 1], static_cast<char>(writer + 1));
  // Names are unlinked once mapped.
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    EXPECT_EQ(entry.path().filename().string().rfind("deepshard-" + std::to_string(getpid()), 0),
              std::string::npos)
        << entry.path();
  }
  ASSERT_TRUE(comm->Barrier().ok());
}

}  // namespace
}  // namespace deepshard
