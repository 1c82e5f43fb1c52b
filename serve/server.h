// Rank 0 of `deepshard serve`: the OpenAI-compatible HTTP front end on the
// job's engine, until a drain (SIGTERM/SIGINT, or a worker's drain request)
// or a failure ends it.
//
//   warm-up      one short request through every rank before listening, so
//                one-time costs do not land on the first client and a broken
//                pipeline shows before "listening"
//   serving      HTTP threads (Beast) -> Engine (this thread); /metrics from
//                the engine's snapshots
//   drain        the first signal stops intake (503) and gives running
//                requests --drain-timeout seconds; a second ends the drain now
//                (and the process 5 s later if a step never completes)
#pragma once

#include "serve/http_server.h"
#include "serve/job.h"
#include "serve/signals.h"

namespace deepshard {
class Tokenizer;
}  // namespace deepshard

namespace deepshard::serve {

// Returns the process exit code. `tokenizer` may be null (token-id prompts only).
int RunServer(Job& job, HttpServerOptions http, const Tokenizer* tokenizer, StopSignals& signals);

}  // namespace deepshard::serve
