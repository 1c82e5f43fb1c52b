// `deepshard serve`: an OpenAI-compatible server over one rank or a pp × ep
// grid of MPI ranks.
//
// Start-up (every rank, collective checks as in `generate`): grid, model files
// (same fingerprint everywhere), placement, weights, then the KV pool: each
// rank fits --kv-cache-memory with blocks of its own layers and the job takes
// the smallest count, so every stage of a DP column can follow one block
// table. Rank 0 then opens the control plane (Asio TCP) and sends its address
// and a fresh job secret to every rank over MPI; every rank connects and
// authenticates. From then on:
//
//   rank 0     HTTP front end (Beast threads) -> ServingEngine (this thread):
//              schedule, broadcast plans, run stage 0 / column 0, stream tokens
//   rank r > 0 read plans from the control plane, run its part (StageRunner),
//              send the column's results (last stage), heartbeat with stats
//
// Shutdown: SIGTERM/SIGINT on rank 0 drains (new requests get 503, running ones
// finish until --drain-timeout, then get an error), then rank 0 tells every
// rank to exit and all exit 0. A worker that gets SIGTERM asks rank 0 to drain
// (a kDrain frame) and waits for its shutdown, so signalling any rank, or the
// whole job as Slurm's scancel does, drains the job.
// Failure: a rank that dies, stops heartbeating or reports a fatal error makes
// rank 0 fail every request with an error, answer /health with 503, and end
// the job with a non-zero exit after --failure-linger seconds; a worker that
// loses rank 0 exits at once. Nobody waits forever in a collective: the exit
// of any rank makes mpirun (or srun) end the others.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/parallel_config.h"
#include "base/status_macros.h"
#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/mpi_bootstrap.h"
#include "launcher/rank_setup.h"
#include "runtime/engine/paged_kv_cache.h"
#include "runtime/model/deepseek_model.h"
#include "runtime/parallel/placement.h"
#include "text/tokenizer/tokenizer.h"
#include "serve/control_plane.h"
#include "serve/engine.h"
#include "serve/engine_metrics.h"
#include "serve/http_server.h"
#include "serve/metrics.h"
#include "serve/stage_runner.h"

namespace deepshard {
namespace {

constexpr char kUsage[] =
    "usage: deepshard serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY]\n"
    "         [--served-model-name NAME] [--kv-cache-memory 1GiB] [--block-size 64]\n"
    "         [--max-num-seqs 64] [--max-num-batched-tokens 512] [--prefill-chunk 512]\n"
    "         [--max-waiting 256] [--micro-batches N] [--max-body-bytes 1048576] [--drain-timeout 30]\n"
    "         [--heartbeat-timeout 3] [--failure-linger 2] [--control-host HOST]\n"
    "         [--math exact|fast] [--mla auto|naive|absorbed] [--threads N] [--max-context N]\n"
    "         [--pp P --ep E [--layer-split 2,2] [--expert-map 0,0,1,1,...]]   (under mpirun -np P*E)\n"
    "\n"
    "  --kv-cache-memory  KV pool per rank (\"4GiB\", \"512MiB\", bytes); each DP slot gets the\n"
    "                     blocks that fit on its tightest rank\n"
    "  --max-num-seqs     running sequences per DP slot; --max-num-batched-tokens: tokens per\n"
    "                     step per DP slot; --prefill-chunk: prompt tokens of one sequence per step\n"
    "  --max-waiting      queued requests beyond which new ones get 429\n"
    "  --micro-batches    plans in flight, each with 1/N of the running decodes (default: --pp;\n"
    "                     1: one plan takes every decode, so pipeline stages take turns)\n"
    "  --drain-timeout    seconds running requests may take after SIGTERM\n";

struct Options {
  std::string model_dir;
  RuntimeConfig rt;
  PlacementOptions place;
  serve::HttpServerOptions http;
  int64_t kv_bytes = 1ll << 30;
  int64_t block_size = 64;
  int64_t max_num_seqs = 64, max_batched_tokens = 512, prefill_chunk = 512, max_waiting = 256;
  int64_t micro_batches = 0;  // 0: pp
  double drain_timeout = 30, heartbeat_timeout = 3, failure_linger = 2;
  std::string control_host;
};

absl::StatusOr<Options> ParseOptions(const std::vector<std::string>& args, bool* help) {
  ASSIGN_OR_RETURN(Flags flags,
                   Flags::Parse(args,
                                WithModelRunFlags({"model", "host", "port", "api-key", "served-model-name",
                                                   "kv-cache-memory", "block-size", "max-num-seqs",
                                                   "max-num-batched-tokens", "prefill-chunk", "max-waiting",
                                                   "micro-batches", "max-body-bytes", "drain-timeout",
                                                   "heartbeat-timeout", "failure-linger", "control-host"}),
                                {"help"}));
  *help = flags.Bool("help");
  Options o;
  if (*help) return o;
  ASSIGN_OR_RETURN(o.model_dir, flags.String("model"));
  o.http.host = flags.String("host", "127.0.0.1");
  ASSIGN_OR_RETURN(int64_t port, flags.Int("port", 8000));
  if (port < 0 || port > 65535) return absl::InvalidArgumentError(absl::StrCat("--port must be in [0, 65535], got ", port));
  o.http.port = static_cast<int>(port);
  o.http.api_key = flags.String("api-key", "");
  if (flags.Has("api-key") && o.http.api_key.empty()) return absl::InvalidArgumentError("--api-key is empty");
  std::string name = std::filesystem::path(o.model_dir).lexically_normal().filename().string();
  if (name.empty() || name == ".") name = "deepseek";
  o.http.model_name = flags.String("served-model-name", name);
  ASSIGN_OR_RETURN(o.kv_bytes, ParseByteSize(flags.String("kv-cache-memory", "1GiB")));
  ASSIGN_OR_RETURN(o.block_size, flags.Int("block-size", 64));
  ASSIGN_OR_RETURN(o.max_num_seqs, flags.Int("max-num-seqs", 64));
  ASSIGN_OR_RETURN(o.max_batched_tokens, flags.Int("max-num-batched-tokens", 512));
  ASSIGN_OR_RETURN(o.prefill_chunk, flags.Int("prefill-chunk", 512));
  ASSIGN_OR_RETURN(o.max_waiting, flags.Int("max-waiting", 256));
  ASSIGN_OR_RETURN(o.micro_batches, flags.Int("micro-batches", 0));
  if (o.micro_batches < 0 || o.micro_batches > 64) {
    return absl::InvalidArgumentError(absl::StrCat("--micro-batches must be in [0, 64] (0: --pp), got ", o.micro_batches));
  }
  ASSIGN_OR_RETURN(int64_t body, flags.Int("max-body-bytes", 1 << 20));
  ASSIGN_OR_RETURN(o.drain_timeout, flags.Double("drain-timeout", 30));
  ASSIGN_OR_RETURN(o.heartbeat_timeout, flags.Double("heartbeat-timeout", 3));
  ASSIGN_OR_RETURN(o.failure_linger, flags.Double("failure-linger", 2));
  o.control_host = flags.String("control-host", "");
  if (o.block_size < 1 || o.block_size > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("--block-size must be in [1, 4096], got ", o.block_size));
  }
  if (o.max_batched_tokens < 1) return absl::InvalidArgumentError("--max-num-batched-tokens must be >= 1");
  if (o.max_num_seqs < 1 || o.max_num_seqs > o.max_batched_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("--max-num-seqs must be in [1, --max-num-batched-tokens = ",
                                                   o.max_batched_tokens, "], got ", o.max_num_seqs));
  }
  if (o.prefill_chunk < 1) return absl::InvalidArgumentError("--prefill-chunk must be >= 1");
  if (o.max_waiting < 1) return absl::InvalidArgumentError("--max-waiting must be >= 1");
  if (body < 1) return absl::InvalidArgumentError("--max-body-bytes must be >= 1");
  o.http.max_body_bytes = static_cast<size_t>(body);
  // Bounded (not just finite) so that seconds convert to clock durations safely.
  if (!(o.drain_timeout >= 0 && o.drain_timeout <= 86400)) {
    return absl::InvalidArgumentError(absl::StrCat("--drain-timeout must be in [0, 86400] seconds, got ", o.drain_timeout));
  }
  if (!(o.heartbeat_timeout > 0.5 && o.heartbeat_timeout <= 3600)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--heartbeat-timeout must be in (0.5, 3600] seconds (heartbeats go every 0.5 s), got ", o.heartbeat_timeout));
  }
  if (!(o.failure_linger >= 0 && o.failure_linger <= 3600)) {
    return absl::InvalidArgumentError(absl::StrCat("--failure-linger must be in [0, 3600] seconds, got ", o.failure_linger));
  }
  RETURN_IF_ERROR(ParseModelRunFlags(flags, &o.rt, &o.place));
  return o;
}

void Log(const std::string& m) {
  std::fprintf(stderr, "deepshard serve: %s\n", m.c_str());
  std::fflush(stderr);
}

[[noreturn]] void ExitNow(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(code);
}

// SIGTERM and SIGINT, for the whole process: blocked in every thread (create
// this before any thread starts; threads inherit the mask) and taken by one
// thread with sigwait, so the response can lock and log. Until a handler is
// installed (start-up: loading, connecting, warm-up) a signal ends the process
// at once with 128 + signal, as an unhandled SIGTERM would.
class StopSignals {
 public:
  // handler(signal, how many stop signals so far, counting this one)
  using Handler = std::function<void(int sig, int count)>;

  StopSignals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this] { Loop(); });
  }
  ~StopSignals() {
    stopping_ = true;
    pthread_kill(thread_.native_handle(), SIGTERM);  // wakes sigwait; stopping_ makes it return
    thread_.join();
  }
  void SetHandler(Handler h) {
    std::lock_guard<std::mutex> lock(mu_);
    handler_ = std::move(h);
  }

 private:
  void Loop() {
    int sig = 0, count = 0;
    while (sigwait(&set_, &sig) == 0) {
      if (stopping_) return;
      Handler h;
      {
        std::lock_guard<std::mutex> lock(mu_);
        h = handler_;
      }
      ++count;
      if (!h) {
        Log(absl::StrCat(strsignal(sig), " during start-up: exiting"));
        ExitNow(128 + sig);
      }
      h(sig, count);
    }
  }

  sigset_t set_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  Handler handler_;
  std::thread thread_;
};

// Start-up warm-up: one short request through every rank before taking
// traffic, so that one-time costs (oneDNN kernel generation, first touch of
// buffers) do not land on the first client, and a broken pipeline shows
// before "listening". Sized to fit the smallest context and KV pool.
absl::Status WarmUp(serve::ServingEngine& engine, int64_t max_context, int64_t kv_tokens, int64_t vocab) {
  const int64_t prompt = std::min<int64_t>({16, max_context - 2, kv_tokens - 1});
  if (prompt < 1) return absl::OkStatus();  // too small to bother
  serve::GenerationRequest warm;
  for (int64_t t = 0; t < prompt; ++t) warm.prompt.push_back(static_cast<int32_t>(t % vocab));
  warm.max_tokens = 2;
  warm.ignore_eos = true;
  std::string error;
  ASSIGN_OR_RETURN(int64_t id, engine.Submit(warm, [&error](serve::TokenEvent ev) {
    if (ev.finished && ev.reason == serve::FinishReason::kError) error = ev.error;
  }));
  (void)id;
  RETURN_IF_ERROR(engine.Run(/*until_idle=*/true));
  if (!error.empty()) return absl::InternalError(error);
  return absl::OkStatus();
}

// Everything rank 0 runs besides its StageRunner: engine, HTTP, signals,
// metrics, failure watchdog. Returns the process exit code.
int ServeRank0(const Options& o, DeepseekModel& model, serve::StageRunner& runner, int64_t n_blocks,
               StopSignals& signals, serve::ControlServer* control) {
  const ParallelConfig& pc = runner.parallel();
  std::unique_ptr<Tokenizer> tokenizer;
  if (auto tok = Tokenizer::FromDirectory(o.model_dir); tok.ok()) {
    tokenizer = *std::move(tok);
  } else {
    Log(absl::StrCat("warning: no usable tokenizer in ", o.model_dir, " (", tok.status().message(),
                     "); only token-id prompts will work"));
  }
  serve::EngineOptions eo;
  eo.scheduler.dp_slots = pc.ep;
  eo.scheduler.blocks_per_slot = n_blocks;
  eo.scheduler.block_size = o.block_size;
  eo.scheduler.max_tokens_per_step = o.max_batched_tokens;
  eo.scheduler.max_running_per_slot = o.max_num_seqs;
  eo.scheduler.prefill_chunk = o.prefill_chunk;
  eo.scheduler.micro_batches = o.micro_batches > 0 ? o.micro_batches : pc.pp;
  eo.depth = std::max<int>(pc.pp, static_cast<int>(eo.scheduler.micro_batches));
  eo.max_waiting = o.max_waiting;
  eo.vocab_size = static_cast<int32_t>(model.config().vocab_size);
  eo.max_context = model.max_context();
  serve::Metrics metrics;
  serve::DescribeEngineMetrics(metrics);
  std::function<void(const std::string&)> broadcast_plan;
  std::function<void()> broadcast_shutdown;
  if (control != nullptr) {
    broadcast_plan = [control](const std::string& plan) { control->Broadcast(serve::FrameType::kPlan, plan); };
    broadcast_shutdown = [control] { control->Broadcast(serve::FrameType::kShutdown, ""); };
  }
  serve::ServingEngine engine(runner, eo, broadcast_plan, broadcast_shutdown);
  engine.set_on_snapshot([&metrics](const serve::EngineSnapshot& s) { serve::PublishEngineMetrics(metrics, s); });
  if (control != nullptr) {
    control->set_on_frame([&engine, &o](int rank, serve::Frame f) {
      switch (f.type) {
        case serve::FrameType::kResults: engine.OnResults(rank, f.payload); break;
        case serve::FrameType::kHeartbeat: engine.OnStats(rank, f.payload); break;
        case serve::FrameType::kFatal: engine.OnRankLost(rank, f.payload); break;
        case serve::FrameType::kDrain:
          Log(absl::StrCat("rank ", rank, " got SIGTERM: draining (new requests get 503; running ones have ",
                           o.drain_timeout, " s)"));
          engine.BeginDrain(o.drain_timeout);
          break;
        default: engine.OnRankLost(rank, absl::StrCat("unexpected frame ", std::string(serve::FrameTypeName(f.type)))); break;
      }
    });
    control->set_on_rank_lost([&engine](int rank, std::string why) { engine.OnRankLost(rank, why); });
  }
  // From here a signal drains (a second one ends the drain now, and the
  // process shortly after if a step never completes); a failure ends the
  // process after --failure-linger even if this thread is stuck in a collective.
  std::atomic<bool> done{false};
  std::atomic<int64_t> hard_exit_ns{0};  // steady-clock deadline for the exit after a second signal
  signals.SetHandler([&](int sig, int count) {
    if (count == 1) {
      Log(absl::StrCat(strsignal(sig), ": draining (new requests get 503; running ones have ", o.drain_timeout,
                       " s)"));
      engine.BeginDrain(o.drain_timeout);
    } else {
      Log(absl::StrCat(strsignal(sig), " again: ending the drain now"));
      engine.BeginDrain(0);
      engine.ExpireDrain();
      hard_exit_ns = (std::chrono::steady_clock::now() + std::chrono::seconds(5)).time_since_epoch().count();
    }
  });
  std::thread watchdog([&] {
    while (!done) {
      if (engine.failed()) {
        Log(absl::StrCat("error: ", engine.Health().detail, "; exiting in ", o.failure_linger, " s"));
        std::this_thread::sleep_for(std::chrono::duration<double>(o.failure_linger));
        ExitNow(1);
      }
      const int64_t hard = hard_exit_ns;
      if (hard != 0 && std::chrono::steady_clock::now().time_since_epoch().count() > hard) {
        Log("error: the drain did not finish 5 s after the second signal (a step never completed); exiting");
        ExitNow(1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  auto stop_watchdog = [&] {
    done = true;
    if (watchdog.joinable()) watchdog.join();
  };

  if (absl::Status st = WarmUp(engine, model.max_context(), n_blocks * o.block_size, model.config().vocab_size);
      !st.ok()) {
    Log(absl::StrCat("error: the warm-up request failed: ", st.message()));
    ExitNow(1);  // workers see rank 0's connection drop and exit too
  }
  if (engine.draining()) {  // a signal during the warm-up: nothing to drain, shut down
    if (control != nullptr) control->Broadcast(serve::FrameType::kShutdown, "");
    if (control != nullptr) control->Stop(/*flush_timeout_s=*/2.0);
    stop_watchdog();
    return 0;
  }
  serve::HttpServerOptions http = o.http;
  http.max_model_len = model.max_context();
  serve::HttpServer server(http, tokenizer.get(), engine, metrics);
  if (absl::Status st = server.Start(); !st.ok()) {
    Log(absl::StrCat("error: ", st.message()));
    if (control != nullptr) {
      control->Broadcast(serve::FrameType::kShutdown, "");  // the workers exit 0 ...
      control->Stop(/*flush_timeout_s=*/2.0);
    }
    stop_watchdog();
    return 1;  // ... and this rank 1
  }
  Log(absl::StrCat("listening on http://", http.host, ":", server.port(), " (model \"", http.model_name, "\", ",
                   pc.world, pc.world == 1 ? " rank" : " ranks", ": pp ", pc.pp, " x ep ", pc.ep, ", ", n_blocks,
                   " KV blocks of ", o.block_size, " tokens per DP slot, context ", model.max_context(), ")"));

  const absl::Status st = engine.Run();
  if (!st.ok()) {
    // The watchdog sees engine.failed() and ends the process after the linger.
    watchdog.join();
  }
  stop_watchdog();
  Log("drained; shutting down");
  server.Stop(/*grace_s=*/5.0);  // let the last responses finish writing
  if (control != nullptr) control->Stop(/*flush_timeout_s=*/2.0);
  signals.SetHandler([](int, int) {});  // already shutting down
  return 0;
}

// A worker: plans in, results and heartbeats out, until rank 0 says stop. A
// SIGTERM/SIGINT here asks rank 0 to drain the job (rank 0 then shuts us down).
int ServeWorker(serve::ControlClient& client, serve::StageRunner& runner, StopSignals& signals) {
  const ParallelConfig& pc = runner.parallel();
  signals.SetHandler([&client](int, int) { client.Send(serve::FrameType::kDrain, ""); });
  client.set_heartbeat_payload([&runner] { return serve::EncodeStats(runner.Stats()); });
  // If rank 0 goes away while this thread is inside a collective, nothing
  // would wake it: exit from here.
  std::atomic<bool> done{false};
  std::thread watchdog([&] {
    while (!done) {
      if (!client.connected()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (done) return;
        std::fprintf(stderr, "deepshard serve: rank %d: lost the control connection to rank 0; exiting\n", pc.rank);
        ExitNow(1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  int code = 0;
  while (true) {
    auto frame = client.Receive();
    if (!frame.ok()) {
      std::fprintf(stderr, "deepshard serve: rank %d: %s; exiting\n", pc.rank,
                   std::string(frame.status().message()).c_str());
      ExitNow(1);
    }
    if (frame->type == serve::FrameType::kShutdown) break;
    if (frame->type != serve::FrameType::kPlan) continue;
    absl::StatusOr<std::vector<serve::ChunkResult>> results;
    auto plan = serve::DecodePlan(frame->payload);
    if (plan.ok()) {
      results = runner.Run(*plan);
    } else {
      results = plan.status();
    }
    if (!results.ok()) {
      const std::string why = absl::StrCat("rank ", pc.rank, ": ", results.status().message());
      std::fprintf(stderr, "deepshard serve: %s\n", why.c_str());
      client.Send(serve::FrameType::kFatal, why);
      client.Stop(/*flush_timeout_s=*/1.0);
      ExitNow(1);
    }
    if (runner.last_stage()) {
      serve::ColumnResults r{plan->id, pc.ep_rank, *std::move(results)};
      client.Send(serve::FrameType::kResults, serve::EncodeResults(r));
    }
  }
  done = true;
  watchdog.join();
  signals.SetHandler([](int, int) {});  // already shutting down
  client.Stop(/*flush_timeout_s=*/1.0);
  return code;
}

// The KV pool of a rank: --kv-cache-memory over the bytes of one block of its layers.
int64_t BlocksThatFit(const Options& o, const DeepseekModel& model) {
  const int64_t per_block = PagedKvCache::BytesPerBlock(model.config(), model.n_local_layers(), o.block_size);
  return per_block > 0 ? o.kv_bytes / per_block : 0;
}

int RunSingleRank(const Options& o, StopSignals& stop_signals) {
  auto model = DeepseekModel::Load(o.model_dir, o.rt);
  if (!model.ok()) {
    Log(absl::StrCat("error: ", model.status().message()));
    return 1;
  }
  const int64_t n_blocks = BlocksThatFit(o, **model);
  if (n_blocks < 1) {
    Log(absl::StrCat("error: --kv-cache-memory ", o.kv_bytes, " bytes holds no KV block of ", o.block_size,
                     " tokens (", PagedKvCache::BytesPerBlock((*model)->config(), (*model)->n_local_layers(),
                                                              o.block_size), " bytes)"));
    return 2;
  }
  PagedKvCache pool((*model)->config(), (*model)->n_local_layers(), o.block_size, n_blocks);
  const ParallelConfig pc = ParallelConfig::Single();
  serve::StageRunner runner(**model, pc, nullptr, nullptr, nullptr, pool);
  return ServeRank0(o, **model, runner, n_blocks, stop_signals, nullptr);
}

int RunDistributed(const Options& o, StopSignals& stop_signals) {
  MpiSession mpi(nullptr, nullptr);
  const int rank = mpi.rank();
  auto say = [rank](const std::string& m) {
    if (rank == 0) Log(absl::StrCat("error: ", m));
  };
  int code = 0;
  auto share = SetUpRankShare("serve", o.model_dir, o.place, o.rt, mpi, &code);
  if (!share) return code;
  const ParallelConfig* pc = &share->pc;
  auto* model = &share->model;
  // One block count for the whole job: the tightest rank decides.
  long long n_blocks = BlocksThatFit(o, **model);
  MPI_Allreduce(MPI_IN_PLACE, &n_blocks, 1, MPI_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  if (n_blocks < 1) {
    say(absl::StrCat("--kv-cache-memory ", o.kv_bytes, " bytes holds no KV block of ", o.block_size,
                     " tokens on some rank; raise it or lower --block-size"));
    return 2;
  }
  PagedKvCache pool((*model)->config(), (*model)->n_local_layers(), o.block_size, n_blocks);
  // The largest plan must fit one control-plane frame: per column, every running
  // sequence's whole block table plus the step's tokens.
  {
    const int64_t table = std::min<int64_t>(n_blocks, ((*model)->max_context() + o.block_size - 1) / o.block_size);
    const int64_t worst = 64 + static_cast<int64_t>(pc->ep) *
                                   (o.max_num_seqs * (64 + 4 * table) + 4 * o.max_batched_tokens + 16) +
                          8 * o.max_num_seqs * pc->ep;
    if (worst > static_cast<int64_t>(serve::ControlOptions{}.max_payload)) {
      say(absl::StrCat("a step plan could reach ", worst >> 20, " MiB, over the control plane's ",
                       serve::ControlOptions{}.max_payload >> 20, " MiB frame limit: raise --block-size or lower "
                       "--max-num-seqs or --max-context"));
      return 2;
    }
  }

  // Control plane: rank 0 listens, everyone learns host:port and the secret over MPI.
  const bool one_node = pc->n_nodes == 1;
  std::string bind_host = one_node ? "127.0.0.1" : "0.0.0.0";
  std::unique_ptr<serve::ControlServer> control;
  char address[256] = {0};
  char secret[128] = {0};
  int port = 0;
  std::string start_error;
  if (rank == 0) {
    serve::ControlOptions co;
    co.heartbeat_timeout_s = o.heartbeat_timeout;
    const std::string s = serve::NewJobSecret();
    auto server = serve::ControlServer::Start(bind_host, 0, s, mpi.size(), co);
    if (server.ok()) {
      control = *std::move(server);
      port = control->port();
      std::string host = o.control_host;
      if (host.empty()) {
        char name[200] = {0};
        gethostname(name, sizeof(name) - 1);
        host = one_node ? "127.0.0.1" : name;
      }
      std::snprintf(address, sizeof(address), "%s", host.c_str());
      std::snprintf(secret, sizeof(secret), "%s", s.c_str());
    } else {
      start_error = std::string(server.status().message());
    }
  }
  if (!AgreeNoErrors("serve", start_error)) return 1;
  MPI_Bcast(address, sizeof(address), MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Bcast(secret, sizeof(secret), MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Bcast(&port, 1, MPI_INT, 0, MPI_COMM_WORLD);
  std::unique_ptr<serve::ControlClient> client;
  std::string connect_error;
  if (rank != 0) {
    serve::ControlOptions co;
    auto c = serve::ControlClient::Connect(address, port, secret, rank, /*connect_timeout_s=*/30, co);
    if (c.ok()) {
      client = *std::move(c);
    } else {
      connect_error = absl::StrCat("cannot reach rank 0's control plane at ", address, ":", port, ": ",
                                   c.status().message());
    }
  }
  std::memset(secret, 0, sizeof(secret));
  if (!AgreeNoErrors("serve", connect_error)) return 1;
  if (rank == 0) {
    if (absl::Status st = control->WaitForWorkers(30); !st.ok()) mpi.Abort(std::string(st.message()));
  }

  serve::StageRunner runner(**model, *pc, share->world.get(), share->stage.get(), &share->placement.experts, pool);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) Log(absl::StrCat("control plane on ", address, ":", port, " (", mpi.size() - 1, " ranks connected)"));
  std::fprintf(stderr, "deepshard serve: rank %d (stage %d, column %d) ready, pid %d\n", rank, pc->stage, pc->ep_rank,
               static_cast<int>(getpid()));
  std::fflush(stderr);
  if (rank == 0) return ServeRank0(o, **model, runner, n_blocks, stop_signals, control.get());
  return ServeWorker(*client, runner, stop_signals);
}

}  // namespace

int RunServe(const std::vector<std::string>& args) {
  bool help = false;
  auto o = ParseOptions(args, &help);
  const bool root = !LaunchedUnderMpi() || std::getenv("OMPI_COMM_WORLD_RANK") == nullptr ||
                    std::string(std::getenv("OMPI_COMM_WORLD_RANK")) == "0";
  if (!o.ok()) {
    if (root) {
      Log(absl::StrCat("error: ", o.status().message()));
      std::fputs(kUsage, stderr);
    }
    return 2;
  }
  if (help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  StopSignals stop_signals;  // before MPI and every other thread
  if (!LaunchedUnderMpi()) {
    if (o->place.pp * o->place.ep > 1) {
      Log(absl::StrCat("error: --pp ", o->place.pp, " --ep ", o->place.ep, " needs ", o->place.pp * o->place.ep,
                       " ranks: launch with mpirun -np ", o->place.pp * o->place.ep, " deepshard serve ..."));
      return 2;
    }
    return RunSingleRank(*o, stop_signals);
  }
  return RunDistributed(*o, stop_signals);
}

}  // namespace deepshard
