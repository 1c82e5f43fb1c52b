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

}  // namespace deepshard
