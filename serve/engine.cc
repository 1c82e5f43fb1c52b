#include "serve/engine.h"

#include <algorithm>
#include <span>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard::serve {
namespace {

// The last event of a request that ends without a new token.
TokenEvent FinalEvent(FinishReason reason, std::string error) {
  TokenEvent ev;
  ev.finished = true;
  ev.reason = reason;
  ev.error = std::move(error);
  return ev;
}

}  // namespace

Engine::Engine(StageRunner& runner, const EngineOptions& options,
                             std::function<void(const std::string&)> broadcast_plan,
                             std::function<void()> broadcast_shutdown)
    : runner_(runner),
      options_(options),
      broadcast_plan_(std::move(broadcast_plan)),
      broadcast_shutdown_(std::move(broadcast_shutdown)),
      scheduler_(options.scheduler) {
  slot_stats_ = scheduler_.Stats();
}

Engine::~Engine() = default;

absl::StatusOr<int64_t> Engine::Submit(GenerationRequest r, TokenSink sink) {
  const int64_t P = static_cast<int64_t>(r.prompt.size());
  if (P == 0) return absl::InvalidArgumentError("prompt: the prompt has no tokens");
  for (int64_t i = 0; i < P; ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= options_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt: token id ", r.prompt[i], " at position ", i,
                                                     " is outside the vocabulary [0, ", options_.vocab_size, ")"));
    }
  }
  if (r.max_tokens < 1) return absl::InvalidArgumentError("max_tokens: must be >= 1");
  RETURN_IF_ERROR(r.sampling.Validate(options_.vocab_size));
  if (r.logprobs < -1 || r.logprobs > 20) return absl::InvalidArgumentError("logprobs: must be in [0, 20]");
  if (P + r.max_tokens > options_.max_context) {
    return absl::OutOfRangeError(absl::StrCat("the prompt (", P, " tokens) plus max_tokens (", r.max_tokens,
                                              ") is ", P + r.max_tokens, " tokens; this model's context is ",
                                              options_.max_context, " tokens"));
  }
  const SchedulerConfig& sc = options_.scheduler;
  const int64_t blocks = (P + r.max_tokens - 1 + sc.block_size - 1) / sc.block_size;
  if (blocks > sc.blocks_per_slot) {
    return absl::OutOfRangeError(absl::StrCat("the prompt (", P, " tokens) plus max_tokens (", r.max_tokens,
                                              ") needs ", blocks, " KV blocks of ", sc.block_size,
                                              " tokens; a DP slot has ", sc.blocks_per_slot,
                                              " (raise --kv-cache-memory)"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (failed_) return absl::UnavailableError(absl::StrCat("the server failed: ", failure_));
  if (draining_) return absl::UnavailableError("the server is shutting down");
  if (n_waiting_ >= options_.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the queue is full (", n_waiting_, " requests waiting); retry later"));
  }
  const int64_t id = next_id_++;
  Request q;
  q.sink = std::move(sink);
  q.tokens = std::move(r.prompt);
  q.prompt_len = P;
  q.max_tokens = r.max_tokens;
  q.sampling = r.sampling;
  q.ignore_eos = r.ignore_eos;
  q.return_logits = r.return_logits;
  q.logprobs = r.logprobs;
  q.prompt_logprobs = r.prompt_logprobs;
  q.constraint = std::move(r.constraint);
  q.share_prompt_with = r.share_prompt_with;
  requests_.emplace(id, std::move(q));
  submitted_.push_back(id);
  ++n_waiting_;
  wake_.notify_all();
  return id;
}

void Engine::Cancel(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!requests_.count(id)) return;
  cancelled_.push_back(id);
  wake_.notify_all();
}

EngineHealth Engine::Health() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineHealth h;
  h.healthy = !failed_;
  h.accepting = !failed_ && !draining_;
  if (failed_) {
    h.detail = failure_;
  } else if (draining_) {
    h.detail = "draining: not accepting new requests";
  }
  return h;
}

int64_t Engine::CachedTokens(int64_t id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return 0;
  if (const Sequence* q = scheduler_.Get(id); q != nullptr) it->second.cached_tokens = q->cached_tokens;
  return it->second.cached_tokens;
}

void Engine::Finish(int64_t id, TokenEvent last) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  last.finished = true;
  last.cached_tokens = it->second.cached_tokens;
  it->second.sink(std::move(last));
  requests_.erase(it);
}

void Engine::FailAll(const std::string& why) {
  std::vector<int64_t> ids;
  for (const auto& [id, q] : requests_) ids.push_back(id);
  for (int64_t id : ids) Finish(id, FinalEvent(FinishReason::kError, why));
  submitted_.clear();
  cancelled_.clear();
  n_waiting_ = 0;
}

void Engine::OnRankLost(int rank, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failed_ || shut_down_) return;  // after the shutdown, ranks leaving is the plan
  failure_ = rank == 0 ? absl::StrCat(why, "; the job is going down")
                       : absl::StrCat("rank ", rank, " is lost (", why, "); the job is going down");
  failed_ = true;
  FailAll(failure_);
  wake_.notify_all();
}

void Engine::BeginDrain(double timeout_s) {
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return;
  draining_ = true;
  drain_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  wake_.notify_all();
}

void Engine::ExpireDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) drain_deadline_ = Clock::now();
  wake_.notify_all();
}

void Engine::OnResults(int from_rank, std::string_view payload) {
  auto r = DecodeResults(payload);
  const ParallelConfig& pc = runner_.parallel();
  if (!r.ok() || r->column < 0 || r->column >= pc.ep || pc.RankOf(pc.pp - 1, r->column) != from_rank) {
    OnRankLost(from_rank, r.ok() ? absl::StrCat("it sent results for column ", r->column)
                                 : absl::StrCat("it sent malformed results: ", r.status().message()));
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  inbox_.push_back(*std::move(r));
  wake_.notify_all();
}

void Engine::OnStats(int rank, std::string_view payload) {
  if (payload.empty()) return;
  auto s = DecodeStats(payload);
  if (!s.ok()) return;  // statistics only: never worth failing the job for
  std::lock_guard<std::mutex> lock(mu_);
  rank_stats_[rank] = *std::move(s);
}

void Engine::Intake() {
  std::lock_guard<std::mutex> lock(mu_);
  for (int64_t id : submitted_) {
    const Request& q = requests_.at(id);
    // A choice of an n > 1 request shares its sibling's prompt KV while that
    // one is still known to the scheduler (it checks that the prompts match).
    // Echo needs the logits of every prompt position: no shared or cached prefix.
    const int64_t fork_of = q.share_prompt_with >= 0 && !q.prompt_logprobs &&
                                    scheduler_.Get(q.share_prompt_with) != nullptr
                                ? q.share_prompt_with
                                : -1;
    auto slot = scheduler_.Add(id, std::span<const int32_t>(q.tokens.data(), q.prompt_len), q.max_tokens, fork_of,
                               /*reads_cache=*/!q.prompt_logprobs);
    if (!slot.ok()) Finish(id, FinalEvent(FinishReason::kError, std::string(slot.status().message())));
  }
  submitted_.clear();
  for (int64_t id : cancelled_) {
    if (!requests_.count(id)) continue;
    if (scheduler_.Get(id) != nullptr) {
      CachedTokens(id);
      (void)scheduler_.Cancel(id);  // frees its blocks now
      scheduler_.Forget(id);
      released_.push_back(id);
    }
    Finish(id, FinalEvent(FinishReason::kCancelled, ""));
  }
  cancelled_.clear();
}

absl::Status Engine::CompletePlans() {
  std::vector<ColumnResults> inbox;
  {
    std::lock_guard<std::mutex> lock(mu_);
    inbox.swap(inbox_);
  }
  for (ColumnResults& r : inbox) {
    auto it = std::find_if(in_flight_.begin(), in_flight_.end(),
                           [&](const InFlight& f) { return f.id == r.plan_id; });
    if (it == in_flight_.end() || it->columns.count(r.column)) {
      return absl::InternalError(absl::StrCat("column ", r.column, " sent results for plan ", r.plan_id,
                                              ", which is not in flight or already answered"));
    }
    const std::vector<PlannedChunk>& planned = it->planned[r.column];
    if (r.results.size() != planned.size()) {
      return absl::InternalError(absl::StrCat("column ", r.column, " sent ", r.results.size(),
                                              " results for plan ", r.plan_id, ", which gave it ",
                                              planned.size(), " chunks"));
    }
    // A result must answer its chunk exactly: a token in the vocabulary iff the
    // chunk samples, EOS only with a token. Anything else is a broken rank.
    for (size_t i = 0; i < planned.size(); ++i) {
      const ChunkResult& c = r.results[i];
      const bool token_ok = planned[i].samples ? (c.token >= 0 && c.token < options_.vocab_size) : c.token == -1;
      if (c.seq_id != planned[i].seq_id || c.n_tokens != planned[i].n_tokens || !token_ok ||
          (c.eos && c.token < 0)) {
        return absl::InternalError(absl::StrCat("column ", r.column, " sent a result {sequence ", c.seq_id, ", ",
                                                c.n_tokens, " tokens, token ", c.token, "} that does not answer "
                                                "chunk ", i, " of plan ", r.plan_id, " {sequence ",
                                                planned[i].seq_id, ", ", planned[i].n_tokens, " tokens",
                                                planned[i].samples ? ", sampling" : "", "}"));
      }
    }
    it->columns[r.column] = std::move(r.results);
  }
  const int ep = runner_.parallel().ep;
  while (!in_flight_.empty() && static_cast<int>(in_flight_.front().columns.size()) == ep) {
    InFlight& f = in_flight_.front();
    std::vector<StepResult> step;
    for (const auto& [column, results] : f.columns) {
      for (const ChunkResult& c : results) {
        // A sequence cancelled while its chunk ran is already forgotten.
        if (scheduler_.Get(c.seq_id) != nullptr) step.push_back({c.seq_id, c.n_tokens, c.eos, c.token});
      }
    }
    RETURN_IF_ERROR(scheduler_.OnStepDone(step));
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [column, results] : f.columns) {
      for (const ChunkResult& c : results) {
        auto it = requests_.find(c.seq_id);
        if (it == requests_.end()) continue;  // cancelled or failed meanwhile
        Request& q = it->second;
        TokenEvent ev;
        // Echo: a recomputed (preempted) chunk repeats positions already sent.
        for (size_t i = 0; i < c.prompt_logprobs.size(); ++i) {
          if (static_cast<int64_t>(i) + q.prompt_lp_begin >= q.prompt_logprobs_sent) {
            ev.prompt_logprobs.push_back(c.prompt_logprobs[i]);
          }
        }
        q.prompt_logprobs_sent = std::max<int64_t>(q.prompt_logprobs_sent,
                                                   q.prompt_lp_begin + static_cast<int64_t>(c.prompt_logprobs.size()));
        if (c.token < 0) {
          if (!ev.prompt_logprobs.empty()) q.sink(std::move(ev));
          continue;
        }
        q.tokens.push_back(c.token);
        ev.tokens = {c.token};
        ev.cached_tokens = CachedTokens(c.seq_id);
        ev.logits = c.logits;
        if (c.logprob) ev.logprobs.push_back(*c.logprob);
        if (q.constraint) {
          absl::Status st = q.constraint->Accept(c.token);
          if (!st.ok()) {
            if (scheduler_.Get(c.seq_id) != nullptr) {
              (void)scheduler_.Cancel(c.seq_id);
              scheduler_.Forget(c.seq_id);
              released_.push_back(c.seq_id);
            }
            ev.finished = true;
            ev.reason = FinishReason::kError;
            ev.error = absl::StrCat("structured output: ", st.message());
            Finish(c.seq_id, std::move(ev));
            continue;
          }
        }
        const Sequence* seq = scheduler_.Get(c.seq_id);
        if (seq != nullptr && seq->state == SeqState::kFinished) {
          ev.reason = c.eos ? FinishReason::kStop : FinishReason::kLength;
          Finish(c.seq_id, std::move(ev));
          scheduler_.Forget(c.seq_id);
          released_.push_back(c.seq_id);
        } else {
          q.sink(std::move(ev));
        }
      }
    }
    ++steps_done_;
    in_flight_.pop_front();
  }
  return absl::OkStatus();
}

absl::Status Engine::ScheduleAndRun() {
  if (static_cast<int>(in_flight_.size()) >= options_.depth) return absl::OkStatus();
  StepPlan sp = scheduler_.Schedule();
  if (!sp.preempted.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    preemptions_ += static_cast<int64_t>(sp.preempted.size());
  }
  if (sp.empty()) return absl::OkStatus();
  WirePlan wp;
  wp.id = sp.id;
  wp.columns.resize(sp.slots.size());
  wp.copies = sp.copies;
  wp.released.swap(released_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failed_) return absl::UnavailableError(failure_);
    for (size_t s = 0; s < sp.slots.size(); ++s) {
      for (const ScheduledChunk& ch : sp.slots[s]) {
        Request& q = requests_.at(ch.seq_id);
        PlanChunk pc;
        pc.seq_id = ch.seq_id;
        pc.start_pos = ch.start_pos;
        pc.samples = ch.samples;
        pc.ignore_eos = q.ignore_eos;
        pc.return_logits = q.return_logits;
        pc.logprobs = q.logprobs;
        pc.sampling = q.sampling;
        if (ch.samples && q.sampling.uses_prompt() && q.tokens.size() == static_cast<size_t>(q.prompt_len)) {
          pc.prompt = q.tokens;  // the first sample: the sampler starts with the prompt
        }
        if (ch.samples && q.constraint) {
          pc.allowed = q.constraint->Allowed();  // over the tokenizer's ids: pad to the model's vocabulary
          pc.allowed.resize((options_.vocab_size + 63) / 64, 0);
        }
        // Echo rows not sent yet (a recomputed chunk after preemption asks again
        // only when it reaches past them; the results skip what was sent).
        if (q.prompt_logprobs && ch.start_pos + ch.n_tokens > q.prompt_logprobs_sent &&
            ch.start_pos < q.prompt_len - 1) {
          pc.prompt_logprobs = true;
          pc.prompt_len = q.prompt_len;
          if (ch.start_pos + ch.n_tokens < q.prompt_len) pc.next_token = q.tokens[ch.start_pos + ch.n_tokens];
          q.prompt_lp_begin = ch.start_pos;
        }
        pc.tokens.assign(q.tokens.begin() + ch.start_pos, q.tokens.begin() + ch.start_pos + ch.n_tokens);
        pc.blocks = scheduler_.Get(ch.seq_id)->table.blocks;
        wp.columns[s].push_back(std::move(pc));
      }
    }
  }
  if (broadcast_plan_) broadcast_plan_(EncodePlan(wp));
  InFlight f;
  f.id = wp.id;
  f.planned.resize(wp.columns.size());
  for (size_t s = 0; s < wp.columns.size(); ++s) {
    for (const PlanChunk& ch : wp.columns[s]) f.planned[s].push_back({ch.seq_id, ch.n_tokens(), ch.samples});
  }
  in_flight_.push_back(std::move(f));
  InFlight& mine = in_flight_.back();
  ASSIGN_OR_RETURN(std::vector<ChunkResult> results, runner_.Run(wp));
  if (runner_.last_stage()) mine.columns[runner_.parallel().ep_rank] = std::move(results);
  return absl::OkStatus();
}

void Engine::PublishSnapshot() {
  std::vector<SlotStats> stats = scheduler_.Stats();
  int64_t steps = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t waiting = static_cast<int64_t>(submitted_.size());
    for (const SlotStats& s : stats) waiting += s.waiting;
    n_waiting_ = waiting;
    slot_stats_ = std::move(stats);
    prefix_queries_ = scheduler_.prefix_queries();
    prefix_hits_ = scheduler_.prefix_hits();
    steps = steps_done_;
  }
  if (!on_snapshot_) return;
  // At most every 100 ms while busy; always once when the engine goes idle,
  // so /metrics shows the final state (every block free) right away.
  const auto now = Clock::now();
  const bool idle_change = in_flight_.empty() && steps != last_snapshot_steps_;
  if (now - last_snapshot_ < std::chrono::milliseconds(100) && !idle_change) return;
  last_snapshot_ = now;
  last_snapshot_steps_ = steps;
  on_snapshot_(Snapshot());
}

EngineSnapshot Engine::Snapshot() const {
  EngineSnapshot s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.slots = slot_stats_;
    s.steps = steps_done_;
    s.preemptions = preemptions_;
    s.prefix_cache_queries = prefix_queries_;
    s.prefix_cache_hits = prefix_hits_;
    s.ranks = rank_stats_;
  }
  s.ranks[runner_.parallel().rank] = runner_.Stats();
  for (const auto& [rank, st] : s.ranks) s.total_experts = std::max(s.total_experts, st.n_experts);
  return s;
}

absl::Status Engine::Run(bool until_idle) {
  while (true) {
    Intake();
    if (failed_) {
      std::lock_guard<std::mutex> lock(mu_);
      return absl::UnavailableError(failure_);
    }
    absl::Status st = CompletePlans();
    bool idle = false;
    if (st.ok()) {
      // Drain: past the deadline, end what is left with an error.
      std::lock_guard<std::mutex> lock(mu_);
      if (draining_ && Clock::now() >= *drain_deadline_ && !requests_.empty()) {
        std::vector<int64_t> ids;
        for (const auto& [id, q] : requests_) ids.push_back(id);
        for (int64_t id : ids) {
          if (scheduler_.Get(id) != nullptr) {
            CachedTokens(id);
            (void)scheduler_.Cancel(id);
            scheduler_.Forget(id);
            released_.push_back(id);
          }
          Finish(id, FinalEvent(FinishReason::kError,
                                "the server shut down before this request finished (--drain-timeout)"));
        }
        submitted_.clear();
        cancelled_.clear();
      }
      if (failed_) return absl::UnavailableError(failure_);  // lost a rank while draining: not a clean exit
      if (draining_ && requests_.empty() && submitted_.empty() && in_flight_.empty()) {
        shut_down_ = true;
        if (broadcast_shutdown_) broadcast_shutdown_();
        return absl::OkStatus();
      }
      idle = requests_.empty() && submitted_.empty() && in_flight_.empty();
    }
    if (until_idle && idle) {
      PublishSnapshot();
      return absl::OkStatus();
    }
    const size_t before = in_flight_.size();
    if (st.ok()) st = ScheduleAndRun();
    if (!st.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!failed_) {
        failure_ = absl::StrCat("rank 0: ", st.message());
        failed_ = true;
        FailAll(failure_);
      }
      return absl::InternalError(failure_);
    }
    PublishSnapshot();
    if (in_flight_.size() > before) continue;  // ran a step: look for more work at once
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait_for(lock, std::chrono::milliseconds(20), [&] {
      return !inbox_.empty() || !submitted_.empty() || !cancelled_.empty() || failed_ || draining_;
    });
    if (draining_ && inbox_.empty() && submitted_.empty() && cancelled_.empty() && !failed_) {
      // Draining wakes the predicate forever: sleep a little while waiting for results.
      wake_.wait_for(lock, std::chrono::milliseconds(2));
    }
  }
}

}  // namespace deepshard::serve
