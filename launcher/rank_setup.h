// One rank's share of a pp × ep job, set up collectively by `generate` and
// `serve` under mpirun/srun. Every check is agreed on by all ranks, so a
// mistake (a world that is not pp × ep, a layout the model cannot take, ranks
// that see different model files, a missing file) gives one message from rank
// 0 and the same exit code on every rank instead of a hang:
//
//   int code = 0;
//   auto share = SetUpRankShare("serve", dir, place, rt, mpi, &code);
//   if (!share) return code;       // 2: bad grid or layout, 1: files or loading
//   ... share->model, share->pc, share->placement, share->world, share->stage ...
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "comm/communicator.h"
#include "comm/parallel_config.h"
#include "launcher/flags.h"
#include "launcher/mpi_bootstrap.h"
#include "runtime/config/model_config.h"
#include "runtime/model/deepseek_model.h"
#include "runtime/parallel/placement.h"
#include "serve/job.h"

namespace deepshard {

// Start-up liveness of a multi-rank job (issue 16): from just after MPI_Init
// until the job's own control plane is up, a rank that stops (SIGSTOP, a hung
// load) would leave the others blocked in an MPI collective forever. Rank 0
// runs a small control plane (serve/control_plane.h) for that window; every
// worker connects and heartbeats from its io thread, so a stopped rank is
// lost after the heartbeat timeout and the job ends naming it. Ended by
// EndStartupWatch once serve::Job::Start has returned (rank 0 sends the
// workers a shutdown frame and closes its side; nothing is logged). Before
// the watch is connected (MPI_Init, its one broadcast), the start-up deadline
// (--startup-timeout, StartupDeadline in mpi_bootstrap.h) covers the rank; it
// ends as soon as the watch takes over, or at EndStartupWatch if it never does.
class StartupWatch;

struct RankShare {
  std::shared_ptr<StartupWatch> startup_watch;  // declared first: destroyed last
  MpiSession* mpi = nullptr;  // its start-up deadline ends with EndStartupWatch (null on one rank)
  ParallelConfig pc;
  ModelConfig config;
  PlacementPlan placement;
  std::unique_ptr<DeepseekModel> model;  // this rank's layers and experts
  std::unique_ptr<Communicator> world;   // every rank
  std::unique_ptr<Communicator> stage;   // this rank's stage, ordered by ep_rank
};

// From now on a lost rank is the job's business (serve::Job), not a start-up
// stall. Also ends the start-up deadline (--startup-timeout, MpiSession) if
// the start-up watch could not take over from it.
void EndStartupWatch(RankShare& share);

// The value flags every model-running command (generate, serve) shares:
// --device cpu, --math exact|fast, --mla auto|naive|absorbed, --threads,
// --max-context, --kv-cache-dtype f32|bf16, --weights stored|int8|int4,
// --weights-group, --pp, --ep, --layer-split,
// --expert-map, --startup-timeout, and the engine's: --kv-cache-memory,
// --block-size, --max-num-seqs, --max-num-batched-tokens, --prefill-chunk,
// --micro-batches.
const std::set<std::string>& ModelRunFlags();
// `command_flags` plus ModelRunFlags(), for Flags::Parse.
std::set<std::string> WithModelRunFlags(std::set<std::string> command_flags);
// The boolean flags they share: --no-prefix-cache, --quantize-fp8.
const std::set<std::string>& ModelRunBoolFlags();
// `command_bool_flags` plus ModelRunBoolFlags(), for Flags::Parse.
std::set<std::string> WithModelRunBoolFlags(std::set<std::string> command_bool_flags);
// --weights, --weights-group and --quantize-fp8 into `rt` (errors name the flag).
absl::Status ParseWeightFlags(const Flags& flags, RuntimeConfig* rt);
// Reads those flags into `rt`, `place`, `job` and `startup_timeout_s`
// (--startup-timeout, seconds; 0: none); errors name the flag.
absl::Status ParseModelRunFlags(const Flags& flags, RuntimeConfig* rt, PlacementOptions* place,
                                serve::JobOptions* job, double* startup_timeout_s);
// --startup-timeout's default: loading is watched by heartbeats, so this only
// bounds MPI_Init and the first collectives, which take seconds.
inline constexpr double kDefaultStartupTimeout = 300;
// The usage lines of those flags.
extern const char kModelRunUsage[];

// One rank without MPI: the model on the backend rt.device names.
absl::StatusOr<RankShare> SetUpSingleRank(const std::string& model_dir, const RuntimeConfig& rt);
// What serve::Job needs from a share (agreement through AgreeNoErrors when
// under MPI).
serve::RankResources JobResources(RankShare& share, const std::string& command);

// Collective over MPI_COMM_WORLD. `before_load` (optional) runs on every rank
// after the file checks and before the weights load; a non-empty result is an
// error, agreed on like the others (exit code 1). OpenMP threads default to the
// node's cores divided by its ranks.
std::optional<RankShare> SetUpRankShare(const std::string& command, const std::string& model_dir,
                                        const PlacementOptions& place, RuntimeConfig rt, MpiSession& mpi,
                                        int* exit_code, const std::function<std::string()>& before_load = {});

}  // namespace deepshard
