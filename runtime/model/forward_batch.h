// What one forward step computes: new tokens of one or more sequences, and the
// scratch memory the layers share.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "runtime/model/kv_cache.h"

namespace deepshard {

// New tokens of one sequence. They sit at positions start_pos .. start_pos +
// n_tokens - 1; positions before start_pos are already in `cache`.
struct SequenceChunk {
  KvCache* cache = nullptr;
  int64_t start_pos = 0;
  const int32_t* tokens = nullptr;  // host memory
  int64_t n_tokens = 0;
};

// How MLA attends. kAuto: naive (expand K/V) for chunks of more than one
// token, absorbed (attend over the latent cache) for single-token decode.
enum class MlaMode { kAuto, kNaive, kAbsorbed };

// Where a rank's forward time goes, and how many tokens each routed expert got:
// cumulative, for /metrics. Filled only when Workspace::profile is set (the
// serving engine sets it; other callers leave it null and pay nothing).
struct StepProfile {
  double attention_s = 0;         // attention sublayers (incl. their RMSNorm)
  double experts_s = 0;           // FFN sublayers: dense MLP, routing, routed and shared experts
  double dispatch_combine_s = 0;  // MoE all-to-all: dispatch + combine (inside experts_s' wall time, not in it)
  // Tokens routed to each expert: [global layer * n_routed_experts + expert]
  // (sized by the model on first use). A token choosing k experts counts k times.
  std::vector<int64_t> expert_tokens;
};

// The step's layout, worked out on the host once per step and uploaded to
// backend memory once (every layer reads the same tables).
struct StepLayout {
  int64_t n_tokens = 0;
  // Host staging.
  std::vector<int32_t> positions;     // [T]
  std::vector<int32_t> slots;         // [T] KV row each new token is written to
  std::vector<int32_t> tables;        // every chunk's block table, concatenated
  std::vector<AttentionSeq> cached;   // attention over the cache (absorbed MLA, MHA): one per chunk
  std::vector<AttentionSeq> naive;    // naive MLA chunks: attention over their expanded rows
  std::vector<int32_t> naive_slots;   // KV rows [0, S) of each naive chunk, concatenated
  std::vector<int32_t> naive_chunk;   // the batch index of each `naive` entry
  std::vector<int32_t> absorbed_rows; // token rows of the absorbed chunks (when not all are)
  int64_t max_kv = 0;
  // The engine's chunks all view one paged pool, so a layer's KV write and
  // attention are one call each. Chunks with caches of their own (contiguous
  // caches batched together, in tests) run those per cache: `cached` is
  // ordered by cache storage, one group per storage.
  struct Group {
    const KvCache* cache = nullptr;
    int32_t seq_begin = 0, n_seqs = 0;
  };
  std::vector<Group> groups;
  std::vector<int32_t> cached_group;  // scratch: the group of each `cached` entry
  bool one_storage = true;
  // Their copies in backend memory.
  const int32_t* d_positions = nullptr;
  const int32_t* d_slots = nullptr;
  const int32_t* d_tables = nullptr;
  const AttentionSeq* d_cached = nullptr;
  const AttentionSeq* d_naive = nullptr;
  const int32_t* d_naive_slots = nullptr;
  const int32_t* d_absorbed_rows = nullptr;
};

// Grow-only scratch in backend memory: a buffer is reallocated only when a
// step needs more than any earlier step, so steady-state decode allocates
// nothing (tests/runtime/model/decode_alloc_test.cc counts).
struct Workspace {
  ScratchBuffer x, xn, h;  // [T, hidden]: residual, normed input, sublayer output
  ScratchBuffer ids;       // [T] token ids
  ScratchBuffer layout;    // StepLayout's device copies, one block
  // attention
  ScratchBuffer q, qa, kv_a, q_sel, q_abs, out_lat, o_sel, attn_out, kvb, kfull, kv_rows;
  // FFN / MoE
  ScratchBuffer router_logits, topk_w, topk_ids, expert_offsets, expert_order, gathered, expert_out, slots, moe_out;
  std::vector<int32_t> host_offsets;          // [E + 1]
  std::vector<int64_t> host_offsets64;        // [E + 1]
  std::vector<int32_t> host_ids;              // [T * k], only when profiling
  ScratchBuffer last_hidden, head_rows, logits;  // the head: [n_out, hidden], [n_out], [n_out, vocab]
  std::vector<int32_t> host_rows;
  StepLayout step;
  // Optional accounting (see StepProfile); profile_layer is the global index
  // of the layer being run.
  StepProfile* profile = nullptr;
  int64_t profile_layer = 0;
};

}  // namespace deepshard
