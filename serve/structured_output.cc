#include "serve/structured_output.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard::serve {

namespace json = boost::json;

namespace {

// The engine's view of one request's JsonConstraint.
class JsonTokenConstraint : public TokenConstraint {
 public:
  JsonTokenConstraint(std::shared_ptr<const structured::JsonGrammar> g,
                      std::shared_ptr<const structured::TokenVocabulary> v)
      : c_(std::move(g), std::move(v)) {}
  const std::vector<uint64_t>& Allowed() override { return c_.AllowedTokens(); }
  absl::Status Accept(int32_t token) override { return c_.Accept(token); }

 private:
  structured::JsonConstraint c_;
};

}  // namespace

absl::StatusOr<json::value> StructuredOutput::ToolChoiceSchema(const ApiRequest& r) {
  auto parameters = [](const json::value& tool) -> json::value {
    const json::object& f = tool.at("function").as_object();
    auto it = f.find("parameters");
    if (it == f.end() || it->value().is_null()) return json::object{{"type", "object"}};
    return it->value();
  };
  if (r.tool_choice.kind == ToolChoice::kFunction) {
    for (const json::value& t : r.tools) {
      if (t.at("function").at("name").as_string() == r.tool_choice.function) return parameters(t);
    }
    return InvalidParam("tool_choice", absl::StrCat("`tool_choice` names `", r.tool_choice.function,
                                                    "`, which is not in `tools`"));
  }
  json::array alternatives;
  for (const json::value& t : r.tools) {
    json::object props{{"name", json::object{{"const", t.at("function").at("name")}}},
                       {"parameters", parameters(t)}};
    alternatives.push_back(json::object{
        {"type", "object"}, {"properties", std::move(props)}, {"required", json::array{"name", "parameters"}}});
  }
  json::object calls{{"type", "array"}, {"minItems", 1}, {"items", json::object{{"anyOf", std::move(alternatives)}}}};
  if (!r.parallel_tool_calls) calls["maxItems"] = 1;
  return calls;
}

absl::StatusOr<std::shared_ptr<TokenConstraint>> StructuredOutput::ConstraintFor(const ApiRequest& r) {
  const bool forced_tool =
      !r.tools.empty() && (r.tool_choice.kind == ToolChoice::kRequired || r.tool_choice.kind == ToolChoice::kFunction);
  if (!r.json_mode && !forced_tool) return std::shared_ptr<TokenConstraint>();
  const char* param = forced_tool ? "tools" : "response_format";
  if (!tokenizer_) {
    return InvalidParam(param, absl::StrCat("`", param, "` needs the model's tokenizer, and this server has none"));
  }
  if (forced_tool && r.json_mode) {
    return InvalidParam("response_format", "`response_format` cannot be combined with a forced `tool_choice`");
  }
  ASSIGN_OR_RETURN(auto vocab, Vocabulary());
  std::shared_ptr<const structured::JsonGrammar> grammar;
  if (forced_tool) {
    ASSIGN_OR_RETURN(json::value schema, ToolChoiceSchema(r));
    ASSIGN_OR_RETURN(grammar, Grammar(schema, r.tool_choice.kind == ToolChoice::kFunction
                                                  ? "tools[].function.parameters"
                                                  : "tools (tool_choice \"required\")"));
  } else if (r.json_schema.is_null()) {
    grammar = structured::JsonGrammar::AnyObject();
  } else {
    ASSIGN_OR_RETURN(grammar, Grammar(r.json_schema, "response_format.json_schema.schema"));
  }
  return std::shared_ptr<TokenConstraint>(std::make_shared<JsonTokenConstraint>(std::move(grammar), std::move(vocab)));
}

absl::StatusOr<std::shared_ptr<const structured::TokenVocabulary>> StructuredOutput::Vocabulary() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!vocab_) {
    auto v = structured::TokenVocabulary::FromTokenizer(*tokenizer_);
    if (!v.ok()) return absl::InternalError(absl::StrCat("structured output: ", v.status().message()));
    vocab_ = *std::move(v);
  }
  return vocab_;
}

absl::StatusOr<std::shared_ptr<const structured::JsonGrammar>> StructuredOutput::Grammar(const json::value& schema,
                                                                                         const std::string& context) {
  const std::string key = absl::StrCat(context, "\n", json::serialize(schema));
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = grammars_.find(key); it != grammars_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.pos);
    return it->second.grammar;
  }
  structured::JsonGrammarOptions o;
  o.error_context = context;
  auto g = structured::JsonGrammar::FromSchema(schema, o);
  if (!g.ok()) {
    const std::string param = context.rfind("response_format", 0) == 0 ? "response_format" : "tools";
    return InvalidParam(param, std::string(g.status().message()));
  }
  lru_.push_front(key);
  grammars_[key] = {*g, lru_.begin()};
  if (grammars_.size() > kMaxGrammars) {
    grammars_.erase(lru_.back());
    lru_.pop_back();
  }
  return *g;
}

}  // namespace deepshard::serve
