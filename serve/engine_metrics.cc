#include "serve/engine_metrics.h"

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace deepshard::serve {

void DescribeEngineMetrics(Metrics& m) {
  m.Describe("deepshard_sequences", MetricType::kGauge, "Sequences per DP slot, by state (running or waiting).");
  m.Describe("deepshard_kv_blocks", MetricType::kGauge,
             "Paged latent-KV blocks per DP slot, by state: used (referenced by sequences), cached (kept for the "
             "prefix cache, evictable) or free.");
  m.Describe("deepshard_prefix_cache_queries_total", MetricType::kCounter,
             "Context tokens looked up in the prefix cache when sequences were admitted.");
  m.Describe("deepshard_prefix_cache_hits_total", MetricType::kCounter,
             "Context tokens found in the prefix cache when sequences were admitted (not computed).");
  m.Describe("deepshard_steps_total", MetricType::kCounter, "Forward steps (plans) completed.");
  m.Describe("deepshard_preemptions_total", MetricType::kCounter,
             "Sequences preempted for KV blocks (blocks freed, recomputed later).");
  m.Describe("deepshard_step_seconds_total", MetricType::kCounter,
             "Time each rank spent in its forward steps, by phase: attention, experts (dense MLP, routing, routed "
             "and shared experts), dispatch_combine (MoE all-to-all), pipeline_transfer (hidden states between "
             "stages), other (embedding, lm_head, sampling, bookkeeping).");
  m.Describe("deepshard_expert_tokens_total", MetricType::kCounter,
             "Tokens routed to each routed expert per layer (a token counts once per chosen expert).");
}

void PublishEngineMetrics(Metrics& m, const EngineSnapshot& s) {
  std::vector<std::pair<Labels, double>> seqs, blocks;
  for (size_t i = 0; i < s.slots.size(); ++i) {
    const std::string slot = std::to_string(i);
    seqs.push_back({{{"dp_slot", slot}, {"state", "running"}}, static_cast<double>(s.slots[i].running)});
    seqs.push_back({{{"dp_slot", slot}, {"state", "waiting"}}, static_cast<double>(s.slots[i].waiting)});
    blocks.push_back({{{"dp_slot", slot}, {"state", "used"}}, static_cast<double>(s.slots[i].blocks_used)});
    blocks.push_back({{{"dp_slot", slot}, {"state", "cached"}}, static_cast<double>(s.slots[i].blocks_cached)});
    blocks.push_back({{{"dp_slot", slot}, {"state", "free"}},
                      static_cast<double>(s.slots[i].blocks_free - s.slots[i].blocks_cached)});
  }
  m.SetFamily("deepshard_sequences", seqs);
  m.SetFamily("deepshard_kv_blocks", blocks);
  m.SetFamily("deepshard_steps_total", {{{}, static_cast<double>(s.steps)}});
  m.SetFamily("deepshard_preemptions_total", {{{}, static_cast<double>(s.preemptions)}});
  m.SetFamily("deepshard_prefix_cache_queries_total", {{{}, static_cast<double>(s.prefix_cache_queries)}});
  m.SetFamily("deepshard_prefix_cache_hits_total", {{{}, static_cast<double>(s.prefix_cache_hits)}});

  std::vector<std::pair<Labels, double>> phases;
  std::map<std::pair<int64_t, int64_t>, int64_t> experts;  // (layer, expert) -> tokens, summed over ranks
  for (const auto& [rank, r] : s.ranks) {
    const std::string rk = std::to_string(rank);
    phases.push_back({{{"rank", rk}, {"phase", "attention"}}, r.attention_s});
    phases.push_back({{{"rank", rk}, {"phase", "experts"}}, r.experts_s});
    phases.push_back({{{"rank", rk}, {"phase", "dispatch_combine"}}, r.dispatch_combine_s});
    phases.push_back({{{"rank", rk}, {"phase", "pipeline_transfer"}}, r.transfer_s});
    phases.push_back({{{"rank", rk}, {"phase", "other"}}, r.other_s});
    if (r.n_experts <= 0) continue;
    for (size_t i = 0; i < r.expert_tokens.size(); ++i) {
      const int64_t layer = r.expert_layer_begin + static_cast<int64_t>(i) / r.n_experts;
      experts[{layer, static_cast<int64_t>(i) % r.n_experts}] += r.expert_tokens[i];
    }
  }
  m.SetFamily("deepshard_step_seconds_total", phases);
  std::vector<std::pair<Labels, double>> expert_series;
  expert_series.reserve(experts.size());
  for (const auto& [key, n] : experts) {
    expert_series.push_back({{{"layer", std::to_string(key.first)}, {"expert", std::to_string(key.second)}},
                             static_cast<double>(n)});
  }
  m.SetFamily("deepshard_expert_tokens_total", expert_series);
}

}  // namespace deepshard::serve
