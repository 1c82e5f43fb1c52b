// Token sampling: greedy, or seeded temperature / top-k / top-p / min-p, after
// the logits processors OpenAI-style APIs offer (penalties, logit bias,
// min_tokens, an allowed-token mask for structured output).
//
// Order, as vLLM applies them (so results can be compared with it):
//   1. the allowed-token mask (structured output): other tokens -> -inf;
//   2. min_tokens: EOS and stop_token_ids -> -inf until min_tokens are sampled;
//   3. logit_bias: added to the raw logit;
//   4. repetition_penalty (CTRL / Hugging Face): for every token of the prompt
//      or of the output so far, a positive logit is divided by it, a negative
//      one multiplied;
//   5. frequency_penalty * (times the token was generated) and
//      presence_penalty * (it was generated at all) are subtracted (output
//      tokens only, as OpenAI defines them);
//   6. temperature 0: argmax (lowest id on ties); else logits / T, then min_p
//      (drop tokens less likely than min_p x the most likely one), top_k and
//      top_p, and a seeded draw.
// If the processors leave no token (a mask that allows only EOS while
// min_tokens bans it), the mask wins: the draw ignores min_tokens.
//
// Log probabilities that the API reports are those of the raw logits, before
// any of this (LogSoftmax below), as vLLM reports them by default.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace deepshard {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax, lowest id on ties)
  int64_t top_k = 0;         // 0 = no limit
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  float min_p = 0.0f;        // [0, 1]; 0 = off
  uint64_t seed = 0;
  float presence_penalty = 0.0f;    // [-2, 2]
  float frequency_penalty = 0.0f;   // [-2, 2]
  float repetition_penalty = 1.0f;  // (0, 2]; 1 = off
  int64_t min_tokens = 0;           // EOS / stop_token_ids banned before this many tokens
  std::vector<int32_t> stop_token_ids = {};                // also end the sequence (like EOS)
  std::vector<std::pair<int32_t, float>> logit_bias = {};  // token -> bias in [-100, 100]

  // Names the offending field for out-of-range values. With vocab_size > 0,
  // token ids (logit_bias, stop_token_ids) must be inside the vocabulary.
  absl::Status Validate(int64_t vocab_size = 0) const;
  // Any processor other than temperature / top-k / top-p / min-p.
  bool has_processors() const;
  bool uses_prompt() const { return repetition_penalty != 1.0f; }
};

// Draws tokens from logits for one sequence. Buffers are sized once for the
// vocabulary, so sampling allocates nothing per token.
class Sampler {
 public:
  // eos_id < 0: the model has none (min_tokens then bans stop_token_ids only).
  Sampler(int64_t vocab_size, const SamplingParams& params, int32_t eos_id = -1);

  // The prompt's tokens, for repetition_penalty (call before the first Sample;
  // without it only the output counts).
  void SetPrompt(std::span<const int32_t> prompt);
  // `allowed`: a bitset over the vocabulary (bit i of word i / 64), or null.
  // The sampled token is counted for the penalties and min_tokens.
  int32_t Sample(const float* logits, const uint64_t* allowed = nullptr);
  // EOS (when there is one) or one of stop_token_ids.
  bool IsStop(int32_t token) const;
  int64_t n_sampled() const { return n_sampled_; }

 private:
  const float* Process(const float* logits, const uint64_t* allowed, bool honour_min_tokens);

  SamplingParams p_;
  int32_t eos_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;
  std::vector<float> probs_;
  std::vector<float> work_;        // processed logits (only when something processes them)
  std::vector<int32_t> counts_;    // [vocab] output counts (penalties)
  std::vector<uint8_t> seen_;      // [vocab] in the prompt or output (repetition_penalty)
  std::vector<int32_t> seen_list_; // the ids with seen_ set
  std::vector<int32_t> out_list_;  // distinct output ids (penalties)
  int64_t n_sampled_ = 0;
};

// One position's log-probabilities: the chosen token's and the `top` most
// likely (descending; ties by lower id).
struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;
};
// log_softmax(logits)[token] and the n most likely tokens, in f32 with a
// double-precision sum (the values OpenAI's `logprobs` report).
TokenLogprob LogSoftmaxAt(const float* logits, int64_t vocab_size, int32_t token, int n_top);

}  // namespace deepshard
