#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace deepshard {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  return absl::OkStatus();
}

Sampler::Sampler(int64_t vocab_size, const SamplingParams& params)
    : p_(params), rng_(params.seed), order_(vocab_size), probs_(vocab_size) {}

int32_t Sampler::Sample(const float* logits) {
  const int64_t V = static_cast<int64_t>(order_.size());
  if (p_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);  // first max
  }
  for (int64_t i = 0; i < V; ++i) order_[i] = static_cast<int32_t>(i);
  const int64_t k = p_.top_k > 0 ? std::min(p_.top_k, V) : V;
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  if (k < V) {
    std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_logit);
  } else if (p_.top_p < 1.0f) {
    std::sort(order_.begin(), order_.end(), by_logit);
  }
  // Softmax over the k candidates at temperature T (order_[0..k) is sorted when it matters).
  float mx = -INFINITY;
  for (int64_t i = 0; i < k; ++i) mx = std::max(mx, logits[order_[i]]);
  double sum = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    probs_[i] = std::exp((logits[order_[i]] - mx) / p_.temperature);
    sum += probs_[i];
  }
  int64_t n = k;
  if (p_.top_p < 1.0f) {  // keep the smallest prefix whose mass reaches top_p
    double cum = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      cum += probs_[i] / sum;
      if (cum >= p_.top_p) {
        n = i + 1;
        break;
      }
    }
    sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += probs_[i];
  }
  const double u = std::uniform_real_distribution<double>(0.0, sum)(rng_);
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    acc += probs_[i];
    if (u < acc) return order_[i];
  }
  return order_[n - 1];
}

}  // namespace deepshard
