// MPI start-up for the launcher: whether we run under mpirun/srun, and a
// session object that initialises and finalises MPI.
#pragma once

#include <mpi.h>

#include <string>

namespace deepshard {

// True when started by an MPI launcher (mpirun, mpiexec, srun --mpi=pmix).
// Without one, deepshard runs as a single rank and never touches MPI.
bool LaunchedUnderMpi();

// This process's rank as its launcher announced it, before MPI starts:
// OMPI_COMM_WORLD_RANK (Open MPI's mpirun), PMIX_RANK (srun --mpi=pmix, PRRTE),
// PMI_RANK (MPICH's Hydra, srun --mpi=pmi2) or SLURM_PROCID (any srun); -1 when
// none is set.
int LauncherRank();
// True on the process that should print a usage error: the only one, or the
// launcher's rank 0 (one message for the whole job).
bool IsRootProcess();

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
