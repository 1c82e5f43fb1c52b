// POST /tokenize and POST /detokenize: see tokenize_api.h.
#include "serve/tokenize_api.h"

#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "boost/json.hpp"

namespace deepshard::serve {

namespace json = boost::json;

namespace {

constexpr int kMaxJsonDepth = 64;  // as openai_api.cc

// Debian's Abseil has its own string_view type.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status NoTokenizer(std::string_view endpoint) {
  return WithCode(absl::NotFoundError(absl::StrCat("this server has no tokenizer (no usable tokenizer.json in the "
                                                   "model directory), so ", AV(endpoint), " is not available")),
                  "not_found");
}

absl::StatusOr<json::object> ParseObject(std::string_view body) {
  json::parse_options opt;
  opt.max_depth = kMaxJsonDepth;
  boost::system::error_code ec;
  json::value v = json::parse(body, ec, json::storage_ptr(), opt);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("the request body is not valid JSON: ", ec.message()));
  if (!v.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  return std::move(v.as_object());
}

// null counts as absent, as in openai_api.cc.
const json::value* Field(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end() || it->value().is_null()) return nullptr;
  return &it->value();
}

absl::StatusOr<std::optional<bool>> GetBool(const json::object& o, std::string_view key) {
  const json::value* v = Field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_bool()) return InvalidParam(key, absl::StrCat("`", AV(key), "` must be a boolean"));
  return v->get_bool();
}

absl::Status CheckModel(const json::object& o, std::string_view served_model) {
  const json::value* v = Field(o, "model");
  if (!v) return absl::OkStatus();
  if (!v->is_string()) return InvalidParam("model", "`model` must be a string");
  if (v->get_string() != served_model) {
    return WithCode(WithParam(absl::NotFoundError(absl::StrCat("The model `", AV(std::string_view(v->get_string())),
                                                               "` does not exist; this server serves `",
                                                               AV(served_model), "`")),
                              "model"),
                    "model_not_found");
  }
  return absl::OkStatus();
}

// The ids of a chat: rendered as /v1/chat/completions renders it, then the
// tokenize-only options.
absl::StatusOr<std::vector<int32_t>> ChatIds(std::string_view body, const json::object& o,
                                             const PromptBuilder& builder, std::string_view served_model) {
  if (Field(o, "chat_template")) {
    return InvalidParam("chat_template", "`chat_template` (a custom template) is not supported by this server; "
                                         "the model's own template is used");
  }
  ASSIGN_OR_RETURN(auto add_special, GetBool(o, "add_special_tokens"));
  // add_generation_prompt and continue_final_message are read and applied as
  // /v1/chat/completions applies them (ParseChatRequest, RenderChat).
  ASSIGN_OR_RETURN(ApiRequest r, ParseChatRequest(body, served_model));
  std::string rendered;
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, builder.RenderChat(r.messages, &r, &rendered));
  if (!add_special.value_or(false)) return ids;
  return builder.tokenizer()->Encode(rendered, /*add_special_tokens=*/add_special.value_or(false));
}

}  // namespace

absl::StatusOr<std::string> TokenizeResponseJson(std::string_view body, const PromptBuilder& builder,
                                                 std::string_view served_model, int64_t max_model_len) {
  const Tokenizer* tok = builder.tokenizer();
  if (!tok) return NoTokenizer("/tokenize");
  ASSIGN_OR_RETURN(json::object o, ParseObject(body));
  RETURN_IF_ERROR(CheckModel(o, served_model));
  ASSIGN_OR_RETURN(auto return_strs, GetBool(o, "return_token_strs"));
  const bool chat = Field(o, "messages") != nullptr;
  const json::value* prompt = Field(o, "prompt");
  std::vector<int32_t> ids;
  if (chat) {
    if (prompt) return InvalidParam("prompt", "send either `prompt` or `messages`, not both");
    ASSIGN_OR_RETURN(ids, ChatIds(body, o, builder, served_model));
  } else {
    if (!prompt) return InvalidParam("prompt", "`prompt` (a string) or `messages` is required");
    if (!prompt->is_string()) return InvalidParam("prompt", "`prompt` must be a string");
    ASSIGN_OR_RETURN(auto add_special, GetBool(o, "add_special_tokens"));
    ids = tok->Encode(prompt->get_string(), /*add_special_tokens=*/add_special.value_or(true));
  }
  json::object out;
  out["count"] = static_cast<int64_t>(ids.size());
  out["max_model_len"] = max_model_len;
  json::array tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) tokens.push_back(id);
  out["tokens"] = std::move(tokens);
  if (return_strs.value_or(false)) {
    json::array strs;
    strs.reserve(ids.size());
    for (int32_t id : ids) strs.push_back(json::string(tok->IdToToken(id)));
    out["token_strs"] = std::move(strs);
  }
  return json::serialize(out);
}

absl::StatusOr<std::string> DetokenizeResponseJson(std::string_view body, const Tokenizer* tok,
                                                   std::string_view served_model) {
  if (!tok) return NoTokenizer("/detokenize");
  ASSIGN_OR_RETURN(json::object o, ParseObject(body));
  RETURN_IF_ERROR(CheckModel(o, served_model));
  const json::value* v = Field(o, "tokens");
  if (!v) return InvalidParam("tokens", "`tokens` (an array of token ids) is required");
  if (!v->is_array()) return InvalidParam("tokens", "`tokens` must be an array of token ids");
  const json::array& a = v->get_array();
  std::vector<int32_t> ids;
  ids.reserve(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const json::value& t = a[i];
    const std::string where = absl::StrCat("`tokens[", i, "]`");
    if (!t.is_int64() && !t.is_uint64()) return InvalidParam("tokens", absl::StrCat(where, " must be an integer"));
    const bool in_range = t.is_int64() ? t.get_int64() >= 0 && t.get_int64() < tok->vocab_size()
                                       : t.get_uint64() < static_cast<uint64_t>(tok->vocab_size());
    if (!in_range) {
      return InvalidParam("tokens", absl::StrCat(where, " = ", json::serialize(t), " is not a token id (the "
                                                 "vocabulary has ", tok->vocab_size(), " tokens)"));
    }
    ids.push_back(static_cast<int32_t>(t.to_number<int64_t>()));
  }
  json::object out;
  out["prompt"] = tok->Decode(ids, /*skip_special_tokens=*/false);
  return json::serialize(out);
}

}  // namespace deepshard::serve
