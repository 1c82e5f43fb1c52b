// Engine on one rank (StageRunner with no MPI) over a tiny random
// model: batched, chunked, preempted serving gives exactly the tokens of
// offline Generate; cancellation, drain and a lost rank each end every request
// with one final event; Submit rejects bad requests with the right codes.
#include "serve/engine.h"

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include <unistd.h>

#include "gtest/gtest.h"
#include "runtime/batching/paged_kv_cache.h"
#include "runtime/generate.h"
#include "runtime/model/random_model.h"
#include "serve/engine_metrics.h"
#include "serve/job.h"

namespace deepshard::serve {
namespace {

// A random model of `preset`, written once per process: CTest runs the cases
// of this file side by side, so each process has its own directories.
const std::string& ModelDir(const std::string& preset = "tiny-v3") {
  static std::map<std::string, std::string> dirs;
  static const struct Remover {
    ~Remover() {
      for (const auto& [p, d] : dirs) std::filesystem::remove_all(d);
    }
  } remover;
  auto it = dirs.find(preset);
  if (it != dirs.end()) return it->second;
  const std::string d =
      std::string(DS_BINARY_DIR) + "/tests/serve/engine_test_" + preset + "_" + std::to_string(getpid());
  std::filesystem::remove_all(d);
  RandomModelOptions o;
  o.preset = preset;
  o.seed = 11;
  EXPECT_TRUE(WriteRandomModel(o, d).ok());
  return dirs.emplace(preset, d).first->second;
}

// What a sink saw for one request.
struct Record {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs, prompt_logprobs;
  int finals = 0;
  FinishReason reason = FinishReason::kNone;
  std::string error;
  int64_t cached_tokens = -1;  // from the last event
};

class Harness {
 public:
  Harness(int64_t block_size, int64_t n_blocks, int64_t max_running = 8, int64_t budget = 64,
          int64_t prefill_chunk = 16, int64_t max_waiting = 256, MlaMode mla = MlaMode::kAuto,
          const std::string& preset = "tiny-v3", bool prefix_caching = true) {
    RuntimeConfig rt;
    rt.mla_mode = mla;
    auto m = DeepseekModel::Load(ModelDir(preset), rt);
    EXPECT_TRUE(m.ok()) << m.status();
    model = *std::move(m);
    pool = PagedKvCache::Create(model->backend(), model->config(), model->n_local_layers(), block_size, n_blocks,
                                model->runtime().kv_dtype).value();
    runner = std::make_unique<StageRunner>(*model, ParallelConfig::Single(), nullptr, nullptr, nullptr, *pool);
    EngineOptions o;
    o.scheduler = {.dp_slots = 1, .blocks_per_slot = n_blocks, .block_size = block_size,
                   .max_tokens_per_step = budget, .max_running_per_slot = max_running,
                   .prefill_chunk = prefill_chunk, .prefix_caching = prefix_caching};
    o.depth = 1;
    o.max_waiting = max_waiting;
    o.vocab_size = static_cast<int32_t>(model->config().vocab_size);
    o.max_context = model->max_context();
    engine = std::make_unique<Engine>(*runner, o, nullptr, nullptr);
  }
  ~Harness() { Stop(); }

  void Start() {
    thread = std::thread([this] { run_status = engine->Run(); });
  }
  void Stop() {
    if (!thread.joinable()) return;
    engine->BeginDrain(30);
    thread.join();
  }

  absl::StatusOr<int64_t> Submit(std::vector<int32_t> prompt, int64_t max_tokens, SamplingParams sp = {},
                                 bool ignore_eos = true, int64_t share_prompt_with = -1) {
    GenerationRequest r;
    r.share_prompt_with = share_prompt_with;
    r.prompt = std::move(prompt);
    r.max_tokens = max_tokens;
    r.sampling = sp;
    r.ignore_eos = ignore_eos;
    return SubmitRequest(std::move(r));
  }
  absl::StatusOr<int64_t> SubmitRequest(GenerationRequest r) {
    // The engine thread may call the sink before Submit returns the id, so
    // the sink writes under a key of its own that the id is mapped to after.
    int64_t key;
    {
      std::lock_guard<std::mutex> lock(mu);
      key = next_key++;
    }
    auto id = engine->Submit(r, [this, key](TokenEvent ev) {
      std::lock_guard<std::mutex> lock(mu);
      Record& rec = records[key];
      rec.tokens.insert(rec.tokens.end(), ev.tokens.begin(), ev.tokens.end());
      rec.logprobs.insert(rec.logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
      rec.prompt_logprobs.insert(rec.prompt_logprobs.end(), ev.prompt_logprobs.begin(), ev.prompt_logprobs.end());
      rec.cached_tokens = ev.cached_tokens;
      if (ev.finished) {
        ++rec.finals;
        rec.reason = ev.reason;
        rec.error = ev.error;
      }
      cv.notify_all();
    });
    if (id.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      key_of[*id] = key;
    }
    return id;
  }
  // Waits until every id has its final event (or the timeout).
  bool WaitAll(const std::vector<int64_t>& ids, double timeout_s = 120) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] {
      for (int64_t id : ids)
        if (RecordOf(id).finals == 0) return false;
      return true;
    });
  }
  bool WaitTokens(int64_t id, size_t n, double timeout_s = 60) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return RecordOf(id).tokens.size() >= n; });
  }
  Record Get(int64_t id) {
    std::lock_guard<std::mutex> lock(mu);
    return RecordOf(id);
  }
  int64_t BlocksUsed() {
    // The snapshot is published by the engine thread; give it a moment to go idle.
    for (int i = 0; i < 200; ++i) {
      EngineSnapshot s = engine->Snapshot();
      if (s.slots[0].blocks_used == 0) return 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return engine->Snapshot().slots[0].blocks_used;
  }

  std::unique_ptr<DeepseekModel> model;
  std::unique_ptr<PagedKvCache> pool;
  std::unique_ptr<StageRunner> runner;
  std::unique_ptr<Engine> engine;
  std::thread thread;
  absl::Status run_status;
  std::mutex mu;
  std::condition_variable cv;
  std::map<int64_t, Record> records;    // by sink key
  std::map<int64_t, int64_t> key_of;   // request id -> sink key
  int64_t next_key = 0;

 private:
  // With `mu` held.
  Record& RecordOf(int64_t id) {
    auto it = key_of.find(id);
    return it == key_of.end() ? records[-1 - id] : records[it->second];
  }
};

std::vector<int32_t> Offline(DeepseekModel& m, const std::vector<int32_t>& prompt, int64_t n, SamplingParams sp = {}) {
  GenerateOptions g;
  g.max_new_tokens = n;
  g.sampling = sp;
  g.stop_at_eos = false;
  auto out = Generate(m, prompt, g);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : std::vector<int32_t>{};
}

struct ModelCase {
  std::string preset;
  MlaMode mla;
};
class EngineModels : public ::testing::TestWithParam<ModelCase> {};

// Every MLA form (kAuto mixes naive prefill chunks and absorbed decodes in one
// step), V2-Lite (no q_lora) and the MHA model (DeepSeekMoE 16B).
TEST_P(EngineModels, BatchedChunkedPreemptedServingMatchesOfflineGenerate) {
  // 8-token blocks, 14 of them: 20 requests of up to 70 tokens cannot all fit,
  // so admission waits, prefills are chunked (16 tokens) and decodes preempt.
  Harness h(/*block_size=*/8, /*n_blocks=*/14, /*max_running=*/6, /*budget=*/32, /*prefill_chunk=*/16,
            /*max_waiting=*/256, GetParam().mla, GetParam().preset);
  std::mt19937 rng(5);
  const int64_t V = h.model->config().vocab_size;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> lens, ids;
  for (int i = 0; i < 20; ++i) {
    std::vector<int32_t> p(std::uniform_int_distribution<int>(1, 40)(rng));
    for (int32_t& t : p) t = std::uniform_int_distribution<int32_t>(0, static_cast<int32_t>(V) - 1)(rng);
    prompts.push_back(p);
    lens.push_back(std::uniform_int_distribution<int64_t>(1, 30)(rng));
  }
  // A seeded sampled request too: one RNG stream, as offline.
  SamplingParams seeded;
  seeded.temperature = 0.8f, seeded.top_k = 40, seeded.top_p = 0.95f, seeded.seed = 1234;
  for (int i = 0; i < 20; ++i) {
    auto id = h.Submit(prompts[i], lens[i], i == 7 ? seeded : SamplingParams{});
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  h.Start();
  ASSERT_TRUE(h.WaitAll(ids));
  for (int i = 0; i < 20; ++i) {
    const Record r = h.Get(ids[i]);
    EXPECT_EQ(r.finals, 1);
    EXPECT_EQ(r.reason, FinishReason::kLength);
    EXPECT_EQ(r.tokens, Offline(*h.model, prompts[i], lens[i], i == 7 ? seeded : SamplingParams{})) << "request " << i;
  }
  EXPECT_EQ(h.BlocksUsed(), 0);
  EXPECT_GT(h.engine->Snapshot().preemptions, 0) << "the pool is meant to be too small for all of them";
  h.Stop();
  EXPECT_TRUE(h.run_status.ok()) << h.run_status;
}

INSTANTIATE_TEST_SUITE_P(
    Models, EngineModels,
    ::testing::Values(ModelCase{"tiny-v3", MlaMode::kAuto}, ModelCase{"tiny-v3", MlaMode::kNaive},
                      ModelCase{"tiny-v3", MlaMode::kAbsorbed}, ModelCase{"tiny-v2-lite", MlaMode::kAuto},
                      ModelCase{"tiny-moe16b", MlaMode::kAuto}),
    [](const ::testing::TestParamInfo<ModelCase>& i) {
      std::string name = i.param.preset + (i.param.mla == MlaMode::kAuto    ? "_auto"
                                           : i.param.mla == MlaMode::kNaive ? "_naive"
                                                                            : "_absorbed");
      for (char& c : name) c = c == '-' ? '_' : c;
      return name;
    });

TEST(Engine, SubmitRejectsBadRequestsWithTheirCodes) {
  Harness h(/*block_size=*/16, /*n_blocks=*/4, 8, 64, 16, /*max_waiting=*/2);
  const int64_t V = h.model->config().vocab_size, ctx = h.model->max_context();
  EXPECT_EQ(h.Submit({}, 4).status().code(), absl::StatusCode::kInvalidArgument);
  auto bad = h.Submit({1, static_cast<int32_t>(V)}, 4);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("vocabulary"), absl::string_view::npos);
  EXPECT_EQ(h.Submit({1}, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.Submit({1}, 4, {.temperature = -1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.Submit(std::vector<int32_t>(ctx, 1), 1).status().code(), absl::StatusCode::kOutOfRange);
  // 4 blocks of 16 = 64 tokens per slot: 60 + 10 does not fit.
  auto kv = h.Submit(std::vector<int32_t>(60, 1), 10);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(kv.status().message().find("--kv-cache-memory"), absl::string_view::npos);
  // The engine is not running: two requests wait, the third is refused.
  ASSERT_TRUE(h.Submit({1, 2}, 2).ok());
  ASSERT_TRUE(h.Submit({1, 2}, 2).ok());
  EXPECT_EQ(h.Submit({1, 2}, 2).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(Engine, CancelEndsTheRequestAndFreesItsBlocks) {
  Harness h(/*block_size=*/8, /*n_blocks=*/32);
  h.Start();
  auto a = h.Submit({5, 6, 7}, 100);
  auto b = h.Submit({8, 9}, 5);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(h.WaitTokens(*a, 3));
  h.engine->Cancel(*a);
  ASSERT_TRUE(h.WaitAll({*a, *b}));
  const Record ra = h.Get(*a);
  EXPECT_EQ(ra.finals, 1);
  EXPECT_EQ(ra.reason, FinishReason::kCancelled);
  EXPECT_LT(ra.tokens.size(), 100u);
  EXPECT_EQ(h.Get(*b).reason, FinishReason::kLength);
  EXPECT_EQ(h.BlocksUsed(), 0);
  h.engine->Cancel(*a);  // already finished: ignored
  h.engine->Cancel(12345);
}

TEST(Engine, DrainLetsRequestsFinishThenEndsTheRestWithAnError) {
  Harness h(/*block_size=*/8, /*n_blocks=*/32);
  auto shortreq = h.Submit({1, 2, 3}, 4);
  auto longreq = h.Submit({4, 5, 6}, 110);
  ASSERT_TRUE(shortreq.ok() && longreq.ok());
  h.Start();
  ASSERT_TRUE(h.WaitTokens(*longreq, 2));
  h.engine->BeginDrain(0.0);  // no time: what is still running gets an error
  EXPECT_FALSE(h.engine->Health().accepting);
  EXPECT_EQ(h.Submit({1}, 1).status().code(), absl::StatusCode::kUnavailable);
  h.thread.join();
  EXPECT_TRUE(h.run_status.ok()) << h.run_status;
  const Record r = h.Get(*longreq);
  EXPECT_EQ(r.finals, 1);
  EXPECT_EQ(r.reason, FinishReason::kError);
  EXPECT_NE(r.error.find("drain"), std::string::npos);
  EXPECT_EQ(h.Get(*shortreq).finals, 1);
}

TEST(Engine, ALostRankFailsEveryRequestAtOnce) {
  Harness h(/*block_size=*/8, /*n_blocks=*/32);
  std::vector<int64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(*h.Submit({static_cast<int32_t>(i + 1), 2, 3}, 100));
  h.Start();
  ASSERT_TRUE(h.WaitTokens(ids[0], 2));
  h.engine->OnRankLost(3, "connection closed by peer");
  ASSERT_TRUE(h.WaitAll(ids, 5));
  for (int64_t id : ids) {
    const Record r = h.Get(id);
    EXPECT_EQ(r.finals, 1);
    EXPECT_EQ(r.reason, FinishReason::kError);
    EXPECT_NE(r.error.find("rank 3"), std::string::npos);
  }
  EXPECT_FALSE(h.engine->Health().healthy);
  EXPECT_EQ(h.Submit({1}, 1).status().code(), absl::StatusCode::kUnavailable);
  h.thread.join();
  EXPECT_FALSE(h.run_status.ok());
}

// A worker whose results frame does not decode (a valid frame, then garbage
// for a payload) is a broken rank: every request fails at once, naming it.
TEST(Engine, MalformedResultsFromAWorkerFailEveryRequestNamingIt) {
  Harness h(/*block_size=*/8, /*n_blocks=*/32);
  std::vector<int64_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(*h.Submit({static_cast<int32_t>(i + 1), 2, 3}, 100));
  h.Start();
  ASSERT_TRUE(h.WaitTokens(ids[0], 2));
  h.engine->OnResults(2, std::string("\x07garbage", 8));
  ASSERT_TRUE(h.WaitAll(ids, 5));
  for (int64_t id : ids) {
    const Record r = h.Get(id);
    EXPECT_EQ(r.finals, 1);
    EXPECT_EQ(r.reason, FinishReason::kError);
    EXPECT_EQ(r.error.find("rank 2 is lost (it sent malformed results"), 0u) << r.error;
  }
  EXPECT_FALSE(h.engine->Health().healthy);
  h.thread.join();
  EXPECT_FALSE(h.run_status.ok());
}

// Rank 0 itself at fault (stopped, its workers gave up on it): the message is
// rank 0's, not "rank N is lost".
TEST(Engine, RankZeroAtFaultIsNotReportedAsALostWorker) {
  Harness h(/*block_size=*/8, /*n_blocks=*/32);
  const int64_t id = *h.Submit({1, 2, 3}, 100);
  h.Start();
  ASSERT_TRUE(h.WaitTokens(id, 1));
  const std::string why =
      "rank 0 did not run for 3.50 s (it was stopped or stalled; the heartbeat timeout is 3.00 s) and rank 1 gave "
      "up on it (connection closed by peer)";
  h.engine->OnRankLost(0, why);
  ASSERT_TRUE(h.WaitAll({id}, 5));
  const Record r = h.Get(id);
  EXPECT_EQ(r.reason, FinishReason::kError);
  EXPECT_EQ(r.error, why + "; the job is going down");
  EXPECT_EQ(h.engine->Health().detail, why + "; the job is going down");
  h.thread.join();
}

// After a failure (a rank lost: dead, stopped, broken) a job has no orderly way
// out: the lost rank would hold every other rank in MPI_Finalize forever.
// `generate` found the failure in RunOffline and called Shutdown(), which
// stopped the failure watchdog before it had seen the failure (it looks every
// 20 ms): the job then hung in MPI_Finalize with a stopped worker (found by
// tools/fault_inject.py, SIGSTOP of a worker during decode, about 1 run in 10).
// Shutdown() after a failure must end the process, exit 1, itself. The death
// test forks (style "fast"): the child has no watchdog thread, so only
// Shutdown() can end it; an alarm turns a hang into a failure.
TEST(JobDeathTest, ShutdownAfterAFailureEndsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "fast");
  RuntimeConfig rt;
  auto model = DeepseekModel::Load(ModelDir(), rt);
  ASSERT_TRUE(model.ok()) << model.status();
  RankResources r;
  r.model = model->get();
  r.pc = ParallelConfig::Single();
  JobOptions o;
  o.command = "generate";
  o.kv_bytes = 8 << 20;
  o.failure_linger = 0;
  o.announce = false;
  int code = 0;
  std::unique_ptr<Job> job = Job::Start(r, o, &code);
  ASSERT_NE(job, nullptr) << code;
  EXPECT_EXIT(
      {
        alarm(10);
        job->engine().OnRankLost(2, "heartbeat timeout: no frame for 3.10 s (limit 3.00 s)");
        job->Shutdown();
        std::_Exit(0);  // Shutdown() returned: the ranks would meet in MPI_Finalize
      },
      ::testing::ExitedWithCode(1), "");
  // This process's job is healthy: its Shutdown() returns.
  job->Shutdown();
}

}  // namespace
}  // namespace deepshard::serve

namespace deepshard::serve {
namespace {

// A chat request without max_tokens gets the rest of max_context() (see
// PromptBuilder::BuildAll). When a DP slot's KV pool holds less than the
// model's context, max_context() must be what the slot holds, or every such
// request is refused (issue 16): the default must be admitted and run.
TEST(Engine, MaxContextIsWhatOneSlotHoldsSoTheDefaultMaxTokensFits) {
  Harness h(/*block_size=*/16, /*n_blocks=*/4);  // 64 tokens per slot
  ASSERT_GT(h.model->max_context(), 64);
  EXPECT_EQ(h.engine->max_context(), 64);
  EXPECT_EQ(h.engine->slot_tokens(), 64);
  EXPECT_EQ(h.engine->model_context(), h.model->max_context());
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7};
  const int64_t default_max_tokens = h.engine->max_context() - static_cast<int64_t>(prompt.size());
  auto id = h.Submit(prompt, default_max_tokens);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(h.engine->Run(/*until_idle=*/true).ok());
  EXPECT_EQ(h.Get(*id).tokens.size(), static_cast<size_t>(default_max_tokens));
  EXPECT_EQ(h.Get(*id).reason, FinishReason::kLength);
  // A pool bigger than the context leaves the context as it is.
  Harness big(/*block_size=*/16, /*n_blocks=*/(h.model->max_context() + 15) / 16 + 1);
  EXPECT_EQ(big.engine->max_context(), big.model->max_context());
}

TEST(Engine, RunUntilIdleReturnsOnceEveryRequestIsDone) {
  Harness h(/*block_size=*/8, /*n_blocks=*/32);
  auto a = h.Submit({1, 2, 3}, 5);
  auto b = h.Submit({4, 5}, 3);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(h.engine->Run(/*until_idle=*/true).ok());  // on this thread (start-up warm-up)
  EXPECT_EQ(h.Get(*a).finals, 1);
  EXPECT_EQ(h.Get(*a).tokens.size(), 5u);
  EXPECT_EQ(h.Get(*b).tokens.size(), 3u);
  EXPECT_EQ(h.BlocksUsed(), 0);
  // Serving carries on afterwards.
  h.Start();
  auto c = h.Submit({6}, 2);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(h.WaitAll({*c}));
  EXPECT_EQ(h.Get(*c).tokens, Offline(*h.model, {6}, 2));
}

}  // namespace
}  // namespace deepshard::serve

namespace deepshard::serve {
namespace {

// Every position's logits of `tokens`, computed offline in one chunk.
std::vector<float> AllLogits(DeepseekModel& m, const std::vector<int32_t>& tokens) {
  const int64_t V = m.config().vocab_size, n = static_cast<int64_t>(tokens.size());
  auto cache = m.NewCache();
  EXPECT_TRUE(cache.ok()) << cache.status();
  std::vector<float> logits(n * V);
  const SequenceChunk ch{cache->get(), 0, tokens.data(), n};
  EXPECT_TRUE(m.Forward({&ch, 1}, /*all_logits=*/true, logits.data()).ok());
  return logits;
}

// log_softmax in double precision.
double LogProb(const float* logits, int64_t V, int32_t token) {
  double mx = logits[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max<double>(mx, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(logits[i] - mx);
  return logits[token] - mx - std::log(sum);
}

// Echo and logprobs: each prompt token after the first and each generated
// token gets the log-softmax of the offline model's logits at the position
// before it, also when prefills are chunked and sequences preempted (a
// recomputed chunk must not send its prompt rows twice).
TEST(Engine, EchoAndLogprobsEqualTheOfflineLogSoftmax) {
  Harness h(/*block_size=*/8, /*n_blocks=*/12, /*max_running=*/4, /*budget=*/24, /*prefill_chunk=*/10);
  const int64_t V = h.model->config().vocab_size;
  std::mt19937 rng(17);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> ids;
  for (int i = 0; i < 8; ++i) {
    std::vector<int32_t> p(std::uniform_int_distribution<int>(1, 37)(rng));
    for (int32_t& t : p) t = std::uniform_int_distribution<int32_t>(0, static_cast<int32_t>(V) - 1)(rng);
    GenerationRequest r;
    r.prompt = p;
    r.max_tokens = 12;
    r.ignore_eos = true;
    r.logprobs = 3;
    r.prompt_logprobs = true;
    auto id = h.SubmitRequest(std::move(r));
    ASSERT_TRUE(id.ok()) << id.status();
    prompts.push_back(p);
    ids.push_back(*id);
  }
  h.Start();
  ASSERT_TRUE(h.WaitAll(ids));
  for (size_t i = 0; i < ids.size(); ++i) {
    const Record r = h.Get(ids[i]);
    ASSERT_EQ(r.tokens.size(), 12u);
    std::vector<int32_t> all = prompts[i];
    all.insert(all.end(), r.tokens.begin(), r.tokens.end());
    const std::vector<float> logits = AllLogits(*h.model, all);
    const size_t P = prompts[i].size();
    ASSERT_EQ(r.prompt_logprobs.size(), P - 1) << "request " << i;
    for (size_t k = 0; k + 1 < P; ++k) {
      const TokenLogprob& lp = r.prompt_logprobs[k];
      EXPECT_EQ(lp.token, prompts[i][k + 1]);
      EXPECT_NEAR(lp.logprob, LogProb(&logits[k * V], V, prompts[i][k + 1]), 1e-4) << "request " << i << " row " << k;
      ASSERT_EQ(lp.top.size(), 3u);
      EXPECT_NEAR(lp.top[0].second, LogProb(&logits[k * V], V, lp.top[0].first), 1e-4);
      EXPECT_GE(lp.top[0].second, lp.logprob - 1e-6);
    }
    ASSERT_EQ(r.logprobs.size(), 12u);
    for (size_t k = 0; k < 12; ++k) {
      const size_t row = P - 1 + k;
      EXPECT_EQ(r.logprobs[k].token, r.tokens[k]);
      EXPECT_NEAR(r.logprobs[k].logprob, LogProb(&logits[row * V], V, r.tokens[k]), 1e-4) << "request " << i;
      // Greedy: the sampled token is the most likely one.
      EXPECT_EQ(r.logprobs[k].top[0].first, r.tokens[k]);
    }
  }
  EXPECT_EQ(h.BlocksUsed(), 0);
  EXPECT_GT(h.engine->Snapshot().preemptions, 0);  // the recompute path was taken
}

// A constraint that allows only even token ids and records what it saw.
class EvenTokens : public TokenConstraint {
 public:
  explicit EvenTokens(int64_t V) : mask_((V + 63) / 64, 0) {
    for (int64_t i = 0; i < V; i += 2) mask_[i / 64] |= uint64_t{1} << (i % 64);
  }
  const std::vector<uint64_t>& Allowed() override { return mask_; }
  absl::Status Accept(int32_t token) override {
    accepted.push_back(token);
    return token % 2 == 0 ? absl::OkStatus() : absl::FailedPreconditionError("odd token");
  }
  std::vector<int32_t> accepted;

 private:
  std::vector<uint64_t> mask_;
};

TEST(Engine, ConstraintMaskAndStopTokenIds) {
  Harness h(/*block_size=*/8, /*n_blocks=*/32);
  const int64_t V = h.model->config().vocab_size;
  auto even = std::make_shared<EvenTokens>(V);
  GenerationRequest r;
  r.prompt = {3, 5, 7};
  r.max_tokens = 10;
  r.ignore_eos = true;
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 7;
  r.constraint = even;
  auto a = h.SubmitRequest(r);
  ASSERT_TRUE(a.ok());
  // stop_token_ids: greedy's own third token stops a second request there.
  const std::vector<int32_t> greedy = Offline(*h.model, {1, 2, 3}, 6);
  GenerationRequest s;
  s.prompt = {1, 2, 3};
  s.max_tokens = 6;
  s.ignore_eos = true;
  s.sampling.stop_token_ids = {greedy[2]};
  const bool repeats = std::find(greedy.begin(), greedy.begin() + 2, greedy[2]) != greedy.begin() + 2;
  auto b = h.SubmitRequest(s);
  ASSERT_TRUE(b.ok());
  h.Start();
  ASSERT_TRUE(h.WaitAll({*a, *b}));
  const Record ra = h.Get(*a);
  ASSERT_EQ(ra.tokens.size(), 10u);
  for (int32_t t : ra.tokens) EXPECT_EQ(t % 2, 0) << t;
  EXPECT_EQ(even->accepted, ra.tokens);
  const Record rb = h.Get(*b);
  EXPECT_EQ(rb.reason, FinishReason::kStop);
  const size_t stop_at = repeats ? (greedy[0] == greedy[2] ? 1 : 2) : 3;
  EXPECT_EQ(rb.tokens, std::vector<int32_t>(greedy.begin(), greedy.begin() + stop_at));
}

}  // namespace
}  // namespace deepshard::serve

// Prefix caching and forked choices: the KV a request finds in the cache (or
// shares with its sibling) gives exactly the tokens of computing it afresh.
namespace deepshard::serve {
namespace {

std::vector<int32_t> RandomTokens(std::mt19937& rng, int64_t n, int64_t vocab) {
  std::vector<int32_t> p(n);
  for (int32_t& t : p) t = std::uniform_int_distribution<int32_t>(0, static_cast<int32_t>(vocab) - 1)(rng);
  return p;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(EnginePrefixCache, HitsGiveTheSameTokensAsComputingAfresh) {
  Harness h(/*block_size=*/8, /*n_blocks=*/64);
  std::mt19937 rng(21);
  const int64_t V = h.model->config().vocab_size;
  const std::vector<int32_t> a = RandomTokens(rng, 40, V);
  const std::vector<int32_t> b = Concat(std::vector<int32_t>(a.begin(), a.begin() + 32), RandomTokens(rng, 10, V));
  h.Start();
  auto first = h.Submit(a, 12);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(h.WaitAll({*first}));
  // 40 + 11 tokens of KV: 6 full blocks cached. The same prompt finds (40 - 1) / 8
  // = 4 blocks; one sharing 32 tokens finds 4; the first turn plus its answer
  // and a new message (a chat's second turn) finds all 6.
  const std::vector<int32_t> turn = Concat(Concat(a, h.Get(*first).tokens), RandomTokens(rng, 5, V));
  auto again = h.Submit(a, 12);
  auto shared = h.Submit(b, 12);
  auto chat = h.Submit(turn, 6);
  ASSERT_TRUE(again.ok() && shared.ok() && chat.ok());
  ASSERT_TRUE(h.WaitAll({*again, *shared, *chat}));
  const std::vector<int32_t> want_a = Offline(*h.model, a, 12);
  EXPECT_EQ(h.Get(*first).tokens, want_a);
  EXPECT_EQ(h.Get(*again).tokens, want_a);
  EXPECT_EQ(h.Get(*shared).tokens, Offline(*h.model, b, 12));
  EXPECT_EQ(h.Get(*chat).tokens, Offline(*h.model, turn, 6));
  EXPECT_EQ(h.Get(*first).cached_tokens, 0);
  EXPECT_EQ(h.Get(*again).cached_tokens, 32);
  EXPECT_EQ(h.Get(*shared).cached_tokens, 32);
  EXPECT_EQ(h.Get(*chat).cached_tokens, 48);
  EXPECT_EQ(h.BlocksUsed(), 0);
  const EngineSnapshot s = h.engine->Snapshot();
  EXPECT_EQ(s.prefix_cache_queries, 40 + 40 + 42 + static_cast<int64_t>(turn.size()));
  EXPECT_EQ(s.prefix_cache_hits, 32 + 32 + 48);
  EXPECT_GT(s.slots[0].blocks_cached, 0);
  // On /metrics: the counters in tokens, and used + cached + free = the pool.
  Metrics m;
  DescribeEngineMetrics(m);
  PublishEngineMetrics(m, s);
  EXPECT_EQ(m.Value("deepshard_prefix_cache_queries_total"), s.prefix_cache_queries);
  EXPECT_EQ(m.Value("deepshard_prefix_cache_hits_total"), 32 + 32 + 48);
  const double cached = m.Value("deepshard_kv_blocks", {{"dp_slot", "0"}, {"state", "cached"}});
  EXPECT_EQ(cached, s.slots[0].blocks_cached);
  EXPECT_EQ(m.Value("deepshard_kv_blocks", {{"dp_slot", "0"}, {"state", "used"}}) + cached +
                m.Value("deepshard_kv_blocks", {{"dp_slot", "0"}, {"state", "free"}}),
            64);
  EXPECT_NE(m.Render().find("deepshard_prefix_cache_hits_total 112"), std::string::npos);
  h.Stop();
  EXPECT_TRUE(h.run_status.ok()) << h.run_status;
}

// Shared prefixes on a pool too small for everything: admission waits,
// prefills are chunked, decodes preempt (and re-admission finds the preempted
// sequence's own blocks), cached blocks are evicted; some clients cancel.
// Every model and MLA form (EngineModels above).
TEST_P(EngineModels, PrefixCacheUnderPreemptionEvictionAndCancellationKeepsTokensExact) {
  Harness h(/*block_size=*/8, /*n_blocks=*/14, /*max_running=*/6, /*budget=*/32, /*prefill_chunk=*/16,
            /*max_waiting=*/256, GetParam().mla, GetParam().preset);
  std::mt19937 rng(8);
  const int64_t V = h.model->config().vocab_size;
  std::vector<std::vector<int32_t>> prefixes;
  for (int i = 0; i < 3; ++i) prefixes.push_back(RandomTokens(rng, 16 + 4 * i, V));
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> lens, ids;
  for (int i = 0; i < 24; ++i) {
    prompts.push_back(Concat(prefixes[i % 3], RandomTokens(rng, std::uniform_int_distribution<int>(0, 16)(rng), V)));
    lens.push_back(std::uniform_int_distribution<int64_t>(1, 30)(rng));
  }
  SamplingParams seeded{.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 99};
  h.Start();
  for (int i = 0; i < 24; ++i) {
    auto id = h.Submit(prompts[i], lens[i], i == 5 ? seeded : SamplingParams{});
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  // A long one that is cancelled after a few tokens, then sent again.
  auto cancelled = h.Submit(prompts[0], 60);
  ASSERT_TRUE(cancelled.ok());
  ASSERT_TRUE(h.WaitTokens(*cancelled, 3));
  h.engine->Cancel(*cancelled);
  ASSERT_TRUE(h.WaitAll(ids));
  ASSERT_TRUE(h.WaitAll({*cancelled}));
  EXPECT_EQ(h.Get(*cancelled).reason, FinishReason::kCancelled);
  auto resent = h.Submit(prompts[0], 20);
  ASSERT_TRUE(resent.ok());
  ASSERT_TRUE(h.WaitAll({*resent}));
  int64_t hits = 0;
  for (int i = 0; i < 24; ++i) {
    const Record r = h.Get(ids[i]);
    EXPECT_EQ(r.finals, 1);
    EXPECT_EQ(r.tokens, Offline(*h.model, prompts[i], lens[i], i == 5 ? seeded : SamplingParams{})) << "request " << i;
    hits += r.cached_tokens > 0;
  }
  EXPECT_EQ(h.Get(*resent).tokens, Offline(*h.model, prompts[0], 20));
  EXPECT_GT(h.Get(*resent).cached_tokens, 0);
  EXPECT_GT(hits, 0);
  EXPECT_EQ(h.BlocksUsed(), 0);
  const EngineSnapshot s = h.engine->Snapshot();
  EXPECT_GT(s.preemptions, 0) << "the pool is meant to be too small for all of them";
  EXPECT_GT(s.prefix_cache_hits, 0);
  h.Stop();
  EXPECT_TRUE(h.run_status.ok()) << h.run_status;
}

// n > 1 choices: choices 1..n-1 fork choice 0's prompt KV and compute only the
// last prompt token. Greedy, each gives the tokens of an independent request;
// seeded, each gives those of an independent request with its seed. The
// prefix cache is off so that only the fork shares blocks.
TEST(EngineForkedChoices, ShareThePromptAndMatchIndependentRequests) {
  for (bool greedy : {true, false}) {
    Harness h(/*block_size=*/8, /*n_blocks=*/64, 8, 64, 16, 256, MlaMode::kAuto, "tiny-v3", /*prefix_caching=*/false);
    std::mt19937 rng(3);
    const std::vector<int32_t> p = RandomTokens(rng, 21, h.model->config().vocab_size);  // 20 = 2.5 blocks shared
    constexpr int kN = 4;
    constexpr int64_t kTokens = 6;
    std::vector<SamplingParams> sp(kN);
    if (!greedy) {
      for (int i = 0; i < kN; ++i) sp[i] = {.temperature = 0.9f, .top_k = 50, .top_p = 0.95f, .seed = static_cast<uint64_t>(100 + i)};
    }
    std::vector<int64_t> ids;
    for (int i = 0; i < kN; ++i) {
      auto id = h.Submit(p, kTokens, sp[i], true, i == 0 ? -1 : ids[0]);
      ASSERT_TRUE(id.ok()) << id.status();
      ids.push_back(*id);
    }
    ASSERT_TRUE(h.engine->Run(/*until_idle=*/true).ok());
    for (int i = 0; i < kN; ++i) {
      const Record r = h.Get(ids[i]);
      EXPECT_EQ(r.finals, 1);
      EXPECT_EQ(r.tokens, Offline(*h.model, p, kTokens, sp[i])) << "choice " << i << (greedy ? " greedy" : " seeded");
      EXPECT_EQ(r.cached_tokens, i == 0 ? 0 : 20) << "choice " << i;
    }
    // The prompt is 3 blocks; independent requests would hold n * 3 prompt
    // blocks at once. Forked, the 2 full prompt blocks are shared (each child
    // copies the third, which it writes).
    const EngineSnapshot s = h.engine->Snapshot();
    EXPECT_LT(s.slots[0].blocks_used_peak, kN * 3);
    EXPECT_EQ(h.BlocksUsed(), 0);
    EXPECT_EQ(s.slots[0].blocks_cached, 0);
  }
}

TEST(EngineForkedChoices, ACancelledParentLeavesItsChildrenToPrefill) {
  Harness h(/*block_size=*/8, /*n_blocks=*/64, 8, /*budget=*/64, /*prefill_chunk=*/8);
  std::mt19937 rng(4);
  const std::vector<int32_t> p = RandomTokens(rng, 30, h.model->config().vocab_size);
  auto parent = h.Submit(p, 50);
  ASSERT_TRUE(parent.ok());
  auto child = h.Submit(p, 8, {}, true, *parent);
  ASSERT_TRUE(child.ok());
  h.engine->Cancel(*parent);  // before the engine runs: the child never forks
  h.Start();
  ASSERT_TRUE(h.WaitAll({*parent, *child}));
  EXPECT_EQ(h.Get(*parent).reason, FinishReason::kCancelled);
  EXPECT_EQ(h.Get(*child).tokens, Offline(*h.model, p, 8));
  EXPECT_EQ(h.Get(*child).cached_tokens, 0);
  // A parent cancelled once it has sampled (its child forked, or prefills if
  // the cancellation came first): the child's tokens are right either way.
  auto parent2 = h.Submit(p, 50);
  auto child2 = h.Submit(p, 8, {}, true, *parent2);
  ASSERT_TRUE(parent2.ok() && child2.ok());
  ASSERT_TRUE(h.WaitTokens(*parent2, 1));
  h.engine->Cancel(*parent2);
  ASSERT_TRUE(h.WaitAll({*parent2, *child2}));
  EXPECT_EQ(h.Get(*child2).tokens, Offline(*h.model, p, 8));
  EXPECT_EQ(h.BlocksUsed(), 0);
}

}  // namespace
}  // namespace deepshard::serve
