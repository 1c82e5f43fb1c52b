// Structured output for the OpenAI API: turns `response_format`
// (json_object, json_schema) and forced tool calls (`tool_choice` "required"
// or a named function) into a TokenConstraint for the engine, on top of
// text/structured (a byte-level JSON automaton over the vocabulary's trie,
// docs/structured-output.md).
//
// One per server. The vocabulary (every token's bytes) is built once, on the
// first constrained request; compiled grammars are kept by schema text (at
// most kMaxGrammars, least recently used dropped), so requests that repeat a
// schema (every LangChain call of one `with_structured_output`) share its
// cached token masks.
//
// Forced tool calls are constrained to JSON and converted back by the
// response (serve/choice_output.h):
//   named function  -> the function's `parameters` schema (an object); the
//                      output is that call's arguments;
//   "required"      -> [{"name": <one of the tools>, "parameters": {...}}, ...]
//                      with at least one element (exactly one with
//                      parallel_tool_calls false); each is a call.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "serve/generation_api.h"
#include "serve/openai_api.h"
#include "text/structured/json_constraint.h"
#include "text/tokenizer/tokenizer.h"

namespace deepshard::serve {

class StructuredOutput {
 public:
  static constexpr size_t kMaxGrammars = 64;

  // `tokenizer` may be null: then every constrained request is a 400.
  explicit StructuredOutput(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}

  // Null when the request asks for no constraint. InvalidArgument naming
  // `response_format` (or `tools` / `tool_choice`) for schemas outside the
  // supported subset.
  absl::StatusOr<std::shared_ptr<TokenConstraint>> ConstraintFor(const ApiRequest& request);

  // The schema a forced tool choice is constrained to (exposed for tests).
  static absl::StatusOr<boost::json::value> ToolChoiceSchema(const ApiRequest& request);

 private:
  absl::StatusOr<std::shared_ptr<const structured::TokenVocabulary>> Vocabulary();
  absl::StatusOr<std::shared_ptr<const structured::JsonGrammar>> Grammar(const boost::json::value& schema,
                                                                         const std::string& context);

  const Tokenizer* tokenizer_;
  std::mutex mu_;
  std::shared_ptr<const structured::TokenVocabulary> vocab_;
  // schema text -> grammar, with LRU order.
  std::list<std::string> lru_;
  struct Entry {
    std::shared_ptr<const structured::JsonGrammar> grammar;
    std::list<std::string>::iterator pos;
  };
  std::unordered_map<std::string, Entry> grammars_;
};

}  // namespace deepshard::serve
