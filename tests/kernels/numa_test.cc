// Thread placement (kernels/cpu/numa.h): the plans on synthetic multi-socket
// topologies (hwloc builds them; this machine has one NUMA node), and pinning
// on this machine's own cores.
#include "kernels/cpu/numa.h"

#include <gtest/gtest.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"

namespace deepshard::cpu {
namespace {

// 2 packages x 2 NUMA nodes x 4 cores x 2 hardware threads: 16 cores, PUs 2c and 2c+1.
constexpr char kTwoSockets[] = "pack:2 numa:2 core:4 pu:2";

HostTopology Synthetic(const char* desc) {
  auto t = LoadHostTopology(desc);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : HostTopology{};
}

std::vector<int> Range(int lo, int hi) {
  std::vector<int> v;
  for (int i = lo; i < hi; ++i) v.push_back(i);
  return v;
}

// The core index (in the topology's order) of a pinned thread's PUs.
int CoreOf(const HostTopology& h, const std::vector<int>& pus) {
  for (size_t c = 0; c < h.cores.size(); ++c) {
    if (h.cores[c].pus == pus) return static_cast<int>(c);
  }
  return -1;
}

TEST(NumaModeTest, ParsesItsNamesAndRefusesOthers) {
  for (NumaMode m : {NumaMode::kAuto, NumaMode::kDistribute, NumaMode::kOff}) {
    auto parsed = ParseNumaMode(NumaModeName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  auto bad = ParseNumaMode("isolate");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--numa"), std::string_view::npos);
  EXPECT_NE(bad.status().message().find("\"isolate\""), std::string_view::npos);
}

TEST(NumaTopologyTest, SyntheticTwoSocketMachine) {
  HostTopology h = Synthetic(kTwoSockets);
  EXPECT_EQ(h.packages, 2);
  EXPECT_EQ(h.nodes, (std::vector<int>{0, 1, 2, 3}));
  ASSERT_EQ(h.cores.size(), 16u);
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(h.cores[c].node, c / 4) << "core " << c;
    EXPECT_EQ(h.cores[c].pus, (std::vector<int>{2 * c, 2 * c + 1})) << "core " << c;
  }
  auto bad = LoadHostTopology("pack:two");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("pack:two"), std::string_view::npos);
}

TEST(NumaTopologyTest, ThisMachineHasItsCpus) {
  auto h = LoadHostTopology();
  ASSERT_TRUE(h.ok()) << h.status();
  std::set<int> pus;
  for (const HostCore& c : h->cores) pus.insert(c.pus.begin(), c.pus.end());
  // Every CPU this process may run on belongs to a core hwloc reported.
  for (int cpu : ProcessCpus()) EXPECT_TRUE(pus.count(cpu)) << "CPU " << cpu;
}

TEST(NumaPlanTest, OneRankSpanningNodesPinsOneThreadPerCoreNodeByNode) {
  HostTopology h = Synthetic(kTwoSockets);
  ThreadPlacement p = PlanThreads(h, Range(0, 32), HostThreads{}, false, false);
  EXPECT_EQ(p.threads, 16);
  ASSERT_TRUE(p.pinned);
  ASSERT_EQ(p.pus.size(), 16u);
  for (int t = 0; t < 16; ++t) {
    EXPECT_EQ(CoreOf(h, p.pus[t]), t);
    EXPECT_EQ(p.node[t], t / 4);
  }
  EXPECT_NE(p.summary.find("16 threads pinned one per core"), std::string::npos) << p.summary;
  EXPECT_NE(p.summary.find("NUMA nodes 0-3 (4+4+4+4 cores)"), std::string::npos) << p.summary;
}

TEST(NumaPlanTest, FewerThreadsThanCoresSpreadOverEveryNodeInOrder) {
  HostTopology h = Synthetic(kTwoSockets);
  ThreadPlacement p = PlanThreads(h, Range(0, 32), HostThreads{6, NumaMode::kAuto}, false, false);
  ASSERT_TRUE(p.pinned);
  ASSERT_EQ(p.threads, 6);
  std::set<int> cores, nodes;
  for (int t = 0; t < 6; ++t) {
    cores.insert(CoreOf(h, p.pus[t]));
    nodes.insert(p.node[t]);
    // Contiguous thread blocks per node: a GEMV slab (contiguous threads'
    // rows) then belongs to one node.
    if (t > 0) {
      EXPECT_GE(p.node[t], p.node[t - 1]);
    }
  }
  EXPECT_EQ(cores.size(), 6u);
  EXPECT_EQ(nodes.size(), 4u);
}

TEST(NumaPlanTest, MoreThreadsThanCoresShareCoresInOrder) {
  HostTopology h = Synthetic(kTwoSockets);
  ThreadPlacement p = PlanThreads(h, Range(0, 32), HostThreads{32, NumaMode::kDistribute}, false, false);
  ASSERT_TRUE(p.pinned);
  for (int t = 0; t < 32; ++t) EXPECT_EQ(CoreOf(h, p.pus[t]), t / 2);
  EXPECT_NE(p.summary.find("over the cores"), std::string::npos) << p.summary;
}

TEST(NumaPlanTest, UnboundLocalRanksShareTheNodeOut) {
  HostTopology h = Synthetic(kTwoSockets);
  // Two ranks: a socket each.
  for (int r = 0; r < 2; ++r) {
    ThreadPlacement p = PlanThreads(h, Range(0, 32), HostThreads{0, NumaMode::kAuto, r, 2}, false, false);
    EXPECT_EQ(p.threads, 8);
    ASSERT_TRUE(p.pinned);
    for (int t = 0; t < 8; ++t) EXPECT_EQ(CoreOf(h, p.pus[t]), 8 * r + t);
    EXPECT_NE(p.summary.find(absl::StrCat("local rank ", r, " of 2")), std::string::npos) << p.summary;
  }
  // Four ranks: a NUMA node each, pinned so the share is real.
  for (int r = 0; r < 4; ++r) {
    ThreadPlacement p = PlanThreads(h, Range(0, 32), HostThreads{0, NumaMode::kAuto, r, 4}, false, false);
    EXPECT_EQ(p.threads, 4);
    ASSERT_TRUE(p.pinned);
    for (int t = 0; t < 4; ++t) EXPECT_EQ(p.node[t], r);
  }
  // Three ranks: disjoint contiguous parts covering every core.
  std::vector<int> seen(16, 0);
  for (int r = 0; r < 3; ++r) {
    ThreadPlacement p = PlanThreads(h, Range(0, 32), HostThreads{0, NumaMode::kDistribute, r, 3}, false, false);
    ASSERT_TRUE(p.pinned);
    for (const auto& pus : p.pus) ++seen[CoreOf(h, pus)];
  }
  EXPECT_EQ(seen, std::vector<int>(16, 1));
  // More ranks than cores: one core each, round robin.
  ThreadPlacement p = PlanThreads(h, Range(0, 32), HostThreads{0, NumaMode::kAuto, 20, 40}, false, false);
  EXPECT_EQ(p.threads, 1);
  ASSERT_TRUE(p.pinned);
  EXPECT_EQ(CoreOf(h, p.pus[0]), 4);
}

TEST(NumaPlanTest, ALauncherBoundRankKeepsItsCores) {
  HostTopology h = Synthetic(kTwoSockets);
  // mpirun --bind-to numa gave this rank node 1 (cores 4-7, PUs 8-15): it is
  // not split again among the local ranks, and one node needs no pinning.
  ThreadPlacement p = PlanThreads(h, Range(8, 16), HostThreads{0, NumaMode::kAuto, 1, 4}, false, false);
  EXPECT_EQ(p.threads, 4);
  EXPECT_FALSE(p.pinned);
  EXPECT_NE(p.summary.find("CPUs 8-15, NUMA node 1"), std::string::npos) << p.summary;
  p = PlanThreads(h, Range(8, 16), HostThreads{0, NumaMode::kDistribute, 1, 4}, false, false);
  ASSERT_TRUE(p.pinned);
  for (int t = 0; t < 4; ++t) EXPECT_EQ(CoreOf(h, p.pus[t]), 4 + t);
  // Bound to one hardware thread of each of two cores: those PUs only.
  p = PlanThreads(h, {0, 2}, HostThreads{0, NumaMode::kDistribute}, false, false);
  EXPECT_EQ(p.threads, 2);
  EXPECT_EQ(p.pus, (std::vector<std::vector<int>>{{0}, {2}}));
}

TEST(NumaPlanTest, OneNodeAutoDoesNotPinAndOffNeverDoes) {
  HostTopology h = Synthetic("pack:1 numa:1 core:8 pu:1");
  ThreadPlacement p = PlanThreads(h, Range(0, 8), HostThreads{}, false, false);
  EXPECT_EQ(p.threads, 8);
  EXPECT_FALSE(p.pinned);
  EXPECT_NE(p.summary.find("not pinned (one NUMA node"), std::string::npos) << p.summary;
  EXPECT_TRUE(PlanThreads(h, Range(0, 8), HostThreads{0, NumaMode::kDistribute}, false, false).pinned);
  HostTopology two = Synthetic(kTwoSockets);
  p = PlanThreads(two, Range(0, 32), HostThreads{0, NumaMode::kOff}, false, false);
  EXPECT_FALSE(p.pinned);
  EXPECT_EQ(p.threads, 16);
  EXPECT_NE(p.summary.find("--numa off"), std::string::npos) << p.summary;
}

TEST(NumaPlanTest, OpenMpEnvironmentWins) {
  HostTopology h = Synthetic(kTwoSockets);
  // OMP_NUM_THREADS: the count is OpenMP's; the threads are still pinned.
  ThreadPlacement p = PlanThreads(h, Range(0, 32), HostThreads{}, /*omp_threads_env=*/true, false);
  EXPECT_TRUE(p.pinned);
  EXPECT_EQ(p.threads, std::max(1, omp_get_max_threads()));
  // OMP_PROC_BIND / OMP_PLACES: OpenMP binds, this plan does not.
  p = PlanThreads(h, Range(0, 32), HostThreads{0, NumaMode::kDistribute}, false, /*omp_binding_env=*/true);
  EXPECT_FALSE(p.pinned);
  EXPECT_EQ(p.threads, 0);
  EXPECT_NE(p.summary.find("bound by OpenMP"), std::string::npos) << p.summary;
}

TEST(NumaPinTest, ThreadsStayOnTheirCoresAcrossParallelRegions) {
  auto h = LoadHostTopology();
  ASSERT_TRUE(h.ok()) << h.status();
  const std::vector<int> all = ProcessCpus();
  ThreadPlacement p = PlanThreads(*h, all, HostThreads{0, NumaMode::kDistribute}, false, false);
  ASSERT_TRUE(p.pinned);
  ASSERT_TRUE(ApplyThreadPlacement(p).ok());
  EXPECT_EQ(omp_get_max_threads(), p.threads);
  for (int region = 0; region < 3; ++region) {
    std::vector<std::vector<int>> masks(p.threads);
    std::vector<int> where(p.threads, -1);
#pragma omp parallel
    {
      const int t = omp_get_thread_num();
      cpu_set_t set;
      CPU_ZERO(&set);
      pthread_getaffinity_np(pthread_self(), sizeof(set), &set);
      for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (CPU_ISSET(c, &set)) masks[t].push_back(c);
      }
      where[t] = sched_getcpu();
    }
    for (int t = 0; t < p.threads; ++t) {
      EXPECT_EQ(masks[t], p.pus[t]) << "thread " << t << ", region " << region;
      EXPECT_TRUE(std::count(p.pus[t].begin(), p.pus[t].end(), where[t])) << "thread " << t << " ran on " << where[t];
    }
  }
  // Unpin (the other tests in this process schedule freely).
#pragma omp parallel
  {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c : all) CPU_SET(c, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  }
}

TEST(NumaPinTest, TheBackendDescribesItsPlacement) {
  auto b = MakeBackend("cpu", MathMode::kExact, HostThreads{1, NumaMode::kOff});
  ASSERT_TRUE(b.ok()) << b.status();
  const std::string d = (*b)->Describe();
  EXPECT_NE(d.find("1 thread on "), std::string::npos) << d;
  EXPECT_NE(d.find("not pinned (--numa off)"), std::string::npos) << d;
}

TEST(NumaTextTest, CpuLists) {
  EXPECT_EQ(CpuListString({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(CpuListString({5}), "5");
  EXPECT_EQ(CpuListString({}), "");
}

}  // namespace
}  // namespace deepshard::cpu
