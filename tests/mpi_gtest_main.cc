// main() for GoogleTest binaries that run under mpiexec (see
// cmake/DeepshardMpiTest.cmake).
//
// - MPI_Init_thread(FUNNELED) before the tests, MPI_Finalize after.
// - Rank 0 prints gtest's usual report; the other ranks print only their failed
//   assertions, prefixed with "[rank N]", so a failure on any rank is visible.
// - The exit code is the maximum over ranks, so one failing rank fails the test.
// - When no test failed and every test that ran was skipped (GTEST_SKIP, e.g.
//   "no GPU") on every rank, the exit code is 77, which ds_add_mpi_test registers
//   as CTest's SKIP_RETURN_CODE: the test shows as skipped, not passed.
#include <mpi.h>

#include <cstdio>

#include "gtest/gtest.h"

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::fprintf(stderr, "[rank %d] %s.%s failed at %s:%d\n%s\n", rank_,
                 info != nullptr ? info->test_suite_name() : "?", info != nullptr ? info->name() : "?",
                 r.file_name() != nullptr ? r.file_name() : "?", r.line_number(), r.message());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  int rc = RUN_ALL_TESTS();
  const ::testing::UnitTest& ut = *::testing::UnitTest::GetInstance();
  int all_skipped = ut.skipped_test_count() > 0 && ut.skipped_test_count() == ut.test_to_run_count();
  int results[2] = {rc, -all_skipped};  // max of rc, min of all_skipped
  MPI_Allreduce(MPI_IN_PLACE, results, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  if (results[0] == 0 && results[1] == -1) return 77;
  return results[0];
}
