// Job: one rank's part of a job that runs through the engine. `deepshard
// serve` and `deepshard generate` are both jobs; they differ only in what rank
// 0 does with the engine (an HTTP front end, or a batch of prompts).
//
//   every rank   the KV pool (--kv-cache-memory, the tightest rank decides the
//                block count), its StageRunner, and with several ranks the
//                control plane: rank 0 listens (Asio TCP), sends its address and
//                a fresh job secret to every rank over the world communicator,
//                and every rank connects and authenticates
//   rank 0       the Engine, wired to the control plane (plans out; results,
//                heartbeats, fatal errors and drain requests in), and a failure
//                watchdog that ends the process when the engine fails, even if
//                rank 0's own thread is stuck in a collective with a dead rank
//   rank r > 0   RunWorker: plans in, results and heartbeats out, until rank 0
//                says stop; exits at once if rank 0 goes away
//
//   int code = 0;
//   auto job = serve::Job::Start(resources, options, &code);
//   if (!job) return code;
//   if (!job->is_root()) return job->RunWorker(&signals);
//   ... job->engine().Submit(...); job->engine().Run(...) ...
//   job->Shutdown();
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "comm/communicator.h"
#include "comm/moe_exchange.h"
#include "comm/parallel_config.h"
#include "runtime/batching/paged_kv_cache.h"
#include "runtime/model/deepseek_model.h"
#include "serve/control_plane.h"
#include "serve/engine.h"
#include "serve/signals.h"
#include "serve/stage_runner.h"

namespace deepshard::serve {

struct JobOptions {
  std::string command = "serve";  // names the job in messages: "deepshard <command>: ..."
  int64_t kv_bytes = 1ll << 30;   // --kv-cache-memory, per rank
  int64_t block_size = 64;
  int64_t max_num_seqs = 64, max_batched_tokens = 512, prefill_chunk = 512;
  int64_t max_waiting = 256;
  int64_t micro_batches = 0;      // 0: pp
  bool prefix_caching = true;     // --no-prefix-cache turns it off
  double heartbeat_timeout = 3;   // seconds without a frame before a rank is lost
  double failure_linger = 2;      // seconds rank 0 keeps answering after a failure
  double drain_timeout = 30;      // seconds running requests get after a drain request
  std::string control_bind;       // rank 0's control plane listens here (default: 0.0.0.0, or 127.0.0.1 on one node)
  std::string control_host;       // rank 0's address for the others (default: its hostname, or 127.0.0.1 on one node)
  bool announce = true;           // log the control plane and every rank's "ready, pid" line (serve)
};

// This rank's share, from the launcher's collective set-up.
struct RankResources {
  DeepseekModel* model = nullptr;
  ParallelConfig pc;
  Communicator* world = nullptr;         // null with one rank
  Communicator* stage = nullptr;
  const ExpertPlacement* experts = nullptr;
  // Collective: true on every rank when no rank reports an error; rank 0 prints
  // each distinct one. Null with one rank.
  std::function<bool(const std::string& local_error)> agree;
};

class Job {
 public:
  // Collective over the world. On failure returns null with the message
  // printed (once) and *exit_code set: 2 for a bad setting, 1 otherwise.
  static std::unique_ptr<Job> Start(const RankResources& r, const JobOptions& o, int* exit_code);
  ~Job();

  bool is_root() const { return r_.pc.rank == 0; }
  const ParallelConfig& parallel() const { return r_.pc; }
  const JobOptions& options() const { return o_; }
  DeepseekModel& model() { return *r_.model; }
  int64_t n_blocks() const { return n_blocks_; }
  Engine& engine() { return *engine_; }              // rank 0
  ControlServer* control() { return control_.get(); }  // rank 0 with several ranks

  // Ranks > 0. Returns the exit code. `signals` (optional): a stop signal asks
  // rank 0 to drain the job.
  int RunWorker(StopSignals* signals);
  // Rank 0: tells every rank to exit and closes the control plane (flushing).
  // After a failure (engine().failed()) it does not return: exit 1, at once.
  void Shutdown();

 private:
  Job(const RankResources& r, const JobOptions& o) : r_(r), o_(o) {}
  void WireRank0();
  void StartWatchdog();
  void StopWatchdog();

  RankResources r_;
  JobOptions o_;
  int64_t n_blocks_ = 0;
  std::unique_ptr<PagedKvCache> pool_;
  std::unique_ptr<StageRunner> runner_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<ControlClient> client_;
  std::unique_ptr<Engine> engine_;
  std::atomic<bool> watchdog_done_{false};
  std::atomic<bool> shutdown_sent_{false};
  std::thread watchdog_;
};

}  // namespace deepshard::serve
