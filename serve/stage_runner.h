// StageRunner: one rank's part of a serving step.
//
// Every rank (rank 0 included) owns a paged latent-KV pool for its layers and
// its DP column, and runs each WirePlan in plan order:
//
//   stage 0      : embed the column's chunk tokens
//   stage s > 0  : receive the hidden states [T, hidden] from stage s-1 of the column
//   every stage  : run its layers over the paged caches (MoE layers: a collective
//                  dispatch/combine over the stage's columns, also with T = 0)
//   stage s < L  : send the hidden states to stage s+1 of the column
//   last stage   : final norm + lm_head, sample with each sequence's Sampler
//
// The block tables come from the plan (rank 0's scheduler owns the block
// accounting), so a rank keeps no per-sequence state except the Samplers on
// the last stage, which live from a sequence's first sampled token until the
// plan that releases it: a seeded sequence draws from one RNG stream, exactly
// as offline `deepshard generate` does, preempted or not.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "comm/moe_exchange.h"
#include "comm/parallel_config.h"
#include "comm/pipeline_link.h"
#include "runtime/batching/paged_kv_cache.h"
#include "runtime/model/deepseek_model.h"
#include "runtime/sampling.h"
#include "serve/step_plan.h"

namespace deepshard::serve {

class StageRunner {
 public:
  // world/stage may be null when pp = ep = 1 (no MPI). `pool` holds this
  // rank's layers; its block count must be the scheduler's blocks per slot.
  StageRunner(DeepseekModel& model, const ParallelConfig& pc, Communicator* world, Communicator* stage,
              const ExpertPlacement* placement, PagedKvCache& pool);

  // Runs this rank's part of `plan`. On the last stage, returns one result per
  // chunk of this rank's column; elsewhere an empty list. A malformed plan
  // (block or token out of range, table too short) is InvalidArgument before
  // anything runs; a failure inside the step is fatal to the job (peers are in
  // collectives with us).
  absl::StatusOr<std::vector<ChunkResult>> Run(const WirePlan& plan);

  bool last_stage() const { return pc_.stage == pc_.pp - 1; }
  const ParallelConfig& parallel() const { return pc_; }
  // Cumulative statistics (phase times, routed-expert counts) as of the last
  // finished step, for heartbeats and /metrics. Thread-safe.
  RankStats Stats() const;

 private:
  absl::Status Validate(const WirePlan& plan) const;
  void Publish();  // snapshot the counters for Stats()
  // Last stage: the prompt log-probabilities the column's chunks ask for.
  absl::Status PromptLogprobs(const std::vector<PlanChunk>& mine, std::vector<ChunkResult>& results);

  DeepseekModel& model_;
  ParallelConfig pc_;
  PipelineLink link_;
  PagedKvCache& pool_;
  std::unique_ptr<ExpertExchange> exchange_;
  std::unordered_map<int64_t, std::unique_ptr<KvCache>> views_;  // seq id -> paged view (re-pointed each step)
  std::unordered_map<int64_t, std::unique_ptr<Sampler>> samplers_;
  std::vector<SequenceChunk> chunks_;
  std::vector<int32_t> sampling_rows_;  // last stage: the last token row of each sampling chunk
  std::vector<size_t> sampling_index_;  // their indices in the column's chunks
  std::vector<float> x_, logits_;       // host staging: hidden rows at stage boundaries, sampled logits
  StepProfile profile_;
  double transfer_s_ = 0, other_s_ = 0;
  int64_t steps_ = 0;
  mutable std::mutex mu_;
  RankStats snapshot_;  // guarded by mu_
};

}  // namespace deepshard::serve
