// PipelineLink: the activations crossing a pipeline stage boundary, in one place.
//
// Stage s of DP column c hands the residual stream of every step ([T, hidden]
// f32, the step's tokens in plan order) to stage s + 1 of the same column.
// Both sides know T from the step plan, so a message is just the rows. Steps
// arrive in order on one tag; a GPU build would move them with NCCL send/recv
// on the same edges.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "comm/communicator.h"
#include "comm/parallel_config.h"

namespace deepshard {

class PipelineLink {
 public:
  // `world` may be null when there is one stage (nothing to send).
  PipelineLink(Communicator* world, const ParallelConfig& pc) : world_(world), pc_(pc) {}

  bool receives() const { return pc_.stage > 0; }           // a stage before this one
  bool sends() const { return pc_.stage + 1 < pc_.pp; }      // a stage after this one
  // From stage - 1 of this column: n_tokens rows of `hidden` floats (host memory).
  absl::Status Receive(float* rows, int64_t n_tokens, int64_t hidden);
  // To stage + 1 of this column.
  absl::Status Send(const float* rows, int64_t n_tokens, int64_t hidden);

 private:
  static constexpr int kTag = 300;
  Communicator* world_;
  ParallelConfig pc_;
};

}  // namespace deepshard
