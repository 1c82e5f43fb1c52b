// MPI start-up for the launcher: whether we run under mpirun/srun, and a
// session object that initialises and finalises MPI.
#pragma once

#include <mpi.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

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

// A rank's start-up deadline (--startup-timeout). MPI_Init and the
// collectives that come before the start-up heartbeats (rank_setup.h) have no
// timeout of their own: a rank stopped or hung before or inside them (SIGSTOP,
// an unreachable node, a firewall) leaves every other rank blocked there
// forever. A thread started before MPI_Init ends the process with exit code 1
// (mpirun then ends the job) unless Disarm is called within the limit, naming
// this rank, its host and where it waits:
//
//   deepshard generate: error: rank 1 (host n1): start-up did not finish within 300 s (stuck in
//   MPI_Init: another rank stopped, hung or unreachable, or a firewall between the nodes?); exiting (--startup-timeout)
class StartupDeadline {
 public:
  // timeout_s <= 0: no deadline. `rank`: as the launcher announced it (-1: unknown).
  StartupDeadline(std::string command, double timeout_s, int rank);
  ~StartupDeadline();  // Disarm()
  StartupDeadline(const StartupDeadline&) = delete;
  StartupDeadline& operator=(const StartupDeadline&) = delete;

  // Where this rank waits now (what the message says it is stuck in), and its rank.
  void SetStage(std::string stage, int rank);
  // Start-up is over, or watched by heartbeats from now on. Idempotent.
  void Disarm();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool disarmed_ = false;
  std::string stage_;
  int rank_ = -1;
  std::thread thread_;
};

class MpiSession {
 public:
  // With startup_timeout_s > 0, a StartupDeadline runs from before MPI_Init
  // until EndStartupDeadline (see rank_setup.h for when that is).
  MpiSession(int* argc, char*** argv, const std::string& command = "", double startup_timeout_s = 0);
  ~MpiSession();
  int rank() const { return rank_; }
  int size() const { return size_; }
  // Ends every rank of the job now (after printing `message` on this rank).
  [[noreturn]] void Abort(const std::string& message, int code = 1) const;
  // Names where start-up waits now, for the deadline's message.
  void SetStartupStage(std::string stage);
  // Start-up is over, or watched by heartbeats from here. Idempotent.
  void EndStartupDeadline();

 private:
  std::unique_ptr<StartupDeadline> deadline_;
  std::string command_;
  int rank_ = 0, size_ = 1;
};

// How long MPI_Finalize may take before the rank gives up on it: Open MPI's
// finalize waits for every rank, so one stopped or hung while the job shuts
// down would otherwise keep the others there forever. The ranks of a job that
// ends normally reach it within a step of each other.
inline constexpr double kFinalizeTimeoutS = 20;

// Collective over MPI_COMM_WORLD: true on every rank if no rank reports an
// error (local_error empty). Rank 0 prints each distinct error once, with the
// ranks that hit it ("deepshard <command>: error: ranks 1,3: ..."), so a
// mistake every rank makes (a wrong path) reads as one message.
bool AgreeNoErrors(const std::string& command, const std::string& local_error);

}  // namespace deepshard
