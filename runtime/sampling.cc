#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace deepshard {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool Allowed(const uint64_t* mask, int64_t i) { return mask == nullptr || ((mask[i >> 6] >> (i & 63)) & 1) != 0; }

}  // namespace

absl::Status SamplingParams::Validate(int64_t vocab_size) const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", min_p));
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("presence_penalty must be in [-2, 2], got ", presence_penalty));
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("frequency_penalty must be in [-2, 2], got ", frequency_penalty));
  }
  if (!(repetition_penalty > 0.0f && repetition_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("repetition_penalty must be in (0, 2], got ", repetition_penalty));
  }
  if (min_tokens < 0) return absl::InvalidArgumentError(absl::StrCat("min_tokens must be >= 0, got ", min_tokens));
  for (const auto& [token, bias] : logit_bias) {
    if (token < 0 || (vocab_size > 0 && token >= vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat("logit_bias: token ", token, " is outside the vocabulary"));
    }
    if (!(bias >= -100.0f && bias <= 100.0f)) {
      return absl::InvalidArgumentError(absl::StrCat("logit_bias: the bias of token ", token,
                                                     " must be in [-100, 100], got ", bias));
    }
  }
  for (int32_t token : stop_token_ids) {
    if (token < 0 || (vocab_size > 0 && token >= vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids: token ", token, " is outside the vocabulary"));
    }
  }
  return absl::OkStatus();
}

bool SamplingParams::has_processors() const {
  return presence_penalty != 0.0f || frequency_penalty != 0.0f || repetition_penalty != 1.0f || min_tokens > 0 ||
         !logit_bias.empty();
}

Sampler::Sampler(int64_t vocab_size, const SamplingParams& params, int32_t eos_id)
    : p_(params), eos_(eos_id), rng_(params.seed), order_(vocab_size), probs_(vocab_size) {
  if (p_.has_processors()) work_.resize(vocab_size);
  if (p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) counts_.assign(vocab_size, 0);
  if (p_.repetition_penalty != 1.0f) seen_.assign(vocab_size, 0);
}

void Sampler::SetPrompt(std::span<const int32_t> prompt) {
  if (seen_.empty()) return;
  for (int32_t t : prompt) {
    if (t < 0 || t >= static_cast<int32_t>(seen_.size()) || seen_[t]) continue;
    seen_[t] = 1;
    seen_list_.push_back(t);
  }
}

bool Sampler::IsStop(int32_t token) const {
  if (eos_ >= 0 && token == eos_) return true;
  return std::find(p_.stop_token_ids.begin(), p_.stop_token_ids.end(), token) != p_.stop_token_ids.end();
}

const float* Sampler::Process(const float* logits, const uint64_t* allowed, bool honour_min_tokens) {
  const int64_t V = static_cast<int64_t>(order_.size());
  if (!p_.has_processors() && allowed == nullptr) return logits;
  if (work_.empty()) work_.resize(V);  // a mask without processors: sized on first use
  float* w = work_.data();
  if (allowed == nullptr) {
    std::copy(logits, logits + V, w);
  } else {
    for (int64_t i = 0; i < V; ++i) w[i] = Allowed(allowed, i) ? logits[i] : kNegInf;
  }
  if (honour_min_tokens && n_sampled_ < p_.min_tokens) {
    if (eos_ >= 0 && eos_ < V) w[eos_] = kNegInf;
    for (int32_t t : p_.stop_token_ids) w[t] = kNegInf;
  }
  for (const auto& [t, bias] : p_.logit_bias) w[t] += bias;
  if (p_.repetition_penalty != 1.0f) {
    for (int32_t t : seen_list_) w[t] = w[t] > 0.0f ? w[t] / p_.repetition_penalty : w[t] * p_.repetition_penalty;
  }
  if (!counts_.empty()) {
    for (int32_t t : out_list_) w[t] -= p_.frequency_penalty * counts_[t] + p_.presence_penalty;
  }
  return w;
}

int32_t Sampler::Sample(const float* raw, const uint64_t* allowed) {
  const int64_t V = static_cast<int64_t>(order_.size());
  const float* logits = Process(raw, allowed, /*honour_min_tokens=*/true);
  int32_t best = static_cast<int32_t>(std::max_element(logits, logits + V) - logits);  // first max
  if (logits[best] == kNegInf && allowed != nullptr && p_.min_tokens > 0) {
    // Nothing left: the mask allows only what min_tokens bans. The mask wins.
    logits = Process(raw, allowed, /*honour_min_tokens=*/false);
    best = static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  }
  int32_t token = best;
  if (p_.temperature != 0.0f && logits[best] != kNegInf) {
    for (int64_t i = 0; i < V; ++i) order_[i] = static_cast<int32_t>(i);
    const int64_t k = p_.top_k > 0 ? std::min(p_.top_k, V) : V;
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    if (k < V) {
      std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_logit);
    } else if (p_.top_p < 1.0f) {
      std::sort(order_.begin(), order_.end(), by_logit);
    }
    // Softmax over the k candidates at temperature T (order_[0..k) is sorted when it matters).
    const float mx = logits[best];
    // min_p: p_i >= min_p * p_max  <=>  (l_i - l_max) / T >= log(min_p).
    const float floor = p_.min_p > 0.0f ? std::log(p_.min_p) : kNegInf;
    double sum = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      const float z = (logits[order_[i]] - mx) / p_.temperature;
      probs_[i] = z >= floor ? std::exp(z) : 0.0f;
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
    token = -1;
    for (int64_t i = 0; i < n && token < 0; ++i) {
      acc += probs_[i];
      if (u < acc) token = order_[i];
    }
    if (token < 0) {  // rounding at the very end: the last candidate with mass
      for (int64_t i = n - 1; i >= 0 && token < 0; --i) {
        if (probs_[i] > 0.0f) token = order_[i];
      }
    }
  }
  ++n_sampled_;
  if (!counts_.empty()) {
    if (counts_[token]++ == 0) out_list_.push_back(token);
  }
  if (!seen_.empty() && !seen_[token]) {
    seen_[token] = 1;
    seen_list_.push_back(token);
  }
  return token;
}

TokenLogprob LogSoftmaxAt(const float* logits, int64_t V, int32_t token, int n_top) {
  float mx = kNegInf;
  for (int64_t i = 0; i < V; ++i) mx = std::max(mx, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  TokenLogprob r;
  r.token = token;
  r.logprob = token >= 0 && token < V ? static_cast<float>(logits[token] - lse) : 0.0f;
  if (n_top > 0) {
    // A small heap of the n best: O(V log n) instead of sorting the vocabulary.
    const int64_t n = std::min<int64_t>(n_top, V);
    auto better = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::vector<int32_t> heap;  // worst on top
    heap.reserve(n + 1);
    for (int32_t i = 0; i < V; ++i) {
      if (static_cast<int64_t>(heap.size()) < n) {
        heap.push_back(i);
        std::push_heap(heap.begin(), heap.end(), better);
      } else if (better(i, heap.front())) {
        std::pop_heap(heap.begin(), heap.end(), better);
        heap.back() = i;
        std::push_heap(heap.begin(), heap.end(), better);
      }
    }
    std::sort_heap(heap.begin(), heap.end(), better);
    for (int32_t i : heap) r.top.emplace_back(i, static_cast<float>(logits[i] - lse));
  }
  return r;
}

}  // namespace deepshard
