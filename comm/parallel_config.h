// ParallelConfig: where this rank sits in the pp x ep grid, computed once from MPI.
//
//                  ep_rank (DP slot, expert shard) ->   0    1    2    3
//   stage 0 (first layers)                              r0   r1   r2   r3
//   stage 1 (next layers)                               r4   r5   r6   r7
//
//   ASSIGN_OR_RETURN(ParallelConfig pc, ParallelConfig::FromMpi(MPI_COMM_WORLD, 2, 4));
//   auto row = world_comm->Split(/*color=*/pc.stage, /*key=*/pc.ep_rank);    // this stage
//   auto col = world_comm->Split(/*color=*/pc.ep_rank, /*key=*/pc.stage);    // this DP slot
//
// The node fields come from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED): ranks that
// share memory form one node; nodes are numbered by their lowest world rank.
#pragma once

#include <mpi.h>

#include <string>

#include "absl/status/statusor.h"

namespace deepshard {

struct ParallelConfig {
  int world = 1, rank = 0;  // e.g. 8 ranks, this is rank 5
  int pp = 1;               // pipeline stages (grid rows), e.g. 2
  int ep = 1;               // expert-parallel width = DP slots per stage (columns), e.g. 4
  int stage = 0;            // rank / ep   (pipeline stage = row), e.g. 1
  int ep_rank = 0;          // rank % ep   (DP slot = column; expert shard index), e.g. 1
  int node = 0, n_nodes = 1;           // this rank's node index and the node count
  int local_rank = 0, local_size = 1;  // rank among, and number of, ranks on this node

  // World rank of grid cell (stage, ep_rank).
  int RankOf(int stage, int ep_rank) const { return stage * ep + ep_rank; }
  bool is_first_stage() const { return stage == 0; }
  bool is_last_stage() const { return stage == pp - 1; }

  // Collective over `world`. Fails (naming pp, ep and world) unless pp >= 1, ep >= 1
  // and world size == pp * ep; every rank then gets the same error, so none hangs.
  static absl::StatusOr<ParallelConfig> FromMpi(MPI_Comm world, int pp, int ep);
  // One process, no MPI needed.
  static ParallelConfig Single();

  // "rank 5/8 (stage 1/2, ep_rank 1/4, node 0/1, local 5/8)".
  std::string DebugString() const;

  friend bool operator==(const ParallelConfig&, const ParallelConfig&) = default;
};

}  // namespace deepshard
