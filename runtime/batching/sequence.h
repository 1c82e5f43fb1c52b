// Sequence: one request as the scheduler sees it (token counts, state, its DP
// slot and its BlockTable), and the token ids the prefix cache hashes (the
// prompt, then each sampled token as OnStepDone reports it).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/batching/block_manager.h"
#include "runtime/model/kv_cache.h"

namespace deepshard {

enum class SeqState { kWaiting, kRunning, kFinished, kCancelled };

struct Sequence {
  int64_t id = 0;
  int64_t prompt_len = 0;
  int64_t max_new_tokens = 0;
  int64_t generated = 0;   // tokens sampled so far
  int64_t n_computed = 0;  // context tokens whose KV is in the cache (0 after preemption)
  SeqState state = SeqState::kWaiting;
  int dp_slot = -1;
  BlockTable table;        // blocks of dp_slot's pool, in token order
  int64_t admit_seq = -1;  // admission order within the scheduler (larger = newer)
  int n_preemptions = 0;
  // Prompt tokens not computed on first admission: served from the prefix
  // cache, or shared with the parent by a fork (usage.prompt_tokens_details.cached_tokens).
  int64_t cached_tokens = 0;
  // The sequence whose prompt KV this one waits to share (Fork), -1 for none;
  // reset to -1 once admitted or when the parent is gone.
  int64_t fork_of = -1;
  bool reads_cache = true;  // false: never starts from cached blocks (echo needs every prompt row)
  bool forked = false;     // was admitted with a fork of its parent's blocks

  // The context's token ids as far as known: the prompt, then the sampled
  // tokens (a sampling chunk reported without its token stops the list; blocks
  // past it are then never hashed).
  std::vector<int32_t> tokens;
  bool tokens_complete = true;
  // Chain hashes of the context's first hashes.size() full blocks (memo).
  std::vector<BlockHash> hashes;
  int64_t n_registered = 0;  // leading full blocks of table already offered to the prefix cache

  // Prompt plus generated tokens: what a (re)computation must cover.
  int64_t context_len() const { return prompt_len + generated; }
  int64_t remaining() const { return context_len() - n_computed; }
  bool done() const { return state == SeqState::kFinished || state == SeqState::kCancelled; }
};

}  // namespace deepshard
