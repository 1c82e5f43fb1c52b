// Communicator: the data-plane collectives deepshard needs, on raw buffers.
//
// One interface, two backends: MPI for host memory (comm/mpi_communicator.cc) and
// NCCL for device memory (comm/nccl_communicator.cc, built when CUDA is found).
// Counts and displacements are in elements of `dtype`. Every call is collective
// over the communicator's ranks unless it says otherwise, and every rank must
// make the same sequence of collective calls — including ranks with nothing to
// send (zero counts) — or the job hangs. Errors (a dead peer, a bad count) come
// back as absl::Status naming the operation and the peer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deepshard {

enum class CommDType { kF32, kI32, kI64, kU8 };
enum class ReduceOp { kSum, kMax, kMin };

int64_t CommDTypeSize(CommDType t);
const char* CommDTypeName(CommDType t);  // "f32", "i32", "i64", "u8" (for messages)
const char* ReduceOpName(ReduceOp op);   // "sum", "max", "min"

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "mpi" or "nccl"

  // Each rank sends send_counts[p] elements starting at send + send_displs[p] to
  // rank p, and receives recv_counts[p] elements from p at recv + recv_displs[p].
  virtual absl::Status AllToAllV(const void* send, std::span<const int64_t> send_counts,
                                 std::span<const int64_t> send_displs, void* recv,
                                 std::span<const int64_t> recv_counts,
                                 std::span<const int64_t> recv_displs, CommDType dtype) = 0;
  // Fixed-size all-to-all: `count` elements to and from every rank (e.g. the
  // per-peer token counts before a dispatch).
  virtual absl::Status AllToAll(const void* send, void* recv, int64_t count, CommDType dtype) = 0;

  // Point to point (not collective). `tag` separates concurrent streams, e.g.
  // pipeline micro-batches.
  virtual absl::Status Send(const void* buf, int64_t count, CommDType dtype, int peer, int tag) = 0;
  virtual absl::Status Recv(void* buf, int64_t count, CommDType dtype, int peer, int tag) = 0;
  // Non-blocking send: returns a handle at once; `buf` must stay unchanged until
  // Wait(handle) returns. For messages whose blocking send could close a cycle
  // with the receiver (the pipeline's tokens, sent back from the last stage).
  virtual absl::StatusOr<int64_t> ISend(const void* buf, int64_t count, CommDType dtype, int peer, int tag) = 0;
  virtual absl::Status Wait(int64_t handle) = 0;

  // recv[p * count ...] = rank p's send[0 .. count).
  virtual absl::Status AllGather(const void* send, void* recv, int64_t count, CommDType dtype) = 0;
  // In place.
  virtual absl::Status AllReduce(void* buf, int64_t count, CommDType dtype, ReduceOp op) = 0;
  virtual absl::Status Broadcast(void* buf, int64_t count, CommDType dtype, int root) = 0;
  virtual absl::Status Barrier() = 0;

  // Splits into sub-communicators: ranks with equal `color` land together,
  // ordered by `key`. Collective over this communicator.
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) = 0;
};

namespace comm_internal {
// Shared by the backends: `v` must hold one non-negative count per rank.
// `where(peer)` names the operation (and peer, or -1) in the message.
absl::Status CheckPerPeerCounts(std::span<const int64_t> v, int size, const char* what,
                                const std::function<std::string(int)>& where);
// The four per-peer arrays of an AllToAllV.
absl::Status CheckAllToAllVArgs(std::span<const int64_t> send_counts, std::span<const int64_t> send_displs,
                                std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                                int size, const std::function<std::string(int)>& where);
}  // namespace comm_internal

}  // namespace deepshard
