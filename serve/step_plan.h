// StepPlan on the wire: what rank 0 tells every rank to run in one step, and
// what the last pipeline stage of each DP column sends back.
//
// Rank 0's scheduler decides, per DP column (= ep rank = DP slot), which
// sequences advance by how many tokens; the plan carries everything a rank
// needs to run its part without any state of its own beyond KV blocks and
// samplers: the chunk's token ids (stage 0 embeds them), the sequence's block
// table after this step's reservation (every stage of the column addresses its
// own layers' pool with it), copy-on-write block copies, and the sampling
// parameters (the last stage samples). Every rank runs every plan, in plan
// order, also when its column has no chunk: the MoE exchange of a stage is a
// collective over all its columns.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/batching/block_manager.h"
#include "runtime/sampling.h"

namespace deepshard::serve {

struct PlanChunk {
  int64_t seq_id = 0;
  int64_t start_pos = 0;
  bool samples = false;            // the chunk ends the context: the last stage samples a token
  bool ignore_eos = false;
  bool return_logits = false;      // the last stage sends back the logits it sampled from
  // Log-probabilities of the sampled token and the `logprobs` most likely
  // ones (0..20); -1 = none.
  int32_t logprobs = -1;
  // Echo: the log-probability of every prompt token this chunk predicts (row
  // i predicts position start_pos + i + 1 while that is inside the prompt),
  // each with the `logprobs` (>= 0) most likely tokens.
  bool prompt_logprobs = false;
  int64_t prompt_len = 0;          // with prompt_logprobs
  int32_t next_token = -1;         // with prompt_logprobs: the prompt token after the chunk (-1: none)
  SamplingParams sampling;
  // The whole prompt, sent once with the sequence's first sampling chunk when
  // the sampler needs it (repetition_penalty); empty otherwise.
  std::vector<int32_t> prompt;
  // Structured output: the tokens allowed at this sample, a bitset over the
  // vocabulary (bit i of word i / 64); empty = all.
  std::vector<uint64_t> allowed;
  std::vector<int32_t> tokens;     // ids of positions [start_pos, start_pos + tokens.size())
  std::vector<int32_t> blocks;     // the sequence's block table, covering start_pos + tokens.size() tokens
  int64_t n_tokens() const { return static_cast<int64_t>(tokens.size()); }
  // Rows of this chunk whose next position is a prompt token (prompt_logprobs).
  int64_t n_prompt_logprobs() const;
};

struct WirePlan {
  int64_t id = 0;
  std::vector<std::vector<PlanChunk>> columns;  // [ep rank] -> chunks
  std::vector<std::vector<BlockCopy>> copies;   // [ep rank] -> copy-on-write copies, before the step
  std::vector<int64_t> released;                // sequences that ended: drop their samplers
};

struct ChunkResult {
  int64_t seq_id = 0;
  int64_t n_tokens = 0;
  int32_t token = -1;  // sampled token; -1 when the chunk samples nothing
  bool eos = false;    // token ends the sequence: EOS (unless ignored) or a stop_token_id
  std::vector<float> logits;  // [vocab], when the chunk asked for them and sampled
  std::optional<TokenLogprob> logprob;      // of `token`, when the chunk asked (logprobs >= 0)
  std::vector<TokenLogprob> prompt_logprobs;  // [n_prompt_logprobs()] when the chunk asked
};

struct ColumnResults {
  int64_t plan_id = 0;
  int32_t column = 0;
  std::vector<ChunkResult> results;  // one per chunk of the column, in plan order
};

std::string EncodePlan(const WirePlan& plan);
// InvalidArgument naming the field when the bytes are not a plan.
absl::StatusOr<WirePlan> DecodePlan(std::string_view bytes);
std::string EncodeResults(const ColumnResults& r);
absl::StatusOr<ColumnResults> DecodeResults(std::string_view bytes);

// The statistics a rank reports with each heartbeat (cumulative since start).
struct RankStats {
  double attention_s = 0, experts_s = 0, dispatch_combine_s = 0, transfer_s = 0, other_s = 0;
  int64_t steps = 0;
  int64_t expert_layer_begin = 0;      // first global layer of expert_tokens
  int64_t n_experts = 0;               // routed experts per layer
  std::vector<int64_t> expert_tokens;  // [layer - expert_layer_begin][expert]
};
std::string EncodeStats(const RankStats& s);
absl::StatusOr<RankStats> DecodeStats(std::string_view bytes);

}  // namespace deepshard::serve
