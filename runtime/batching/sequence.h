// Sequence: one request as the scheduler sees it (token counts, state, its DP
// slot and its BlockTable). Token ids live with the server, not here.
#pragma once

#include <cstdint>

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

  // Prompt plus generated tokens: what a (re)computation must cover.
  int64_t context_len() const { return prompt_len + generated; }
  int64_t remaining() const { return context_len() - n_computed; }
  bool done() const { return state == SeqState::kFinished || state == SeqState::kCancelled; }
};

}  // namespace deepshard
