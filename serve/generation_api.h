// The contract between the HTTP front end (serve/http_server.h) and the
// serving engine (serve/engine.h) on rank 0.
//
// The engine works in token ids only: the front end renders chat messages,
// tokenises, detokenises, and matches stop strings (then calls Cancel). Every
// accepted request gets exactly one final event (finished = true), whatever
// happens: end of sequence, max_tokens, cancellation, drain timeout, or a dead
// rank.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/sampling.h"

namespace deepshard::serve {

// Constrains which tokens may be sampled (structured output). The engine asks
// Allowed() before each sample of the request and reports the sampled token
// with Accept(); both run on the engine's driver thread, one call at a time.
class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // A bitset over the vocabulary (bit i of word i / 64), (vocab + 63) / 64 words.
  virtual const std::vector<uint64_t>& Allowed() = 0;
  // An error ends the request with kError.
  virtual absl::Status Accept(int32_t token) = 0;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, non-empty
  int64_t max_tokens = 16;      // new tokens at most (>= 1)
  SamplingParams sampling;      // temperature 0 = greedy; stop_token_ids end like EOS
  bool ignore_eos = false;      // keep going past the model's EOS token
  bool return_logits = false;   // each token's event carries the logits it was sampled from
  // Each sampled token's log-probability and the `logprobs` most likely
  // tokens' (0..20); -1 = none. Of the raw logits, before any processing.
  int32_t logprobs = -1;
  // Echo: the log-probability of every prompt token after the first, with
  // max(logprobs, 0) alternatives each (events carry them as they come).
  bool prompt_logprobs = false;
  std::shared_ptr<TokenConstraint> constraint;  // null = unconstrained
  // n > 1 choices: the engine id of an earlier request with the same prompt
  // (choice 0, submitted normally). This one then shares that request's prompt
  // KV (copy-on-write fork) and computes only the last prompt token before
  // sampling with its own `sampling` (and seed). Ignored (plain prefill) when
  // that request is gone, has a different prompt, or does not get that far.
  int64_t share_prompt_with = -1;
};

enum class FinishReason {
  kNone,     // not finished (a streaming event)
  kStop,     // the model's EOS token (the front end also uses it for a stop string)
  kLength,   // max_tokens reached
  kCancelled,
  kError,    // drain timeout, a rank died, an internal error: see `error`
};

// Tokens produced since the last event. Called on one of the engine's threads
// (its driver, or the control plane's io thread when a rank is lost), never
// twice at once for one request: do not block in it (post the work to your own
// executor).
struct TokenEvent {
  std::vector<int32_t> tokens;
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  std::string error;  // set when reason == kError
  std::vector<float> logits;  // [tokens.size(), vocab] when the request asked for them
  std::vector<TokenLogprob> logprobs;         // one per token, when the request asked for them
  std::vector<TokenLogprob> prompt_logprobs;  // the next prompt positions' (positions 1, 2, ... in order)
  // Prompt tokens that were not computed for this request: found in the prefix
  // cache or shared with share_prompt_with's request (usage.prompt_tokens_details.
  // cached_tokens). Set on every event from the first token on, so always on the
  // final one (0 when the request never ran).
  int64_t cached_tokens = 0;
};
using TokenSink = std::function<void(TokenEvent)>;

struct EngineHealth {
  bool healthy = true;    // every rank alive and heartbeating
  bool accepting = true;  // false while draining or after a failure
  std::string detail;     // why not, for the /health body
};

class GenerationApi {
 public:
  virtual ~GenerationApi() = default;
  // Thread-safe. Returns the request id. Errors (nothing queued, the sink is
  // never called):
  //   InvalidArgument    bad prompt / max_tokens / sampling (message names the field)
  //   OutOfRange         prompt (+ max_tokens) longer than the model's context -> HTTP 400
  //   ResourceExhausted  the queue is full -> HTTP 429
  //   Unavailable        draining or a rank is down -> HTTP 503
  virtual absl::StatusOr<int64_t> Submit(GenerationRequest request, TokenSink sink) = 0;
  // Thread-safe. Client went away or a stop string matched: the sequence stops
  // within one step, its blocks are freed, and the sink gets a final event with
  // kCancelled. Unknown or finished ids are ignored.
  virtual void Cancel(int64_t id) = 0;
  virtual EngineHealth Health() const = 0;
  // Longest prompt + max_tokens the engine accepts.
  virtual int64_t max_context() const = 0;
};

}  // namespace deepshard::serve
