// The engine's side of GET /metrics: scheduler and KV gauges per DP slot,
// per-rank step time by phase, and tokens routed to each expert per layer.
// (The HTTP front end records requests, tokens and latencies itself.)
//
//   deepshard_sequences{dp_slot, state="running"|"waiting"}      gauge
//   deepshard_kv_blocks{dp_slot, state="used"|"free"}            gauge
//   deepshard_steps_total                                         counter
//   deepshard_preemptions_total                                   counter
//   deepshard_step_seconds_total{rank, phase}                     counter
//       phase: attention | experts | dispatch_combine | pipeline_transfer | other
//   deepshard_expert_tokens_total{layer, expert}                  counter
//       a token counts once for each of its top-k experts
#pragma once

#include "serve/engine.h"
#include "serve/metrics.h"

namespace deepshard::serve {

void DescribeEngineMetrics(Metrics& m);
void PublishEngineMetrics(Metrics& m, const EngineSnapshot& s);

}  // namespace deepshard::serve
