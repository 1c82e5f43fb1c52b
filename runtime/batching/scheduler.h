// Scheduler: continuous batching over DP slots. Pure bookkeeping: no model
// calls, no threads, no I/O. Rank 0 calls, once per step,
//
//   StepPlan plan = sched.Schedule();   // chunks per DP slot, KV slots reserved
//   ... run the step (PagedKvCache::Reserve + Forward per slot) ...
//   RETURN_IF_ERROR(sched.OnStepDone(results));  // one StepResult per chunk
//
// and, between steps, Add (new request) and Cancel (client disconnect).
//
// Pipelining: with pp stages, several plans are in flight at once (stage 0
// runs plan k+1 while stage 1 runs plan k). Schedule may be called again
// before OnStepDone; a sequence with a chunk in flight is left out of later
// plans (its next token is not known yet) and is never a preemption victim
// (its blocks are being written). OnStepDone completes the oldest plan in
// flight: plans finish in the order they were made. With micro_batches = pp,
// a plan takes at most 1/pp of a slot's running sequences as decodes: left
// alone, one plan would take every decode and the next would find them all in
// flight, so the stages would take turns instead of overlapping.
//
// Token accounting. A sequence's context is its prompt followed by the tokens
// generated so far (context_len = prompt_len + generated). n_computed of them
// have their KV in the cache (= table.n_tokens between steps). A chunk covers
// positions [n_computed, n_computed + n); when it reaches context_len the step
// samples one new token (generated + 1). So a first prefill computes the prompt
// (possibly in several chunks), and a decode is the case context_len -
// n_computed == 1: the last sampled token is fed back. A preempted sequence is
// recomputed the same way: n_computed goes back to 0 and its generated tokens
// are prefilled with the prompt.
//
// Policy, per DP slot, each step, within max_tokens_per_step tokens:
//   1. Decodes: every running sequence with one token left, oldest admission
//      first, 1 token each. If AppendSlots finds no block, the most recently
//      admitted running sequence of the slot that has no chunk in flight
//      (possibly the decode itself) is preempted: its blocks are freed, it
//      becomes waiting at the front of the slot's queue with n_computed = 0.
//      Then the decode retries. The step never fails. With one plan in flight
//      at a time, a sequence older than every other running one is never
//      preempted; with several, the oldest may preempt itself when every newer
//      one is in flight (it is recomputed later; progress is kept because the
//      in-flight ones finish or free blocks).
//   2. Chunked prefills in progress, oldest first: min(rest of its context,
//      prefill_chunk, remaining budget, what the free blocks hold) tokens. A
//      prefill never preempts; if no block is free it waits a step.
//   3. Admission, FCFS from the slot's queue, while the slot has fewer than
//      max_running_per_slot running sequences, budget is left, and the free
//      blocks, minus those the running sequences still need to reach their
//      context, hold the head's whole context. The head that does not fit
//      blocks those behind it (no overtaking). Its first chunk is scheduled at
//      once (same size rule as 2).
// So decodes always run (max_running_per_slot <= max_tokens_per_step is
// required), a long prompt only takes what budget and prefill_chunk leave, and
// admission control keeps prefills from deadlocking each other: the running
// sequences' whole contexts always fit the pool once the decodes that grew
// past their admission-time share finish or are preempted.
//
// Slot assignment (Add): the slot with the least load in blocks after taking
// the new sequence: blocks used, plus blocks its waiting sequences will need
// for their context, plus the blocks the new prompt would need there (its
// blocks minus the full blocks of its prefix found in that slot's prefix
// cache). Then the longest cached prefix, the fewest sequences (running +
// waiting), the lowest index. So a slot holding the prompt's prefix wins
// unless its load exceeds another's by more than the blocks the hit saves.
// Counting waiting work keeps a burst of Adds from all landing on one idle
// slot. A fork child (fork_of) goes to its parent's slot.
//
// Prefix caching (config.prefix_caching, see block_manager.h). A sequence's
// full blocks are hashed as a chain over its tokens, starting from a random
// per-scheduler root. When a chunk completes, every block it filled is
// registered in the slot's cache (prompt and generated tokens alike). On
// admission (first or after preemption) a sequence takes references to the
// longest run of cached blocks matching its context from the start, at most
// (context_len - 1) / block_size blocks so that at least one token is computed
// (the sampling chunk needs the last position's logits), and its first chunk
// starts after them. Admission counts what that costs: new blocks for the rest
// of the context, plus the matched blocks that were evictable (they leave the
// free count). Stats count each lookup: queried tokens (context_len) and hit
// tokens; Sequence::cached_tokens is the hit of the first admission.
//
// Forks (n > 1 choices): Add(..., fork_of = parent) puts the child on the
// parent's slot. When the child heads the queue it waits while the parent is
// running and has computed fewer than prompt_len - 1 tokens; then it is
// admitted with BlockManager::Fork(parent table, prompt_len - 1) and
// n_computed = prompt_len - 1, so its first chunk is the last prompt token and
// samples its own first token (a shared partly filled block is copied first:
// StepPlan::copies). If the parent is not running then (finished, cancelled,
// preempted), the child is admitted like any other sequence.
//
// Finished (EOS or max_new_tokens) and cancelled sequences free their blocks
// at once and never appear in a later plan; they stay readable through Get
// until Forget.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/batching/block_manager.h"
#include "runtime/batching/sequence.h"

namespace deepshard {

struct SchedulerConfig {
  int dp_slots = 1;
  int64_t blocks_per_slot = 0;
  int64_t block_size = 64;
  int64_t max_tokens_per_step = 512;   // token budget per step per slot
  int64_t max_running_per_slot = 64;   // must be <= max_tokens_per_step
  int64_t prefill_chunk = 512;         // max tokens of one sequence per step
  // Pipeline micro-batches (pp): a plan takes at most ceil(running / micro_batches)
  // decodes of a slot, so that pp plans in flight each carry a share of the
  // running sequences and the stages overlap instead of taking turns.
  int64_t micro_batches = 1;
  // Automatic prefix caching: keep the KV of full blocks after their
  // sequences end, and reuse it for contexts that start with the same tokens.
  bool prefix_caching = true;
};

// One sequence's tokens in one step: positions [start_pos, start_pos + n_tokens).
struct ScheduledChunk {
  int64_t seq_id = 0;
  int64_t start_pos = 0;
  int64_t n_tokens = 0;
  bool samples = false;  // reaches the end of the context: the step samples a token
};

struct StepPlan {
  int64_t id = -1;                                  // increasing; -1 for an empty plan
  std::vector<std::vector<ScheduledChunk>> slots;   // [dp_slot] -> chunks
  std::vector<std::vector<BlockCopy>> copies;       // [dp_slot] -> copy-on-write copies to make first
  std::vector<int64_t> preempted;                   // sequences preempted while planning
  int64_t n_tokens() const;
  bool empty() const { return n_tokens() == 0; }
};

// What the step did for one scheduled chunk.
struct StepResult {
  int64_t seq_id = 0;
  int64_t n_tokens = 0;  // tokens whose KV the step wrote (must match the plan)
  bool eos = false;      // the sampled token ends the sequence (only on a sampling chunk)
  // The sampled token (a sampling chunk): the prefix cache hashes the blocks it
  // fills. -1 = not reported: the sequence's later blocks are not cached.
  int32_t token = -1;
};

struct SlotStats {
  int64_t running = 0, waiting = 0;
  int64_t blocks_used = 0;    // referenced by sequences
  int64_t blocks_free = 0;    // free or cached (what allocation can take)
  int64_t blocks_cached = 0;  // of blocks_free: cached, evictable prefix blocks
  int64_t prefix_queries = 0;  // cumulative: context tokens looked up in the prefix cache
  int64_t prefix_hits = 0;     // cumulative: of those, tokens found (not computed)
  int64_t blocks_used_peak = 0;  // most blocks_used after any Schedule
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);

  // Queues a new sequence (its prompt's token ids) on the least-loaded slot;
  // returns that slot. fork_of: an earlier sequence with the same prompt whose
  // prompt KV this one shares (ignored when that sequence is gone or its prompt
  // differs). InvalidArgument: duplicate id, an empty prompt, max_new_tokens < 1,
  // or a sequence whose prompt + max_new_tokens - 1 tokens could never fit a slot.
  // reads_cache = false: the sequence computes its whole context (its blocks
  // are still registered for others); for prompt log-probabilities (echo),
  // which need every prompt position's logits.
  absl::StatusOr<int> Add(int64_t id, std::span<const int32_t> prompt, int64_t max_new_tokens,
                          int64_t fork_of = -1, bool reads_cache = true);

  // Plans the next step over the sequences that have no chunk in flight and
  // reserves its KV slots. An empty plan (nothing to do) is not in flight.
  StepPlan Schedule();

  // Applies the results of the oldest plan in flight; each of its chunks must
  // be reported once, except those of sequences cancelled since.
  // InvalidArgument (and no change) when the results do not match the plan.
  absl::Status OnStepDone(const std::vector<StepResult>& results);
  int64_t plans_in_flight() const { return static_cast<int64_t>(in_flight_.size()); }

  // Client disconnect: frees the sequence's blocks now; it never appears in a
  // later plan. NotFound for an unknown id; a no-op for a finished one.
  absl::Status Cancel(int64_t id);

  // nullptr for an unknown (or forgotten) id.
  const Sequence* Get(int64_t id) const;
  // Drops a finished or cancelled sequence's record.
  void Forget(int64_t id);

  std::vector<SlotStats> Stats() const;
  // Prefix cache totals over all slots.
  int64_t prefix_queries() const;
  int64_t prefix_hits() const;
  const BlockManager& blocks(int slot) const { return slots_[slot].blocks; }
  const SchedulerConfig& config() const { return config_; }
  // Sequences waiting or running, all slots.
  int64_t n_active() const;

 private:
  struct Slot {
    explicit Slot(const SchedulerConfig& c) : blocks(c.blocks_per_slot, c.block_size) {}
    BlockManager blocks;
    std::deque<int64_t> waiting;   // FCFS; preempted sequences go to the front
    std::vector<int64_t> running;  // in admission order (oldest first)
    int64_t prefix_queries = 0, prefix_hits = 0;
    int64_t peak_used = 0;
  };
  // The leading cached blocks of a sequence's context in a slot.
  struct Match {
    std::vector<int32_t> blocks;
    int64_t evictable = 0;  // of them, cached (refcount 0): they leave the free count when taken
  };

  void ScheduleSlot(int s, StepPlan& plan);
  // Tokens of seq that AppendSlots can take now, at most want.
  int64_t Fit(const Slot& slot, const Sequence& seq, int64_t want) const;
  void Preempt(int s, int64_t id, StepPlan& plan);
  // The newest running sequence of the slot with no chunk in flight (`fallback` if none).
  int64_t Victim(const Slot& slot, int64_t fallback) const;
  void Retire(Sequence& seq, SeqState state);  // finished or cancelled
  int64_t OutstandingBlocks(const Slot& slot) const;
  // Chain hashes of q's first n full blocks (needs their tokens).
  void EnsureHashes(Sequence& q, int64_t n);
  Match FindCached(const Slot& slot, Sequence& q);
  // Registers the blocks q's computed tokens have filled since the last call.
  void RegisterFilled(Slot& slot, Sequence& q);
  // Admits the slot's waiting head if it fits (fork, prefix match or plain);
  // false when it has to wait.
  bool Admit(int s, Sequence& q);

  SchedulerConfig config_;
  std::vector<Slot> slots_;
  std::unordered_map<int64_t, Sequence> seqs_;
  struct Pending {
    int64_t plan_id = 0, n_tokens = 0;
  };
  std::unordered_map<int64_t, Pending> pending_;  // seq id -> its chunk in flight
  std::deque<int64_t> in_flight_;                 // plan ids, oldest first
  int64_t next_plan_ = 0;
  int64_t next_admit_ = 0;
  BlockHash root_;  // the chains' root: random per scheduler
};

}  // namespace deepshard
