#include "comm/pipeline_link.h"

#include "absl/strings/str_cat.h"

namespace deepshard {

absl::Status PipelineLink::Receive(float* rows, int64_t n_tokens, int64_t hidden) {
  if (!receives() || world_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("stage ", pc_.stage, " has no stage before it"));
  }
  return world_->Recv(rows, n_tokens * hidden, CommDType::kF32, pc_.RankOf(pc_.stage - 1, pc_.ep_rank), kTag);
}

absl::Status PipelineLink::Send(const float* rows, int64_t n_tokens, int64_t hidden) {
  if (!sends() || world_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("stage ", pc_.stage, " is the last stage"));
  }
  return world_->Send(rows, n_tokens * hidden, CommDType::kF32, pc_.RankOf(pc_.stage + 1, pc_.ep_rank), kTag);
}

}  // namespace deepshard
