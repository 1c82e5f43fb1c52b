// MPI start-up for the launcher: whether we run under mpirun/srun, and a
// session object that initialises and finalises MPI.
#pragma once

#include <mpi.h>

#include <string>

namespace deepshard {

// True when started by an MPI launcher (mpirun, mpiexec, srun --mpi=pmix).
// Without one, deepshard runs as a single rank and never touches MPI.
bool LaunchedUnderMpi();

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  int rank() const { return rank_; }
  int size() const { return size_; }
  // Ends every rank of the job now (after printing `message` on this rank).
  [[noreturn]] void Abort(const std::string& message, int code = 1) const;

 private:
  int rank_ = 0, size_ = 1;
};

// Collective over MPI_COMM_WORLD: true on every rank if no rank reports an
// error (local_error empty). Rank 0 prints each distinct error once, with the
// ranks that hit it ("deepshard <command>: error: ranks 1,3: ..."), so a
// mistake every rank makes (a wrong path) reads as one message.
bool AgreeNoErrors(const std::string& command, const std::string& local_error);

}  // namespace deepshard
