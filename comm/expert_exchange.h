// ExpertExchange: how an MoE layer reaches routed experts that live on other
// ranks of its pipeline stage. The model calls only this interface, so a GPU
// exchange (NCCL, or DeepEP-style kernels) can replace the MPI/shared-memory
// one (comm/moe_exchange.h) without touching the model.
//
// Slot s = t * k + i is token t's i-th choice. Per MoE layer, on every rank of
// the stage (also with T = 0):
//
//   RETURN_IF_ERROR(ex.Dispatch(x, T, ids, k));    // rows to the owners of their experts
//   run local expert e on received() rows [local_expert_offsets()[e], [e + 1])
//       into the same rows of expert_output()
//   RETURN_IF_ERROR(ex.Combine(slot_out));         // slot_out[s] = the expert output for slot s
//
// x, ids, slot_out, received() and expert_output() are in the memory of the
// backend the exchange was made for (host memory for the MPI exchange);
// local_expert_offsets() is host memory, known once Dispatch returns.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace deepshard {

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;
  // Collective over the stage. x: [T, hidden]; ids: [T, k].
  virtual absl::Status Dispatch(const float* x, int64_t T, const int32_t* ids, int64_t k) = 0;
  // Rows received, grouped by local expert. Valid until the next Dispatch.
  virtual const float* received() const = 0;
  // [n_local + 1] prefix offsets into received() per local expert.
  virtual std::span<const int64_t> local_expert_offsets() const = 0;
  // Where the caller writes each received row's expert output.
  virtual float* expert_output() = 0;
  // Collective. out: [T * k, hidden].
  virtual absl::Status Combine(float* out) = 0;
};

}  // namespace deepshard
