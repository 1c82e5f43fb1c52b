// Generation across the pp × ep grid: data-parallel attention, sharded experts,
// and pipeline stages with several micro-batches in flight.
//
// Every rank calls DistributedGenerate with the same prompts and options.
// Prompt i lives in DP column i % ep for its whole life (its KV cache is
// there); within a column, sequences are split round-robin into pp
// micro-batches. Each rank walks the same schedule of (step, micro-batch)
// items, so every collective of a stage is entered by all of its ranks, also
// with zero tokens:
//
//   stage 0      : embed (prompt, or the tokens the last stage sent back)
//   stage s > 0  : receive the hidden states [T, H] of the item from stage s-1
//   every stage  : run its layers; MoE layers dispatch/combine across the stage
//   stage s < L  : send the hidden states to stage s+1 (same column)
//   last stage   : lm_head, sample, send the tokens to the column's other stages
//
// With M = pp micro-batches, stage s works on micro-batch m of a step while
// stage s+1 works on m-1 (docs/pipeline.md draws the schedule).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "comm/moe_exchange.h"
#include "comm/parallel_config.h"
#include "runtime/generate.h"
#include "runtime/model/deepseek_model.h"

namespace deepshard {

struct DistributedResult {
  // On every rank after the call: the new tokens of each prompt.
  std::vector<std::vector<int32_t>> tokens;
  // If requested: [prompt][step * vocab] logits each token was sampled from.
  std::vector<std::vector<float>> step_logits;
};

// `world` is the whole job, `stage` the row communicator of this rank's stage
// (ranks ordered by ep_rank). The model holds this rank's share (its stage's
// layers and its experts). Prompt i is sampled with seed opts.sampling.seed + i.
absl::StatusOr<DistributedResult> DistributedGenerate(DeepseekModel& model, const ParallelConfig& pc,
                                                      Communicator& world, Communicator& stage,
                                                      const ExpertPlacement& placement,
                                                      const std::vector<std::vector<int32_t>>& prompts,
                                                      const GenerateOptions& opts, bool want_logits = false);

}  // namespace deepshard
