#include "runtime/generate.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {

absl::StatusOr<std::vector<int32_t>> Generate(DeepseekModel& model, const std::vector<int32_t>& prompt,
                                              const GenerateOptions& opts) {
  RETURN_IF_ERROR(opts.sampling.Validate());
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (opts.max_new_tokens < 0) return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  const int64_t V = model.config().vocab_size;
  if (opts.max_new_tokens > model.max_context() - static_cast<int64_t>(prompt.size())) {
    return absl::OutOfRangeError(absl::StrCat("prompt (", prompt.size(), " tokens) plus max_new_tokens (",
                                              opts.max_new_tokens, ") exceeds the context limit of ",
                                              model.max_context(), " tokens"));
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + opts.max_new_tokens;
  ASSIGN_OR_RETURN(auto cache, model.NewCache(total));
  Sampler sampler(V, opts.sampling);
  std::vector<float> logits(V);
  std::vector<int32_t> out;
  out.reserve(opts.max_new_tokens);
  if (opts.step_logits) opts.step_logits->reserve(opts.max_new_tokens * V);
  if (opts.max_new_tokens == 0) return out;

  SequenceChunk chunk{cache.get(), 0, prompt.data(), static_cast<int64_t>(prompt.size())};
  RETURN_IF_ERROR(model.Forward({&chunk, 1}, false, logits.data()));
  int32_t token = 0;
  for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
    if (step > 0) {
      chunk = SequenceChunk{cache.get(), cache->length(), &token, 1};
      RETURN_IF_ERROR(model.Forward({&chunk, 1}, false, logits.data()));
    }
    if (opts.step_logits) opts.step_logits->insert(opts.step_logits->end(), logits.begin(), logits.end());
    token = sampler.Sample(logits.data());
    out.push_back(token);
    if (opts.on_token) opts.on_token(token);
    if (opts.stop_at_eos && token == model.config().eos_token_id) break;
  }
  return out;
}

}  // namespace deepshard
