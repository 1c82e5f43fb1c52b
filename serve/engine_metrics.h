// The engine's side of GET /metrics: scheduler and KV gauges per DP slot,
// per-rank step time by phase, and tokens routed to each expert per layer.
// (The HTTP front end records requests, tokens and latencies itself.)
//
//   deepshard_sequences{dp_slot, state="running"|"waiting"}      gauge
//   deepshard_kv_blocks{dp_slot, state="used"|"cached"|"free"}   gauge
//       used: referenced by sequences; cached: kept for the prefix cache,
//       evictable (allocation takes them when nothing is free); the three sum
//       to the slot's blocks
//   deepshard_prefix_cache_queries_total                          counter
//   deepshard_prefix_cache_hits_total                             counter
//       in tokens: context tokens looked up in the prefix cache when a
//       sequence is admitted (also after preemption), and of those the tokens
//       found there (hit rate = hits / queries)
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
