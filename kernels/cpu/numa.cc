#include "kernels/cpu/numa.h"

#include <hwloc.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace deepshard {

absl::StatusOr<NumaMode> ParseNumaMode(std::string_view name) {
  if (name == "auto") return NumaMode::kAuto;
  if (name == "distribute") return NumaMode::kDistribute;
  if (name == "off") return NumaMode::kOff;
  return absl::InvalidArgumentError(
      absl::StrCat("--numa must be auto, distribute or off, got \"", std::string(name), "\""));
}

std::string_view NumaModeName(NumaMode mode) {
  switch (mode) {
    case NumaMode::kAuto: return "auto";
    case NumaMode::kDistribute: return "distribute";
    case NumaMode::kOff: return "off";
  }
  return "?";
}

namespace cpu {
namespace {

std::vector<int> BitmapList(hwloc_const_bitmap_t set) {
  std::vector<int> out;
  unsigned i;
  hwloc_bitmap_foreach_begin(i, set) out.push_back(static_cast<int>(i));
  hwloc_bitmap_foreach_end();
  return out;
}

// The cores of `host` with at least one PU in `allowed`, their PUs cut to it.
std::vector<HostCore> AllowedCores(const HostTopology& host, const std::vector<int>& allowed) {
  std::vector<HostCore> out;
  for (const HostCore& c : host.cores) {
    HostCore k{c.node, {}};
    for (int pu : c.pus) {
      if (std::find(allowed.begin(), allowed.end(), pu) != allowed.end()) k.pus.push_back(pu);
    }
    if (!k.pus.empty()) out.push_back(std::move(k));
  }
  return out;
}

std::vector<int> NodesOf(const std::vector<HostCore>& cores) {
  std::vector<int> nodes;
  for (const HostCore& c : cores) {
    if (std::find(nodes.begin(), nodes.end(), c.node) == nodes.end()) nodes.push_back(c.node);
  }
  return nodes;
}

// "NUMA node 0" / "NUMA nodes 0-1 (16+16 cores)".
std::string NodesPhrase(const std::vector<HostCore>& cores) {
  std::vector<int> nodes = NodesOf(cores);
  if (nodes.size() == 1) return absl::StrCat("NUMA node ", nodes[0]);
  std::vector<int> per;
  for (int n : nodes) per.push_back(static_cast<int>(
      std::count_if(cores.begin(), cores.end(), [n](const HostCore& c) { return c.node == n; })));
  std::vector<int> sorted = nodes;
  std::sort(sorted.begin(), sorted.end());
  return absl::StrCat("NUMA nodes ", CpuListString(sorted), " (", absl::StrJoin(per, "+"), " cores)");
}

std::vector<int> CoreIds(const std::vector<HostCore>& cores) {
  std::vector<int> pus;
  for (const HostCore& c : cores) pus.insert(pus.end(), c.pus.begin(), c.pus.end());
  std::sort(pus.begin(), pus.end());
  return pus;
}

}  // namespace

std::string CpuListString(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += j == i ? absl::StrCat(cpus[i]) : absl::StrCat(cpus[i], "-", cpus[j]);
    i = j + 1;
  }
  return out;
}

absl::StatusOr<HostTopology> LoadHostTopology(std::string_view synthetic) {
  hwloc_topology_t topo;
  if (hwloc_topology_init(&topo) != 0) return absl::InternalError("hwloc: cannot initialise a topology");
  if (!synthetic.empty() && hwloc_topology_set_synthetic(topo, std::string(synthetic).c_str()) != 0) {
    hwloc_topology_destroy(topo);
    return absl::InvalidArgumentError(
        absl::StrCat("hwloc: bad synthetic topology \"", std::string(synthetic), "\""));
  }
  if (hwloc_topology_load(topo) != 0) {
    hwloc_topology_destroy(topo);
    return absl::InternalError("hwloc: cannot read this machine's topology");
  }
  HostTopology host;
  host.packages = std::max(1, hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PACKAGE));
  const int n_nodes = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
  for (int i = 0; i < n_nodes; ++i) {
    host.nodes.push_back(static_cast<int>(hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, i)->os_index));
  }
  if (host.nodes.empty()) host.nodes.push_back(0);
  const int n_cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
  for (int i = 0; i < n_cores; ++i) {
    hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, i);
    HostCore c;
    c.pus = BitmapList(core->cpuset);
    std::vector<int> nodes = core->nodeset != nullptr ? BitmapList(core->nodeset) : std::vector<int>{};
    c.node = nodes.empty() ? host.nodes[0] : nodes[0];
    if (!c.pus.empty()) host.cores.push_back(std::move(c));
  }
  if (host.cores.empty()) {  // no core level reported (some VMs): one core per PU
    const int n_pus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
    for (int i = 0; i < n_pus; ++i) {
      hwloc_obj_t pu = hwloc_get_obj_by_type(topo, HWLOC_OBJ_PU, i);
      std::vector<int> nodes = pu->nodeset != nullptr ? BitmapList(pu->nodeset) : std::vector<int>{};
      host.cores.push_back({nodes.empty() ? host.nodes[0] : nodes[0], {static_cast<int>(pu->os_index)}});
    }
  }
  hwloc_topology_destroy(topo);
  if (host.cores.empty()) return absl::InternalError("hwloc: this machine's topology has no CPUs");
  return host;
}

std::vector<int> ProcessCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return out;
  for (int i = 0; i < CPU_SETSIZE; ++i) {
    if (CPU_ISSET(i, &set)) out.push_back(i);
  }
  return out;
}

ThreadPlacement PlanThreads(const HostTopology& host, const std::vector<int>& allowed, const HostThreads& opts,
                            bool omp_threads_env, bool omp_binding_env) {
  ThreadPlacement plan;
  std::vector<HostCore> cores = AllowedCores(host, allowed);
  if (cores.empty()) cores = host.cores;  // an affinity mask hwloc does not know: plan on the machine
  const bool launcher_bound = cores.size() < host.cores.size();
  const int local_size = std::max(1, opts.local_size);
  const int local_rank = std::clamp(opts.local_rank, 0, local_size - 1);
  // An unbound rank among several on this node takes its part of the cores.
  bool shared_out = false;
  if (!launcher_bound && local_size > 1) {
    const int n = static_cast<int>(cores.size());
    std::vector<HostCore> part;
    if (local_size <= n) {
      for (int i = n * local_rank / local_size; i < n * (local_rank + 1) / local_size; ++i) part.push_back(cores[i]);
    } else {
      part.push_back(cores[local_rank % n]);  // more ranks than cores: they share
    }
    cores = std::move(part);
    shared_out = true;
  }
  const int n_cores = static_cast<int>(cores.size());
  const int n_nodes = static_cast<int>(NodesOf(cores).size());
  if (opts.threads > 0) {
    plan.threads = opts.threads;
  } else if (omp_threads_env || (omp_binding_env && opts.numa != NumaMode::kOff)) {
    plan.threads = 0;  // OMP_NUM_THREADS, or OpenMP's places, decide
  } else {
    plan.threads = n_cores;
  }
  const std::vector<int> cpus = CoreIds(cores);
  std::string where = absl::StrCat(n_cores, n_cores == 1 ? " core" : " cores", cpus.size() == 1 ? " (CPU " : " (CPUs ",
                                   CpuListString(cpus), ", ", NodesPhrase(cores), ")");
  if (shared_out) absl::StrAppend(&where, ", the part of local rank ", local_rank, " of ", local_size);
  const std::string count = plan.threads == 1  ? std::string("1 thread")
                            : plan.threads > 0 ? absl::StrCat(plan.threads, " threads")
                                               : std::string("OpenMP's threads");
  if (opts.numa == NumaMode::kOff) {
    plan.summary = absl::StrCat(count, " on ", where, ", not pinned (--numa off)");
    return plan;
  }
  if (omp_binding_env) {
    plan.summary = absl::StrCat(count, " on ", where, ", bound by OpenMP (OMP_PROC_BIND/OMP_PLACES)");
    return plan;
  }
  const bool multi_node_machine = NodesOf(host.cores).size() > 1;
  const bool pin = opts.numa == NumaMode::kDistribute || n_nodes > 1 || (shared_out && multi_node_machine);
  if (!pin) {
    plan.summary = absl::StrCat(count, " on ", where, ", not pinned (one NUMA node; --numa distribute pins)");
    return plan;
  }
  if (plan.threads == 0) plan.threads = std::max(1, omp_get_max_threads());
  plan.pinned = true;
  const int t_n = plan.threads;
  for (int t = 0; t < t_n; ++t) {
    const HostCore& c = cores[static_cast<int64_t>(t) * n_cores / t_n];
    plan.pus.push_back(c.pus);
    plan.node.push_back(c.node);
  }
  plan.summary = absl::StrCat(t_n == 1 ? "1 thread pinned" : absl::StrCat(t_n, " threads pinned"),
                              t_n <= n_cores ? " one per core" : " over the cores", " on ", where);
  return plan;
}

absl::Status ApplyThreadPlacement(const ThreadPlacement& plan) {
  if (plan.threads > 0) omp_set_num_threads(plan.threads);
  if (!plan.pinned) return absl::OkStatus();
  std::mutex mu;
  std::string failed;
#pragma omp parallel num_threads(plan.threads)
  {
    const int t = omp_get_thread_num();
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int pu : plan.pus[t]) CPU_SET(pu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0) {
      std::lock_guard<std::mutex> lock(mu);
      if (failed.empty()) failed = absl::StrCat("thread ", t, " to CPUs ", CpuListString(plan.pus[t]));
    }
  }
  if (!failed.empty()) return absl::PermissionDeniedError(absl::StrCat("--numa: the OS refused to pin ", failed));
  return absl::OkStatus();
}

ThreadPlacement PlaceCpuThreads(const HostThreads& opts) {
  const bool threads_env = std::getenv("OMP_NUM_THREADS") != nullptr;
  const bool binding_env = std::getenv("OMP_PROC_BIND") != nullptr || std::getenv("OMP_PLACES") != nullptr;
  static const absl::StatusOr<HostTopology> host = LoadHostTopology();
  ThreadPlacement plan;
  if (!host.ok()) {
    plan.threads = opts.threads;
    plan.summary = absl::StrCat(opts.threads > 0 ? absl::StrCat(opts.threads, " threads") : "OpenMP's threads",
                                ", not pinned (", host.status().message(), ")");
  } else {
    // The affinity the process started with: once a backend has pinned this
    // thread to one core, its own mask no longer says what the process may use.
    static const std::vector<int> allowed = ProcessCpus();
    plan = PlanThreads(*host, allowed, opts, threads_env, binding_env);
  }
  if (absl::Status s = ApplyThreadPlacement(plan); !s.ok()) {
    plan.pinned = false;
    plan.summary += absl::StrCat(" (", s.message(), ": not pinned)");
  }
  return plan;
}

}  // namespace cpu
}  // namespace deepshard
