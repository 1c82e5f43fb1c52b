#include "comm/nccl_communicator.h"

#include <cuda_runtime_api.h>  // runtime API only: never the driver library (absent here)
#include <nccl.h>

#include <climits>
#include <span>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/mpi_communicator.h"  // MpiErrorString
#include "base/status_macros.h"

namespace deepshard {
namespace {

std::string CudaErrorText(cudaError_t e) {
  return absl::StrCat(cudaGetErrorString(e), " (", static_cast<int>(e), " ", cudaGetErrorName(e), ")");
}

ncclDataType_t NcclType(CommDType t) {
  switch (t) {
    case CommDType::kF32: return ncclFloat32;
    case CommDType::kI32: return ncclInt32;
    case CommDType::kI64: return ncclInt64;
    case CommDType::kU8: return ncclUint8;
  }
  return ncclFloat32;
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(MPI_Comm mpi, ncclComm_t nccl, cudaStream_t stream, int device)
      : mpi_(mpi), nccl_(nccl), stream_(stream), device_(device) {
    MPI_Comm_rank(mpi_, &rank_);
    MPI_Comm_size(mpi_, &size_);
  }
  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    ncclCommDestroy(nccl_);
    cudaStreamDestroy(stream_);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&mpi_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  cudaStream_t stream() const { return stream_; }

  absl::Status AllToAllV(const void* send, std::span<const int64_t> send_counts,
                         std::span<const int64_t> send_displs, void* recv,
                         std::span<const int64_t> recv_counts,
                         std::span<const int64_t> recv_displs, CommDType dtype) override {
    RETURN_IF_ERROR(comm_internal::CheckAllToAllVArgs(send_counts, send_displs, recv_counts, recv_displs, size_,
                                                      [&](int peer) { return Where("AllToAllV", peer); }));
    const int64_t esize = CommDTypeSize(dtype);
    const ncclDataType_t type = NcclType(dtype);
    const char* s = static_cast<const char*>(send);
    char* r = static_cast<char*>(recv);
    return Run("AllToAllV", -1, [&]() -> ncclResult_t {
      // NOTES: every rank posts its sends and receives in one group, so NCCL can
      // schedule them without deadlock whatever the order of peers.
      ncclResult_t first = ncclGroupStart();
      if (first != ncclSuccess) return first;
      for (int p = 0; p < size_ && first == ncclSuccess; ++p) {
        if (send_counts[p] > 0) {
          first = ncclSend(s + send_displs[p] * esize, static_cast<size_t>(send_counts[p]), type, p,
                           nccl_, stream_);
        }
        if (first == ncclSuccess && recv_counts[p] > 0) {
          first = ncclRecv(r + recv_displs[p] * esize, static_cast<size_t>(recv_counts[p]), type, p,
                           nccl_, stream_);
        }
      }
      const ncclResult_t end = ncclGroupEnd();  // always closes the group
      return first != ncclSuccess ? first : end;
    });
  }

  absl::Status AllToAll(const void* send, void* recv, int64_t count, CommDType dtype) override {
    RETURN_IF_ERROR(CheckCount("AllToAll", count));
    return Run("AllToAll", -1, [&] {
      return ncclAlltoAll(send, recv, static_cast<size_t>(count), NcclType(dtype), nccl_, stream_);
    });
  }

  absl::Status Send(const void* buf, int64_t count, CommDType dtype, int peer, int tag) override {
    RETURN_IF_ERROR(CheckCount("Send", count));
    RETURN_IF_ERROR(CheckPeer("Send", peer, tag));
    return Run("Send", peer, [&] {
      return ncclSend(buf, static_cast<size_t>(count), NcclType(dtype), peer, nccl_, stream_);
    });
  }

  // NCCL sends are stream-ordered and complete with the matching receive; the
  // handle-based form is a blocking send here (Wait is a no-op).
  absl::StatusOr<int64_t> ISend(const void* buf, int64_t count, CommDType dtype, int peer, int tag) override {
    RETURN_IF_ERROR(Send(buf, count, dtype, peer, tag));
    return int64_t{0};
  }
  absl::Status Wait(int64_t) override { return absl::OkStatus(); }

  absl::Status Recv(void* buf, int64_t count, CommDType dtype, int peer, int tag) override {
    RETURN_IF_ERROR(CheckCount("Recv", count));
    RETURN_IF_ERROR(CheckPeer("Recv", peer, tag));
    return Run("Recv", peer, [&] {
      return ncclRecv(buf, static_cast<size_t>(count), NcclType(dtype), peer, nccl_, stream_);
    });
  }

  absl::Status AllGather(const void* send, void* recv, int64_t count, CommDType dtype) override {
    RETURN_IF_ERROR(CheckCount("AllGather", count));
    return Run("AllGather", -1, [&] {
      return ncclAllGather(send, recv, static_cast<size_t>(count), NcclType(dtype), nccl_, stream_);
    });
  }

  absl::Status AllReduce(void* buf, int64_t count, CommDType dtype, ReduceOp op) override {
    RETURN_IF_ERROR(CheckCount("AllReduce", count));
    return Run("AllReduce", -1, [&] {
      return ncclAllReduce(buf, buf, static_cast<size_t>(count), NcclType(dtype), NcclOp(op), nccl_,
                           stream_);
    });
  }

  absl::Status Broadcast(void* buf, int64_t count, CommDType dtype, int root) override {
    RETURN_IF_ERROR(CheckCount("Broadcast", count));
    RETURN_IF_ERROR(CheckPeer("Broadcast (root)", root, 0));
    return Run("Broadcast", root, [&] {
      return ncclBroadcast(buf, buf, static_cast<size_t>(count), NcclType(dtype), root, nccl_,
                           stream_);
    });
  }

  absl::Status Barrier() override {
    cudaSetDevice(device_);
    const cudaError_t e = cudaStreamSynchronize(stream_);
    if (e != cudaSuccess) {
      return absl::InternalError(absl::StrCat(Where("Barrier", -1), ": cudaStreamSynchronize failed: ",
                                              CudaErrorText(e)));
    }
    const int rc = MPI_Barrier(mpi_);
    if (rc != MPI_SUCCESS) {
      return absl::InternalError(absl::StrCat(Where("Barrier", -1), ": MPI_Barrier failed: ",
                                              MpiErrorString(rc)));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    const int rc = MPI_Comm_split(mpi_, color < 0 ? MPI_UNDEFINED : color, key, &sub);
    if (rc != MPI_SUCCESS) {
      return absl::InternalError(absl::StrCat(Where("Split", -1), ": MPI_Comm_split failed: ",
                                              MpiErrorString(rc)));
    }
    if (color < 0 || sub == MPI_COMM_NULL) {
      if (sub != MPI_COMM_NULL) MPI_Comm_free(&sub);
      return absl::InvalidArgumentError(
          absl::StrCat(Where("Split", -1), ": color must be >= 0, got ", color));
    }
    auto made = MakeNcclCommunicator(sub);  // dups `sub`
    MPI_Comm_free(&sub);
    return made;
  }

 private:
  std::string Where(const char* op, int peer) const {
    std::string s = absl::StrCat("NCCL ", op, " on rank ", rank_, "/", size_, " (device ", device_, ")");
    if (peer >= 0) absl::StrAppend(&s, " with peer ", peer);
    return s;
  }

  // Enqueues with `enqueue`, waits for the stream, then checks for asynchronous
  // NCCL errors (a peer that died mid-collective shows up there).
  template <typename F>
  absl::Status Run(const char* op, int peer, F&& enqueue) {
    cudaError_t e = cudaSetDevice(device_);
    if (e != cudaSuccess) {
      return absl::InternalError(absl::StrCat(Where(op, peer), ": cudaSetDevice failed: ", CudaErrorText(e)));
    }
    const ncclResult_t r = enqueue();
    if (r != ncclSuccess) return NcclError(op, peer, r);
    e = cudaStreamSynchronize(stream_);
    if (e != cudaSuccess) {
      return absl::InternalError(
          absl::StrCat(Where(op, peer), ": cudaStreamSynchronize failed: ", CudaErrorText(e)));
    }
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(nccl_, &async);
    if (async != ncclSuccess) return NcclError(op, peer, async);
    return absl::OkStatus();
  }

  absl::Status NcclError(const char* op, int peer, ncclResult_t r) const {
    return absl::InternalError(absl::StrCat(Where(op, peer), " failed: ", ncclGetErrorString(r),
                                            " (ncclResult ", static_cast<int>(r), "): ",
                                            ncclGetLastError(nccl_)));
  }

  absl::Status CheckCount(const char* op, int64_t count) const {
    if (count >= 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(Where(op, -1), ": negative count ", count));
  }
  absl::Status CheckPeer(const char* op, int peer, int tag) const {
    if (peer < 0 || peer >= size_) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(op, -1), ": peer ", peer, " is out of range [0, ", size_, ")"));
    }
    if (tag < 0) return absl::InvalidArgumentError(absl::StrCat(Where(op, peer), ": negative tag ", tag));
    return absl::OkStatus();
  }

  MPI_Comm mpi_;
  ncclComm_t nccl_;
  cudaStream_t stream_;
  int device_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

absl::Status CheckCudaDevices(int min_devices) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("no usable CUDA device: cudaGetDeviceCount failed: ", CudaErrorText(e)));
  }
  if (n < min_devices) {
    return absl::FailedPreconditionError(
        absl::StrCat("not enough CUDA devices: ", n, " visible, ", min_devices, " needed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(MPI_Comm comm) {
  MPI_Comm mpi = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(comm, &mpi);
  if (rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("MakeNcclCommunicator: MPI_Comm_dup failed: ", MpiErrorString(rc)));
  }
  MPI_Comm_set_errhandler(mpi, MPI_ERRORS_RETURN);
  int rank = 0, size = 1;
  MPI_Comm_rank(mpi, &rank);
  MPI_Comm_size(mpi, &size);
  auto fail = [&](absl::Status st) {
    MPI_Comm_free(&mpi);
    return st;
  };

  // 1. Local: pick a device (local rank among the ranks sharing this node).
  MPI_Comm local = MPI_COMM_NULL;
  int local_rank = 0, local_size = 1;
  if (MPI_Comm_split_type(mpi, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
    MPI_Comm_rank(local, &local_rank);
    MPI_Comm_size(local, &local_size);
    MPI_Comm_free(&local);
  }
  absl::Status local_status = CheckCudaDevices(local_size);
  int device = local_rank;
  cudaStream_t stream = nullptr;
  if (local_status.ok()) {
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      local_status = absl::InternalError(absl::StrCat("cudaSetDevice/cudaStreamCreate on device ",
                                                      device, " failed: ", CudaErrorText(e)));
    }
  }
  auto destroy_stream = [&] {
    if (stream != nullptr) cudaStreamDestroy(stream);
  };

  // 2. Agree: all ranks go on, or all stop (the lowest failing rank is named).
  int first_bad = local_status.ok() ? INT_MAX : rank;
  rc = MPI_Allreduce(MPI_IN_PLACE, &first_bad, 1, MPI_INT, MPI_MIN, mpi);
  if (rc != MPI_SUCCESS || first_bad != INT_MAX) {
    destroy_stream();
    if (!local_status.ok()) {
      return fail(absl::FailedPreconditionError(absl::StrCat(
          "MakeNcclCommunicator on rank ", rank, "/", size, ": ", local_status.message())));
    }
    return fail(absl::FailedPreconditionError(
        absl::StrCat("MakeNcclCommunicator on rank ", rank, "/", size, ": rank ", first_bad,
                     " could not set up its CUDA device (see its error)")));
  }

  // 3. Rank 0 makes the unique id; everyone gets it (with rank 0's result code).
  struct {
    int result;
    ncclUniqueId id;
  } boot{};
  if (rank == 0) boot.result = static_cast<int>(ncclGetUniqueId(&boot.id));
  rc = MPI_Bcast(&boot, sizeof(boot), MPI_BYTE, 0, mpi);
  if (rc != MPI_SUCCESS || boot.result != ncclSuccess) {
    destroy_stream();
    return fail(absl::InternalError(absl::StrCat(
        "MakeNcclCommunicator on rank ", rank, "/", size, ": ",
        rc != MPI_SUCCESS ? "MPI_Bcast of the NCCL unique id failed: " + MpiErrorString(rc)
                          : absl::StrCat("ncclGetUniqueId on rank 0 failed: ",
                                         ncclGetErrorString(static_cast<ncclResult_t>(boot.result))))));
  }

  // 4. Collective NCCL initialisation.
  ncclComm_t nccl = nullptr;
  const ncclResult_t r = ncclCommInitRank(&nccl, size, boot.id, rank);
  if (r != ncclSuccess) {
    destroy_stream();
    return fail(absl::InternalError(absl::StrCat("MakeNcclCommunicator on rank ", rank, "/", size,
                                                 ": ncclCommInitRank failed: ", ncclGetErrorString(r),
                                                 ": ", ncclGetLastError(nullptr))));
  }
  return std::unique_ptr<Communicator>(new NcclCommunicator(mpi, nccl, stream, device));
}

void* NcclStreamOf(const Communicator& comm) {
  const auto* n = dynamic_cast<const NcclCommunicator*>(&comm);
  return n != nullptr ? static_cast<void*>(n->stream()) : nullptr;
}

}  // namespace deepshard
