#include "kernels/cpu/router.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace deepshard::cpu {
namespace {

// Index of the largest value among v[0..n) not yet taken (ties: lowest index).
int64_t ArgMaxUntaken(const float* v, int64_t n, const char* taken) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (taken[i]) continue;
    if (best < 0 || v[i] > v[best]) best = i;
  }
  return best;
}

}  // namespace

void RouteTopK(const RouterParams& p, const float* logits, const float* bias, int64_t T, int32_t* ids,
               float* weights, std::vector<char>& taken_buf, std::vector<float>& scratch) {
  const int64_t E = p.n_experts, k = p.top_k, G = std::max<int64_t>(1, p.n_groups);
  const int64_t per_group = E / G;
  if (static_cast<int64_t>(taken_buf.size()) < std::max(E, G)) taken_buf.resize(std::max(E, G));
  if (static_cast<int64_t>(scratch.size()) < 2 * E + G) scratch.resize(2 * E + G);
  char* taken = taken_buf.data();
  float* scores = scratch.data();        // [E]
  float* choice = scores + E;            // [E]
  float* group_score = choice + E;       // [G]
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  for (int64_t t = 0; t < T; ++t) {
    const float* lg = logits + t * E;
    if (!p.sigmoid) {
      float mx = lg[0];
      for (int64_t e = 1; e < E; ++e) mx = std::max(mx, lg[e]);
      float sum = 0.0f;
      for (int64_t e = 0; e < E; ++e) sum += (scores[e] = std::exp(lg[e] - mx));
      for (int64_t e = 0; e < E; ++e) scores[e] /= sum;
    } else {
      for (int64_t e = 0; e < E; ++e) scores[e] = 1.0f / (1.0f + std::exp(-lg[e]));
    }
    for (int64_t e = 0; e < E; ++e) choice[e] = scores[e] + (bias != nullptr ? bias[e] : 0.0f);
    if (G > 1) {
      for (int64_t g = 0; g < G; ++g) {
        const float* cg = choice + g * per_group;
        if (p.group_top2_sum) {  // noaux_tc: sum of the group's top-2 biased scores
          float a = kNegInf, b = kNegInf;
          for (int64_t i = 0; i < per_group; ++i) {
            if (cg[i] > a) {
              b = a;
              a = cg[i];
            } else if (cg[i] > b) {
              b = cg[i];
            }
          }
          group_score[g] = a + b;
        } else {  // group_limited_greedy: the group's best score
          group_score[g] = *std::max_element(cg, cg + per_group);
        }
      }
      std::fill(taken, taken + G, 0);
      for (int64_t i = 0; i < p.topk_groups; ++i) taken[ArgMaxUntaken(group_score, G, taken)] = 1;
      for (int64_t g = 0; g < G; ++g) {
        if (taken[g]) continue;  // `taken` marks kept groups here
        std::fill(choice + g * per_group, choice + (g + 1) * per_group, kNegInf);
      }
    }
    std::fill(taken, taken + E, 0);
    float sum = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t e = ArgMaxUntaken(choice, E, taken);
      taken[e] = 1;
      ids[t * k + i] = static_cast<int32_t>(e);
      weights[t * k + i] = scores[e];
      sum += scores[e];
    }
    if (p.normalize) {
      for (int64_t i = 0; i < k; ++i) weights[t * k + i] /= (sum + 1e-20f);
    }
    if (p.scale != 1.0f) {
      for (int64_t i = 0; i < k; ++i) weights[t * k + i] *= p.scale;
    }
  }
}

}  // namespace deepshard::cpu
