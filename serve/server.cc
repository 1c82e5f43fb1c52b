#include "serve/server.h"

#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "serve/engine_metrics.h"
#include "serve/metrics.h"

namespace deepshard::serve {
namespace {

// Sized to fit the smallest context and KV pool.
absl::Status WarmUp(Engine& engine, int64_t max_context, int64_t kv_tokens, int64_t vocab) {
  const int64_t prompt = std::min<int64_t>({16, max_context - 2, kv_tokens - 1});
  if (prompt < 1) return absl::OkStatus();  // too small to bother
  GenerationRequest warm;
  for (int64_t t = 0; t < prompt; ++t) warm.prompt.push_back(static_cast<int32_t>(t % vocab));
  warm.max_tokens = 2;
  warm.ignore_eos = true;
  std::string error;
  ASSIGN_OR_RETURN(int64_t id, engine.Submit(warm, [&error](TokenEvent ev) {
    if (ev.finished && ev.reason == FinishReason::kError) error = ev.error;
  }));
  (void)id;
  RETURN_IF_ERROR(engine.Run(/*until_idle=*/true));
  if (!error.empty()) return absl::InternalError(error);
  return absl::OkStatus();
}

}  // namespace

int RunServer(Job& job, HttpServerOptions http, const Tokenizer* tokenizer, StopSignals& signals) {
  const std::string cmd = job.options().command;
  const double drain_timeout = job.options().drain_timeout;
  const ParallelConfig& pc = job.parallel();
  DeepseekModel& model = job.model();
  Engine& engine = job.engine();
  Metrics metrics;
  DescribeEngineMetrics(metrics);
  metrics.Describe("deepshard_backend_info", MetricType::kGauge,
                   "Always 1; the labels name rank 0's compute backend: device, kernel level chosen at run time "
                   "(CPU: scalar, avx2, avx512, avx512-bf16), math mode and weight format (stored, int8, int4).");
  metrics.Set("deepshard_backend_info",
              {{"device", std::string(model.backend().name())},
               {"kernels", model.backend().KernelLevel()},
               {"math", model.backend().math_mode() == MathMode::kFast ? "fast" : "exact"},
               {"weights", WeightQuantName(model.runtime().weights)}},
              1);
  engine.set_on_snapshot([&metrics](const EngineSnapshot& s) { PublishEngineMetrics(metrics, s); });

  std::atomic<int64_t> hard_exit_ns{0};  // steady-clock deadline for the exit after a second signal
  signals.SetHandler([&](int sig, int count) {
    if (count == 1) {
      engine.BeginDrain(drain_timeout);
      Log(cmd, absl::StrCat(strsignal(sig), ": draining (new requests get 503; running ones have ", drain_timeout,
                            " s)"));
    } else {
      Log(cmd, absl::StrCat(strsignal(sig), " again: ending the drain now"));
      engine.BeginDrain(0);
      engine.ExpireDrain();
      hard_exit_ns = (std::chrono::steady_clock::now() + std::chrono::seconds(5)).time_since_epoch().count();
    }
  });
  std::atomic<bool> done{false};
  std::thread hard_exit([&] {
    while (!done) {
      const int64_t hard = hard_exit_ns;
      if (hard != 0 && std::chrono::steady_clock::now().time_since_epoch().count() > hard) {
        Log(cmd, "error: the drain did not finish 5 s after the second signal (a step never completed); exiting");
        ExitNow(1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  auto stop_threads = [&] {
    done = true;
    if (hard_exit.joinable()) hard_exit.join();
  };

  if (absl::Status st = WarmUp(engine, model.max_context(), job.n_blocks() * job.options().block_size,
                               model.config().vocab_size);
      !st.ok()) {
    Log(cmd, absl::StrCat("error: the warm-up request failed: ", st.message()));
    ExitNow(1);  // workers see rank 0's connection drop and exit too
  }
  if (engine.draining()) {  // a signal during the warm-up: nothing to drain, shut down
    job.Shutdown();
    stop_threads();
    return 0;
  }
  // What one request can use: the context, or less when a DP slot's KV pool
  // is smaller. The default max_tokens of a chat request is clamped to it
  // (PromptBuilder), and /v1/models advertises it as max_model_len.
  http.max_model_len = engine.max_context();
  if (engine.slot_tokens() < engine.model_context()) {
    Log(cmd, absl::StrCat("warning: one DP slot's KV pool holds ", engine.slot_tokens(), " tokens (",
                          job.n_blocks(), " blocks of ", job.options().block_size, "), less than the model's context of ",
                          engine.model_context(), " tokens: requests are limited to ", engine.max_context(),
                          " tokens (prompt + max_tokens; max_model_len advertises it); raise --kv-cache-memory or "
                          "lower --max-context"));
  }
  HttpServer server(http, tokenizer, engine, metrics);
  if (absl::Status st = server.Start(); !st.ok()) {
    Log(cmd, absl::StrCat("error: ", st.message()));
    job.Shutdown();  // the workers exit 0 ...
    stop_threads();
    return 1;  // ... and this rank 1
  }
  Log(cmd, absl::StrCat("listening on http://", http.host, ":", server.port(), " (model \"", http.model_name, "\", ",
                        pc.world, pc.world == 1 ? " rank" : " ranks", ": pp ", pc.pp, " x ep ", pc.ep, ", ",
                        job.n_blocks(), " KV blocks of ", job.options().block_size, " tokens per DP slot, ",
                        model.runtime().kv_dtype == DType::kBF16 ? "bf16" : "f32", " KV cache, context ", engine.max_context(), "; ",
                        model.backend().Describe(), "; ", model.weights_summary(), ")"));

  const absl::Status st = engine.Run();
  if (!st.ok()) {
    // The job's watchdog sees engine.failed() and ends the process after the linger.
    while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  stop_threads();
  job.Shutdown();  // every rank has been told to exit: a worker leaving is no failure now
  Log(cmd, "drained; shutting down");
  server.Stop(/*grace_s=*/5.0);  // let the last responses finish writing
  signals.SetHandler([](int, int) {});  // already shutting down
  return 0;
}

}  // namespace deepshard::serve
