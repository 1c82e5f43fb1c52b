// NCCL backend of the Communicator: device memory, one CUDA device per rank.
// Built only when CUDA and NCCL are found (DEEPSHARD_HAVE_NCCL is then defined for
// everything that links deepshard_comm).
//
//   ASSIGN_OR_RETURN(auto comm, MakeNcclCommunicator(row_mpi_comm));
//   RETURN_IF_ERROR(comm->AllToAllV(d_send, counts, displs, d_recv, ...));  // device pointers
//
// NOTES:
// - Every buffer passed to this backend is device memory of the rank's device
//   (or managed memory). Each call enqueues NCCL work on the communicator's own
//   non-blocking stream and waits for it (cudaStreamSynchronize), so a call returns
//   with the data in place, as in the MPI backend. NcclStreamOf() exposes the stream
//   for callers that want to order their own kernels around it.
// - AllToAllV is grouped ncclSend/ncclRecv (ncclGroupStart/End); counts are
//   size_t in NCCL, so there is no int limit. AllToAll is ncclAlltoAll.
// - Send/Recv: NCCL has no tags. Messages between two ranks are matched in the
//   order they are posted; `tag` is only checked to be >= 0.
// - Barrier is a stream synchronize plus MPI_Barrier on the MPI communicator kept
//   alongside (the NCCL communicator is bootstrapped from it).
// - Split: MPI_Comm_split, then a new NCCL communicator on the sub-communicator.
// - Device: the rank's local rank among the ranks of its node
//   (MPI_COMM_TYPE_SHARED). A node needs a device per rank; fewer is an error
//   (NCCL refuses two ranks on one GPU).
// - No GPU: MakeNcclCommunicator returns FailedPrecondition naming the CUDA error
//   (here: cudaGetDeviceCount -> 35 cudaErrorInsufficientDriver). The decision is
//   agreed over MPI first, so either all ranks get a communicator or all get an
//   error; none is left inside ncclCommInitRank.
#pragma once

#include <mpi.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace deepshard {

// Local: OK when this process can use at least `min_devices` CUDA devices, else
// FailedPrecondition naming the CUDA error ("no usable CUDA device:
// cudaGetDeviceCount failed: ... (35 cudaErrorInsufficientDriver)").
absl::Status CheckCudaDevices(int min_devices = 1);

// Collective over `comm` (which is MPI_Comm_dup'ed and kept).
absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(MPI_Comm comm);

// The cudaStream_t (as void*) an NCCL-backed Communicator runs on; nullptr otherwise.
void* NcclStreamOf(const Communicator& comm);

}  // namespace deepshard
