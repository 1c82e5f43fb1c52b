// Scheduler: slot assignment, token budget, chunked prefill beside decodes,
// admission control, preemption + recompute, cancellation, and a randomized
// run of 1,000 requests on a small pool that must drain completely.
#include "runtime/batching/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <numeric>
#include <map>
#include <random>
#include <set>

#include "gtest/gtest.h"

namespace deepshard {
namespace {

// A prompt of n tokens that shares no prefix with another id's.
std::vector<int32_t> Prompt(int64_t id, int64_t n) {
  std::vector<int32_t> p(std::max<int64_t>(n, 0));
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>(id * 100003 + i);
  return p;
}

absl::StatusOr<int> Add(Scheduler& s, int64_t id, int64_t prompt_len, int64_t max_new_tokens) {
  return s.Add(id, Prompt(id, prompt_len), max_new_tokens);
}

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

// Every chunk of `plan` done, no EOS, each sampling chunk with a token that
// depends only on the context (its last token and length), so that equal
// contexts generate equal tokens.
std::vector<StepResult> Sampled(const Scheduler& s, const StepPlan& plan) {
  std::vector<StepResult> results;
  for (const auto& chunks : plan.slots) {
    for (const ScheduledChunk& ch : chunks) {
      int32_t token = -1;
      if (ch.samples) {
        const std::vector<int32_t>& t = s.Get(ch.seq_id)->tokens;
        token = static_cast<int32_t>((static_cast<int64_t>(t.back()) * 31 + static_cast<int64_t>(t.size())) % 97);
      }
      results.push_back({ch.seq_id, ch.n_tokens, false, token});
    }
  }
  return results;
}

// Every block of every slot is exactly one of free, cached or referenced, and
// each refcount is the number of live tables (`live`: every sequence not done)
// that hold the block.
void CheckBlocks(const Scheduler& s, const std::set<int64_t>& live) {
  const SchedulerConfig& c = s.config();
  for (int slot = 0; slot < c.dp_slots; ++slot) {
    const BlockManager& m = s.blocks(slot);
    std::vector<int> refs(c.blocks_per_slot, 0);
    for (int64_t id : live) {
      const Sequence* q = s.Get(id);
      ASSERT_NE(q, nullptr);
      if (q->dp_slot != slot) continue;
      EXPECT_EQ(static_cast<int64_t>(q->table.blocks.size()), m.BlocksFor(q->table.n_tokens));
      for (int32_t b : q->table.blocks) ++refs[b];
    }
    int64_t used = 0, cached = 0;
    for (int32_t b = 0; b < c.blocks_per_slot; ++b) {
      ASSERT_EQ(refs[b], m.refcount(b)) << "slot " << slot << " block " << b;
      used += refs[b] > 0;
      cached += m.is_cached(b);
      if (m.is_cached(b)) {
        ASSERT_TRUE(m.registered(b));
      }
    }
    ASSERT_EQ(used, m.n_used());
    ASSERT_EQ(cached, m.n_cached());
    ASSERT_EQ(m.n_used() + m.n_free(), c.blocks_per_slot);
  }
}

// Runs steps (Sampled) until every sequence is done.
void Drain(Scheduler& s) {
  for (int i = 0; i < 100000 && s.n_active() > 0; ++i) {
    StepPlan plan = s.Schedule();
    CheckPlan(s, plan);
    ASSERT_TRUE(s.OnStepDone(Sampled(s, plan)).ok());
  }
  ASSERT_EQ(s.n_active(), 0);
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
  EXPECT_EQ(*Add(s, 1, 4, 4), 0);   // all empty: lowest slot
  EXPECT_EQ(*Add(s, 2, 12, 4), 1);  // slot 0 has 1 block of work, slot 1 none
  EXPECT_EQ(*Add(s, 3, 4, 4), 0);   // 1 block vs 2
  EXPECT_EQ(*Add(s, 4, 4, 4), 1);   // 2 blocks each: fewer sequences wins
  Step(s);
  const std::vector<SlotStats> st = s.Stats();
  EXPECT_EQ(st[0].running, 2);
  EXPECT_EQ(st[1].running, 2);
  EXPECT_EQ(st[0].blocks_used, 2);
  EXPECT_EQ(st[1].blocks_used, 3);
  EXPECT_EQ(*Add(s, 5, 4, 4), 0);  // blocks actually used: 2 vs 3
  EXPECT_FALSE(Add(s, 5, 4, 4).ok());                  // duplicate id
  EXPECT_FALSE(Add(s, 6, 0, 4).ok());                  // empty prompt
  EXPECT_FALSE(Add(s, 7, 64 * 8, 2).ok());             // never fits a slot
  EXPECT_TRUE(Add(s, 8, 64 * 8 - 10, 11).ok());        // exactly fits: 512 - 1 tokens of KV
}

TEST(Scheduler, TokenBudgetNeverExceeded) {
  Scheduler s({.dp_slots = 2, .blocks_per_slot = 256, .block_size = 4, .max_tokens_per_step = 16,
               .max_running_per_slot = 6, .prefill_chunk = 8});
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Add(s, i, 5 + 7 * i, 10).ok());
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
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Add(s, i, 2, 50).ok());
  Step(s);  // three 2-token prefills, each samples its first token
  for (int i = 0; i < 3; ++i) EXPECT_EQ(s.Get(i)->generated, 1);
  ASSERT_TRUE(Add(s, 100, 100, 5).ok());
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
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Add(s, i, 12, 2).ok());  // 3 blocks each
  ASSERT_TRUE(Add(s, 9, 1, 1).ok());                               // small, but behind them (FCFS)
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
  // Without the prefix cache: the preempted sequence recomputes from position 0.
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 6, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 4, .prefill_chunk = 64, .prefix_caching = false});
  ASSERT_TRUE(Add(s, 1, 8, 12).ok());  // at most 19 tokens of KV: 5 blocks
  ASSERT_TRUE(Add(s, 2, 8, 12).ok());
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
  ASSERT_TRUE(Add(s, 1, 10, 20).ok());
  ASSERT_TRUE(Add(s, 2, 10, 20).ok());
  ASSERT_TRUE(Add(s, 3, 10, 20).ok());
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
  ASSERT_TRUE(Add(s, 4, 10, 5).ok());
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
  ASSERT_TRUE(Add(s, 1, 20, 4).ok());
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

// 1,000 requests on a small pool, with prompts that share prefixes (so the
// prefix cache hits), sampled tokens that depend only on the context (so equal
// contexts generate equal blocks), forked choices, cancellations (also of
// sequences in flight) and preemption. After every step each block is exactly
// one of free, cached or referenced, with refcounts matching the live tables;
// at the end every block is free or cached.
TEST(Scheduler, RandomWorkloadDrains) {
  const SchedulerConfig config{.dp_slots = 2, .blocks_per_slot = 24, .block_size = 8, .max_tokens_per_step = 64,
                               .max_running_per_slot = 8, .prefill_chunk = 32};
  Scheduler s(config);
  std::mt19937 rng(1234);
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int kRequests = 1000;
  // A few "system prompts" that requests start with.
  std::vector<std::vector<int32_t>> prefixes(5);
  for (auto& p : prefixes) {
    p.resize(uniform(4, 60));
    for (int32_t& t : p) t = static_cast<int32_t>(uniform(0, 999));
  }
  std::map<int64_t, int64_t> max_new;
  std::map<int64_t, std::vector<int32_t>> prompts;
  std::set<int64_t> cancelled, live;
  int added = 0, steps = 0, preemptions = 0, forks = 0;
  while ((added < kRequests || s.n_active() > 0) && steps < 200000) {
    for (int k = static_cast<int>(uniform(0, 3)); k > 0 && added < kRequests; --k, ++added) {
      const int64_t n = uniform(1, 60);
      std::vector<int32_t> prompt;
      int64_t fork_of = -1;
      if (live.count(added - 1) && uniform(0, 4) == 0) {  // another choice of the previous request
        fork_of = added - 1;
        prompt = prompts[fork_of];
        ++forks;
      } else {
        if (uniform(0, 3) > 0) prompt = prefixes[uniform(0, 4)];
        const int64_t rest = uniform(prompt.empty() ? 1 : 0, 100 - static_cast<int64_t>(prompt.size()));
        for (int64_t i = 0; i < rest; ++i) prompt.push_back(static_cast<int32_t>(uniform(0, 999)));
      }
      ASSERT_TRUE(s.Add(added, prompt, n, fork_of).ok());  // <= 159 tokens: 20 blocks
      max_new[added] = n;
      prompts[added] = prompt;
      live.insert(added);
    }
    if (added > 0 && uniform(0, 99) < 3) {
      const int64_t id = uniform(0, added - 1);
      if (!s.Get(id)->done()) cancelled.insert(id);
      ASSERT_TRUE(s.Cancel(id).ok());
    }
    StepPlan plan = s.Schedule();
    CheckPlan(s, plan);
    preemptions += static_cast<int>(plan.preempted.size());
    std::vector<StepResult> results = Sampled(s, plan);
    // Sometimes a client disconnects while its step runs.
    if (!results.empty() && uniform(0, 99) < 2) {
      const int64_t id = results[uniform(0, static_cast<int64_t>(results.size()) - 1)].seq_id;
      cancelled.insert(id);
      ASSERT_TRUE(s.Cancel(id).ok());
    }
    ASSERT_TRUE(s.OnStepDone(results).ok());
    for (auto it = live.begin(); it != live.end();) it = s.Get(*it)->done() ? live.erase(it) : std::next(it);
    CheckBlocks(s, live);
    int64_t used = 0;
    for (const SlotStats& st : s.Stats()) {
      EXPECT_EQ(st.blocks_used + st.blocks_free, config.blocks_per_slot);
      EXPECT_LE(st.blocks_cached, st.blocks_free);
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
  CheckBlocks(s, {});
  int64_t cached = 0, forked = 0, cached_tokens = 0;
  for (int slot = 0; slot < config.dp_slots; ++slot) {
    const SlotStats st = s.Stats()[slot];
    EXPECT_EQ(st.blocks_free, config.blocks_per_slot);
    EXPECT_EQ(st.blocks_used, 0);
    cached += st.blocks_cached;
    for (int32_t b = 0; b < config.blocks_per_slot; ++b) EXPECT_EQ(s.blocks(slot).refcount(b), 0);
  }
  EXPECT_GT(cached, 0);
  EXPECT_GT(s.prefix_hits(), 0);
  EXPECT_LT(s.prefix_hits(), s.prefix_queries());
  for (const auto& [id, n] : max_new) {
    const Sequence* q = s.Get(id);
    forked += q->forked;
    cached_tokens += q->cached_tokens;
    if (cancelled.count(id)) {
      EXPECT_EQ(q->state, SeqState::kCancelled);
    } else {
      EXPECT_EQ(q->state, SeqState::kFinished) << id;
      EXPECT_EQ(q->generated, n) << id;
    }
  }
  EXPECT_GT(forks, 0);
  EXPECT_GT(forked, 0);
  EXPECT_GT(cached_tokens, 0);
  std::printf("%d steps, %d preemptions, %d forks requested, %ld forked, prefix cache: %ld of %ld tokens hit, "
              "%ld cached blocks at the end\n",
              steps, preemptions, forks, static_cast<long>(forked), static_cast<long>(s.prefix_hits()),
              static_cast<long>(s.prefix_queries()), static_cast<long>(cached));
}

// With micro_batches = pp, decodes split into pp plans that overlap, instead
// of one plan taking them all and the next finding them all in flight.
TEST(Scheduler, MicroBatchesSplitTheDecodesAcrossPlansInFlight) {
  const SchedulerConfig config{.dp_slots = 1, .blocks_per_slot = 64, .block_size = 8, .max_tokens_per_step = 64,
                               .max_running_per_slot = 8, .prefill_chunk = 64, .micro_batches = 2};
  Scheduler s(config);
  for (int64_t id = 0; id < 6; ++id) ASSERT_TRUE(Add(s, id, 4, 10).ok());
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
  for (int64_t id = 0; id < 6; ++id) ASSERT_TRUE(Add(t, id, 4, 10).ok());
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
      ASSERT_TRUE(Add(s, added, prompt, n).ok());
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

std::vector<int32_t> Iota(int64_t n, int32_t first = 1) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Prompt blocks and generated blocks are cached when their sequence ends; a
// later context that starts with the same tokens takes them and computes only
// the rest, at least its last token.
TEST(Scheduler, PrefixCacheServesFullBlocksOfEarlierContexts) {
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 16, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 8, .prefill_chunk = 64});
  const std::vector<int32_t> p = Iota(10);
  ASSERT_TRUE(s.Add(1, p, 3).ok());
  Drain(s);
  // 12 tokens of KV (10 prompt + 2 fed back): 3 full blocks cached, the 4th freed.
  EXPECT_EQ(s.Get(1)->cached_tokens, 0);
  EXPECT_EQ(s.Stats()[0].blocks_used, 0);
  EXPECT_EQ(s.Stats()[0].blocks_cached, 3);
  EXPECT_EQ(s.Stats()[0].blocks_free, 16);
  CheckBlocks(s, {});

  std::vector<int32_t> turn = s.Get(1)->tokens;  // prompt + 3 generated: a second turn of the chat
  ASSERT_EQ(turn.size(), 13u);
  turn.push_back(77);
  std::vector<int32_t> other = p;
  other[1] = 99;  // differs in the first block: nothing matches
  ASSERT_TRUE(s.Add(2, p, 2).ok());                                            // same prompt
  ASSERT_TRUE(s.Add(3, turn, 2).ok());                                         // continues the chat
  ASSERT_TRUE(s.Add(4, std::vector<int32_t>(p.begin(), p.begin() + 8), 2).ok());  // exactly 2 blocks
  ASSERT_TRUE(s.Add(5, other, 2).ok());
  StepPlan plan = s.Schedule();
  CheckPlan(s, plan);
  ASSERT_NE(Find(plan, 2), nullptr);
  EXPECT_EQ(Find(plan, 2)->start_pos, 8);   // (10 - 1) / 4 = 2 blocks
  EXPECT_EQ(Find(plan, 3)->start_pos, 12);  // 3 blocks, one of them generated tokens
  EXPECT_EQ(Find(plan, 4)->start_pos, 4);   // at least one token computed: 1 block
  EXPECT_EQ(Find(plan, 5)->start_pos, 0);
  EXPECT_EQ(s.Get(2)->cached_tokens, 8);
  EXPECT_EQ(s.Get(3)->cached_tokens, 12);
  EXPECT_EQ(s.Get(4)->cached_tokens, 4);
  EXPECT_EQ(s.Get(5)->cached_tokens, 0);
  EXPECT_EQ(s.Get(2)->table.blocks[0], s.Get(3)->table.blocks[0]);
  EXPECT_EQ(s.blocks(0).refcount(s.Get(2)->table.blocks[0]), 3);
  EXPECT_EQ(s.prefix_queries(), 10 + 10 + 14 + 8 + 10);
  EXPECT_EQ(s.prefix_hits(), 8 + 12 + 4);
  ASSERT_TRUE(s.OnStepDone(Sampled(s, plan)).ok());
  Drain(s);
  CheckBlocks(s, {});
  EXPECT_EQ(s.Stats()[0].blocks_used, 0);
}

// When the free list is empty, taking a block evicts the least recently used
// cached block; a sequence's last blocks go before its first ones.
TEST(Scheduler, CachedBlocksAreEvictedLeastRecentlyUsedFirst) {
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 4, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 8, .prefill_chunk = 64});
  const std::vector<int32_t> a = Iota(8, 100), b = Iota(8, 200);
  ASSERT_TRUE(s.Add(1, a, 1).ok());
  Drain(s);
  ASSERT_TRUE(s.Add(2, b, 1).ok());
  Drain(s);
  EXPECT_EQ(s.Stats()[0].blocks_cached, 4);  // every block cached, none on the free list
  EXPECT_EQ(s.Stats()[0].blocks_free, 4);
  ASSERT_TRUE(s.Add(3, Iota(3, 300), 1).ok());  // needs one block: evicts a's second block
  Drain(s);
  EXPECT_EQ(s.blocks(0).n_evicted(), 1);
  ASSERT_TRUE(s.Add(4, a, 1).ok());
  ASSERT_TRUE(s.Add(5, b, 1).ok());
  StepPlan plan = s.Schedule();
  EXPECT_EQ(Find(plan, 4)->start_pos, 4);  // a's first block is still there
  EXPECT_EQ(Find(plan, 5)->start_pos, 4);  // b's too ((8 - 1) / 4 = 1 block at most)
  ASSERT_TRUE(s.OnStepDone(Sampled(s, plan)).ok());
  Drain(s);
  CheckBlocks(s, {});
}

TEST(Scheduler, PrefixCachingOffCachesNothing) {
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 8, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 8, .prefill_chunk = 64, .prefix_caching = false});
  ASSERT_TRUE(s.Add(1, Iota(10), 3).ok());
  Drain(s);
  EXPECT_EQ(s.Stats()[0].blocks_cached, 0);
  ASSERT_TRUE(s.Add(2, Iota(10), 3).ok());
  StepPlan plan = s.Schedule();
  EXPECT_EQ(Find(plan, 2)->start_pos, 0);
  EXPECT_EQ(s.prefix_queries(), 0);
  ASSERT_TRUE(s.OnStepDone(Sampled(s, plan)).ok());
  Drain(s);
}

// A slot that holds the prompt's prefix wins unless its load exceeds another
// slot's by more than the blocks the hit saves.
TEST(Scheduler, SlotAssignmentPrefersTheCachedPrefix) {
  Scheduler s({.dp_slots = 2, .blocks_per_slot = 32, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 8, .prefill_chunk = 64});
  const std::vector<int32_t> a = Iota(16, 100);
  EXPECT_EQ(*s.Add(1, a, 1), 0);
  Drain(s);  // slot 0 caches a's 4 blocks
  EXPECT_EQ(*s.Add(2, Iota(8, 500), 1), 0);  // no hit anywhere: equal loads, lowest index
  // Slot 0: 2 blocks waiting + 4 - 3 cached = 3; slot 1: 0 + 4 = 4.
  EXPECT_EQ(*s.Add(3, a, 1), 0);
  // Slot 0: 2 + 4 waiting + 4 - 3 = 7; slot 1: 4.
  EXPECT_EQ(*s.Add(4, a, 1), 1);
  Drain(s);
  EXPECT_EQ(s.Get(3)->cached_tokens, 12);
  EXPECT_EQ(s.Get(4)->cached_tokens, 0);
}

// n > 1 choices: children wait on their parent's slot until it has computed
// prompt_len - 1 tokens, then fork its blocks and compute only the last prompt
// token (copying the shared partly filled block first).
TEST(Scheduler, ForkedChildrenShareTheParentsPromptBlocks) {
  Scheduler s({.dp_slots = 2, .blocks_per_slot = 32, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 8, .prefill_chunk = 4});
  const std::vector<int32_t> p = Iota(10);
  EXPECT_EQ(*s.Add(1, p, 5), 0);
  EXPECT_EQ(*s.Add(2, p, 5, /*fork_of=*/1), 0);  // the parent's slot, although slot 1 is idle
  EXPECT_EQ(*s.Add(3, p, 5, /*fork_of=*/1), 0);
  EXPECT_EQ(*s.Add(4, Iota(10, 50), 5, /*fork_of=*/1), 1);  // another prompt: not a fork
  for (int step = 0; step < 3; ++step) {  // the parent's prompt: chunks [0, 4), [4, 8), [8, 10)
    StepPlan plan = s.Schedule();
    CheckPlan(s, plan);
    EXPECT_EQ(Find(plan, 2), nullptr) << step;
    EXPECT_EQ(Find(plan, 3), nullptr) << step;
    ASSERT_TRUE(s.OnStepDone(Sampled(s, plan)).ok());
  }
  EXPECT_EQ(s.Get(1)->n_computed, 10);
  StepPlan plan = s.Schedule();
  CheckPlan(s, plan);
  for (int64_t child : {2, 3}) {
    const ScheduledChunk* c = Find(plan, child);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->start_pos, 9);
    EXPECT_EQ(c->n_tokens, 1);
    EXPECT_TRUE(c->samples);
    EXPECT_TRUE(s.Get(child)->forked);
    EXPECT_EQ(s.Get(child)->cached_tokens, 9);
    EXPECT_EQ(s.Get(child)->table.blocks[0], s.Get(1)->table.blocks[0]);
    EXPECT_NE(s.Get(child)->table.blocks[2], s.Get(1)->table.blocks[2]);  // its own copy
  }
  EXPECT_EQ(plan.copies[0].size(), 2u);  // block 2 (positions 8, 9) copied for each child
  EXPECT_EQ(s.blocks(0).refcount(s.Get(1)->table.blocks[0]), 3);
  EXPECT_EQ(s.Stats()[0].blocks_used, 3 + 2);  // the parent's 3 blocks + a copy per child
  ASSERT_TRUE(s.OnStepDone(Sampled(s, plan)).ok());
  std::set<int64_t> live = {1, 2, 3, 4};
  for (int i = 0; i < 1000 && s.n_active() > 0; ++i) {
    plan = s.Schedule();
    CheckPlan(s, plan);
    ASSERT_TRUE(s.OnStepDone(Sampled(s, plan)).ok());
    for (auto it = live.begin(); it != live.end();) it = s.Get(*it)->done() ? live.erase(it) : std::next(it);
    CheckBlocks(s, live);
  }
  for (int64_t id : {1, 2, 3, 4}) EXPECT_EQ(s.Get(id)->generated, 5);
  EXPECT_EQ(s.Stats()[0].blocks_used, 0);
}

// A child whose parent is cancelled before it gets that far prefills as usual
// (the prefix cache still serves the parent's full blocks).
TEST(Scheduler, ForkedChildOfACancelledParentPrefills) {
  Scheduler s({.dp_slots = 1, .blocks_per_slot = 32, .block_size = 4, .max_tokens_per_step = 64,
               .max_running_per_slot = 8, .prefill_chunk = 4});
  const std::vector<int32_t> p = Iota(10);
  ASSERT_TRUE(s.Add(1, p, 5).ok());
  ASSERT_TRUE(s.Add(2, p, 5, /*fork_of=*/1).ok());
  StepPlan plan = s.Schedule();  // parent [0, 4)
  ASSERT_TRUE(s.OnStepDone(Sampled(s, plan)).ok());
  ASSERT_TRUE(s.Cancel(1).ok());
  plan = s.Schedule();
  const ScheduledChunk* c = Find(plan, 2);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->start_pos, 4);
  EXPECT_FALSE(s.Get(2)->forked);
  EXPECT_EQ(s.Get(2)->cached_tokens, 4);
  ASSERT_TRUE(s.OnStepDone(Sampled(s, plan)).ok());
  Drain(s);
  EXPECT_EQ(s.Get(2)->generated, 5);
  // A parent that is already done: Add ignores fork_of.
  ASSERT_TRUE(s.Add(3, p, 2, /*fork_of=*/2).ok());
  EXPECT_EQ(s.Get(3)->fork_of, -1);
  Drain(s);
  CheckBlocks(s, {});
}

}  // namespace
}  // namespace deepshard
