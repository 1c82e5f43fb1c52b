// The OpenAI-compatible API without the networking: request parsing and
// validation, prompt building (chat template + tokenizer), the text of a
// generation (detokenizing + stop strings), and the JSON of responses,
// streaming chunks and errors. serve/http_server.cc puts these on the wire;
// everything here is pure and unit-tested (tests/serve/openai_api_test.cc).
//
// Requests (POST /v1/completions, POST /v1/chat/completions) follow OpenAI's
// schema with vLLM's `ignore_eos` and `top_k` extensions. Policy:
//   - unknown fields are ignored (OpenAI clients send extras such as `user`);
//   - a supported field with a wrong type or value is a 400 that names it:
//     "`temperature` must be a number";
//   - a parameter that would change the output in a way this server does not
//     implement (`n` > 1, `best_of` > 1, `logprobs`, `echo`, `suffix`,
//     `logit_bias`, `tools`, penalties, a non-text `response_format`) is a 400
//     naming it, never silently ignored;
//   - `model`, when given, must be the served model's name (else 404
//     "model_not_found", as vLLM does).
// Errors travel as absl::Status; the OpenAI `param` and `code` ride along as
// status payloads (InvalidParam, ToApiError).
//
// Prompts: a chat is rendered with the tokenizer's chat template
// (add_generation_prompt = true) and encoded without special tokens, since the
// template writes BOS itself, exactly as `deepshard generate --chat` does; a
// text completion prompt is encoded with special tokens (BOS first).
//
// Output text: GenerationText feeds the engine's token ids through a
// StreamingDetokenizer and a StopMatcher; what it returns may be sent to the
// client at once (a suffix that could still grow into a stop string is held
// back), and the concatenation of everything it returns equals the final text.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "boost/json.hpp"
#include "runtime/sampling.h"
#include "text/chat/chat_template.h"
#include "text/tokenizer/streaming_detokenizer.h"
#include "text/tokenizer/tokenizer.h"
#include "serve/generation_api.h"

namespace deepshard::serve {

// ---------------------------------------------------------------------------
// Errors

// An error as OpenAI returns it:
//   {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // "" -> null
  std::string code;   // "" -> null
};
// The body of an error; always valid UTF-8 (ill-formed bytes in the fields, e.g.
// a quoted request path, become U+FFFD).
std::string ErrorJson(const ApiError& e);

// InvalidArgument/OutOfRange -> 400, NotFound -> 404, ResourceExhausted -> 429,
// Unavailable -> 503, Unauthenticated -> 401, others -> 500.
int HttpStatusForCode(absl::StatusCode code);

// An InvalidArgument status whose OpenAI `param` is `param`.
absl::Status InvalidParam(std::string_view param, std::string_view message);
// Attaches OpenAI `param` / `code` to a status (kept by ToApiError).
absl::Status WithParam(absl::Status s, std::string_view param);
absl::Status WithCode(absl::Status s, std::string_view code);
// The OpenAI error for a status: HTTP code from HttpStatusForCode, `type` from
// the HTTP code, message, and the attached param / code.
ApiError ToApiError(const absl::Status& s);

// ---------------------------------------------------------------------------
// Requests

enum class ApiKind { kCompletion, kChat };

struct ChatMessage {
  std::string role;     // system | user | assistant | tool ("developer" is read as system)
  std::string content;  // text parts joined with "\n" ("" when null)
  // What the chat template sees: role, content (null for an assistant turn
  // that only calls tools), and tool_calls / tool_call_id / name / reasoning_content
  // where given.
  boost::json::object raw;
};

struct PromptInput {
  bool is_ids = false;
  std::string text;
  std::vector<int32_t> ids;
};

// tool_choice: "auto" (the default with tools), "none", "required", or one named function.
struct ToolChoice {
  enum Kind { kAuto, kNone, kRequired, kFunction } kind = kAuto;
  std::string function;  // kFunction
};

// Which sampling fields the request set (the rest come from the model's
// generation_config.json, then OpenAI's defaults).
struct GivenFields {
  bool temperature = false, top_p = false, top_k = false, min_p = false, repetition_penalty = false,
       max_tokens = false;
};

// Sampling defaults of the model (generation_config.json), as vLLM applies them.
struct GenerationDefaults {
  std::optional<float> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k, max_new_tokens;
  // Reads <dir>/generation_config.json; absent file: no defaults. A bad value
  // is an error naming the file and key.
  static absl::StatusOr<GenerationDefaults> FromDirectory(const std::string& dir);
};

// Limits of this server (documented in docs/serving.md).
inline constexpr int64_t kMaxChoices = 16;      // n (and prompts x n)
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopTokenIds = 64;
inline constexpr size_t kMaxLogitBias = 1024;

struct ApiRequest {
  ApiKind kind = ApiKind::kCompletion;
  std::string model;  // as sent; "" when absent
  // kCompletion: the prompt is text, or token ids when prompt_is_ids.
  bool prompt_is_ids = false;
  std::string prompt_text;
  std::vector<int32_t> prompt_ids;
  // kChat.
  std::vector<ChatMessage> messages;
  std::vector<PromptInput> prompts;  // every prompt of a completion (prompt_* above is prompts[0])
  bool echo = false;                 // completions: the prompt is part of each choice
  // kChat.
  boost::json::array tools;          // tool definitions ({"type": "function", "function": {...}})
  ToolChoice tool_choice;
  bool parallel_tool_calls = true;   // false: at most one call (tool_choice "required" is held to one)
  boost::json::object chat_template_kwargs;
  bool add_generation_prompt = true;    // vLLM's; false: no assistant header after the messages
  bool continue_final_message = false;  // vLLM's: the output continues the last message
  // Common.
  std::optional<int64_t> max_tokens;  // absent: 16 (completions) or the rest of the context (chat); 0 only with echo
  SamplingParams sampling;            // top_k -1 is stored as 0 (off)
  GivenFields given;
  std::vector<std::string> stop;      // up to kMaxStopStrings, non-empty
  int64_t n = 1;                      // choices per prompt
  // Completions `logprobs` (0..20); chat `top_logprobs` (0..20) when `logprobs` is true; -1 none.
  int32_t logprobs = -1;
  // response_format json_object / json_schema: the schema (json_object: null).
  bool json_mode = false;
  boost::json::value json_schema;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;
  bool return_token_ids = false;  // vLLM extension: choices (and stream chunks) carry "token_ids"
};

// Parse and validate a request body. `served_model` is the name in
// /v1/models; a different `model` is NotFound with code "model_not_found".
// Malformed JSON (including invalid UTF-8 and nesting deeper than 64) is
// InvalidArgument.
absl::StatusOr<ApiRequest> ParseCompletionRequest(std::string_view body, std::string_view served_model);
absl::StatusOr<ApiRequest> ParseChatRequest(std::string_view body, std::string_view served_model);

// Turns a parsed request into the engine's request: renders and tokenises the
// prompt, picks the default max_tokens, and checks the context length
// (400 naming `prompt`/`messages` or `max_tokens`).
class PromptBuilder {
 public:
  // `tokenizer` may be null: then only completions with token-id prompts work
  // (and responses carry `token_ids` instead of text). It must outlive this.
  explicit PromptBuilder(const Tokenizer* tokenizer);

  absl::StatusOr<GenerationRequest> Build(const ApiRequest& request, int64_t max_context) const;

  // Every engine request of an API request: prompts x n choices, in
  // OpenAI's choice order (index = prompt * n + choice); choice j > 0 of a
  // prompt has seed + j.
  struct Built {
    std::vector<GenerationRequest> choices;
    std::vector<std::string> prompt_texts;          // [prompt] for echo
    std::vector<std::vector<int32_t>> prompt_ids;   // [prompt]
    bool starts_in_reasoning = false;               // chat: the rendered prompt opened <think>
    bool discard_output = false;                    // max_tokens 0 (echo): one token is run and dropped
  };
  absl::StatusOr<Built> BuildAll(const ApiRequest& request, int64_t max_context) const;

  // The prompt ids of a chat (template + Encode without special tokens);
  // `rendered` receives the text when not null.
  absl::StatusOr<std::vector<int32_t>> RenderChat(const std::vector<ChatMessage>& messages,
                                                  const ApiRequest* request = nullptr,
                                                  std::string* rendered = nullptr) const;
  void set_defaults(GenerationDefaults d) { defaults_ = std::move(d); }
  const GenerationDefaults& defaults() const { return defaults_; }

  const Tokenizer* tokenizer() const { return tokenizer_; }

 private:
  const Tokenizer* tokenizer_;
  std::optional<ChatTemplate> template_;  // parsed once
  absl::Status template_status_;          // why there is none
  GenerationDefaults defaults_;
};

// ---------------------------------------------------------------------------
// Output text

// Matches stop strings across the pieces of a stream. Feed() returns the text
// that is safe to emit now: a suffix that is a proper prefix of some stop
// string is held back until the next piece decides it. On a match, the text
// is cut right before the earliest stop string (which is not included, as
// OpenAI does) and nothing is returned after that.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);  // empty strings are ignored

  struct Result {
    std::string text;
    bool stopped = false;
  };
  Result Feed(std::string_view piece);
  // The held-back text at the end of the stream ("" after a match).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  size_t max_len_ = 0;
  std::string held_;
  bool stopped_ = false;
};

// The text of one generation: token ids in, emit-ready text out.
class GenerationText {
 public:
  // `tokenizer` may be null (then there is no text, only ids).
  GenerationText(const Tokenizer* tokenizer, std::vector<std::string> stops);

  struct Piece {
    std::string text;
    bool stopped = false;  // a stop string matched: Cancel the request and finish with "stop"
  };
  // Adds the tokens of one engine event. After a stop match the remaining
  // tokens are not counted.
  Piece Add(std::span<const int32_t> tokens);
  // End of the generation: whatever was held back.
  std::string Finish();

  int64_t completion_tokens() const { return static_cast<int64_t>(ids_.size()); }
  const std::vector<int32_t>& ids() const { return ids_; }
  bool stopped() const { return matcher_.stopped(); }

 private:
  std::unique_ptr<StreamingDetokenizer> detok_;
  StopMatcher matcher_;
  std::vector<int32_t> ids_;
};

// ---------------------------------------------------------------------------
// Responses

// "cmpl-<24 hex>" or "chatcmpl-<24 hex>".
std::string NewRequestId(ApiKind kind);

struct ResponseContext {
  ApiKind kind = ApiKind::kCompletion;
  std::string id;
  int64_t created = 0;  // unix seconds
  std::string model;
  bool include_usage = false;  // streaming: chunks carry "usage": null
  bool with_token_ids = false;  // no tokenizer: choices carry "token_ids"
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// "stop" or "length" (kCancelled after a stop string is "stop").
std::string_view FinishReasonString(FinishReason r);

// The non-streaming body ("text_completion" or "chat.completion") with
// `choices` (serve/choice_output.h builds them) in index order; cached_tokens
// >= 0 adds usage.prompt_tokens_details.cached_tokens.
std::string ResponseJson(const ResponseContext& ctx, std::vector<boost::json::object> choices, const Usage& usage,
                         int64_t cached_tokens = -1);
// One streamed chunk ("text_completion" or "chat.completion.chunk") holding `choices`.
std::string ChunkWithChoices(const ResponseContext& ctx, std::vector<boost::json::object> choices);
// The chunk with empty choices and the usage (stream_options.include_usage).
// cached_tokens >= 0 adds usage.prompt_tokens_details.cached_tokens.
std::string UsageChunkJson(const ResponseContext& ctx, const Usage& usage, int64_t cached_tokens = -1);
// One server-sent event: "data: <payload>\n\n".
std::string SseEvent(std::string_view payload);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace deepshard::serve
