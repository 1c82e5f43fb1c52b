// MPI backend of the Communicator: host memory, any MPI transport.
//
//   auto comm = MakeMpiCommunicator(MPI_COMM_WORLD);   // dups the communicator
//   RETURN_IF_ERROR(comm->AllReduce(buf, n, CommDType::kF32, ReduceOp::kSum));
//
// NOTES:
// - The communicator is MPI_Comm_dup'ed, so deepshard traffic never matches user
//   traffic on the original communicator, and MPI_ERRORS_RETURN is set on the dup:
//   an MPI failure comes back as absl::Status naming the op, this rank and the peer
//   (for point-to-point and per-peer checks) instead of aborting the job.
// - Large counts. MPI's classic API counts in `int`. When every count and
//   displacement of a call fits into an int (the normal case), the plain call is
//   used (MPI_Alltoallv, MPI_Allgather, ...). Otherwise the call switches to
//   derived datatypes that carry a 64-bit extent: a "big block" type of
//   q * 2^30-element chunks plus a remainder, placed at a 64-bit byte offset with
//   MPI_Type_create_struct; AllToAllV then becomes MPI_Alltoallw with one such type
//   per peer (its int displacements are all 0), AllToAll/AllGather/Send/Recv/
//   Broadcast move one big block, and AllReduce is split into int-sized chunks
//   (predefined reduction ops need predefined types). Nothing is refused for size.
// - Validation errors (bad span sizes, negative counts, a peer out of range) are
//   found before any communication and are local to the rank that made them; the
//   other ranks are then left in the collective. Treat any error from a
//   collective as fatal for the job.
// - Not thread-safe: one thread at a time per communicator.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>

#include "comm/communicator.h"

namespace deepshard {

struct MpiCommunicatorOptions {
  // Largest count or displacement passed to MPI as an `int`. Calls with larger
  // values use the derived-datatype path. Only tests lower it (to exercise that
  // path with small buffers).
  int64_t max_int_count = 2147483647;
};

// Dups `comm` (collective over it) and sets MPI_ERRORS_RETURN on the dup. MPI must
// be initialised and stay so while the communicator lives; the destructor frees the
// dup unless MPI is already finalised.
std::unique_ptr<Communicator> MakeMpiCommunicator(MPI_Comm comm);
std::unique_ptr<Communicator> MakeMpiCommunicator(MPI_Comm comm, const MpiCommunicatorOptions& options);

// The MPI communicator under an MPI-backed Communicator (for code that needs plain
// MPI alongside, e.g. the benchmark's reference MPI_Alltoallv), or MPI_COMM_NULL
// when `comm` is not one.
MPI_Comm MpiCommOf(const Communicator& comm);

// "MPI_ERR_TRUNCATE: message truncated" for an MPI error code.
std::string MpiErrorString(int code);

}  // namespace deepshard
