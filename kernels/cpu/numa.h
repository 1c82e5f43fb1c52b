// Where the CPU backend's threads run: cores, NUMA nodes and pinning (--numa).
//
// Decode streams every weight once per token, so on a machine with several
// NUMA nodes (multi-socket servers, or one socket split into nodes) a thread
// should read weights that sit in its own node's memory. The CPU backend gets
// that from two things together:
//   - each OpenMP thread pinned to one core, the threads laid over the cores
//     node by node (thread t of n on core t * cores / n), so the contiguous
//     slab of weight rows a thread reads in every GEMV (kernels/cpu/
//     cpu_kernels.h, kGemvSlabRows) belongs to one node;
//   - the weight copies made at load first touched by the thread whose slab
//     they are (CpuBackend::Upload), so Linux places those pages on that
//     thread's node.
// The topology comes from hwloc; the binding is the thread's own affinity
// (pthread_setaffinity_np). Threads created later by a pinned thread (the
// control plane's and HTTP server's) inherit its core.
//
// Several ranks on one node (mpirun -np 2 on a two-socket machine): a rank the
// launcher bound (Open MPI's --bind-to, Slurm's --cpu-bind) uses the cores it
// was given; ranks left unbound share the node's cores out among themselves,
// local rank i taking the i-th contiguous part (whole sockets or NUMA nodes
// when the count divides), instead of each starting one thread per core.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace deepshard::cpu {

// One physical core: its NUMA node (OS index) and its hardware threads (PUs,
// OS indices; several with SMT).
struct HostCore {
  int node = 0;
  std::vector<int> pus;
};

// The machine as hwloc sees it, cores in hwloc's logical order (package by
// package, node by node).
struct HostTopology {
  int packages = 1;
  std::vector<int> nodes;  // NUMA node OS indices
  std::vector<HostCore> cores;
};

// The machine's topology from hwloc. `synthetic`, when not empty, is an hwloc
// synthetic description used instead of this machine (tests), e.g.
// "pack:2 numa:2 core:4 pu:2".
absl::StatusOr<HostTopology> LoadHostTopology(std::string_view synthetic = {});

// The CPUs (PU OS indices) this process may run on: its affinity mask.
std::vector<int> ProcessCpus();

// What PlanThreads decided.
struct ThreadPlacement {
  int threads = 0;      // OpenMP threads to run; 0 leaves OpenMP's default (OMP_NUM_THREADS)
  bool pinned = false;  // whether PinThreads binds them
  std::vector<std::vector<int>> pus;  // when pinned: thread t's PUs (one core's)
  std::vector<int> node;              // when pinned: thread t's NUMA node
  std::string summary;                // one line for start-up logs and Backend::Describe
};

// Plans `opts` on `host` for a process allowed on `allowed` PUs.
// `omp_threads_env`: OMP_NUM_THREADS is set (then a 0 thread count keeps
// OpenMP's default); `omp_binding_env`: OMP_PROC_BIND or OMP_PLACES is set
// (then OpenMP binds and this plan does not pin). Threads default to one per
// core of this rank's share. Pinning: kOff never; kDistribute always; kAuto
// when the share spans several NUMA nodes, or when this plan shared an
// unbound node's cores out between local ranks on a multi-node machine.
ThreadPlacement PlanThreads(const HostTopology& host, const std::vector<int>& allowed, const HostThreads& opts,
                            bool omp_threads_env, bool omp_binding_env);

// Sets OpenMP's thread count and, when the plan pins, binds each OpenMP
// thread (the calling thread is thread 0) to its PUs. An error names the
// thread and CPUs the OS refused; threads already bound stay bound.
absl::Status ApplyThreadPlacement(const ThreadPlacement& plan);

// LoadHostTopology + ProcessCpus (on the first call: the mask the process
// started with, not one a backend pinned since) + PlanThreads (reading the OMP_*
// environment) + ApplyThreadPlacement: what the CPU backend does when made.
// Without a topology (hwloc failed), only the thread count is applied.
ThreadPlacement PlaceCpuThreads(const HostThreads& opts);

// "0-3,8,10-11".
std::string CpuListString(const std::vector<int>& cpus);

}  // namespace deepshard::cpu
