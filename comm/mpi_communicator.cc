#include "comm/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {
namespace {

MPI_Datatype MpiType(CommDType t) {
  switch (t) {
    case CommDType::kF32: return MPI_FLOAT;
    case CommDType::kI32: return MPI_INT32_T;
    case CommDType::kI64: return MPI_INT64_T;
    case CommDType::kU8: return MPI_UINT8_T;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op MpiOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_OP_NULL;
}

// Owns committed derived datatypes for the duration of one call.
class TypeHolder {
 public:
  TypeHolder() = default;
  TypeHolder(const TypeHolder&) = delete;
  TypeHolder& operator=(const TypeHolder&) = delete;
  ~TypeHolder() {
    for (MPI_Datatype& t : types_) MPI_Type_free(&t);
  }
  void Add(MPI_Datatype t) { types_.push_back(t); }

 private:
  std::vector<MPI_Datatype> types_;
};

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (already dup'ed or freshly split).
  MpiCommunicator(MPI_Comm comm, const MpiCommunicatorOptions& options)
      : comm_(comm), options_(options) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    // Chunk of the big-block datatypes: below max_int_count so that tests that
    // lower it see several chunks.
    chunk_ = std::max<int64_t>(1, std::min<int64_t>(options_.max_int_count, int64_t{1} << 30));
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  MPI_Comm mpi_comm() const { return comm_; }

  absl::Status AllToAllV(const void* send, std::span<const int64_t> send_counts,
                         std::span<const int64_t> send_displs, void* recv,
                         std::span<const int64_t> recv_counts,
                         std::span<const int64_t> recv_displs, CommDType dtype) override {
    RETURN_IF_ERROR(comm_internal::CheckAllToAllVArgs(send_counts, send_displs, recv_counts, recv_displs, size_,
                                                      [&](int peer) { return Where("AllToAllV", peer); }));
    const MPI_Datatype type = MpiType(dtype);
    bool fits = true;
    for (int p = 0; p < size_; ++p) {
      fits = fits && FitsInt(send_counts[p]) && FitsInt(send_displs[p]) &&
             FitsInt(recv_counts[p]) && FitsInt(recv_displs[p]);
    }
    if (fits) {
      // Common path: plain MPI_Alltoallv with int counts (buffers reused across calls).
      sc_.resize(size_), sd_.resize(size_), rc_.resize(size_), rd_.resize(size_);
      for (int p = 0; p < size_; ++p) {
        sc_[p] = static_cast<int>(send_counts[p]);
        sd_[p] = static_cast<int>(send_displs[p]);
        rc_[p] = static_cast<int>(recv_counts[p]);
        rd_[p] = static_cast<int>(recv_displs[p]);
      }
      return Check("AllToAllV", -1,
                   MPI_Alltoallv(send, sc_.data(), sd_.data(), type, recv, rc_.data(), rd_.data(),
                                 type, comm_));
    }
    // Large path: MPI_Alltoallw with one derived type per peer that carries the
    // 64-bit byte offset and count; the int counts are 1 and displacements 0.
    const int64_t esize = CommDTypeSize(dtype);
    TypeHolder holder;
    std::vector<int> scount(size_), rcount(size_), zero(size_, 0);
    std::vector<MPI_Datatype> stypes(size_), rtypes(size_);
    for (int p = 0; p < size_; ++p) {
      RETURN_IF_ERROR(BlockType("AllToAllV", type, esize, send_counts[p], send_displs[p] * esize,
                                holder, &stypes[p], &scount[p]));
      RETURN_IF_ERROR(BlockType("AllToAllV", type, esize, recv_counts[p], recv_displs[p] * esize,
                                holder, &rtypes[p], &rcount[p]));
    }
    return Check("AllToAllV (MPI_Alltoallw, large counts)", -1,
                 MPI_Alltoallw(send, scount.data(), zero.data(), stypes.data(), recv,
                               rcount.data(), zero.data(), rtypes.data(), comm_));
  }

  absl::Status AllToAll(const void* send, void* recv, int64_t count, CommDType dtype) override {
    RETURN_IF_ERROR(CheckCount("AllToAll", count));
    const MPI_Datatype type = MpiType(dtype);
    if (FitsInt(count)) {
      return Check("AllToAll", -1,
                   MPI_Alltoall(send, static_cast<int>(count), type, recv,
                                static_cast<int>(count), type, comm_));
    }
    TypeHolder holder;
    MPI_Datatype big;
    int n;
    RETURN_IF_ERROR(BlockType("AllToAll", type, CommDTypeSize(dtype), count, 0, holder, &big, &n));
    return Check("AllToAll (large count)", -1, MPI_Alltoall(send, n, big, recv, n, big, comm_));
  }

  absl::Status Send(const void* buf, int64_t count, CommDType dtype, int peer, int tag) override {
    RETURN_IF_ERROR(CheckCount("Send", count));
    RETURN_IF_ERROR(CheckPeer("Send", peer));
    RETURN_IF_ERROR(CheckTag("Send", tag));
    const MPI_Datatype type = MpiType(dtype);
    if (FitsInt(count)) {
      return Check("Send", peer, MPI_Send(buf, static_cast<int>(count), type, peer, tag, comm_));
    }
    TypeHolder holder;
    MPI_Datatype big;
    int n;
    RETURN_IF_ERROR(BlockType("Send", type, CommDTypeSize(dtype), count, 0, holder, &big, &n));
    return Check("Send (large count)", peer, MPI_Send(buf, n, big, peer, tag, comm_));
  }

  absl::StatusOr<int64_t> ISend(const void* buf, int64_t count, CommDType dtype, int peer, int tag) override {
    RETURN_IF_ERROR(CheckCount("ISend", count));
    RETURN_IF_ERROR(CheckPeer("ISend", peer));
    RETURN_IF_ERROR(CheckTag("ISend", tag));
    if (!FitsInt(count)) {
      return absl::InvalidArgumentError(absl::StrCat("ISend to rank ", peer, ": ", count,
                                                     " elements exceed the non-blocking send's int count"));
    }
    MPI_Request req;
    RETURN_IF_ERROR(Check("ISend", peer, MPI_Isend(buf, static_cast<int>(count), MpiType(dtype), peer, tag, comm_, &req)));
    const int64_t handle = next_request_++;
    requests_.emplace(handle, std::make_pair(req, peer));
    return handle;
  }

  absl::Status Wait(int64_t handle) override {
    auto it = requests_.find(handle);
    if (it == requests_.end()) return absl::InvalidArgumentError(absl::StrCat("Wait: unknown request ", handle));
    auto [req, peer] = it->second;
    requests_.erase(it);
    return Check("Wait (ISend)", peer, MPI_Wait(&req, MPI_STATUS_IGNORE));
  }

  absl::Status Recv(void* buf, int64_t count, CommDType dtype, int peer, int tag) override {
    RETURN_IF_ERROR(CheckCount("Recv", count));
    RETURN_IF_ERROR(CheckPeer("Recv", peer));
    RETURN_IF_ERROR(CheckTag("Recv", tag));
    const MPI_Datatype type = MpiType(dtype);
    MPI_Status status;
    MPI_Count got = 0;  // basic elements received
    if (FitsInt(count)) {
      RETURN_IF_ERROR(Check("Recv", peer, MPI_Recv(buf, static_cast<int>(count), type, peer, tag,
                                                   comm_, &status)));
      RETURN_IF_ERROR(Check("Recv (MPI_Get_elements_x)", peer, MPI_Get_elements_x(&status, type, &got)));
    } else {
      TypeHolder holder;
      MPI_Datatype big;
      int n;
      RETURN_IF_ERROR(BlockType("Recv", type, CommDTypeSize(dtype), count, 0, holder, &big, &n));
      RETURN_IF_ERROR(
          Check("Recv (large count)", peer, MPI_Recv(buf, n, big, peer, tag, comm_, &status)));
      RETURN_IF_ERROR(Check("Recv (MPI_Get_elements_x)", peer, MPI_Get_elements_x(&status, big, &got)));
    }
    // A shorter message than expected is not an MPI error; it is a protocol one.
    if (got != count) {
      return absl::DataLossError(absl::StrCat("MPI Recv on rank ", rank_, "/", size_, " from peer ",
                                              peer, " tag ", tag, ": expected ", count, " ",
                                              CommDTypeName(dtype), " elements, got ", got));
    }
    return absl::OkStatus();
  }

  absl::Status AllGather(const void* send, void* recv, int64_t count, CommDType dtype) override {
    RETURN_IF_ERROR(CheckCount("AllGather", count));
    const MPI_Datatype type = MpiType(dtype);
    if (FitsInt(count) && FitsInt(count * size_)) {
      return Check("AllGather", -1,
                   MPI_Allgather(send, static_cast<int>(count), type, recv,
                                 static_cast<int>(count), type, comm_));
    }
    TypeHolder holder;
    MPI_Datatype big;
    int n;
    RETURN_IF_ERROR(BlockType("AllGather", type, CommDTypeSize(dtype), count, 0, holder, &big, &n));
    return Check("AllGather (large count)", -1, MPI_Allgather(send, n, big, recv, n, big, comm_));
  }

  absl::Status AllReduce(void* buf, int64_t count, CommDType dtype, ReduceOp op) override {
    RETURN_IF_ERROR(CheckCount("AllReduce", count));
    const MPI_Datatype type = MpiType(dtype);
    const int64_t esize = CommDTypeSize(dtype);
    // Predefined reduction ops need predefined types, so large counts go in chunks.
    // Every rank has the same count, hence the same number of chunks.
    int64_t done = 0;
    do {
      const int64_t n = std::min(count - done, options_.max_int_count);
      RETURN_IF_ERROR(Check(count == n ? "AllReduce" : "AllReduce (chunked)", -1,
                            MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(buf) + done * esize,
                                          static_cast<int>(n), type, MpiOp(op), comm_)));
      done += n;
    } while (done < count);
    return absl::OkStatus();
  }

  absl::Status Broadcast(void* buf, int64_t count, CommDType dtype, int root) override {
    RETURN_IF_ERROR(CheckCount("Broadcast", count));
    RETURN_IF_ERROR(CheckPeer("Broadcast (root)", root));
    const MPI_Datatype type = MpiType(dtype);
    if (FitsInt(count)) {
      return Check("Broadcast", root, MPI_Bcast(buf, static_cast<int>(count), type, root, comm_));
    }
    TypeHolder holder;
    MPI_Datatype big;
    int n;
    RETURN_IF_ERROR(BlockType("Broadcast", type, CommDTypeSize(dtype), count, 0, holder, &big, &n));
    return Check("Broadcast (large count)", root, MPI_Bcast(buf, n, big, root, comm_));
  }

  absl::Status Barrier() override { return Check("Barrier", -1, MPI_Barrier(comm_)); }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    // A negative color still takes part (as MPI_UNDEFINED) so that the other ranks
    // are not left waiting, then reports the error.
    MPI_Comm sub = MPI_COMM_NULL;
    RETURN_IF_ERROR(
        Check("Split", -1, MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub)));
    if (color < 0 || sub == MPI_COMM_NULL) {
      if (sub != MPI_COMM_NULL) MPI_Comm_free(&sub);
      return absl::InvalidArgumentError(absl::StrCat("MPI Split on rank ", rank_, "/", size_,
                                                     ": color must be >= 0, got ", color));
    }
    return std::unique_ptr<Communicator>(new MpiCommunicator(sub, options_));
  }

 private:
  bool FitsInt(int64_t v) const { return v >= 0 && v <= options_.max_int_count; }

  std::string Where(const char* op, int peer) const {
    std::string s = absl::StrCat("MPI ", op, " on rank ", rank_, "/", size_);
    if (peer >= 0) absl::StrAppend(&s, " with peer ", peer);
    return s;
  }

  absl::Status Check(const char* op, int peer, int rc) const {
    if (rc == MPI_SUCCESS) return absl::OkStatus();
    return absl::InternalError(absl::StrCat(Where(op, peer), " failed: ", MpiErrorString(rc)));
  }


  absl::Status CheckCount(const char* op, int64_t count) const {
    if (count < 0) {
      return absl::InvalidArgumentError(absl::StrCat(Where(op, -1), ": negative count ", count));
    }
    return absl::OkStatus();
  }

  absl::Status CheckPeer(const char* op, int peer) const {
    if (peer < 0 || peer >= size_) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(op, -1), ": peer ", peer, " is out of range [0, ", size_, ")"));
    }
    return absl::OkStatus();
  }

  absl::Status CheckTag(const char* op, int tag) const {
    if (tag < 0) {
      return absl::InvalidArgumentError(absl::StrCat(Where(op, -1), ": negative tag ", tag));
    }
    return absl::OkStatus();
  }

  // `count` elements of `base` at `byte_offset` as (*type, *n) with *n in {0, 1}:
  // q chunks of chunk_ elements plus a remainder, offsets as MPI_Aint, extent
  // resized to exactly count * esize (so that AllGather places rank p's block at
  // p * count elements).
  absl::Status BlockType(const char* op, MPI_Datatype base, int64_t esize, int64_t count,
                         int64_t byte_offset, TypeHolder& holder, MPI_Datatype* type, int* n) const {
    if (count == 0) {
      *type = base;
      *n = 0;
      return absl::OkStatus();
    }
    const int64_t q = count / chunk_;
    const int64_t r = count % chunk_;
    if (q > INT_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(Where(op, -1), ": count ", count, " is too large"));
    }
    MPI_Datatype chunk_type;
    RETURN_IF_ERROR(Check(op, -1, MPI_Type_contiguous(static_cast<int>(chunk_), base, &chunk_type)));
    holder.Add(chunk_type);
    int blocklens[2];
    MPI_Aint displs[2];
    MPI_Datatype types[2];
    int nb = 0;
    if (q > 0) {
      blocklens[nb] = static_cast<int>(q);
      displs[nb] = static_cast<MPI_Aint>(byte_offset);
      types[nb++] = chunk_type;
    }
    if (r > 0) {
      blocklens[nb] = static_cast<int>(r);
      displs[nb] = static_cast<MPI_Aint>(byte_offset + q * chunk_ * esize);
      types[nb++] = base;
    }
    MPI_Datatype st, resized;
    RETURN_IF_ERROR(Check(op, -1, MPI_Type_create_struct(nb, blocklens, displs, types, &st)));
    holder.Add(st);
    RETURN_IF_ERROR(Check(op, -1, MPI_Type_create_resized(st, 0, static_cast<MPI_Aint>(count * esize),
                                                          &resized)));
    holder.Add(resized);
    RETURN_IF_ERROR(Check(op, -1, MPI_Type_commit(&resized)));
    *type = resized;
    *n = 1;
    return absl::OkStatus();
  }

  MPI_Comm comm_;
  MpiCommunicatorOptions options_;
  std::map<int64_t, std::pair<MPI_Request, int>> requests_;  // ISend handle -> (request, peer)
  int64_t next_request_ = 1;
  int rank_ = 0, size_ = 1;
  int64_t chunk_ = 1;
  std::vector<int> sc_, sd_, rc_, rd_;  // int copies of the AllToAllV counts
};

}  // namespace

std::string MpiErrorString(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return absl::StrCat("MPI error ", code);
  int cls = 0;
  MPI_Error_class(code, &cls);
  return absl::StrCat(std::string(buf, len), " (MPI error class ", cls, ")");
}

std::unique_ptr<Communicator> MakeMpiCommunicator(MPI_Comm comm) {
  return MakeMpiCommunicator(comm, MpiCommunicatorOptions{});
}

std::unique_ptr<Communicator> MakeMpiCommunicator(MPI_Comm comm,
                                                  const MpiCommunicatorOptions& options) {
  MPI_Comm dup = MPI_COMM_NULL;
  MPI_Comm_dup(comm, &dup);
  return std::make_unique<MpiCommunicator>(dup, options);
}

MPI_Comm MpiCommOf(const Communicator& comm) {
  const auto* m = dynamic_cast<const MpiCommunicator*>(&comm);
  return m != nullptr ? m->mpi_comm() : MPI_COMM_NULL;
}

}  // namespace deepshard
