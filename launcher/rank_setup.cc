#include "launcher/rank_setup.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/mpi_communicator.h"
#include "runtime/weights/safetensors.h"

namespace deepshard {

std::optional<RankShare> SetUpRankShare(const std::string& command, const std::string& model_dir,
                                        const PlacementOptions& place, RuntimeConfig rt, MpiSession& mpi,
                                        int* exit_code, const std::function<std::string()>& before_load) {
  const int rank = mpi.rank();
  auto fail = [&](int code, const std::string& m) {
    if (rank == 0 && !m.empty()) std::fprintf(stderr, "deepshard %s: error: %s\n", command.c_str(), m.c_str());
    *exit_code = code;
    return std::nullopt;
  };
  RankShare share;
  auto pc = ParallelConfig::FromMpi(MPI_COMM_WORLD, place.pp, place.ep);
  if (!pc.ok()) return fail(2, std::string(pc.status().message()));
  share.pc = *pc;
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
  if (rt.threads == 0 && std::getenv("OMP_NUM_THREADS") == nullptr) {
    // Share the node's cores among its ranks: oversubscribed OpenMP threads
    // spin against each other and against MPI's progress polling.
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    rt.threads = std::max(1, cores / std::max(1, share.pc.local_size));
  }
  auto model = DeepseekModel::Load(model_dir, rt, share.placement.ranks[rank].load);
  if (!AgreeNoErrors(command, model.ok() ? "" : std::string(model.status().message()))) return fail(1, "");
  share.model = *std::move(model);
  share.world = MakeMpiCommunicator(MPI_COMM_WORLD);
  auto stage = share.world->Split(share.pc.stage, share.pc.ep_rank);
  if (!stage.ok()) mpi.Abort(std::string(stage.status().message()));  // collective already entered: cannot agree
  share.stage = *std::move(stage);
  return share;
}

}  // namespace deepshard
