#include "runtime/batching/scheduler.h"

#include <algorithm>
#include <limits>
#include <random>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {

int64_t StepPlan::n_tokens() const {
  int64_t n = 0;
  for (const auto& chunks : slots)
    for (const ScheduledChunk& c : chunks) n += c.n_tokens;
  return n;
}

Scheduler::Scheduler(const SchedulerConfig& config) : config_(config) {
  DS_CHECK(config.dp_slots >= 1 && config.blocks_per_slot >= 1 && config.block_size >= 1);
  DS_CHECK(config.max_tokens_per_step >= 1 && config.prefill_chunk >= 1);
  DS_CHECK(config.max_running_per_slot >= 1 && config.max_running_per_slot <= config.max_tokens_per_step);
  DS_CHECK(config.micro_batches >= 1);
  std::random_device rd;
  root_ = {(static_cast<uint64_t>(rd()) << 32) ^ rd(), (static_cast<uint64_t>(rd()) << 32) ^ rd()};
  slots_.reserve(config.dp_slots);
  for (int s = 0; s < config.dp_slots; ++s) slots_.emplace_back(config);
}

absl::StatusOr<int> Scheduler::Add(int64_t id, std::span<const int32_t> prompt, int64_t max_new_tokens,
                                   int64_t fork_of, bool reads_cache) {
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  if (seqs_.count(id)) return absl::InvalidArgumentError(absl::StrCat("sequence ", id, " already exists"));
  if (prompt_len < 1 || max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", id, ": prompt_len ", prompt_len, " and max_new_tokens ", max_new_tokens,
                     " must be >= 1"));
  }
  // The longest context that is ever computed: the last sampled token's KV is never written.
  const int64_t max_context = prompt_len + max_new_tokens - 1;
  const int64_t need = slots_[0].blocks.BlocksFor(max_context);
  if (need > config_.blocks_per_slot) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", id, ": ", max_context, " tokens need ", need,
                                                   " KV blocks, a DP slot has ", config_.blocks_per_slot));
  }
  Sequence q;
  q.id = id;
  q.prompt_len = prompt_len;
  q.max_new_tokens = max_new_tokens;
  q.reads_cache = reads_cache;
  q.tokens.assign(prompt.begin(), prompt.end());
  int best = -1;
  if (fork_of >= 0 && prompt_len >= 2) {
    auto it = seqs_.find(fork_of);
    if (it != seqs_.end() && !it->second.done() && it->second.prompt_len == prompt_len &&
        static_cast<int64_t>(it->second.tokens.size()) >= prompt_len &&
        std::equal(prompt.begin(), prompt.end(), it->second.tokens.begin())) {
      q.fork_of = fork_of;
      best = it->second.dp_slot;
    }
  }
  if (best < 0) {
    int64_t best_load = std::numeric_limits<int64_t>::max(), best_hit = -1, best_seqs = best_load;
    const int64_t own = slots_[0].blocks.BlocksFor(prompt_len);
    for (int s = 0; s < config_.dp_slots; ++s) {
      const Slot& slot = slots_[s];
      int64_t load = slot.blocks.n_used();
      for (int64_t w : slot.waiting) load += slot.blocks.BlocksFor(seqs_.at(w).context_len());
      const int64_t hit =
          config_.prefix_caching && q.reads_cache ? static_cast<int64_t>(FindCached(slot, q).blocks.size()) : 0;
      load += own - hit;
      const int64_t n = static_cast<int64_t>(slot.running.size() + slot.waiting.size());
      if (load < best_load || (load == best_load && (hit > best_hit || (hit == best_hit && n < best_seqs)))) {
        best = s;
        best_load = load;
        best_hit = hit;
        best_seqs = n;
      }
    }
  }
  q.dp_slot = best;
  seqs_.emplace(id, std::move(q));
  slots_[best].waiting.push_back(id);
  return best;
}

void Scheduler::EnsureHashes(Sequence& q, int64_t n) {
  const int64_t bs = config_.block_size;
  while (static_cast<int64_t>(q.hashes.size()) < n &&
         (static_cast<int64_t>(q.hashes.size()) + 1) * bs <= static_cast<int64_t>(q.tokens.size())) {
    const int64_t j = static_cast<int64_t>(q.hashes.size());
    q.hashes.push_back(ChainHash(j == 0 ? root_ : q.hashes[j - 1], std::span<const int32_t>(q.tokens).subspan(j * bs, bs)));
  }
}

Scheduler::Match Scheduler::FindCached(const Slot& slot, Sequence& q) {
  Match m;
  const int64_t bs = config_.block_size;
  const int64_t max_blocks = std::min<int64_t>((q.context_len() - 1) / bs, static_cast<int64_t>(q.tokens.size()) / bs);
  EnsureHashes(q, max_blocks);
  for (int64_t j = 0; j < max_blocks && j < static_cast<int64_t>(q.hashes.size()); ++j) {
    const int32_t b = slot.blocks.Lookup(q.hashes[j], j == 0 ? root_ : q.hashes[j - 1],
                                         std::span<const int32_t>(q.tokens).subspan(j * bs, bs));
    if (b < 0) break;
    m.blocks.push_back(b);
    m.evictable += slot.blocks.is_cached(b);
  }
  return m;
}

void Scheduler::RegisterFilled(Slot& slot, Sequence& q) {
  if (!config_.prefix_caching) return;
  const int64_t bs = config_.block_size;
  const int64_t full = std::min<int64_t>(q.n_computed, static_cast<int64_t>(q.tokens.size())) / bs;
  if (full <= q.n_registered) return;
  EnsureHashes(q, full);
  for (int64_t j = q.n_registered; j < full; ++j) {
    (void)slot.blocks.Register(q.table.blocks[j], q.hashes[j], j == 0 ? root_ : q.hashes[j - 1],
                               std::span<const int32_t>(q.tokens).subspan(j * bs, bs));
  }
  q.n_registered = full;
}

bool Scheduler::Admit(int s, Sequence& q) {
  Slot& slot = slots_[s];
  const int64_t bs = config_.block_size;
  const int64_t avail = slot.blocks.n_free() - OutstandingBlocks(slot);
  const int64_t context_blocks = slot.blocks.BlocksFor(q.context_len());
  const bool first = q.n_preemptions == 0;
  if (q.fork_of >= 0) {
    auto it = seqs_.find(q.fork_of);
    const Sequence* p = it == seqs_.end() ? nullptr : &it->second;
    const int64_t share = q.prompt_len - 1;
    if (p != nullptr && p->state == SeqState::kRunning && p->dp_slot == s) {
      if (p->n_computed < share) return false;  // the parent's prompt is not computed yet
      // Own blocks: the context's, less the full blocks shared (a shared partly
      // filled block is copied on the first write).
      if (context_blocks - share / bs > avail) return false;
      q.table = slot.blocks.Fork(p->table, share);
      q.n_computed = share;
      q.n_registered = 0;
      q.forked = true;
      q.fork_of = -1;
      if (first) q.cached_tokens = share;
      return true;
    }
    q.fork_of = -1;  // the parent is gone or not running: prefill as usual
  }
  const Match m = config_.prefix_caching && q.reads_cache ? FindCached(slot, q) : Match{};
  if (context_blocks - static_cast<int64_t>(m.blocks.size()) + m.evictable > avail) return false;
  if (config_.prefix_caching) {
    slot.prefix_queries += q.context_len();
    slot.prefix_hits += static_cast<int64_t>(m.blocks.size()) * bs;
  }
  for (int32_t b : m.blocks) slot.blocks.AppendCached(q.table, b);
  q.n_computed = q.table.n_tokens;
  q.n_registered = static_cast<int64_t>(m.blocks.size());
  if (first) q.cached_tokens = q.n_computed;
  return true;
}

int64_t Scheduler::Fit(const Slot& slot, const Sequence& q, int64_t want) const {
  if (want <= 0) return 0;
  if (slot.blocks.CanAppend(q.table, want)) return want;
  const int64_t bs = slot.blocks.block_size();
  const BlockTable& t = q.table;
  const bool cow = t.n_tokens % bs != 0 && slot.blocks.refcount(t.blocks.back()) > 1;
  const int64_t avail = slot.blocks.n_free() - (cow ? 1 : 0);
  if (avail < 0) return 0;
  const int64_t n = (static_cast<int64_t>(t.blocks.size()) + avail) * bs - t.n_tokens;
  return std::clamp<int64_t>(n, 0, want);
}

int64_t Scheduler::OutstandingBlocks(const Slot& slot) const {
  int64_t n = 0;
  for (int64_t id : slot.running) {
    const Sequence& q = seqs_.at(id);
    n += std::max<int64_t>(0, slot.blocks.BlocksFor(q.context_len()) - static_cast<int64_t>(q.table.blocks.size()));
  }
  return n;
}

void Scheduler::Preempt(int s, int64_t id, StepPlan& plan) {
  Slot& slot = slots_[s];
  Sequence& q = seqs_.at(id);
  DS_CHECK(q.state == SeqState::kRunning && !pending_.count(id));  // never one already planned
  slot.blocks.Free(q.table);
  slot.running.erase(std::find(slot.running.begin(), slot.running.end(), id));
  slot.waiting.push_front(id);
  q.state = SeqState::kWaiting;
  q.n_computed = 0;
  q.n_registered = 0;
  q.admit_seq = -1;
  ++q.n_preemptions;
  plan.preempted.push_back(id);
}

int64_t Scheduler::Victim(const Slot& slot, int64_t fallback) const {
  for (auto it = slot.running.rbegin(); it != slot.running.rend(); ++it) {
    if (*it == fallback || !pending_.count(*it)) return *it;
  }
  return fallback;
}

void Scheduler::Retire(Sequence& q, SeqState state) {
  Slot& slot = slots_[q.dp_slot];
  slot.blocks.Free(q.table);
  if (auto it = std::find(slot.running.begin(), slot.running.end(), q.id); it != slot.running.end()) {
    slot.running.erase(it);
  }
  if (auto it = std::find(slot.waiting.begin(), slot.waiting.end(), q.id); it != slot.waiting.end()) {
    slot.waiting.erase(it);
  }
  q.state = state;
  pending_.erase(q.id);
}

void Scheduler::ScheduleSlot(int s, StepPlan& plan) {
  Slot& slot = slots_[s];
  std::vector<ScheduledChunk>& chunks = plan.slots[s];
  int64_t budget = config_.max_tokens_per_step;
  auto add_chunk = [&](Sequence& q, int64_t n) {
    const absl::Status st = slot.blocks.AppendSlots(q.table, n, &plan.copies[s]);
    DS_CHECK(st.ok());
    chunks.push_back({q.id, q.n_computed, n, q.n_computed + n == q.context_len()});
    pending_[q.id] = {plan.id, n};
    budget -= n;
  };

  // 1. Decodes, oldest first, at most a micro-batch's share; preempt the newest
  //    running sequence for a block.
  const std::vector<int64_t> order = slot.running;
  const int64_t share = (static_cast<int64_t>(order.size()) + config_.micro_batches - 1) / config_.micro_batches;
  int64_t decodes = 0;
  for (int64_t id : order) {
    if (decodes == share) break;
    Sequence& q = seqs_.at(id);
    if (q.state != SeqState::kRunning || q.remaining() != 1 || pending_.count(id)) continue;
    ++decodes;
    while (!slot.blocks.CanAppend(q.table, 1)) {
      const int64_t victim = Victim(slot, id);
      Preempt(s, victim, plan);
      if (victim == id) break;
    }
    if (q.state == SeqState::kRunning) add_chunk(q, 1);  // budget: running <= max_tokens_per_step
  }

  // 2. Chunked prefills in progress, oldest first, within budget and free blocks.
  for (int64_t id : order) {
    if (budget == 0) break;
    Sequence& q = seqs_.at(id);
    // remaining() == 1 is a decode: step 1 planned it or left it for another micro-batch.
    if (q.state != SeqState::kRunning || pending_.count(id) || q.remaining() == 1) continue;
    const int64_t n = Fit(slot, q, std::min({q.remaining(), config_.prefill_chunk, budget}));
    if (n > 0) add_chunk(q, n);
  }

  // 3. Admission, FCFS, when the whole context fits beside what running sequences
  //    still need (after the prefix cache or a fork gave it its first blocks).
  while (!slot.waiting.empty() && budget > 0 &&
         static_cast<int64_t>(slot.running.size()) < config_.max_running_per_slot) {
    Sequence& q = seqs_.at(slot.waiting.front());
    if (!Admit(s, q)) break;
    slot.waiting.pop_front();
    q.state = SeqState::kRunning;
    q.admit_seq = next_admit_++;
    slot.running.push_back(q.id);
    add_chunk(q, std::min({q.remaining(), config_.prefill_chunk, budget}));
  }
}

StepPlan Scheduler::Schedule() {
  StepPlan plan;
  plan.id = next_plan_;
  plan.slots.resize(config_.dp_slots);
  plan.copies.resize(config_.dp_slots);
  for (int s = 0; s < config_.dp_slots; ++s) {
    ScheduleSlot(s, plan);
    slots_[s].peak_used = std::max(slots_[s].peak_used, slots_[s].blocks.n_used());
  }
  if (plan.empty()) {
    plan.id = -1;
  } else {
    in_flight_.push_back(next_plan_++);
  }
  return plan;
}

absl::Status Scheduler::OnStepDone(const std::vector<StepResult>& results) {
  if (in_flight_.empty()) {
    if (results.empty()) return absl::OkStatus();
    return absl::FailedPreconditionError("OnStepDone without a planned step");
  }
  const int64_t plan_id = in_flight_.front();
  int64_t n_planned = 0;
  for (const auto& [id, p] : pending_) n_planned += p.plan_id == plan_id;
  // Validate everything before changing anything.
  std::unordered_set<int64_t> seen;
  for (const StepResult& r : results) {
    auto it = seqs_.find(r.seq_id);
    if (it == seqs_.end()) return absl::InvalidArgumentError(absl::StrCat("unknown sequence ", r.seq_id));
    if (it->second.state == SeqState::kCancelled) continue;  // cancelled during the step
    auto p = pending_.find(r.seq_id);
    if (p == pending_.end() || p->second.plan_id != plan_id || !seen.insert(r.seq_id).second) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", r.seq_id, " was not planned once"));
    }
    if (p->second.n_tokens != r.n_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", r.seq_id, ": ", r.n_tokens,
                                                     " tokens reported, ", p->second.n_tokens, " planned"));
    }
    const Sequence& q = it->second;
    if (r.eos && q.n_computed + r.n_tokens != q.context_len()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", r.seq_id, ": eos on a chunk that samples nothing"));
    }
  }
  if (static_cast<int64_t>(seen.size()) != n_planned) {
    return absl::InvalidArgumentError(
        absl::StrCat(n_planned - static_cast<int64_t>(seen.size()), " planned chunks have no result"));
  }
  for (const StepResult& r : results) {
    Sequence& q = seqs_.at(r.seq_id);
    if (q.state != SeqState::kRunning) continue;
    pending_.erase(q.id);
    q.n_computed += r.n_tokens;
    DS_CHECK(q.n_computed == q.table.n_tokens && q.n_computed <= q.context_len());
    RegisterFilled(slots_[q.dp_slot], q);
    if (q.n_computed == q.context_len()) {
      ++q.generated;
      if (q.tokens_complete && r.token >= 0 && static_cast<int64_t>(q.tokens.size()) + 1 == q.context_len()) {
        q.tokens.push_back(r.token);
      } else {
        q.tokens_complete = false;
      }
      if (r.eos || q.generated >= q.max_new_tokens) Retire(q, SeqState::kFinished);
    }
  }
  in_flight_.pop_front();
  return absl::OkStatus();
}

absl::Status Scheduler::Cancel(int64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrCat("no sequence ", id));
  if (!it->second.done()) Retire(it->second, SeqState::kCancelled);
  return absl::OkStatus();
}

const Sequence* Scheduler::Get(int64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second;
}

void Scheduler::Forget(int64_t id) {
  auto it = seqs_.find(id);
  if (it != seqs_.end() && it->second.done()) seqs_.erase(it);
}

std::vector<SlotStats> Scheduler::Stats() const {
  std::vector<SlotStats> out;
  for (const Slot& slot : slots_) {
    SlotStats st;
    st.running = static_cast<int64_t>(slot.running.size());
    st.waiting = static_cast<int64_t>(slot.waiting.size());
    st.blocks_used = slot.blocks.n_used();
    st.blocks_free = slot.blocks.n_free();
    st.blocks_cached = slot.blocks.n_cached();
    st.prefix_queries = slot.prefix_queries;
    st.prefix_hits = slot.prefix_hits;
    st.blocks_used_peak = slot.peak_used;
    out.push_back(st);
  }
  return out;
}

int64_t Scheduler::prefix_queries() const {
  int64_t n = 0;
  for (const Slot& slot : slots_) n += slot.prefix_queries;
  return n;
}

int64_t Scheduler::prefix_hits() const {
  int64_t n = 0;
  for (const Slot& slot : slots_) n += slot.prefix_hits;
  return n;
}

int64_t Scheduler::n_active() const {
  int64_t n = 0;
  for (const Slot& slot : slots_) n += static_cast<int64_t>(slot.running.size() + slot.waiting.size());
  return n;
}

}  // namespace deepshard
