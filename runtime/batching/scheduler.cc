#include "runtime/batching/scheduler.h"

#include <algorithm>
#include <limits>
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
  slots_.reserve(config.dp_slots);
  for (int s = 0; s < config.dp_slots; ++s) slots_.emplace_back(config);
}

absl::StatusOr<int> Scheduler::Add(int64_t id, int64_t prompt_len, int64_t max_new_tokens) {
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
  int best = 0;
  int64_t best_blocks = std::numeric_limits<int64_t>::max(), best_seqs = best_blocks;
  for (int s = 0; s < config_.dp_slots; ++s) {
    const Slot& slot = slots_[s];
    int64_t blocks = slot.blocks.n_used();
    for (int64_t w : slot.waiting) blocks += slot.blocks.BlocksFor(seqs_.at(w).context_len());
    const int64_t n = static_cast<int64_t>(slot.running.size() + slot.waiting.size());
    if (blocks < best_blocks || (blocks == best_blocks && n < best_seqs)) {
      best = s;
      best_blocks = blocks;
      best_seqs = n;
    }
  }
  Sequence q;
  q.id = id;
  q.prompt_len = prompt_len;
  q.max_new_tokens = max_new_tokens;
  q.dp_slot = best;
  seqs_.emplace(id, std::move(q));
  slots_[best].waiting.push_back(id);
  return best;
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

  // 3. Admission, FCFS, when the whole context fits beside what running sequences still need.
  while (!slot.waiting.empty() && budget > 0 &&
         static_cast<int64_t>(slot.running.size()) < config_.max_running_per_slot) {
    Sequence& q = seqs_.at(slot.waiting.front());
    const int64_t avail = slot.blocks.n_free() - OutstandingBlocks(slot);
    if (slot.blocks.BlocksFor(q.context_len()) > avail) break;
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
  for (int s = 0; s < config_.dp_slots; ++s) ScheduleSlot(s, plan);
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
    if (q.n_computed == q.context_len()) {
      ++q.generated;
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
    out.push_back({static_cast<int64_t>(slot.running.size()), static_cast<int64_t>(slot.waiting.size()),
                   slot.blocks.n_used(), slot.blocks.n_free()});
  }
  return out;
}

int64_t Scheduler::n_active() const {
  int64_t n = 0;
  for (const Slot& slot : slots_) n += static_cast<int64_t>(slot.running.size() + slot.waiting.size());
  return n;
}

}  // namespace deepshard
