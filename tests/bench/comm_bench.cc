// deepshard_bench_comm: MoE dispatch/combine (MoeExchange on the MPI
// Communicator) against a bare MPI_Alltoallv of the same bytes, in the same run.
//
// For each hidden size and top-k (64 experts for top-6, 256 for top-8, placed
// contiguously, routing uniform random with a fixed seed), tokens per rank sweep
// 1, 2, 4, ..., max. Per size: one warm-up, then N timed iterations of
//   barrier, Dispatch, (experts: f(row, e) = row * (e + 1) + e, untimed), barrier,
//   Combine, barrier, MPI_Alltoallv with exactly dispatch's per-peer bytes.
// A time is the slowest rank's; the table shows medians over iterations.
//   algbw = 2 x bytes / (dispatch + combine), bytes = T * k * hidden * 4 sent per rank
//   ratio = (dispatch + combine) / (2 x bare)
// path: how the rows moved (shm = shared memory, one = one all-to-all-v per
// direction plus regroup copies, per-exp = one all-to-all-v per local expert).
// #wrong counts combined values that differ from f(x[t], e) (checked on the last
// iteration, summed over ranks). Output follows nccl-tests: '#' headers, fixed
// columns, an OK/FAILED footer (exit code 1 on FAILED).
//
//   mpiexec -n 4 deepshard_bench_comm [--hidden 2048,7168] [--topk 6,8]
//       [--max-tokens 4096] [--mode auto|shm|one|per-expert] [--mem-budget-gib G]
//       [--seed S] [--target-ms MS]
// Sizes whose buffers would not fit the memory budget (default: 45% of
// MemAvailable for all ranks of the node) are skipped with a '#' line.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "comm/moe_exchange.h"
#include "comm/mpi_communicator.h"

namespace ds = deepshard;

namespace {

struct Options {
  std::vector<int64_t> hidden = {2048, 7168};
  std::vector<int64_t> topk = {6, 8};
  int64_t max_tokens = 4096;
  ds::MoeExchange::Mode mode = ds::MoeExchange::Mode::kAuto;
  double mem_budget_gib = 0;  // 0: 45% of MemAvailable
  uint32_t seed = 1;
  double target_ms = 200;  // timed work per size (iterations = clamp(target / estimate, 3, 40))
};

std::vector<int64_t> ParseList(const char* s) {
  std::vector<int64_t> v;
  for (const char* p = s; *p;) {
    v.push_back(std::strtoll(p, const_cast<char**>(&p), 10));
    if (*p == ',') ++p;
  }
  return v;
}

bool ParseArgs(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (v == nullptr) return false;
    if (a == "--hidden") o.hidden = ParseList(v);
    else if (a == "--topk") o.topk = ParseList(v);
    else if (a == "--max-tokens") o.max_tokens = std::atoll(v);
    else if (a == "--mem-budget-gib") o.mem_budget_gib = std::atof(v);
    else if (a == "--seed") o.seed = static_cast<uint32_t>(std::atoll(v));
    else if (a == "--target-ms") o.target_ms = std::atof(v);
    else if (a == "--mode") {
      const std::string m = v;
      if (m == "auto") o.mode = ds::MoeExchange::Mode::kAuto;
      else if (m == "one") o.mode = ds::MoeExchange::Mode::kOneExchange;
      else if (m == "per-expert") o.mode = ds::MoeExchange::Mode::kPerExpert;
      else if (m == "shm") o.mode = ds::MoeExchange::Mode::kSharedMemory;
      else return false;
    } else {
      return false;
    }
    ++i;
  }
  return true;
}

double MemAvailableGiB() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb / (1024.0 * 1024.0);
  }
  return 4.0;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

const char* ModeName(ds::MoeExchange::Mode m) {
  switch (m) {
    case ds::MoeExchange::Mode::kAuto: return "auto";
    case ds::MoeExchange::Mode::kOneExchange: return "one";
    case ds::MoeExchange::Mode::kPerExpert: return "per-exp";
    case ds::MoeExchange::Mode::kSharedMemory: return "shm";
  }
  return "?";
}

float ExpertFn(float v, int e) { return v * static_cast<float>(e + 1) + static_cast<float>(e); }

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int R, me;
  MPI_Comm_size(MPI_COMM_WORLD, &R);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  Options opt;
  if (!ParseArgs(argc, argv, opt)) {
    if (me == 0) std::fprintf(stderr, "usage: see the comment at the top of tests/bench/comm_bench.cc\n");
    MPI_Finalize();
    return 2;
  }
  std::unique_ptr<ds::Communicator> comm = ds::MakeMpiCommunicator(MPI_COMM_WORLD);
  MPI_Comm world = MPI_COMM_WORLD;

  // Memory budget per rank, from the node's MemAvailable shared by the node's ranks.
  MPI_Comm local;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, me, MPI_INFO_NULL, &local);
  int local_size;
  MPI_Comm_size(local, &local_size);
  double budget_gib = opt.mem_budget_gib > 0 ? opt.mem_budget_gib : 0.45 * MemAvailableGiB();
  MPI_Bcast(&budget_gib, 1, MPI_DOUBLE, 0, local);
  MPI_Comm_free(&local);
  const double per_rank_budget = budget_gib * (1 << 30) / local_size;

  char host[MPI_MAX_PROCESSOR_NAME];
  int host_len;
  MPI_Get_processor_name(host, &host_len);
  if (me == 0) {
    std::printf("# deepshard_bench_comm: MoE dispatch/combine (MoeExchange, MPI backend) vs bare MPI_Alltoallv\n");
    std::printf("# ranks %d on %s, memory budget %.1f GiB for the node's %d ranks, seed %u, mode %s\n", R,
                host, budget_gib, local_size, opt.seed,
                ModeName(opt.mode));
    std::printf("# time = median over iterations of the slowest rank; bare = MPI_Alltoallv of dispatch's per-peer bytes\n");
    std::printf("# algbw = 2 x bytes / (dispatch + combine); ratio = (dispatch + combine) / (2 x bare)\n");
  }

  int64_t total_wrong = 0;
  std::vector<float> x, out, bare_send, bare_recv;
  for (int64_t H : opt.hidden) {
    for (int64_t k : opt.topk) {
      const int64_t E = k == 6 ? 64 : 256;
      ds::MoeExchange ex(*comm, ds::ExpertPlacement::Contiguous(E, R), H);
      ex.set_mode(opt.mode);
      const ds::ExpertPlacement& pl = ex.placement();
      std::vector<int> local_expert(pl.n_local[me]);
      for (int64_t e = 0; e < E; ++e)
        if (pl.owner[e] == me) local_expert[pl.local_index[e]] = static_cast<int>(e);
      if (me == 0) {
        std::printf("#\n# ranks %d, hidden %lld, top-k %lld, experts %lld (%lld-%lld per rank), f32 rows\n", R,
                    static_cast<long long>(H), static_cast<long long>(k), static_cast<long long>(E),
                    static_cast<long long>(E / R), static_cast<long long>((E + R - 1) / R));
        std::printf("#%10s %12s %12s %12s %11s %12s %7s %9s %7s\n", "tokens", "bytes", "dispatch_us",
                    "combine_us", "algbw_GB/s", "bare_us", "ratio", "path", "#wrong");
      }
      for (int64_t T = 1; T <= opt.max_tokens; T *= 2) {
        const int64_t S = T * k;
        const double bytes = static_cast<double>(S) * H * 4;
        // Footprint per rank: x, out, the bare exchange's two buffers and the
        // exchange: shared segments (2 regions + headroom) or send, grouped,
        // expert output and receive staging.
        const bool shm = opt.mode == ds::MoeExchange::Mode::kAuto || opt.mode == ds::MoeExchange::Mode::kSharedMemory;
        const double footprint = bytes / k + bytes * (shm ? 5.5 : 7);
        if (footprint > per_rank_budget) {
          if (me == 0) {
            std::printf("# skipped tokens/rank %lld and up: ~%.1f GiB per rank, over the budget of %.1f GiB\n",
                        static_cast<long long>(T), footprint / (1 << 30), per_rank_budget / (1 << 30));
          }
          break;
        }
        // Routing: k distinct uniform experts per token; x in multiples of 1/64 so
        // that f is exact in float.
        std::mt19937 rng(opt.seed * 1000003u + static_cast<uint32_t>(me) * 7919u + static_cast<uint32_t>(T));
        std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(E - 1));
        std::vector<int32_t> ids(S);
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t i = 0; i < k; ++i) {
            int32_t e;
            do e = pick(rng);
            while (std::find(ids.begin() + t * k, ids.begin() + t * k + i, e) != ids.begin() + t * k + i);
            ids[t * k + i] = e;
          }
        }
        x.resize(T * H);
        for (int64_t i = 0; i < T * H; ++i) x[i] = static_cast<float>(static_cast<int>(rng() % 129) - 64) / 64.f;
        out.assign(S * H, 0.f);
        // Bare exchange with dispatch's exact per-peer bytes (self included).
        std::vector<int> sc(R, 0), sd(R, 0), rc(R, 0), rd(R, 0);
        for (int32_t e : ids) sc[pl.owner[e]] += static_cast<int>(H);
        MPI_Alltoall(sc.data(), 1, MPI_INT, rc.data(), 1, MPI_INT, world);
        int64_t ns = 0, nr = 0;
        for (int p = 0; p < R; ++p) sd[p] = static_cast<int>(ns), ns += sc[p], rd[p] = static_cast<int>(nr), nr += rc[p];
        bare_send.resize(std::max<int64_t>(ns, 1));
        bare_recv.resize(std::max<int64_t>(nr, 1));
        std::fill(bare_send.begin(), bare_send.begin() + ns, 1.f);

        // Iterations: aim at target_ms of timed work, assuming ~2 GB/s for the
        // three exchanges together on this box; at least 3, at most 40.
        const double est_ms = 3 * bytes / 2e9 * 1e3 + 0.05;
        const int iters = static_cast<int>(std::clamp(opt.target_ms / est_ms, 3.0, 40.0));
        std::vector<double> td, tc, tb;
        int64_t wrong = 0;
        bool failed = false;
        for (int it = -1; it < iters && !failed; ++it) {  // it = -1: warm-up
          MPI_Barrier(world);
          double t0 = MPI_Wtime();
          absl::Status st = ex.Dispatch(x.data(), T, ids.data(), k);
          double t1 = MPI_Wtime();
          if (!st.ok()) {
            std::fprintf(stderr, "rank %d: %s\n", me, std::string(st.message()).c_str());
            failed = true;
            break;
          }
          const float* in = ex.received();
          float* eo = ex.expert_output();
          auto off = ex.local_expert_offsets();
          for (size_t l = 0; l < local_expert.size(); ++l)
            for (int64_t i = off[l] * H; i < off[l + 1] * H; ++i) eo[i] = ExpertFn(in[i], local_expert[l]);
          MPI_Barrier(world);
          double t2 = MPI_Wtime();
          st = ex.Combine(out.data());
          double t3 = MPI_Wtime();
          if (!st.ok()) {
            std::fprintf(stderr, "rank %d: %s\n", me, std::string(st.message()).c_str());
            failed = true;
            break;
          }
          MPI_Barrier(world);
          double t4 = MPI_Wtime();
          MPI_Alltoallv(bare_send.data(), sc.data(), sd.data(), MPI_FLOAT, bare_recv.data(), rc.data(), rd.data(),
                        MPI_FLOAT, world);
          double t5 = MPI_Wtime();
          double times[3] = {t1 - t0, t3 - t2, t5 - t4};
          MPI_Allreduce(MPI_IN_PLACE, times, 3, MPI_DOUBLE, MPI_MAX, world);
          if (it >= 0) td.push_back(times[0]), tc.push_back(times[1]), tb.push_back(times[2]);
          if (it == iters - 1) {
            for (int64_t s = 0; s < S; ++s) {
              const float* xr = x.data() + (s / k) * H;
              const float* o = out.data() + s * H;
              for (int64_t h = 0; h < H; ++h) wrong += o[h] != ExpertFn(xr[h], ids[s]);
            }
          }
        }
        int fail_any = failed;
        MPI_Allreduce(MPI_IN_PLACE, &fail_any, 1, MPI_INT, MPI_MAX, world);
        if (fail_any) wrong = std::max<int64_t>(wrong, 1) ;
        MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT64_T, MPI_SUM, world);
        total_wrong += wrong;
        if (fail_any) {
          if (me == 0) std::printf("# tokens/rank %lld: the exchange returned an error\n", static_cast<long long>(T));
          continue;
        }
        if (me == 0) {
          const double d = Median(td), c = Median(tc), b = Median(tb);
          std::printf(" %10lld %12.0f %12.1f %12.1f %11.2f %12.1f %7.2f %9s %7lld\n", static_cast<long long>(T),
                      bytes, d * 1e6, c * 1e6, 2 * bytes / (d + c) / 1e9, b * 1e6, (d + c) / (2 * b),
                      ModeName(ex.last_mode()),
                      static_cast<long long>(wrong));
          std::fflush(stdout);
        }
      }
    }
  }
  if (me == 0) {
    std::printf("#\n# #wrong total: %lld\n# %s\n", static_cast<long long>(total_wrong), total_wrong == 0 ? "OK" : "FAILED");
  }
  comm.reset();
  MPI_Finalize();
  return total_wrong == 0 ? 0 : 1;
}
