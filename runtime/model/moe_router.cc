#include "runtime/model/moe_router.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace deepshard {
namespace {

// Index of the largest value among v[0..n) not yet taken (ties: lowest index).
int64_t ArgMaxUntaken(const float* v, int64_t n, const bool* taken) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (taken[i]) continue;
    if (best < 0 || v[i] > v[best]) best = i;
  }
  return best;
}

}  // namespace

void RouteTokens(const ModelConfig& c, const float* logits, const VectorView& bias, int64_t T,
                 int32_t* ids, float* weights, float* scratch) {
  const int64_t E = c.n_routed_experts, k = c.num_experts_per_tok;
  const int64_t G = c.topk_method == TopkMethod::kGreedy ? 1 : c.n_group;
  const int64_t per_group = E / G;
  float* scores = scratch;          // [E]
  float* choice = scratch + E;      // [E]
  float* group_score = scratch + 2 * E;  // [G]
  bool taken[1024];                 // E and G are at most a few hundred
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  for (int64_t t = 0; t < T; ++t) {
    const float* lg = logits + t * E;
    if (c.scoring_func == ScoringFunc::kSoftmax) {
      float mx = lg[0];
      for (int64_t e = 1; e < E; ++e) mx = std::max(mx, lg[e]);
      float sum = 0.0f;
      for (int64_t e = 0; e < E; ++e) sum += (scores[e] = std::exp(lg[e] - mx));
      for (int64_t e = 0; e < E; ++e) scores[e] /= sum;
    } else {
      for (int64_t e = 0; e < E; ++e) scores[e] = 1.0f / (1.0f + std::exp(-lg[e]));
    }
    for (int64_t e = 0; e < E; ++e) {
      choice[e] = scores[e] + (c.topk_method == TopkMethod::kNoauxTc && !bias.empty() ? bias.At(e) : 0.0f);
    }
    if (G > 1) {
      for (int64_t g = 0; g < G; ++g) {
        const float* cg = choice + g * per_group;
        if (c.topk_method == TopkMethod::kNoauxTc) {  // sum of the group's top-2 biased scores
          float a = kNegInf, b = kNegInf;
          for (int64_t i = 0; i < per_group; ++i) {
            if (cg[i] > a) { b = a; a = cg[i]; } else if (cg[i] > b) { b = cg[i]; }
          }
          group_score[g] = a + b;
        } else {  // group_limited_greedy: the group's best score
          group_score[g] = *std::max_element(cg, cg + per_group);
        }
      }
      std::fill(taken, taken + G, false);
      for (int64_t i = 0; i < c.topk_group; ++i) taken[ArgMaxUntaken(group_score, G, taken)] = true;
      for (int64_t g = 0; g < G; ++g) {
        if (taken[g]) continue;  // `taken` marks kept groups here
        std::fill(choice + g * per_group, choice + (g + 1) * per_group, kNegInf);
      }
    }
    std::fill(taken, taken + E, false);
    float sum = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t e = ArgMaxUntaken(choice, E, taken);
      taken[e] = true;
      ids[t * k + i] = static_cast<int32_t>(e);
      weights[t * k + i] = scores[e];
      sum += scores[e];
    }
    const bool normalise = c.scoring_func == ScoringFunc::kSigmoid || (c.norm_topk_prob && k > 1);
    if (normalise) {
      for (int64_t i = 0; i < k; ++i) weights[t * k + i] /= (sum + 1e-20f);
    }
    const bool scale = c.family != ModelFamily::kDeepseekV2 || !normalise;
    if (scale) {
      for (int64_t i = 0; i < k; ++i) weights[t * k + i] *= static_cast<float>(c.routed_scaling_factor);
    }
  }
}

}  // namespace deepshard
