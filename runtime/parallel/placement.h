// The placement plan: which layers each pipeline stage holds, which routed
// experts each rank of a stage holds, and what every rank must load.
//
// The grid is pp stages × ep ranks (see docs/architecture.md). Every rank of a
// stage holds that stage's attention, norms, dense MLPs, routers and shared
// experts (attention is data-parallel); routed experts are sharded across the
// stage's ep ranks. Stage 0 also holds the embedding, the last stage the final
// norm and lm_head.
//
// The default layer split balances the per-token cost of the stages, where a
// layer costs the weight bytes one decode token reads through it (attention +
// dense MLP, or attention + router + shared experts + k routed experts), and
// the last stage also pays for lm_head. `layer_split` overrides it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/moe_exchange.h"
#include "kernels/quant.h"
#include "runtime/config/model_config.h"
#include "runtime/model/model_weights.h"

namespace deepshard {

struct StagePlan {
  int stage = 0;
  int64_t layer_begin = 0, layer_end = 0;  // [begin, end)
  double cost = 0;                         // decode bytes per token through this stage
};

struct RankPlan {
  int rank = 0, stage = 0, ep_rank = 0, node = 0;
  LoadSpec load;                      // what this rank reads (experts: contiguous range)
  std::vector<int32_t> experts;       // routed experts this rank holds
  uint64_t weight_bytes = 0;          // bytes of weights it loads
  uint64_t kv_bytes_per_1k = 0;       // KV cache bytes per 1024 tokens of its sequences
};

struct PlacementPlan {
  int pp = 1, ep = 1, nodes = 1;
  WeightQuant weights = WeightQuant::kStored;  // as PlacementOptions
  int64_t quant_group = kDefaultQuantGroup;
  bool quantize_fp8 = false;
  std::vector<StagePlan> stages;
  ExpertPlacement experts;  // expert -> ep rank (same in every stage)
  std::vector<RankPlan> ranks;
};

struct PlacementOptions {
  int pp = 1, ep = 1, nodes = 1;
  std::vector<int64_t> layer_split;   // layers per stage; empty = balanced
  std::vector<int> expert_owner;      // expert -> ep rank; empty = contiguous
  // How weights are held (--weights, --weights-group, --quantize-fp8): the
  // bytes per rank and the stage costs follow it.
  WeightQuant weights = WeightQuant::kStored;
  int64_t quant_group = kDefaultQuantGroup;
  bool quantize_fp8 = false;
};

// Errors name the flag: --pp, --ep, --nodes, --layer-split, --expert-map.
absl::StatusOr<PlacementPlan> MakePlacementPlan(const ModelConfig& c, const PlacementOptions& o);

// Parses "14,13" (layers per stage).
absl::StatusOr<std::vector<int64_t>> ParseLayerSplit(const std::string& s);
// Parses an expert map: comma-separated owner rank per expert ("0,0,1,1,...").
absl::StatusOr<std::vector<int>> ParseExpertMap(const std::string& s);

// Human-readable plan (the `deepshard plan` output).
std::string FormatPlacementPlan(const ModelConfig& c, const PlacementPlan& p);

}  // namespace deepshard
