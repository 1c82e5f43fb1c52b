#include "launcher/mpi_bootstrap.h"

#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <mutex>
#include <thread>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "serve/signals.h"

namespace deepshard {

bool LaunchedUnderMpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

int LauncherRank() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}) {
    const char* s = std::getenv(v);
    if (s != nullptr && *s != '\0') return std::atoi(s);
  }
  return -1;
}

bool IsRootProcess() { return !LaunchedUnderMpi() || LauncherRank() <= 0; }

StartupDeadline::StartupDeadline(std::string command, double timeout_s, int rank)
    : stage_("MPI_Init: another rank stopped, hung or unreachable, or a firewall between the nodes?"), rank_(rank) {
  if (!(timeout_s > 0)) return;
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) std::snprintf(host, sizeof(host), "?");
  const auto limit = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(timeout_s));
  thread_ = std::thread([this, command = std::move(command), host = std::string(host), timeout_s, limit] {
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, limit, [this] { return disarmed_; })) return;
    // The main thread may be inside MPI: no destructors, no MPI_Abort (it
    // would need the very connections that hang); mpirun ends the others.
    serve::Log(command, absl::StrCat("error: ", rank_ >= 0 ? absl::StrCat("rank ", rank_) : std::string("a rank"),
                                     " (host ", host, "): start-up did not finish within ",
                                     absl::StrFormat("%g", timeout_s), " s (stuck in ", stage_,
                                     "); exiting (--startup-timeout)"));
    serve::ExitNow(1);
  });
}

StartupDeadline::~StartupDeadline() {
  Disarm();
  if (thread_.joinable()) thread_.join();
}

void StartupDeadline::SetStage(std::string stage, int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  stage_ = std::move(stage);
  rank_ = rank;
}

void StartupDeadline::Disarm() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    disarmed_ = true;
  }
  cv_.notify_all();
}

MpiSession::MpiSession(int* argc, char*** argv, const std::string& command, double startup_timeout_s)
    : command_(command) {
  if (startup_timeout_s > 0) deadline_ = std::make_unique<StartupDeadline>(command, startup_timeout_s, LauncherRank());
  int provided = 0;
  // OpenMP threads compute inside a rank; only the main thread calls MPI.
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  // Errors come back as codes (the Communicator turns them into Status); a
  // rank that cannot continue calls Abort, which ends the whole job promptly.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  SetStartupStage("the start-up collectives, before the start-up heartbeats: another rank stopped, hung or "
                  "unreachable?");
}

// A deadline never ended (start-up failed on every rank) also covers
// MPI_Finalize; otherwise a watch of its own does (kFinalizeTimeoutS): it
// names the rank and exits 1, and mpirun ends the rank that holds the rest.
MpiSession::~MpiSession() {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread watch([&] {
    std::unique_lock<std::mutex> lock(mu);
    const auto limit = std::chrono::duration<double>(kFinalizeTimeoutS);
    if (cv.wait_for(lock, limit, [&] { return done; })) return;
    serve::Log(command_, absl::StrCat("error: rank ", rank_, ": MPI_Finalize did not return within ",
                                      absl::StrFormat("%g", kFinalizeTimeoutS),
                                      " s (another rank stopped or hung while the job shut down); exiting"));
    serve::ExitNow(1);
  });
  // Test hook (tests/launcher/mpi_failures_test.sh): this rank stops itself
  // where a rank stopped during a normal shutdown would be.
  if (const char* r = std::getenv("DEEPSHARD_TEST_STOP_BEFORE_FINALIZE"); r != nullptr && std::atoi(r) == rank_) {
    ::raise(SIGSTOP);
  }
  MPI_Finalize();
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_all();
  watch.join();
  deadline_.reset();
}

void MpiSession::SetStartupStage(std::string stage) {
  if (deadline_) deadline_->SetStage(std::move(stage), rank_);
}

void MpiSession::EndStartupDeadline() {
  if (deadline_) deadline_->Disarm();
}

void MpiSession::Abort(const std::string& message, int code) const {
  std::fprintf(stderr, "deepshard rank %d: %s\n", rank_, message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();
}

// Collective: true on every rank if no rank reports an error. Rank 0 prints
// each distinct error once, with the ranks that hit it, so a mistake every
// rank makes (a wrong path) reads as one message.
bool AgreeNoErrors(const std::string& command, const std::string& local_error) {
  constexpr int kLen = 1024;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char mine[kLen] = {0};
  std::snprintf(mine, kLen, "%s", local_error.c_str());
  std::vector<char> all(rank == 0 ? static_cast<size_t>(size) * kLen : 1);
  MPI_Gather(mine, kLen, MPI_CHAR, all.data(), kLen, MPI_CHAR, 0, MPI_COMM_WORLD);
  int bad = local_error.empty() ? 0 : 1, any = 0;
  MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any) {
    std::vector<std::pair<std::string, std::vector<int>>> distinct;
    for (int r = 0; r < size; ++r) {
      std::string m(all.data() + static_cast<size_t>(r) * kLen);
      if (m.empty()) continue;
      auto it = std::find_if(distinct.begin(), distinct.end(), [&](const auto& d) { return d.first == m; });
      if (it == distinct.end()) distinct.push_back({m, {r}});
      else it->second.push_back(r);
    }
    for (const auto& [m, ranks] : distinct) {
      const std::string who = static_cast<int>(ranks.size()) == size ? "every rank"
                              : absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ","));
      std::fprintf(stderr, "deepshard %s: error: %s: %s\n", command.c_str(), who.c_str(), m.c_str());
    }
  }
  return any == 0;
}

}  // namespace deepshard
