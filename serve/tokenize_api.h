// vLLM's tokenizer endpoints without the networking: POST /tokenize and
// POST /detokenize (serve/http_server.cc puts them on the wire; tests in
// tests/serve/http_server_test.cc). Same policy as openai_api.h: unknown
// fields are ignored, a wrong type or value is a 400 naming the field, a
// `model` other than the served one is a 404 "model_not_found".
//
// POST /tokenize, either form (a body with `messages` is a chat):
//   {"prompt": str, "add_special_tokens": bool = true, "return_token_strs": bool = false}
//   {"messages": [...], "add_generation_prompt": bool = true,
//    "continue_final_message": bool = false, "add_special_tokens": bool = false,
//    "return_token_strs": bool = false, "tools": [...], "chat_template_kwargs": {...}}
//   -> {"count": n, "max_model_len": m, "tokens": [ids], "token_strs": [...] (only when asked)}
// A chat is parsed and rendered exactly as /v1/chat/completions does
// (ParseChatRequest, PromptBuilder::RenderChat); `add_generation_prompt` is
// passed to the template unless chat_template_kwargs sets it. With
// `continue_final_message` the rendering is cut right after the last
// message's (stripped) content, as transformers does, so the model continues
// that message; it implies add_generation_prompt false unless that is set
// true (then 400, as vLLM). `add_special_tokens` encodes the rendered text
// with the tokenizer's special tokens (BOS) on top of what the template writes.
// A custom `chat_template` is a 400. `token_strs` are the tokens' own strings
// (Tokenizer::IdToToken, e.g. "Ġworld"), as transformers' convert_ids_to_tokens.
//
// POST /detokenize: {"tokens": [ids]} -> {"prompt": text}, decoded with the
// special tokens kept (as vLLM's tokenizer.decode). An id outside
// [0, vocab_size) is a 400 naming `tokens[i]`.
//
// Without a tokenizer both are a 404 (code "not_found").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "serve/openai_api.h"

namespace deepshard::serve {

// The JSON body of a /tokenize response, or the error (ToApiError maps it).
absl::StatusOr<std::string> TokenizeResponseJson(std::string_view body, const PromptBuilder& builder,
                                                 std::string_view served_model, int64_t max_model_len);

// The JSON body of a /detokenize response, or the error. `tokenizer` may be null.
absl::StatusOr<std::string> DetokenizeResponseJson(std::string_view body, const Tokenizer* tokenizer,
                                                   std::string_view served_model);

}  // namespace deepshard::serve
