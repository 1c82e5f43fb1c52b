// SharedSegments: one memory segment per rank, mapped by every rank of a
// communicator whose ranks all run on one machine (POSIX shared memory).
//
// It lets a rank write straight into a peer's buffer, as DeepEP does over NVLink
// within a node: the MoE exchange uses it to move each row once, with no staging
// copy and no MPI payload message.
//
//   ASSIGN_OR_RETURN(auto seg, SharedSegments::Create(comm, bytes));  // collective
//   std::memcpy(seg->segment(peer) + offset, src, n);                 // plain stores
//   RETURN_IF_ERROR(comm.Barrier());                                  // then peer reads
//
// NOTES:
// - Create is collective and all ranks get the same answer: Unavailable when the
//   ranks are not on one machine (hostname + kernel boot id differ) or a segment
//   cannot be created or mapped (e.g. /dev/shm too small: space is reserved with
//   posix_fallocate, so a full tmpfs is an error here and never a SIGBUS later).
// - Names are unlinked as soon as every rank has mapped them, so nothing is left
//   in /dev/shm even if the job dies later. Destruction is local (munmap only).
// - Ordering between ranks is the caller's: write, fence + Barrier, then read.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace deepshard {

class SharedSegments {
 public:
  static absl::StatusOr<std::unique_ptr<SharedSegments>> Create(Communicator& comm, int64_t bytes_per_rank);
  ~SharedSegments();
  SharedSegments(const SharedSegments&) = delete;
  SharedSegments& operator=(const SharedSegments&) = delete;

  // Rank p's segment as mapped in this process; bytes() long.
  char* segment(int p) const { return maps_[p]; }
  int64_t bytes() const { return bytes_; }

 private:
  SharedSegments() = default;
  std::vector<char*> maps_;
  int64_t bytes_ = 0;
};

}  // namespace deepshard
