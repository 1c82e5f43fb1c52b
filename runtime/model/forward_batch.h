// What one forward step computes: new tokens of one or more sequences, and the
// scratch memory the layers share.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/model/kv_cache.h"

namespace deepshard {

// New tokens of one sequence. They sit at positions start_pos .. start_pos +
// n_tokens - 1; positions before start_pos are already in `cache`.
struct SequenceChunk {
  KvCache* cache = nullptr;
  int64_t start_pos = 0;
  const int32_t* tokens = nullptr;
  int64_t n_tokens = 0;
};

// How MLA attends. kAuto: naive (expand K/V) for chunks of more than one
// token, absorbed (attend over the latent cache) for single-token decode.
enum class MlaMode { kAuto, kNaive, kAbsorbed };

// Where a rank's forward time goes, and how many tokens each routed expert got:
// cumulative, for /metrics. Filled only when Workspace::profile is set (the
// serving engine sets it; offline paths leave it null and pay nothing).
struct StepProfile {
  double attention_s = 0;         // attention sublayers (incl. their RMSNorm)
  double experts_s = 0;           // FFN sublayers: dense MLP, routing, routed and shared experts
  double dispatch_combine_s = 0;  // MoE all-to-all: dispatch + combine (inside experts_s' wall time, not in it)
  // Tokens routed to each expert: [global layer * n_routed_experts + expert]
  // (sized by the model on first use). A token choosing k experts counts k times.
  std::vector<int64_t> expert_tokens;
};

// Grow-only scratch: a buffer is reallocated only when a step needs more than
// any earlier step, so steady-state decode allocates nothing.
struct Workspace {
  template <typename T>
  static T* Get(std::vector<T>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(n);
    return v.data();
  }
  std::vector<int32_t> positions;  // [T]
  std::vector<float> x, xn, h;     // [T, hidden]: residual, normed input, sublayer output
  // attention
  std::vector<float> q, qa, kv_a, q_abs, out_lat, attn_out, kvb, kfull;
  std::vector<float> kv_rows;  // [S, kv width]: a paged cache's rows gathered for naive MLA
  // FFN / MoE
  std::vector<float> gate, up, act, router_logits, topk_w, gathered, expert_out, moe_out;
  std::vector<int32_t> topk_ids, expert_count, expert_offset, expert_rows;
  std::vector<float> last_hidden;  // [n_out, hidden]
  // Optional accounting (see StepProfile); profile_layer is the global index
  // of the layer being run.
  StepProfile* profile = nullptr;
  int64_t profile_layer = 0;
};

}  // namespace deepshard
