#include "serve/job.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "serve/wire.h"

namespace deepshard::serve {
namespace {

// The bytes one KV block of this rank's layers takes.
int64_t BlocksThatFit(const JobOptions& o, DeepseekModel& model) {
  const int64_t per_block = PagedKvCache::BytesPerBlock(model.config(), model.n_local_layers(), o.block_size,
                                                        model.runtime().kv_dtype);
  return per_block > 0 ? o.kv_bytes / per_block : 0;
}

}  // namespace

std::unique_ptr<Job> Job::Start(const RankResources& r, const JobOptions& o, int* exit_code) {
  auto job = std::unique_ptr<Job>(new Job(r, o));
  const ParallelConfig& pc = r.pc;
  const bool multi = pc.world > 1;
  const bool root = pc.rank == 0;
  auto say = [&](const std::string& m) {
    if (root) Log(o.command, absl::StrCat("error: ", m));
  };
  auto agree = [&](const std::string& local_error) {
    if (r.agree) return r.agree(local_error);
    if (!local_error.empty()) Log(o.command, absl::StrCat("error: ", local_error));
    return local_error.empty();
  };
  DeepseekModel& model = *r.model;

  // One block count for the whole job: the tightest rank decides, so every
  // stage of a DP column can follow one block table.
  int64_t n_blocks = BlocksThatFit(o, model);
  if (multi) {
    if (absl::Status st = r.world->AllReduce(&n_blocks, 1, CommDType::kI64, ReduceOp::kMin); !st.ok()) {
      say(std::string(st.message()));
      *exit_code = 1;
      return nullptr;
    }
  }
  if (n_blocks < 1) {
    say(absl::StrCat("--kv-cache-memory ", o.kv_bytes, " bytes holds no KV block of ", o.block_size, " tokens (",
                     PagedKvCache::BytesPerBlock(model.config(), model.n_local_layers(), o.block_size,
                                                 model.runtime().kv_dtype),
                     " bytes", multi ? " on the tightest rank" : "", "); raise it or lower --block-size"));
    *exit_code = 2;
    return nullptr;
  }
  job->n_blocks_ = n_blocks;
  char address[256] = {0};
  int32_t port = 0;
  auto pool = PagedKvCache::Create(model.backend(), model.config(), model.n_local_layers(), o.block_size, n_blocks,
                                   model.runtime().kv_dtype);
  if (!agree(pool.ok() ? "" : std::string(pool.status().message()))) {
    *exit_code = 1;
    return nullptr;
  }
  job->pool_ = *std::move(pool);
  if (multi) {
    // The largest plan must fit one control-plane frame: per column, every running
    // sequence's whole block table plus the step's tokens.
    const int64_t table = std::min<int64_t>(n_blocks, (model.max_context() + o.block_size - 1) / o.block_size);
    const int64_t worst = 64 + static_cast<int64_t>(pc.ep) *
                                   (o.max_num_seqs * (64 + 4 * table) + 4 * o.max_batched_tokens + 16) +
                          8 * o.max_num_seqs * pc.ep;
    if (worst > static_cast<int64_t>(ControlOptions{}.max_payload)) {
      say(absl::StrCat("a step plan could reach ", worst >> 20, " MiB, over the control plane's ",
                       ControlOptions{}.max_payload >> 20, " MiB frame limit: raise --block-size or lower "
                       "--max-num-seqs or --max-context"));
      *exit_code = 2;
      return nullptr;
    }

    // Control plane: rank 0 listens, everyone learns host:port and the secret.
    const bool one_node = pc.n_nodes == 1;
    char secret[128] = {0};
    std::string start_error;
    if (root) {
      ControlOptions co;
      co.heartbeat_timeout_s = o.heartbeat_timeout;
      const std::string s = NewJobSecret();
      const std::string bind = !o.control_bind.empty() ? o.control_bind : one_node ? "127.0.0.1" : "0.0.0.0";
      auto server = ControlServer::Start(bind, 0, s, pc.world, co);
      if (server.ok()) {
        job->control_ = *std::move(server);
        port = job->control_->port();
        std::string host = o.control_host;
        // A --control-bind that names one address is where the others dial.
        if (host.empty() && !o.control_bind.empty() && o.control_bind != "0.0.0.0" && o.control_bind != "::") {
          host = o.control_bind;
        }
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
    if (!agree(start_error)) {
      *exit_code = 1;
      return nullptr;
    }
    absl::Status st = r.world->Broadcast(address, sizeof(address), CommDType::kU8, 0);
    if (st.ok()) st = r.world->Broadcast(secret, sizeof(secret), CommDType::kU8, 0);
    if (st.ok()) st = r.world->Broadcast(&port, 1, CommDType::kI32, 0);
    if (!st.ok()) {
      say(std::string(st.message()));
      *exit_code = 1;
      return nullptr;
    }
    std::string connect_error;
    if (!root) {
      // The same timeout both ways: a worker gives up on a silent rank 0 after
      // --heartbeat-timeout, as rank 0 does on a silent worker.
      ControlOptions co;
      co.heartbeat_timeout_s = o.heartbeat_timeout;
      auto c = ControlClient::Connect(address, port, secret, pc.rank, /*connect_timeout_s=*/30, co);
      if (c.ok()) {
        job->client_ = *std::move(c);
      } else {
        connect_error = absl::StrCat("cannot reach rank 0's control plane at ", address, ":", port, ": ",
                                     c.status().message());
      }
    }
    std::memset(secret, 0, sizeof(secret));
    if (!agree(connect_error)) {
      *exit_code = 1;
      return nullptr;
    }
    if (root) {
      if (absl::Status w = job->control_->WaitForWorkers(30); !w.ok()) {
        say(std::string(w.message()));
        ExitNow(1);  // the workers see rank 0 go and exit too
      }
    }
  }

  job->runner_ = std::make_unique<StageRunner>(model, pc, r.world, r.stage, r.experts, *job->pool_);
  if (root) job->WireRank0();
  if (multi) {
    if (absl::Status st = r.world->Barrier(); !st.ok()) {
      say(std::string(st.message()));
      *exit_code = 1;
      return nullptr;
    }
    if (root && o.announce) {
      Log(o.command, absl::StrCat("control plane on ", address, ":", port, " (", pc.world - 1, " ranks connected)"));
    }
  }
  // Every rank's "ready, pid" line, also of a single-process job (scripts find
  // the process to signal by it).
  if (o.announce) {
    std::fprintf(stderr, "deepshard %s: rank %d (stage %d, column %d) ready, pid %d\n", o.command.c_str(), pc.rank,
                 pc.stage, pc.ep_rank, static_cast<int>(getpid()));
    std::fflush(stderr);
  }
  return job;
}

Job::~Job() {
  StopWatchdog();
  engine_.reset();  // before the runner and the pool it uses
  runner_.reset();
  pool_.reset();
}

void Job::WireRank0() {
  const ParallelConfig& pc = r_.pc;
  EngineOptions eo;
  eo.scheduler.dp_slots = pc.ep;
  eo.scheduler.blocks_per_slot = n_blocks_;
  eo.scheduler.block_size = o_.block_size;
  eo.scheduler.max_tokens_per_step = o_.max_batched_tokens;
  eo.scheduler.max_running_per_slot = o_.max_num_seqs;
  eo.scheduler.prefill_chunk = o_.prefill_chunk;
  eo.scheduler.micro_batches = o_.micro_batches > 0 ? o_.micro_batches : pc.pp;
  eo.scheduler.prefix_caching = o_.prefix_caching;
  eo.depth = std::max<int>(pc.pp, static_cast<int>(eo.scheduler.micro_batches));
  eo.max_waiting = o_.max_waiting;
  eo.vocab_size = static_cast<int32_t>(r_.model->config().vocab_size);
  eo.max_context = r_.model->max_context();
  std::function<void(const std::string&)> broadcast_plan;
  std::function<void()> broadcast_shutdown;
  ControlServer* control = control_.get();
  if (control != nullptr) {
    broadcast_plan = [control](const std::string& plan) { control->Broadcast(FrameType::kPlan, plan); };
    broadcast_shutdown = [this, control] {
      if (!shutdown_sent_.exchange(true)) control->Broadcast(FrameType::kShutdown, "");
    };
  }
  engine_ = std::make_unique<Engine>(*runner_, eo, broadcast_plan, broadcast_shutdown);
  Engine* engine = engine_.get();
  if (control != nullptr) {
    const std::string command = o_.command;
    const double drain_timeout = o_.drain_timeout;
    control->set_on_frame([engine, command, drain_timeout](int rank, Frame f) {
      switch (f.type) {
        case FrameType::kResults: engine->OnResults(rank, f.payload); break;
        case FrameType::kHeartbeat: engine->OnStats(rank, f.payload); break;
        case FrameType::kFatal: engine->OnRankLost(rank, f.payload); break;
        case FrameType::kDrain:
          engine->BeginDrain(drain_timeout);
          Log(command, absl::StrCat("rank ", rank, " got SIGTERM: draining (new requests get 503; running ones have ",
                                    drain_timeout, " s)"));
          break;
        default: engine->OnRankLost(rank, absl::StrCat("unexpected frame ", std::string(FrameTypeName(f.type)))); break;
      }
    });
    control->set_on_rank_lost([engine](int rank, std::string why) { engine->OnRankLost(rank, why); });
  }
  StartWatchdog();
}

// A failure ends the process after --failure-linger even if the engine's
// thread is stuck in a collective with a dead rank.
void Job::StartWatchdog() {
  watchdog_ = std::thread([this] {
    while (!watchdog_done_) {
      if (engine_->failed()) {
        Log(o_.command, absl::StrCat("error: ", engine_->Health().detail, "; exiting in ", o_.failure_linger, " s"));
        std::this_thread::sleep_for(std::chrono::duration<double>(o_.failure_linger));
        ExitNow(1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
}

void Job::StopWatchdog() {
  watchdog_done_ = true;
  if (watchdog_.joinable()) watchdog_.join();
}

void Job::Shutdown() {
  // A failed job has no orderly way out: a lost or stopped rank would hold
  // every other rank in MPI_Finalize. End the process now, as the watchdog
  // would (it looks every 20 ms and may not have seen the failure yet);
  // whoever found the failure has logged it.
  if (engine_ != nullptr && engine_->failed()) ExitNow(1);
  // First: from here the workers leave, and a lost rank is not a failure.
  StopWatchdog();
  if (control_ != nullptr) {
    if (!shutdown_sent_.exchange(true)) control_->Broadcast(FrameType::kShutdown, "");
    control_->Stop(/*flush_timeout_s=*/2.0);
  }
}

int Job::RunWorker(StopSignals* signals) {
  const ParallelConfig& pc = r_.pc;
  ControlClient& client = *client_;
  StageRunner& runner = *runner_;
  if (signals != nullptr) signals->SetHandler([&client](int, int) { client.Send(FrameType::kDrain, ""); });
  client.set_heartbeat_payload([&runner] { return EncodeStats(runner.Stats()); });
  // If rank 0 goes away while this thread is inside a collective, nothing
  // would wake it: exit from here.
  std::atomic<bool> done{false};
  const std::string command = o_.command;
  std::thread watchdog([&] {
    while (!done) {
      if (!client.connected()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (done) return;
        Log(command, absl::StrCat("rank ", pc.rank, ": lost the control connection to rank 0; exiting"));
        ExitNow(1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  while (true) {
    auto frame = client.Receive();
    if (!frame.ok()) {
      Log(command, absl::StrCat("rank ", pc.rank, ": ", frame.status().message(), "; exiting"));
      ExitNow(1);
    }
    if (frame->type == FrameType::kShutdown) break;
    if (frame->type != FrameType::kPlan) continue;
    absl::StatusOr<std::vector<ChunkResult>> results;
    auto plan = DecodePlan(frame->payload);
    if (plan.ok()) {
      results = runner.Run(*plan);
    } else {
      results = plan.status();
    }
    if (!results.ok()) {
      const std::string why = absl::StrCat("rank ", pc.rank, ": ", results.status().message());
      Log(command, why);
      client.Send(FrameType::kFatal, why);
      client.Stop(/*flush_timeout_s=*/1.0);
      ExitNow(1);
    }
    if (runner.last_stage()) {
      ColumnResults out{plan->id, pc.ep_rank, *std::move(results)};
      client.Send(FrameType::kResults, EncodeResults(out));
    }
  }
  done = true;
  watchdog.join();
  if (signals != nullptr) signals->SetHandler([](int, int) {});  // already shutting down
  client.Stop(/*flush_timeout_s=*/1.0);
  return 0;
}

}  // namespace deepshard::serve
