// Engine: rank 0's side of `deepshard serve`. It owns the continuous-
// batching Scheduler (runtime/batching/scheduler.h) and the requests, and drives
// the job one StepPlan at a time:
//
//   loop (the main thread of rank 0):
//     take new requests and cancellations (from HTTP threads)
//     apply finished plans in order: scheduler.OnStepDone, stream the tokens
//     if fewer than `depth` plans are in flight and there is work:
//       plan = scheduler.Schedule(); broadcast it (control plane);
//       run rank 0's own part (StageRunner: stage 0, column 0)
//     else wait for results / requests
//
// With pp stages, `depth` = pp plans are in flight: stage 0 runs plan k+1
// while stage 1 runs plan k, and a sequence in flight waits for its token
// before it is planned again (the scheduler enforces it). Results come back
// from the last stage of each DP column over the control plane (or directly,
// when rank 0 is a last stage itself).
//
// Failure and shutdown: a lost rank (control plane) or a fatal error makes the
// engine fail every request at once with an error event, from whichever
// thread notices it: the driver may be stuck in a collective with the dead
// rank. A drain (SIGTERM) stops intake, lets requests finish until the drain
// deadline, fails the rest with an error, then tells every rank to shut down.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "runtime/batching/scheduler.h"
#include "serve/generation_api.h"
#include "serve/stage_runner.h"
#include "serve/step_plan.h"

namespace deepshard::serve {

struct EngineOptions {
  SchedulerConfig scheduler;     // dp_slots = ep; blocks_per_slot = the pool's blocks
  int depth = 1;                 // plans in flight (pp)
  int64_t max_waiting = 256;     // queued, not yet running requests; more -> 429
  int32_t vocab_size = 0;
  int64_t max_context = 0;       // longest prompt + max_tokens
};

// What /metrics shows about the engine (see PublishEngineMetrics).
struct EngineSnapshot {
  std::vector<SlotStats> slots;         // per DP slot
  int64_t steps = 0;                    // plans completed
  int64_t preemptions = 0;              // sequences preempted (blocks freed, recomputed later)
  int64_t prefix_cache_queries = 0;     // context tokens looked up in the prefix cache (cumulative)
  int64_t prefix_cache_hits = 0;        // of them, tokens found in the cache
  std::map<int, RankStats> ranks;       // latest stats of every rank (rank 0's own included)
  int64_t total_experts = 0;            // routed experts per layer
};

class Engine final : public GenerationApi {
 public:
  // `runner` is rank 0's StageRunner; `broadcast` sends an encoded plan (or
  // the shutdown) to every other rank (null with one rank).
  Engine(StageRunner& runner, const EngineOptions& options,
                std::function<void(const std::string& plan)> broadcast_plan,
                std::function<void()> broadcast_shutdown);
  ~Engine() override;

  // Engine (thread-safe).
  absl::StatusOr<int64_t> Submit(GenerationRequest request, TokenSink sink) override;
  void Cancel(int64_t id) override;
  EngineHealth Health() const override;
  // The model's context, or less when one DP slot's KV pool holds less
  // (blocks_per_slot x block_size tokens): a longer request could never be
  // admitted, so the API's default max_tokens and max_model_len use this.
  int64_t max_context() const override { return std::min(options_.max_context, slot_tokens()); }
  int64_t model_context() const { return options_.max_context; }
  int64_t slot_tokens() const { return options_.scheduler.blocks_per_slot * options_.scheduler.block_size; }

  // The driver loop, on the calling thread. Returns OK after a drain (every
  // rank has been told to shut down), or the error that ended serving. With
  // until_idle, returns OK as soon as no request is left (start-up warm-up).
  absl::Status Run(bool until_idle = false);

  // Control-plane events (any thread).
  void OnResults(int from_rank, std::string_view payload);  // a kResults frame
  void OnStats(int rank, std::string_view payload);         // a heartbeat payload
  // A rank is dead, silent, broken (malformed frames) or fatal: every request
  // fails at once with "rank N is lost (why)". rank 0: this process itself was
  // stopped or stalled and the workers gave up on it; `why` says so and is the
  // message.
  void OnRankLost(int rank, const std::string& why);
  // SIGTERM: stop accepting; requests still running after `timeout_s` get an error.
  void BeginDrain(double timeout_s);
  // Ends a drain now (a second SIGTERM).
  void ExpireDrain();

  // Called on the engine thread with a fresh snapshot after steps (at most
  // every 100 ms while busy, and once whenever it goes idle), e.g. to update
  // /metrics. Set before Run.
  void set_on_snapshot(std::function<void(const EngineSnapshot&)> f) { on_snapshot_ = std::move(f); }

  EngineSnapshot Snapshot() const;
  bool failed() const { return failed_.load(); }
  bool draining() const { return draining_.load(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Request {
    TokenSink sink;
    std::vector<int32_t> tokens;  // prompt, then generated tokens
    int64_t prompt_len = 0;
    int64_t max_tokens = 0;
    SamplingParams sampling;
    bool ignore_eos = false;
    bool return_logits = false;
    int32_t logprobs = -1;
    bool prompt_logprobs = false;
    int64_t prompt_logprobs_sent = 0;  // echo rows delivered (row r predicts prompt position r + 1)
    int64_t prompt_lp_begin = 0;       // the first row of the chunk in flight that asked for them
    std::shared_ptr<TokenConstraint> constraint;
    int64_t share_prompt_with = -1;
    int64_t cached_tokens = 0;  // from the scheduler, once known
  };
  // What CompletePlans checks a column's results against.
  struct PlannedChunk {
    int64_t seq_id = 0, n_tokens = 0;
    bool samples = false;
  };
  struct InFlight {
    int64_t id = 0;
    std::vector<std::vector<PlannedChunk>> planned;   // [column] -> chunks, in plan order
    std::map<int, std::vector<ChunkResult>> columns;  // results so far
  };

  // Driver-thread helpers (mu_ held where noted).
  void Intake();                         // new requests and cancellations
  absl::Status CompletePlans();          // apply every finished plan at the front
  absl::Status ScheduleAndRun();         // one new plan, if any
  void Finish(int64_t id, TokenEvent last);  // final event, forget the request (mu_ held)
  // The request's cached_tokens, from its scheduler sequence while it has one (mu_ held).
  int64_t CachedTokens(int64_t id);
  void FailAll(const std::string& why);  // every request gets an error (mu_ held)
  void PublishSnapshot();

  StageRunner& runner_;
  EngineOptions options_;
  std::function<void(const std::string&)> broadcast_plan_;
  std::function<void()> broadcast_shutdown_;
  Scheduler scheduler_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::unordered_map<int64_t, Request> requests_;        // accepted, not finished (mu_)
  std::deque<int64_t> submitted_;                        // not yet given to the scheduler (mu_)
  std::vector<int64_t> cancelled_;                       // (mu_)
  std::vector<ColumnResults> inbox_;                     // results from other ranks (mu_)
  std::map<int, RankStats> rank_stats_;                  // (mu_)
  std::string failure_;                                  // (mu_)
  std::optional<Clock::time_point> drain_deadline_;      // (mu_)
  int64_t n_waiting_ = 0;                                // scheduler waiting + submitted_ (mu_)
  std::vector<SlotStats> slot_stats_;                    // (mu_)
  int64_t steps_done_ = 0;                               // (mu_)
  int64_t preemptions_ = 0;                              // (mu_)
  int64_t prefix_queries_ = 0, prefix_hits_ = 0;         // (mu_)

  std::atomic<int64_t> next_id_{1};
  std::atomic<bool> failed_{false}, draining_{false};
  bool shut_down_ = false;  // every rank was told to exit (mu_)

  // Driver-thread only.
  std::deque<InFlight> in_flight_;
  std::vector<int64_t> released_;  // sequences to release in the next plan
  std::function<void(const EngineSnapshot&)> on_snapshot_;
  Clock::time_point last_snapshot_{};
  int64_t last_snapshot_steps_ = -1;
};

}  // namespace deepshard::serve
