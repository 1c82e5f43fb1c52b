// Offline generation through the engine: `deepshard generate` is a client of
// the same engine `deepshard serve` runs, on one rank or many. Every prompt is
// submitted at once; the engine batches them continuously in its KV pool
// (preempting and recomputing when the pool is full) until none is left.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "serve/engine.h"

namespace deepshard::serve {

struct OfflineResult {
  std::vector<int32_t> tokens;
  FinishReason reason = FinishReason::kNone;
  std::vector<float> logits;  // [tokens, vocab] when the request asked for them
};

// Runs `requests` to completion on rank 0's engine. on_token(i, token), if set,
// sees request i's tokens as they arrive (on this thread). A request the engine
// refuses is an error naming it ("prompt i: ..."); a failure of the job is the
// engine's error.
absl::StatusOr<std::vector<OfflineResult>> RunOffline(Engine& engine, std::vector<GenerationRequest> requests,
                                                      const std::function<void(size_t, int32_t)>& on_token = {});

}  // namespace deepshard::serve
