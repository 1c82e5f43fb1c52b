#include "runtime/parallel/placement.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"

namespace deepshard {
namespace {

constexpr int64_t kMaxPlanRanks = 65536;

// How the weights are held: the checkpoint's dtypes, or --weights int8|int4.
struct Sizes {
  const ModelConfig& c;
  WeightQuant quant = WeightQuant::kStored;
  int64_t group = kDefaultQuantGroup;
  bool quantize_fp8 = false;
};

// What a Linear weight is, for its bytes: a projection (fp8 in an fp8
// checkpoint; quantised by --weights), kv_b_proj (fp8, never quantised), the
// LM head (stored dtype; quantised) or the router/embedding (stored dtype).
// The rules of DeepseekModel::UploadWeights.
enum class Role { kProjection, kKvB, kHead, kFixed };

// Bytes of one Linear weight [rows, cols] as held at run time (with FP8 block
// scales or quantisation scales).
double LinearBytes(const Sizes& s, int64_t rows, int64_t cols, Role role = Role::kProjection) {
  const ModelConfig& c = s.c;
  const bool fp8 = c.fp8 && (role == Role::kProjection || role == Role::kKvB);
  const bool quantised = s.quant != WeightQuant::kStored && (role == Role::kProjection || role == Role::kHead) &&
                         cols % s.group == 0 && (!fp8 || s.quantize_fp8);
  if (quantised) {
    return (s.quant == WeightQuant::kInt8 ? 1.0 : 0.5) * rows * cols + 2.0 * rows * (cols / s.group);
  }
  if (fp8) {
    const double b = static_cast<double>(c.fp8->block_rows);
    return static_cast<double>(rows) * cols + 4.0 * std::ceil(rows / b) * std::ceil(cols / b);
  }
  const double es = c.torch_dtype == "float32" ? 4.0 : 2.0;
  return es * rows * cols;
}
double VectorBytes(const Sizes& s, int64_t n) { return (s.c.torch_dtype == "float32" ? 4.0 : 2.0) * n; }

double MlpBytes(const Sizes& s, int64_t inter) {
  return 2 * LinearBytes(s, inter, s.c.hidden_size) + LinearBytes(s, s.c.hidden_size, inter);
}

double AttentionBytes(const Sizes& s) {
  const ModelConfig& c = s.c;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads;
  double b = 2 * VectorBytes(s, H);  // input and post-attention norms
  if (c.is_mla()) {
    if (c.q_lora_rank > 0) {
      b += LinearBytes(s, c.q_lora_rank, H) + VectorBytes(s, c.q_lora_rank) +
           LinearBytes(s, nh * c.qk_head_dim(), c.q_lora_rank);
    } else {
      b += LinearBytes(s, nh * c.qk_head_dim(), H);
    }
    b += LinearBytes(s, c.kv_lora_rank + c.qk_rope_head_dim, H) + VectorBytes(s, c.kv_lora_rank) +
         LinearBytes(s, nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, Role::kKvB) +
         LinearBytes(s, H, nh * c.v_head_dim);
  } else {
    b += LinearBytes(s, nh * c.head_dim, H) + 2 * LinearBytes(s, c.num_key_value_heads * c.head_dim, H) +
         LinearBytes(s, H, nh * c.head_dim);
  }
  return b;
}

// Replicated (non-routed-expert) bytes of layer l.
double ReplicatedLayerBytes(const Sizes& s, int64_t l) {
  const ModelConfig& c = s.c;
  double b = AttentionBytes(s);
  if (!c.is_moe_layer(l)) return b + MlpBytes(s, c.intermediate_size);
  b += LinearBytes(s, c.n_routed_experts, c.hidden_size, Role::kFixed);
  if (c.topk_method == TopkMethod::kNoauxTc) b += 4.0 * c.n_routed_experts;
  if (c.n_shared_experts > 0) b += MlpBytes(s, c.moe_intermediate_size * c.n_shared_experts);
  return b;
}

double LayerDecodeCost(const Sizes& s, int64_t l) {
  double b = ReplicatedLayerBytes(s, l);
  if (s.c.is_moe_layer(l)) b += s.c.num_experts_per_tok * MlpBytes(s, s.c.moe_intermediate_size);
  return b;
}

double HeadBytes(const Sizes& s) {
  return VectorBytes(s, s.c.hidden_size) + LinearBytes(s, s.c.vocab_size, s.c.hidden_size, Role::kHead);
}
double EmbeddingBytes(const Sizes& s) { return LinearBytes(s, s.c.vocab_size, s.c.hidden_size, Role::kFixed); }

// Contiguous split of L layers into pp stages minimising the largest stage
// cost (the pipeline's bottleneck). Small grids: dynamic programming over
// split points (O(pp L^2), exact, the lowest cut on ties). Large ones (e.g.
// 2e5 layers): bisection on the bottleneck with a linear greedy feasibility
// check, O(L) per step, so planning stays bounded whatever the config.
std::vector<int64_t> BalancedSplit(const Sizes& sz, int pp) {
  const ModelConfig& c = sz.c;
  const int64_t L = c.num_hidden_layers;
  std::vector<double> prefix(L + 1, 0);
  for (int64_t l = 0; l < L; ++l) prefix[l + 1] = prefix[l] + LayerDecodeCost(sz, l);
  const double head = HeadBytes(sz), embed_row = EmbeddingBytes(sz) / c.vocab_size;
  auto stage_cost = [&](int s, int64_t a, int64_t b) {
    return prefix[b] - prefix[a] + (s == 0 ? embed_row : 0) + (s == pp - 1 ? head : 0);
  };
  if (pp == 1) return {L};
  constexpr double kDpBudget = 64.0 * 1024 * 1024;  // inner DP steps
  if (static_cast<double>(pp) * static_cast<double>(L) * static_cast<double>(L) / 2 > kDpBudget) {
    // Greedy for a bottleneck B: the last stage starts as early as B allows
    // (but leaves a layer for each earlier stage); the others take as many
    // layers as B allows (but leave one for each later stage).
    auto fits = [&](double B, std::vector<int64_t>* counts) {
      int64_t a = L - 1;
      if (stage_cost(pp - 1, a, L) > B) return false;
      while (a > pp - 1 && stage_cost(pp - 1, a - 1, L) <= B) --a;
      int64_t start = 0;
      for (int s = 0; s < pp - 1; ++s) {
        const int64_t max_end = a - (pp - 2 - s);
        int64_t end = start + 1;
        if (stage_cost(s, start, end) > B) return false;
        while (end < max_end && stage_cost(s, start, end + 1) <= B) ++end;
        if (counts) (*counts)[s] = end - start;
        start = end;
      }
      if (start != a) return false;
      if (counts) (*counts)[pp - 1] = L - a;
      return true;
    };
    double lo = 0, hi = prefix[L] + embed_row + head;  // one stage holding everything bounds any split
    for (int it = 0; it < 200 && hi - lo > 1e-9 * hi; ++it) {
      const double mid = lo + (hi - lo) / 2;
      (fits(mid, nullptr) ? hi : lo) = mid;
    }
    std::vector<int64_t> counts(pp);
    if (fits(hi, &counts)) return counts;
    std::fill(counts.begin(), counts.end(), L / pp);  // not reached: hi is feasible
    counts[pp - 1] += L % pp;
    return counts;
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // best[s][e]: minimal bottleneck for stages 0..s covering layers [0, e).
  std::vector<std::vector<double>> best(pp, std::vector<double>(L + 1, kInf));
  std::vector<std::vector<int64_t>> cut(pp, std::vector<int64_t>(L + 1, 0));
  for (int64_t e = 1; e <= L; ++e) best[0][e] = stage_cost(0, 0, e);
  for (int s = 1; s < pp; ++s) {
    for (int64_t e = s + 1; e <= L; ++e) {
      for (int64_t a = s; a < e; ++a) {
        const double v = std::max(best[s - 1][a], stage_cost(s, a, e));
        if (v < best[s][e]) best[s][e] = v, cut[s][e] = a;
      }
    }
  }
  std::vector<int64_t> counts(pp);
  int64_t e = L;
  for (int s = pp - 1; s > 0; --s) {
    counts[s] = e - cut[s][e];
    e = cut[s][e];
  }
  counts[0] = e;
  return counts;
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> ParseLayerSplit(const std::string& s) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    int64_t v;
    if (!absl::SimpleAtoi(part, &v) || v < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--layer-split: \"", std::string(part),
                                                     "\" is not a positive layer count (expected e.g. 14,13)"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<std::vector<int>> ParseExpertMap(const std::string& s) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    int v;
    if (!absl::SimpleAtoi(part, &v) || v < 0) {
      return absl::InvalidArgumentError(absl::StrCat("--expert-map: \"", std::string(part),
                                                     "\" is not a rank (expected one owner rank per expert)"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<PlacementPlan> MakePlacementPlan(const ModelConfig& c, const PlacementOptions& o) {
  const Sizes sz{c, o.weights, o.quant_group, o.quantize_fp8};
  if (o.pp < 1 || o.pp > 4096) return absl::InvalidArgumentError(absl::StrCat("--pp must be in [1, 4096], got ", o.pp));
  if (o.ep < 1 || o.ep > 4096) return absl::InvalidArgumentError(absl::StrCat("--ep must be in [1, 4096], got ", o.ep));
  if (static_cast<int64_t>(o.pp) * o.ep > kMaxPlanRanks) {
    return absl::InvalidArgumentError(absl::StrCat("--pp ", o.pp, " x --ep ", o.ep, " exceeds the supported ",
                                                   kMaxPlanRanks, " ranks"));
  }
  const int world = o.pp * o.ep;
  if (o.nodes < 1 || world % o.nodes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--nodes ", o.nodes, " must divide the ", world, " ranks (pp ",
                                                   o.pp, " x ep ", o.ep, ")"));
  }
  if (o.pp > c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("--pp ", o.pp, " exceeds the model's ", c.num_hidden_layers,
                                                   " layers (num_hidden_layers); each stage needs at least one"));
  }
  if (c.n_routed_experts > 0 && o.ep > c.n_routed_experts) {
    return absl::InvalidArgumentError(absl::StrCat("--ep ", o.ep, " exceeds the ", c.n_routed_experts,
                                                   " routed experts; every rank must hold at least one"));
  }
  PlacementPlan p;
  p.weights = o.weights, p.quant_group = o.quant_group, p.quantize_fp8 = o.quantize_fp8;
  p.pp = o.pp, p.ep = o.ep, p.nodes = o.nodes;
  std::vector<int64_t> split = o.layer_split;
  if (split.empty()) {
    split = BalancedSplit(sz, o.pp);
  } else {
    if (static_cast<int>(split.size()) != o.pp) {
      return absl::InvalidArgumentError(absl::StrCat("--layer-split lists ", split.size(), " stages but --pp is ", o.pp));
    }
    int64_t sum = 0;
    for (int64_t v : split) sum += v;
    if (sum != c.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat("--layer-split sums to ", sum, " layers but the model has ",
                                                     c.num_hidden_layers));
    }
  }
  int64_t l = 0;
  for (int s = 0; s < o.pp; ++s) {
    StagePlan st;
    st.stage = s, st.layer_begin = l, st.layer_end = l + split[s];
    for (int64_t i = st.layer_begin; i < st.layer_end; ++i) st.cost += LayerDecodeCost(sz, i);
    if (s == 0) st.cost += EmbeddingBytes(sz) / c.vocab_size;
    if (s == o.pp - 1) st.cost += HeadBytes(sz);
    p.stages.push_back(st);
    l = st.layer_end;
  }
  const int64_t E = c.n_routed_experts;
  if (!o.expert_owner.empty()) {
    if (static_cast<int64_t>(o.expert_owner.size()) != E) {
      return absl::InvalidArgumentError(absl::StrCat("--expert-map lists ", o.expert_owner.size(),
                                                     " experts but the model has ", E));
    }
    std::vector<int> held(o.ep, 0);
    for (int r : o.expert_owner) {
      if (r >= o.ep) return absl::InvalidArgumentError(absl::StrCat("--expert-map names rank ", r, " but --ep is ", o.ep));
      ++held[r];
    }
    for (int r = 0; r < o.ep; ++r) {
      if (held[r] == 0) return absl::InvalidArgumentError(absl::StrCat("--expert-map gives rank ", r, " no experts"));
    }
    p.experts = ExpertPlacement::FromOwners(o.expert_owner, o.ep);
  } else {
    p.experts = ExpertPlacement::Contiguous(E, o.ep);
  }
  const int per_node = world / o.nodes;
  const double es_kv = 4.0;  // the KV cache is f32
  for (int s = 0; s < o.pp; ++s) {
    const StagePlan& st = p.stages[s];
    for (int e = 0; e < o.ep; ++e) {
      RankPlan r;
      r.rank = s * o.ep + e, r.stage = s, r.ep_rank = e, r.node = r.rank / per_node;
      for (int64_t x = 0; x < E; ++x) {
        if (p.experts.owner[x] == e) r.experts.push_back(static_cast<int32_t>(x));
      }
      r.load.layer_begin = st.layer_begin, r.load.layer_end = st.layer_end;
      r.load.embedding = s == 0, r.load.head = s == o.pp - 1;
      r.load.expert_list = r.experts;
      r.load.expert_begin = r.load.expert_end = 0;  // the list decides
      double bytes = (r.load.embedding ? EmbeddingBytes(sz) : 0) + (r.load.head ? HeadBytes(sz) : 0);
      for (int64_t i = st.layer_begin; i < st.layer_end; ++i) {
        bytes += ReplicatedLayerBytes(sz, i);
        if (c.is_moe_layer(i)) bytes += r.experts.size() * MlpBytes(sz, c.moe_intermediate_size);
      }
      r.weight_bytes = static_cast<uint64_t>(bytes);
      r.kv_bytes_per_1k = static_cast<uint64_t>(es_kv * 1024 * c.kv_cache_width() * (st.layer_end - st.layer_begin));
      p.ranks.push_back(std::move(r));
    }
  }
  return p;
}

std::string FormatPlacementPlan(const ModelConfig& c, const PlacementPlan& p) {
  std::string out = absl::StrFormat(
      "# %s: %d layers (%d dense), %d routed experts (top-%d), %d shared; weights %s%s\n"
      "# grid: pp %d x ep %d = %d ranks on %d node(s)\n#\n", c.model_type, c.num_hidden_layers,
      std::min(c.first_k_dense_replace, c.num_hidden_layers), c.n_routed_experts, c.num_experts_per_tok,
      c.n_shared_experts, c.fp8 ? "fp8 e4m3 (128x128 block scales), others " : "", c.torch_dtype, p.pp, p.ep,
      p.pp * p.ep, p.nodes);
  if (p.weights != WeightQuant::kStored) {
    out.insert(out.find('\n'), absl::StrFormat("; --weights %s (group %d%s)", WeightQuantName(p.weights), p.quant_group,
                                                c.fp8 ? (p.quantize_fp8 ? ", fp8 quantised" : ", fp8 kept") : ""));
  }
  out += "# stage  layers      embed  head   cost/token(MB)\n";
  for (const StagePlan& s : p.stages) {
    out += absl::StrFormat("  %5d  %3d..%-3d    %-5s  %-5s  %10.1f\n", s.stage, s.layer_begin, s.layer_end - 1,
                           s.stage == 0 ? "yes" : "-", s.stage == p.pp - 1 ? "yes" : "-", s.cost / 1e6);
  }
  out += "#\n# rank  node  stage  ep  experts        weights(MiB)  kv/1K tokens(MiB)\n";
  for (const RankPlan& r : p.ranks) {
    std::string ex = r.experts.empty() ? "-"
                     : absl::StrFormat("%d..%d (%d)", r.experts.front(), r.experts.back(), r.experts.size());
    out += absl::StrFormat("  %4d  %4d  %5d  %2d  %-13s  %12.1f  %17.1f\n", r.rank, r.node, r.stage, r.ep_rank, ex,
                           r.weight_bytes / double(1ull << 20), r.kv_bytes_per_1k / double(1ull << 20));
  }
  return out;
}

}  // namespace deepshard
