#include "comm/parallel_config.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "comm/mpi_communicator.h"  // MpiErrorString

namespace deepshard {
namespace {

absl::Status MpiCheck(const char* what, int rc) {
  if (rc == MPI_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("ParallelConfig::FromMpi: ", what, " failed: ",
                                          MpiErrorString(rc)));
}

#define DS_MPI_RETURN(what, call)                              \
  do {                                                          \
    absl::Status _ds_st = MpiCheck(what, (call));               \
    if (!_ds_st.ok()) return _ds_st;                            \
  } while (0)

}  // namespace

ParallelConfig ParallelConfig::Single() { return ParallelConfig{}; }

absl::StatusOr<ParallelConfig> ParallelConfig::FromMpi(MPI_Comm world, int pp, int ep) {
  ParallelConfig pc;
  DS_MPI_RETURN("MPI_Comm_size", MPI_Comm_size(world, &pc.world));
  DS_MPI_RETURN("MPI_Comm_rank", MPI_Comm_rank(world, &pc.rank));
  // The checks only use values every rank shares, so all ranks fail alike.
  if (pp < 1 || ep < 1 || static_cast<long long>(pp) * ep != pc.world) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel layout pp=", pp, " x ep=", ep, " does not fit the MPI world of ", pc.world,
        " ranks: need pp >= 1, ep >= 1 and pp * ep == world (", pp, " * ", ep, " = ",
        static_cast<long long>(pp) * ep, ")"));
  }
  pc.pp = pp;
  pc.ep = ep;
  pc.stage = pc.rank / ep;
  pc.ep_rank = pc.rank % ep;

  // Node = the set of ranks that share memory. Node leaders (local rank 0) number
  // the nodes in the order of their world ranks, then tell their node.
  MPI_Comm local = MPI_COMM_NULL, leaders = MPI_COMM_NULL;
  DS_MPI_RETURN("MPI_Comm_split_type(SHARED)",
                MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, pc.rank, MPI_INFO_NULL, &local));
  MPI_Comm_rank(local, &pc.local_rank);
  MPI_Comm_size(local, &pc.local_size);
  int rc = MPI_Comm_split(world, pc.local_rank == 0 ? 0 : MPI_UNDEFINED, pc.rank, &leaders);
  int node_info[2] = {0, 1};  // node, n_nodes
  if (rc == MPI_SUCCESS && leaders != MPI_COMM_NULL) {
    MPI_Comm_rank(leaders, &node_info[0]);
    MPI_Comm_size(leaders, &node_info[1]);
    MPI_Comm_free(&leaders);
  }
  if (rc == MPI_SUCCESS) rc = MPI_Bcast(node_info, 2, MPI_INT, 0, local);
  MPI_Comm_free(&local);
  DS_MPI_RETURN("node numbering (MPI_Comm_split / MPI_Bcast)", rc);
  pc.node = node_info[0];
  pc.n_nodes = node_info[1];
  return pc;
}

std::string ParallelConfig::DebugString() const {
  return absl::StrCat("rank ", rank, "/", world, " (stage ", stage, "/", pp, ", ep_rank ", ep_rank,
                      "/", ep, ", node ", node, "/", n_nodes, ", local ", local_rank, "/",
                      local_size, ")");
}

}  // namespace deepshard
