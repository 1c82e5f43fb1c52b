#include "launcher/rank_setup.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "serve/control_plane.h"
#include "serve/signals.h"
#include "comm/mpi_communicator.h"
#include "base/status_macros.h"
#include "runtime/batching/paged_kv_cache.h"
#include "runtime/weights/safetensors.h"

namespace deepshard {

const std::set<std::string>& ModelRunFlags() {
  static const std::set<std::string> flags = {
      "device",         "math",          "mla",          "threads",        "max-context",
      "kv-cache-dtype", "pp",            "ep",           "layer-split",    "expert-map",
      "kv-cache-memory", "block-size",   "max-num-seqs", "max-num-batched-tokens",
      "prefill-chunk",  "micro-batches", "startup-timeout", "weights", "weights-group", "numa"};
  return flags;
}

std::set<std::string> WithModelRunFlags(std::set<std::string> command_flags) {
  command_flags.insert(ModelRunFlags().begin(), ModelRunFlags().end());
  return command_flags;
}

const std::set<std::string>& ModelRunBoolFlags() {
  static const std::set<std::string> flags = {"no-prefix-cache", "quantize-fp8"};
  return flags;
}

std::set<std::string> WithModelRunBoolFlags(std::set<std::string> command_bool_flags) {
  command_bool_flags.insert(ModelRunBoolFlags().begin(), ModelRunBoolFlags().end());
  return command_bool_flags;
}

const char kModelRunUsage[] =
    "         [--device cpu] [--math exact|fast] [--mla auto|naive|absorbed] [--threads N] [--max-context N]\n"
    "         [--numa auto|distribute|off]   pin one thread per core, node by node (auto: when the\n"
    "                                        rank spans several NUMA nodes)\n"
    "         [--weights stored|int8|int4 [--weights-group 32] [--quantize-fp8]]\n"
    "         [--kv-cache-memory 1GiB] [--kv-cache-dtype f32|bf16] [--block-size 64] [--max-num-seqs 64]\n"
    "         [--max-num-batched-tokens 512] [--prefill-chunk 512] [--micro-batches N] [--no-prefix-cache]\n"
    "         [--pp P --ep E [--layer-split 2,2] [--expert-map 0,0,1,1,...]]   (under mpirun -np P*E)\n"
    "         [--startup-timeout 300]   under mpirun: seconds for MPI_Init and the first collectives\n"
    "                                   before a rank gives up on the others and exits 1 (0: no limit)\n";

absl::Status ParseWeightFlags(const Flags& flags, RuntimeConfig* rt) {
  const std::string weights = flags.String("weights", "stored");
  if (weights == "stored") {
    rt->weights = WeightQuant::kStored;
  } else if (weights == "int8") {
    rt->weights = WeightQuant::kInt8;
  } else if (weights == "int4") {
    rt->weights = WeightQuant::kInt4;
  } else {
    return absl::InvalidArgumentError("--weights must be stored, int8 or int4, got \"" + weights + "\"");
  }
  ASSIGN_OR_RETURN(rt->quant_group, flags.Int("weights-group", kDefaultQuantGroup));
  if (rt->quant_group < 32 || rt->quant_group > 4096 || rt->quant_group % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--weights-group must be a multiple of 32 in [32, 4096], got ", rt->quant_group));
  }
  rt->quantize_fp8 = flags.Bool("quantize-fp8");
  if (rt->weights == WeightQuant::kStored && (flags.Has("weights-group") || rt->quantize_fp8)) {
    return absl::InvalidArgumentError("--weights-group and --quantize-fp8 need --weights int8 or int4");
  }
  return absl::OkStatus();
}

absl::Status ParseModelRunFlags(const Flags& flags, RuntimeConfig* rt, PlacementOptions* place,
                                serve::JobOptions* job, double* startup_timeout_s) {
  ASSIGN_OR_RETURN(*startup_timeout_s, flags.Double("startup-timeout", kDefaultStartupTimeout));
  if (!(*startup_timeout_s >= 0 && *startup_timeout_s <= 86400)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--startup-timeout must be in [0, 86400] seconds (0: no limit), got ", *startup_timeout_s));
  }
  rt->device = flags.String("device", "cpu");
  if (rt->device != "cpu") {
    return absl::InvalidArgumentError(absl::StrCat("--device ", rt->device, " is not available in this build "
                                                   "(devices: cpu)"));
  }
  ASSIGN_OR_RETURN(rt->kv_dtype, ParseKvCacheDType(flags.String("kv-cache-dtype", "f32")));
  RETURN_IF_ERROR(ParseWeightFlags(flags, rt));
  ASSIGN_OR_RETURN(job->kv_bytes, ParseByteSize(flags.String("kv-cache-memory", "1GiB")));
  ASSIGN_OR_RETURN(job->block_size, flags.Int("block-size", 64));
  ASSIGN_OR_RETURN(job->max_num_seqs, flags.Int("max-num-seqs", 64));
  ASSIGN_OR_RETURN(job->max_batched_tokens, flags.Int("max-num-batched-tokens", 512));
  ASSIGN_OR_RETURN(job->prefill_chunk, flags.Int("prefill-chunk", 512));
  ASSIGN_OR_RETURN(job->micro_batches, flags.Int("micro-batches", 0));
  job->prefix_caching = !flags.Bool("no-prefix-cache");
  if (job->micro_batches < 0 || job->micro_batches > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("--micro-batches must be in [0, 64] (0: --pp), got ", job->micro_batches));
  }
  if (job->block_size < 1 || job->block_size > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("--block-size must be in [1, 4096], got ", job->block_size));
  }
  if (job->max_batched_tokens < 1) return absl::InvalidArgumentError("--max-num-batched-tokens must be >= 1");
  if (job->max_num_seqs < 1 || job->max_num_seqs > job->max_batched_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("--max-num-seqs must be in [1, --max-num-batched-tokens = ",
                                                   job->max_batched_tokens, "], got ", job->max_num_seqs));
  }
  if (job->prefill_chunk < 1) return absl::InvalidArgumentError("--prefill-chunk must be >= 1");
  ASSIGN_OR_RETURN(int64_t threads, flags.Int("threads", 0));
  ASSIGN_OR_RETURN(rt->max_context, flags.Int("max-context", 0));
  ASSIGN_OR_RETURN(int64_t pp, flags.Int("pp", 1));
  ASSIGN_OR_RETURN(int64_t ep, flags.Int("ep", 1));
  const std::string math = flags.String("math", "exact");
  if (math == "exact") {
    rt->math = MathMode::kExact;
  } else if (math == "fast") {
    rt->math = MathMode::kFast;
  } else {
    return absl::InvalidArgumentError("--math must be exact or fast, got \"" + math + "\"");
  }
  const std::string mla = flags.String("mla", "auto");
  if (mla == "auto") {
    rt->mla_mode = MlaMode::kAuto;
  } else if (mla == "naive") {
    rt->mla_mode = MlaMode::kNaive;
  } else if (mla == "absorbed") {
    rt->mla_mode = MlaMode::kAbsorbed;
  } else {
    return absl::InvalidArgumentError("--mla must be auto, naive or absorbed, got \"" + mla + "\"");
  }
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  ASSIGN_OR_RETURN(rt->numa, ParseNumaMode(flags.String("numa", "auto")));
  if (rt->max_context < 0) return absl::InvalidArgumentError("--max-context must be >= 0");
  if (pp < 1 || pp > 4096) return absl::InvalidArgumentError(absl::StrCat("--pp must be in [1, 4096], got ", pp));
  if (ep < 1 || ep > 4096) return absl::InvalidArgumentError(absl::StrCat("--ep must be in [1, 4096], got ", ep));
  rt->threads = static_cast<int>(threads);
  place->weights = rt->weights, place->quant_group = rt->quant_group, place->quantize_fp8 = rt->quantize_fp8;
  place->pp = static_cast<int>(pp);
  place->ep = static_cast<int>(ep);
  if (flags.Has("layer-split")) {
    ASSIGN_OR_RETURN(place->layer_split, ParseLayerSplit(flags.String("layer-split", "")));
  }
  if (flags.Has("expert-map")) {
    ASSIGN_OR_RETURN(place->expert_owner, ParseExpertMap(flags.String("expert-map", "")));
  }
  return absl::OkStatus();
}

class StartupWatch {
 public:
  // Collective over MPI_COMM_WORLD (one broadcast). Null on any failure (then
  // start-up simply goes unwatched, as before).
  static std::shared_ptr<StartupWatch> Start(const std::string& command, const ParallelConfig& pc) {
    auto w = std::make_shared<StartupWatch>();
    w->command_ = command;
    const bool one_node = pc.n_nodes == 1;
    char address[256] = {0}, secret[128] = {0};
    int32_t port = 0;
    if (pc.rank == 0) {
      const std::string s = serve::NewJobSecret();
      auto server = serve::ControlServer::Start(one_node ? "127.0.0.1" : "0.0.0.0", 0, s, pc.world);
      if (server.ok()) {
        w->server_ = *std::move(server);
        port = w->server_->port();
        std::string host = "127.0.0.1";
        if (!one_node) {
          char name[200] = {0};
          gethostname(name, sizeof(name) - 1);
          host = name;
        }
        std::snprintf(address, sizeof(address), "%s", host.c_str());
        std::snprintf(secret, sizeof(secret), "%s", s.c_str());
        StartupWatch* self = w.get();  // owns the server: outlives its handlers
        w->server_->set_on_frame([](int, serve::Frame) {});
        w->server_->set_on_rank_lost([self, command](int rank, std::string why) {
          // A worker that closed its connection (it exited or crashed) may be
          // leaving a job that is failing anyway: every rank found the same
          // error and rank 0 is about to print it and end the watch. Give this
          // thread's main thread a moment to do so before blaming the worker;
          // a worker that really died still ends the job within the grace.
          // A heartbeat timeout (a stopped or hung rank) is acted on at once.
          if (!absl::StartsWith(why, "heartbeat timeout")) self->WaitForEnd(kLostGrace);
          if (self->done_) return;
          if (rank == 0) {  // this process was stopped or stalled, and a worker gave up on it
            serve::Log(command, absl::StrCat("error: during start-up ", why, ": exiting"));
            serve::ExitNow(1);
          }
          serve::Log(command, absl::StrCat("error: rank ", rank, " stopped responding during start-up (", why,
                                           "); the other ranks would wait for it forever: exiting"));
          serve::ExitNow(1);
        });
      }
    }
    MPI_Bcast(&port, 1, MPI_INT32_T, 0, MPI_COMM_WORLD);
    MPI_Bcast(address, sizeof(address), MPI_CHAR, 0, MPI_COMM_WORLD);
    MPI_Bcast(secret, sizeof(secret), MPI_CHAR, 0, MPI_COMM_WORLD);
    if (port == 0) return nullptr;
    if (pc.rank != 0) {
      auto c = serve::ControlClient::Connect(address, port, secret, pc.rank, /*connect_timeout_s=*/30);
      std::memset(secret, 0, sizeof(secret));
      if (!c.ok()) {
        // Rank 0 sees this rank missing and waits no longer than WaitForWorkers;
        // start-up goes on under the start-up deadline instead of heartbeats.
        serve::Log(command, absl::StrCat("rank ", pc.rank, ": start-up goes on without heartbeats: ",
                                         c.status().message()));
        return w;
      }
      w->client_ = *std::move(c);
      w->watched_ = true;
      serve::ControlClient* client = w->client_.get();
      std::atomic<bool>* done = &w->done_;
      const int rank = pc.rank;
      w->poller_ = std::thread([client, done, command, rank] {
        // Rank 0 sends kShutdown when its start-up is over (EndStartupWatch).
        while (!*done) {
          auto f = client->Receive(0.1);
          if (f.ok()) {
            if (f->type == serve::FrameType::kShutdown) return;
            continue;
          }
          if (f.status().code() == absl::StatusCode::kDeadlineExceeded || *done) continue;
          serve::Log(command, absl::StrCat("rank ", rank, ": rank 0 stopped responding during start-up (",
                                           f.status().message(), "); exiting"));
          serve::ExitNow(1);
        }
      });
    } else {
      std::memset(secret, 0, sizeof(secret));
      // A rank that never connects is not watched (the start-up deadline still runs).
      w->watched_ = w->server_->WaitForWorkers(30).ok();
    }
    return w;
  }
  // Whether this rank is watched by heartbeats: on rank 0, every worker
  // connected; on a worker, it reached rank 0.
  bool watched() const { return watched_; }
  // Rank 0 tells the workers and closes its side quietly (a kShutdown first:
  // their clients then take the close as planned).
  void End() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (done_.exchange(true)) return;
    }
    cv_.notify_all();
    if (server_ != nullptr) {
      server_->Broadcast(serve::FrameType::kShutdown, "");
      server_->Stop(/*flush_timeout_s=*/1.0);
    }
  }
  ~StartupWatch() {
    End();
    if (poller_.joinable()) poller_.join();
  }

 private:
  static constexpr std::chrono::milliseconds kLostGrace{1500};
  void WaitForEnd(std::chrono::milliseconds grace) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, grace, [this] { return done_.load(); });
  }

  std::string command_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> done_{false};
  bool watched_ = false;
  std::unique_ptr<serve::ControlServer> server_;
  std::unique_ptr<serve::ControlClient> client_;
  std::thread poller_;
};

void EndStartupWatch(RankShare& share) {
  if (share.mpi != nullptr) share.mpi->EndStartupDeadline();
  if (share.startup_watch) share.startup_watch->End();
}

std::optional<RankShare> SetUpRankShare(const std::string& command, const std::string& model_dir,
                                        const PlacementOptions& place, RuntimeConfig rt, MpiSession& mpi,
                                        int* exit_code, const std::function<std::string()>& before_load) {
  const int rank = mpi.rank();
  std::shared_ptr<StartupWatch> watch;
  auto fail = [&](int code, const std::string& m) {
    // Every rank fails here together (each check below is agreed or made
    // from values every rank shares), so no rank is stalled. Rank 0 stops
    // watching before any worker may leave: without the barrier a worker's
    // exit could reach rank 0's watch first and read as a lost rank, a
    // second, misleading message after the real one.
    if (watch) {
      watch->End();
      MPI_Barrier(MPI_COMM_WORLD);
    }
    if (rank == 0 && !m.empty()) std::fprintf(stderr, "deepshard %s: error: %s\n", command.c_str(), m.c_str());
    *exit_code = code;
    return std::nullopt;
  };
  RankShare share;
  auto pc = ParallelConfig::FromMpi(MPI_COMM_WORLD, place.pp, place.ep);
  if (!pc.ok()) return fail(2, std::string(pc.status().message()));
  share.pc = *pc;
  // Heartbeats from here: a rank stopped while loading ends the job. Until
  // they run, the start-up deadline (MpiSession) covers this rank.
  share.mpi = &mpi;
  if (mpi.size() > 1) {
    mpi.SetStartupStage("the start-up watch's broadcast and connection: another rank stopped, hung or unreachable?");
    watch = StartupWatch::Start(command, share.pc);
  }
  share.startup_watch = watch;
  if (mpi.size() == 1 || (watch && watch->watched())) {
    mpi.EndStartupDeadline();
  } else {
    mpi.SetStartupStage("start-up without heartbeats (the start-up watch could not connect every rank): another "
                        "rank stopped, hung or unreachable?");
  }
  // Each rank reads the config and fingerprints the files it sees.
  auto config = LoadModelConfig(model_dir);
  auto fp = ModelFilesFingerprint(model_dir);
  const bool local_ok = config.ok() && fp.ok();
  if (!AgreeNoErrors(command, local_ok ? "" : std::string((config.ok() ? fp.status() : config.status()).message()))) {
    return fail(1, "");
  }
  share.config = *config;
  std::vector<uint64_t> fps(mpi.size());
  MPI_Allgather(&*fp, 1, MPI_UINT64_T, fps.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (int r = 1; r < mpi.size(); ++r) {
    if (fps[r] != fps[0]) {
      return fail(1, absl::StrCat("ranks see different model files at ", model_dir, ": rank ", r,
                                  "'s config.json, safetensors or tokenizer files differ from rank 0's (fingerprints ",
                                  absl::Hex(fps[r]), " vs ", absl::Hex(fps[0]), ")"));
    }
  }
  if (before_load && !AgreeNoErrors(command, before_load())) return fail(1, "");
  auto placement = MakePlacementPlan(share.config, place);
  if (!placement.ok()) return fail(2, std::string(placement.status().message()));
  share.placement = *std::move(placement);
  // Ranks the launcher left unbound share the node's cores out (one part
  // each): oversubscribed OpenMP threads spin against each other and against
  // MPI's progress polling (kernels/cpu/numa.h).
  auto backend = MakeBackend(rt.device, rt.math,
                             HostThreads{rt.threads, rt.numa, share.pc.local_rank, share.pc.local_size});
  auto model = backend.ok() ? DeepseekModel::Load(model_dir, rt, share.placement.ranks[rank].load, *std::move(backend))
                            : absl::StatusOr<std::unique_ptr<DeepseekModel>>(backend.status());
  if (!AgreeNoErrors(command, model.ok() ? "" : std::string(model.status().message()))) return fail(1, "");
  share.model = *std::move(model);
  share.world = MakeMpiCommunicator(MPI_COMM_WORLD);
  auto stage = share.world->Split(share.pc.stage, share.pc.ep_rank);
  if (!stage.ok()) mpi.Abort(std::string(stage.status().message()));  // collective already entered: cannot agree
  share.stage = *std::move(stage);
  return share;
}

absl::StatusOr<RankShare> SetUpSingleRank(const std::string& model_dir, const RuntimeConfig& rt) {
  RankShare share;
  share.pc = ParallelConfig::Single();
  ASSIGN_OR_RETURN(auto backend, MakeBackend(rt.device, rt.math, HostThreads{rt.threads, rt.numa}));
  ASSIGN_OR_RETURN(share.model, DeepseekModel::Load(model_dir, rt, LoadSpec{}, std::move(backend)));
  share.config = share.model->config();
  return share;
}

serve::RankResources JobResources(RankShare& share, const std::string& command) {
  serve::RankResources r;
  r.model = share.model.get();
  r.pc = share.pc;
  r.world = share.world.get();
  r.stage = share.stage.get();
  r.experts = share.world ? &share.placement.experts : nullptr;
  if (share.world) r.agree = [command](const std::string& e) { return AgreeNoErrors(command, e); };
  return r;
}

}  // namespace deepshard
