// Scheduler: slot assignment, token budget, chunked prefill beside decodes,
// admission control, preemption + recompute, cancellation, and a randomized
// run of 1,000 requests on a small pool that must drain completely.
#include "runtime/batching/scheduler.h"

#include <deque>
#include <map>
#include <random>
#include <set>

#include "gtest/gtest.h"

namespace deepshard {
namespace {

// Checks the plan's invariants against the scheduler's state.
void CheckPlan(const Scheduler& s, const StepPlan& plan) {
  const SchedulerConfig& c = s.config();
  ASSERT_EQ(plan.slots.size(), static_cast<size_t>(c.dp_slots));
  std::set<int64_t> ids;
  for (int slot = 0; slot < c.dp_slots; ++slot) {
    int64_t tokens = 0;
    for (const ScheduledChunk& ch : plan.slots[slot]) {
      tokens += ch.n_tokens;
      ASSERT_TRUE(ids.insert(ch.seq_id).second) << "sequence planned twice";
      const Sequence* q = s.Get(ch.seq_id);
      ASSERT_NE(q, nullptr);
      EXPECT_EQ(q->state, SeqState::kRunning);
      EXPECT_EQ(q->dp_slot, slot);
      EXPECT_GE(ch.n_tokens, 1);
      EXPECT_LE(ch.n_tokens, c.prefill_chunk);
      EXPECT_EQ(ch.start_pos, q->n_computed);
      EXPECT_EQ(q->table.n_tokens, ch.start_pos + ch.n_tokens);  // slots reserved
      EXPECT_EQ(ch.samples, ch.start_pos + ch.n_tokens == q->context_len());
    }
    EXPECT_LE(tokens, c.max_tokens_per_step);
  }
}

// Every chunk of `plan` reported as done, no EOS.
std::vector<StepResult> AllDone(const StepPlan& plan) {
  std::vector<StepResult> results;
  for (const auto& chunks : plan.slots)
    for (const ScheduledChunk& ch : chunks) results.push_back({ch.seq_id, ch.n_tokens, false});
  return results;
}

// One step with no EOS: every planned chunk is reported as done.
StepPlan Step(Scheduler& s) {
  StepPlan plan = s.Schedule();
  CheckPlan(s, plan);
  EXPECT_TRUE(s.OnStepDone(AllDone(plan)).ok());
  return plan;
}

const ScheduledChunk* Find(const StepPlan& plan, int64_t id) {
  for (const auto& chunks : plan.slots)
    for (const ScheduledChunk& ch : chunks)
      if (ch.seq_id == id) return &ch;
  return nullptr;
}

TEST(Scheduler, AssignsLeastLoadedSlot) {
  Scheduler s({.dp_slots = 2, .blocks_per_slot = 64, .block_size = 8, .max_tokens_per_step = 256,
               .max_running_per_slot = 8, .prefill_chunk = 256});
  EXPECT_EQ(*s.Add(1, 4, 4), 0);   // all empty: lowest slot
  EXPECT_EQ(*s.Add(2, 12, 4), 1);  // slot 0 has 1 block of work, slot 1 none
  EXPECT_EQ(*s.Add(3, 4, 4), 0);   // 1 block vs 2
  EXPECT_EQ(*s.Add(4, 4, 4), 1);   // 2 blocks each: fewer sequences wins
  Step(s);
  const std::vector<SlotStats> st = s.Stats();
  EXPECT_EQ(st[0].running, 2);
  EXPECT_EQ(st[1].running, 2);
  EXPECT_EQ(st[0].blocks_used, 2);
  EXPECT_EQ(st[1].blocks_used, 3);
  EXPECT_EQ(*s.Add(5, 4, 4), 0);  // blocks actually used: 2 vs 3
  EXPECT_FALSE(s.Add(5, 4, 4).ok());                  // duplicate id
  EXPECT_FALSE(s.Add(6, 0, 4).ok());                  // empty prompt
  EXPECT_FALSE(s.Add(7, 64 * 8, 2).ok());             // never fits a slot
  EXPECT_TRUE(s.Add(8, 64 * 8 - 10, 11).ok());        // exactly fits: 512 - 1 tokens of KV
}

TEST(Scheduler, TokenBudgetNeverExceeded) {
  Scheduler s({.dp_slots = 2, .blocks_per_slot = 256, .block_size = 4, .max_tokens_per_step = 16,
               .max_running_per_slot = 6, .prefill_chunk = 8});
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(s.Add(i, 5 + 7 * i, 10).ok());
  int steps = 0;
  while (s.n_active() > 0 && steps < 10000) {
    StepPlan plan = Step(s);  // CheckPlan: <= 16 tokens per slot, <= 8 per chunk
    for (const auto& chunks : plan.slots) EXPECT_LE(chunks.size(), 6u);
    ++steps;
  }
  EXPECT_EQ(s.n_active(), 0);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.Get(i)->generated, 10);
}

TEST(Scheduler, LongPromptIsChunkedWhileDecodesRun) {
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 256, .block_size = 16, .max_tokens_per_step = 16,
               .max_running_per_slot = 8, .prefill_chunk = 64});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(s.Add(i, 2, 50).ok());
  Step(s);  // three 2-token prefills, each samples its first token
  for (int i = 0; i < 3; ++i) EXPECT_EQ(s.Get(i)->generated, 1);
  ASSERT_TRUE(s.Add(100, 100, 5).ok());
  int64_t prefilled = 0;
  int chunks = 0;
  while (s.Get(100)->generated == 0) {
    StepPlan plan = Step(s);
    for (int i = 0; i < 3; ++i) {  // every decode runs every step
      const ScheduledChunk* d = Find(plan, i);
      ASSERT_NE(d, nullptr);
      EXPECT_EQ(d->n_tokens, 1);
    }
    const ScheduledChunk* p = Find(plan, 100);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p->start_pos, prefilled);
    EXPECT_EQ(p->n_tokens, std::min<int64_t>(13, 100 - prefilled));  // what the decodes leave
    EXPECT_EQ(p->samples, prefilled + p->n_tokens == 100);
    prefilled += p->n_tokens;
    ++chunks;
  }
  EXPECT_EQ(chunks, 8);  // ceil(100 / 13)
  EXPECT_EQ(s.Get(100)->n_computed, 100);
}

TEST(Scheduler, AdmissionStopsWhenBlocksRunOut) {
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 10, .block_size = 4, .max_tokens_per_step = 512,
               .max_running_per_slot = 8, .prefill_chunk = 512});
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(s.Add(i, 12, 2).ok());  // 3 blocks each
  ASSERT_TRUE(s.Add(9, 1, 1).ok());                               // small, but behind them (FCFS)
  StepPlan plan = s.Schedule();
  CheckPlan(s, plan);
  EXPECT_EQ(plan.slots[0].size(), 3u);
  EXPECT_EQ(Find(plan, 3), nullptr);
  EXPECT_EQ(Find(plan, 9), nullptr);
  std::vector<SlotStats> st = s.Stats();
  EXPECT_EQ(st[0].running, 3);
  EXPECT_EQ(st[0].waiting, 2);
  EXPECT_EQ(st[0].blocks_used, 9);
  EXPECT_EQ(st[0].blocks_free, 1);
  ASSERT_TRUE(s.OnStepDone(AllDone(plan)).ok());
  // Decodes of 0..2 need one more block each (context 13): one gets the free block,
  // the newest running sequences are preempted for the others.
  while (s.n_active() > 0) Step(s);
  for (int i : {0, 1, 2, 3, 9}) EXPECT_EQ(s.Get(i)->state, SeqState::kFinished);
  EXPECT_EQ(s.Stats()[0].blocks_free, 10);
}

TEST(Scheduler, PreemptsUnderBlockPressureAndRecomputes) {
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 6, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 4, .prefill_chunk = 64});
  ASSERT_TRUE(s.Add(1, 8, 12).ok());  // at most 19 tokens of KV: 5 blocks
  ASSERT_TRUE(s.Add(2, 8, 12).ok());
  std::vector<int64_t> preempted;
  int64_t recompute_len = -1;
  int steps = 0;
  while (s.n_active() > 0 && steps < 1000) {
    StepPlan plan = Step(s);
    for (int64_t id : plan.preempted) preempted.push_back(id);
    if (!preempted.empty() && recompute_len < 0) {
      if (const ScheduledChunk* c = Find(plan, 2); c && c->start_pos == 0) {
        recompute_len = c->n_tokens;
      }
    }
    ++steps;
  }
  ASSERT_FALSE(preempted.empty());
  EXPECT_EQ(preempted[0], 2);  // the most recently admitted
  EXPECT_GE(s.Get(2)->n_preemptions, 1);
  EXPECT_EQ(s.Get(1)->n_preemptions, 0);
  EXPECT_GT(recompute_len, 8);  // prompt plus the tokens generated before preemption
  EXPECT_EQ(s.Get(1)->generated, 12);
  EXPECT_EQ(s.Get(2)->generated, 12);
  EXPECT_EQ(s.Stats()[0].blocks_free, 6);
}

TEST(Scheduler, CancelFreesBlocksAtOnce) {
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 16, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 4, .prefill_chunk = 64});
  ASSERT_TRUE(s.Add(1, 10, 20).ok());
  ASSERT_TRUE(s.Add(2, 10, 20).ok());
  ASSERT_TRUE(s.Add(3, 10, 20).ok());
  Step(s);
  EXPECT_EQ(s.Stats()[0].blocks_used, 9);
  ASSERT_TRUE(s.Cancel(1).ok());
  EXPECT_EQ(s.Stats()[0].blocks_used, 6);
  EXPECT_EQ(s.Stats()[0].running, 2);
  // Cancelled while its step is in flight: freed now, its result ignored.
  StepPlan plan = s.Schedule();
  ASSERT_NE(Find(plan, 2), nullptr);
  EXPECT_EQ(Find(plan, 1), nullptr);
  ASSERT_TRUE(s.Cancel(2).ok());
  EXPECT_EQ(s.Stats()[0].blocks_used, 3);
  ASSERT_TRUE(s.OnStepDone({{2, 1, false}, {3, 1, false}}).ok());
  EXPECT_EQ(s.Get(2)->state, SeqState::kCancelled);
  EXPECT_EQ(s.Get(2)->generated, 1);
  plan = Step(s);
  EXPECT_EQ(Find(plan, 2), nullptr);
  EXPECT_NE(Find(plan, 3), nullptr);
  // A waiting sequence, and unknown ids.
  ASSERT_TRUE(s.Add(4, 10, 5).ok());
  ASSERT_TRUE(s.Cancel(4).ok());
  EXPECT_EQ(s.Stats()[0].waiting, 0);
  EXPECT_EQ(Find(Step(s), 4), nullptr);
  EXPECT_EQ(s.Cancel(99).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(s.Cancel(3).ok());
  EXPECT_EQ(s.Stats()[0].blocks_free, 16);
  EXPECT_EQ(s.n_active(), 0);
}

TEST(Scheduler, RejectsResultsThatDoNotMatchThePlan) {
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 16, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 4, .prefill_chunk = 8});
  ASSERT_TRUE(s.Add(1, 20, 4).ok());
  StepPlan plan = s.Schedule();
  ASSERT_EQ(plan.slots[0].size(), 1u);
  EXPECT_FALSE(s.OnStepDone({{1, 7, false}}).ok());  // planned 8
  EXPECT_FALSE(s.OnStepDone({{1, 8, true}}).ok());   // EOS on a chunk that samples nothing
  EXPECT_FALSE(s.OnStepDone({}).ok());               // missing result
  ASSERT_TRUE(s.OnStepDone({{1, 8, false}}).ok());
  EXPECT_EQ(s.Get(1)->n_computed, 8);
  EXPECT_EQ(s.Get(1)->generated, 0);
  // EOS on a sampling chunk finishes early.
  Step(s);
  plan = s.Schedule();
  ASSERT_TRUE(plan.slots[0][0].samples);
  ASSERT_TRUE(s.OnStepDone({{1, 4, true}}).ok());
  EXPECT_EQ(s.Get(1)->state, SeqState::kFinished);
  EXPECT_EQ(s.Get(1)->generated, 1);
  EXPECT_EQ(s.Stats()[0].blocks_free, 16);
}

TEST(Scheduler, RandomWorkloadDrains) {
  const SchedulerConfig config{.dp_slots = 2, .blocks_per_slot = 24, .block_size = 8, .max_tokens_per_step = 64,
                               .max_running_per_slot = 8, .prefill_chunk = 32};
  Scheduler s(config);
  std::mt19937 rng(1234);
  const int kRequests = 1000;
  std::map<int64_t, int64_t> max_new;
  std::set<int64_t> cancelled;
  int added = 0, steps = 0, preemptions = 0;
  while ((added < kRequests || s.n_active() > 0) && steps < 200000) {
    for (int k = std::uniform_int_distribution<int>(0, 3)(rng); k > 0 && added < kRequests; --k, ++added) {
      const int64_t prompt = std::uniform_int_distribution<int64_t>(1, 100)(rng);
      const int64_t n = std::uniform_int_distribution<int64_t>(1, 60)(rng);  // <= 159 tokens: 20 blocks
      ASSERT_TRUE(s.Add(added, prompt, n).ok());
      max_new[added] = n;
    }
    if (added > 0 && std::uniform_int_distribution<int>(0, 99)(rng) < 3) {
      const int64_t id = std::uniform_int_distribution<int64_t>(0, added - 1)(rng);
      if (!s.Get(id)->done()) cancelled.insert(id);
      ASSERT_TRUE(s.Cancel(id).ok());
    }
    StepPlan plan = s.Schedule();
    CheckPlan(s, plan);
    preemptions += static_cast<int>(plan.preempted.size());
    std::vector<StepResult> results = AllDone(plan);
    // Sometimes a client disconnects while its step runs.
    if (!results.empty() && std::uniform_int_distribution<int>(0, 99)(rng) < 2) {
      const int64_t id = results[std::uniform_int_distribution<size_t>(0, results.size() - 1)(rng)].seq_id;
      cancelled.insert(id);
      ASSERT_TRUE(s.Cancel(id).ok());
    }
    ASSERT_TRUE(s.OnStepDone(results).ok());
    int64_t used = 0;
    for (const SlotStats& st : s.Stats()) {
      EXPECT_EQ(st.blocks_used + st.blocks_free, config.blocks_per_slot);
      used += st.blocks_used;
    }
    if (s.n_active() == 0) {
      ASSERT_EQ(used, 0);
    }
    ++steps;
  }
  ASSERT_EQ(added, kRequests);
  ASSERT_EQ(s.n_active(), 0) << "did not drain in " << steps << " steps";
  EXPECT_GT(preemptions, 0) << "the pool should be small enough to force preemption";
  EXPECT_GT(cancelled.size(), 0u);
  for (const SlotStats& st : s.Stats()) EXPECT_EQ(st.blocks_free, config.blocks_per_slot);
  for (const auto& [id, n] : max_new) {
    const Sequence* q = s.Get(id);
    if (cancelled.count(id)) {
      EXPECT_EQ(q->state, SeqState::kCancelled);
    } else {
      EXPECT_EQ(q->state, SeqState::kFinished) << id;
      EXPECT_EQ(q->generated, n) << id;
    }
  }
}

// With micro_batches = pp, decodes split into pp plans that overlap, instead
// of one plan taking them all and the next finding them all in flight.
TEST(Scheduler, MicroBatchesSplitTheDecodesAcrossPlansInFlight) {
  const SchedulerConfig config{.dp_slots = 1, .blocks_per_slot = 64, .block_size = 8, .max_tokens_per_step = 64,
                               .max_running_per_slot = 8, .prefill_chunk = 64, .micro_batches = 2};
  Scheduler s(config);
  for (int64_t id = 0; id < 6; ++id) ASSERT_TRUE(s.Add(id, 4, 10).ok());
  StepPlan prefill = s.Schedule();  // all six prefills in one plan
  ASSERT_EQ(prefill.slots[0].size(), 6u);
  ASSERT_TRUE(s.OnStepDone(AllDone(prefill)).ok());
  // Steady state: two plans in flight, three decodes each, never the same sequence.
  for (int step = 0; step < 4; ++step) {
    StepPlan a = s.Schedule();
    StepPlan b = s.Schedule();
    ASSERT_EQ(a.slots[0].size(), 3u) << step;
    ASSERT_EQ(b.slots[0].size(), 3u) << step;
    for (const ScheduledChunk& ch : b.slots[0]) EXPECT_EQ(Find(a, ch.seq_id), nullptr);
    ASSERT_TRUE(s.OnStepDone(AllDone(a)).ok());
    ASSERT_TRUE(s.OnStepDone(AllDone(b)).ok());
  }
  // Without micro-batches one plan takes every decode and the next is empty.
  SchedulerConfig one = config;
  one.micro_batches = 1;
  Scheduler t(one);
  for (int64_t id = 0; id < 6; ++id) ASSERT_TRUE(t.Add(id, 4, 10).ok());
  ASSERT_TRUE(t.OnStepDone(AllDone(t.Schedule())).ok());
  EXPECT_EQ(t.Schedule().slots[0].size(), 6u);
  EXPECT_TRUE(t.Schedule().empty());
}

// Pipelining: up to kDepth plans in flight. A sequence is never in two plans
// in flight, and the random workload still drains with every block free.
TEST(Scheduler, PipelinedPlansNeverShareASequence) {
  const SchedulerConfig config{.dp_slots = 2, .blocks_per_slot = 24, .block_size = 8, .max_tokens_per_step = 64,
                               .max_running_per_slot = 8, .prefill_chunk = 32, .micro_batches = 3};
  constexpr size_t kDepth = 3;
  Scheduler s(config);
  std::mt19937 rng(99);
  const int kRequests = 600;
  std::map<int64_t, int64_t> max_new;
  std::set<int64_t> cancelled;
  std::deque<StepPlan> flight;
  int added = 0, steps = 0, preemptions = 0;
  size_t max_depth = 0;
  auto complete_oldest = [&] {
    ASSERT_TRUE(s.OnStepDone(AllDone(flight.front())).ok());
    flight.pop_front();
  };
  while ((added < kRequests || s.n_active() > 0) && steps < 200000) {
    for (int k = std::uniform_int_distribution<int>(0, 3)(rng); k > 0 && added < kRequests; --k, ++added) {
      const int64_t prompt = std::uniform_int_distribution<int64_t>(1, 100)(rng);
      const int64_t n = std::uniform_int_distribution<int64_t>(1, 60)(rng);
      ASSERT_TRUE(s.Add(added, prompt, n).ok());
      max_new[added] = n;
    }
    if (added > 0 && std::uniform_int_distribution<int>(0, 99)(rng) < 3) {
      const int64_t id = std::uniform_int_distribution<int64_t>(0, added - 1)(rng);
      if (!s.Get(id)->done()) cancelled.insert(id);
      ASSERT_TRUE(s.Cancel(id).ok());  // possibly a sequence in flight
    }
    StepPlan plan = s.Schedule();
    CheckPlan(s, plan);
    preemptions += static_cast<int>(plan.preempted.size());
    for (const StepPlan& other : flight) {
      for (const auto& chunks : plan.slots)
        for (const ScheduledChunk& ch : chunks) ASSERT_EQ(Find(other, ch.seq_id), nullptr) << ch.seq_id;
      for (int64_t id : plan.preempted) ASSERT_EQ(Find(other, id), nullptr) << "preempted a sequence in flight";
    }
    const bool idle = plan.empty();
    if (!idle) {
      ASSERT_GT(plan.id, flight.empty() ? -1 : flight.back().id);
      flight.push_back(std::move(plan));
    }
    max_depth = std::max(max_depth, flight.size());
    EXPECT_EQ(s.plans_in_flight(), static_cast<int64_t>(flight.size()));
    if (flight.size() == kDepth || (idle && !flight.empty())) complete_oldest();
    ++steps;
  }
  while (!flight.empty()) complete_oldest();
  ASSERT_EQ(s.n_active(), 0) << "did not drain in " << steps << " steps";
  EXPECT_EQ(max_depth, kDepth);
  EXPECT_GT(preemptions, 0);
  for (const SlotStats& st : s.Stats()) EXPECT_EQ(st.blocks_free, config.blocks_per_slot);
  for (const auto& [id, n] : max_new) {
    const Sequence* q = s.Get(id);
    if (cancelled.count(id)) {
      EXPECT_EQ(q->state, SeqState::kCancelled);
    } else {
      EXPECT_EQ(q->state, SeqState::kFinished) << id;
      EXPECT_EQ(q->generated, n) << id;
    }
  }
}

}  // namespace
}  // namespace deepshard
