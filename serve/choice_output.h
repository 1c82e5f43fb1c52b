// One choice of an OpenAI response, built from the engine's token events:
// text (streaming detokenizer, stop strings, stop_token_ids), log
// probabilities, echo, and for chats DeepSeek-R1 reasoning and DeepSeek tool
// calls. It makes the JSON of each `choices[]` entry, streamed (a delta per
// event) or whole; serve/http_server.cc puts one ChoiceOutput per choice on
// the wire. Pure: no networking, unit-tested in tests/serve/choice_output_test.cc.
//
// Text pipeline (chat):
//   token ids -> StreamingDetokenizer -> StopMatcher -> ReasoningParser
//             -> (content) ToolCallStreamParser -> delta.content / delta.tool_calls
//             -> (reasoning) delta.reasoning_content
// Every stage holds back only what a later piece may still change, so the
// streamed deltas concatenate to the non-streamed message.
//
// Log probabilities (`logprobs`) are those of the raw model logits (before
// temperature, penalties and masks), as vLLM reports them by default. Token
// strings are each token decoded alone (a token that holds part of a UTF-8
// character decodes to U+FFFD; chat's `bytes` then carries its raw bytes).
// -inf is reported as -9999.0 (JSON has no infinity), as vLLM does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "boost/json.hpp"
#include "serve/generation_api.h"
#include "serve/openai_api.h"
#include "text/output/reasoning_parser.h"
#include "text/output/tool_call_parser.h"
#include "text/tokenizer/tokenizer.h"

namespace deepshard::serve {

struct ChoiceOptions {
  ApiKind kind = ApiKind::kCompletion;
  int index = 0;                          // choices[].index
  const Tokenizer* tokenizer = nullptr;   // null: no text, only token ids
  std::vector<std::string> stops;
  std::vector<int32_t> stop_token_ids;    // a final token among them is not part of the text
  // Completions: `logprobs` (0..20); chat: `top_logprobs` when `logprobs` is true. -1: none.
  int32_t logprobs = -1;
  bool echo = false;                      // completions: the prompt's text (and logprobs) first
  std::string echo_text;
  std::vector<int32_t> prompt_ids;        // echo: the prompt's tokens
  bool discard_output = false;            // max_tokens 0 with echo: the generated token is dropped
  bool with_token_ids = false;            // choices carry "token_ids"
  bool reasoning = false;                 // chat: split <think>...</think> into reasoning_content
  bool starts_in_reasoning = false;       // the prompt opened <think>
  bool tools = false;                     // chat: parse DeepSeek tool calls
  // Forced tool calls (the output was constrained to JSON, serve/structured_output.h):
  std::string forced_function;            // tool_choice names it: the output is its arguments
  bool required_tools = false;            // tool_choice "required": the output is [{"name", "parameters"}, ...]
  std::string request_id;                 // seeds the tool-call ids
};

class ChoiceOutput {
 public:
  explicit ChoiceOutput(ChoiceOptions options);

  struct Step {
    std::vector<boost::json::object> deltas;  // choices[] entries to stream now
    bool stopped = false;                     // a stop string matched: cancel the request
  };
  // Chat streaming: the first delta ({"role": "assistant", "content": ""}),
  // sent as soon as the stream opens.
  boost::json::object OpeningDelta();
  // One engine event (tokens, their logprobs, echo rows). Not the final
  // event's finish: call Finish after it.
  Step Add(const TokenEvent& ev);
  // The end (`reason` "stop" or "length"): what was held back, as the last
  // streamed deltas, the last one carrying finish_reason ("tool_calls" when the
  // model called tools and stopped by itself).
  std::vector<boost::json::object> FinishStream(std::string_view reason);
  // The whole choice, for a non-streamed response (after Add of every event).
  boost::json::object FinalChoice(std::string_view reason);

  int64_t completion_tokens() const;
  bool stopped() const { return text_.stopped(); }
  int index() const { return o_.index; }

 private:
  struct Pieces {
    std::string content, reasoning;
    std::vector<ToolCallDelta> calls;
  };
  // Text after stop strings -> reasoning / content / tool calls.
  Pieces Route(const std::string& text, bool final);
  boost::json::object Delta(const Pieces& p, boost::json::value logprobs, bool first);
  boost::json::value LogprobsJson(const std::vector<TokenLogprob>& lps, bool with_null_first);
  std::string TokenString(int32_t id) const;
  std::string FinishReason(std::string_view reason) const;
  boost::json::object ToolCallJson(const ToolCallDelta& d);

  ChoiceOptions o_;
  GenerationText text_;
  std::optional<ReasoningParser> reasoning_;
  std::optional<ToolCallStreamParser> tools_;
  bool sent_first_ = false;
  bool echoed_ = false;
  int64_t text_offset_ = 0;                  // completions logprobs: characters so far
  std::vector<TokenLogprob> prompt_lps_;     // echo rows received
  int64_t n_tokens_ = 0;
  std::vector<int32_t> all_ids_;             // every generated id (a final stop_token_id included)
  // Non-streamed accumulation.
  Pieces all_;
  std::vector<TokenLogprob> all_lps_;
  bool all_lps_has_echo_ = false;
  std::vector<std::string> call_ids_;
  std::vector<bool> call_started_;  // streamed: the first delta of a call carries id, type and name
  std::string required_json_;       // required_tools: the whole output, parsed at the end
};


}  // namespace deepshard::serve
