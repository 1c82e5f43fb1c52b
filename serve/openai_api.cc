// OpenAI request parsing, prompt building, output text and response JSON:
// see openai_api.h.
#include "serve/openai_api.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "boost/json.hpp"
#include "base/status_macros.h"

namespace deepshard::serve {

namespace json = boost::json;

namespace {

constexpr char kParamPayload[] = "type.deepshard/openai.param";
constexpr char kCodePayload[] = "type.deepshard/openai.code";
constexpr int kMaxJsonDepth = 64;
constexpr size_t kMaxStops = 4;

// Debian's Abseil has its own string_view type; the public API uses std's.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string Quoted(std::string_view field) { return absl::StrCat("`", AV(field), "`"); }

// ---- typed field access: null counts as absent --------------------------

const json::value* Field(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end() || it->value().is_null()) return nullptr;
  return &it->value();
}

absl::StatusOr<std::optional<bool>> GetBool(const json::object& o, std::string_view key) {
  const json::value* v = Field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_bool()) return InvalidParam(key, Quoted(key) + " must be a boolean");
  return v->get_bool();
}

absl::StatusOr<std::optional<double>> GetNumber(const json::object& o, std::string_view key) {
  const json::value* v = Field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) return InvalidParam(key, Quoted(key) + " must be a number");
  return v->to_number<double>();
}

// Integers may arrive as 16, or as 16.0 from some clients; 16.5 is an error.
absl::StatusOr<int64_t> AsInt(const json::value& v, std::string_view name) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64()) {
    if (v.get_uint64() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return InvalidParam(name, Quoted(name) + " is too large");
    }
    return static_cast<int64_t>(v.get_uint64());
  }
  if (v.is_double()) {
    const double d = v.get_double();
    if (std::floor(d) == d && std::fabs(d) < 9.2e18) return static_cast<int64_t>(d);
  }
  return InvalidParam(name, Quoted(name) + " must be an integer");
}

absl::StatusOr<std::optional<int64_t>> GetInt(const json::object& o, std::string_view key) {
  const json::value* v = Field(o, key);
  if (!v) return std::nullopt;
  ASSIGN_OR_RETURN(int64_t i, AsInt(*v, key));
  return i;
}

absl::Status Unsupported(std::string_view param, std::string_view what) {
  return InvalidParam(param, absl::StrCat(Quoted(param), " ", AV(what), " is not supported by this server"));
}

// ---- the pieces of a request ---------------------------------------------

absl::StatusOr<json::object> ParseBody(std::string_view body) {
  json::parse_options opt;
  opt.max_depth = kMaxJsonDepth;
  boost::system::error_code ec;
  json::value v = json::parse(body, ec, json::storage_ptr(), opt);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("the request body is not valid JSON: ", ec.message()));
  }
  if (!v.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  return std::move(v.as_object());
}

absl::Status ParseModel(const json::object& o, std::string_view served_model, ApiRequest& r) {
  const json::value* v = Field(o, "model");
  if (!v) return absl::OkStatus();
  if (!v->is_string()) return InvalidParam("model", "`model` must be a string");
  r.model = std::string(v->get_string());
  if (r.model != served_model) {
    return WithCode(WithParam(absl::NotFoundError(absl::StrCat("The model `", r.model, "` does not exist; this server "
                                                               "serves `", AV(served_model), "`")),
                              "model"),
                    "model_not_found");
  }
  return absl::OkStatus();
}

absl::Status ParseStop(const json::object& o, ApiRequest& r) {
  const json::value* v = Field(o, "stop");
  if (!v) return absl::OkStatus();
  if (v->is_string()) {
    if (!v->get_string().empty()) r.stop.emplace_back(v->get_string());
    return absl::OkStatus();
  }
  if (!v->is_array()) return InvalidParam("stop", "`stop` must be a string or an array of strings");
  const json::array& a = v->get_array();
  if (a.size() > kMaxStops) {
    return InvalidParam("stop", absl::StrCat("`stop` has ", a.size(), " strings; at most ", kMaxStops, " are allowed"));
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].is_string()) return InvalidParam("stop", absl::StrCat("`stop[", i, "]` must be a string"));
    if (!a[i].get_string().empty()) r.stop.emplace_back(a[i].get_string());
  }
  return absl::OkStatus();
}

// Parameters that would change the output in ways this server does not
// implement: reject them by name rather than return something else.
absl::Status RejectUnsupported(const json::object& o, ApiKind kind) {
  ASSIGN_OR_RETURN(auto n, GetInt(o, "n"));
  if (n && *n != 1) return InvalidParam("n", absl::StrCat("`n` must be 1 (one choice per request), got ", *n));
  if (kind == ApiKind::kCompletion) {
    ASSIGN_OR_RETURN(auto best_of, GetInt(o, "best_of"));
    if (best_of && *best_of != 1) return Unsupported("best_of", absl::StrCat("= ", *best_of));
    ASSIGN_OR_RETURN(auto echo, GetBool(o, "echo"));
    if (echo && *echo) return Unsupported("echo", "= true");
    if (const json::value* v = Field(o, "suffix")) {
      if (!v->is_string()) return InvalidParam("suffix", "`suffix` must be a string");
      if (!v->get_string().empty()) return Unsupported("suffix", "(insertion)");
    }
  }
  if (const json::value* v = Field(o, "logprobs")) {
    const bool off = (v->is_bool() && !v->get_bool()) || (v->is_number() && v->to_number<double>() == 0);
    if (!v->is_bool() && !v->is_number()) {
      return InvalidParam("logprobs", kind == ApiKind::kChat ? "`logprobs` must be a boolean"
                                                             : "`logprobs` must be an integer");
    }
    if (!off) return Unsupported("logprobs", "");
  }
  if (const json::value* v = Field(o, "top_logprobs")) {
    if (!v->is_number()) return InvalidParam("top_logprobs", "`top_logprobs` must be an integer");
    if (v->to_number<double>() != 0) return Unsupported("top_logprobs", "");
  }
  if (const json::value* v = Field(o, "logit_bias")) {
    if (!v->is_object()) return InvalidParam("logit_bias", "`logit_bias` must be an object");
    if (!v->get_object().empty()) return Unsupported("logit_bias", "");
  }
  for (const char* key : {"tools", "functions"}) {
    if (const json::value* v = Field(o, key)) {
      if (!v->is_array()) return InvalidParam(key, Quoted(key) + " must be an array");
      if (!v->get_array().empty()) return Unsupported(key, "(tool calling)");
    }
  }
  if (const json::value* v = Field(o, "response_format")) {
    const json::object* f = v->if_object();
    const json::value* type = f ? Field(*f, "type") : nullptr;
    if (!f || !type || !type->is_string()) {
      return InvalidParam("response_format", "`response_format` must be an object with a string `type`");
    }
    if (type->get_string() != "text") {
      return Unsupported("response_format", absl::StrCat("of type \"", AV(type->get_string()), "\""));
    }
  }
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    ASSIGN_OR_RETURN(auto p, GetNumber(o, key));
    if (p && *p != 0) return Unsupported(key, "other than 0");
  }
  ASSIGN_OR_RETURN(auto rp, GetNumber(o, "repetition_penalty"));
  if (rp && *rp != 1) return Unsupported("repetition_penalty", "other than 1");
  return absl::OkStatus();
}

absl::Status ParseCommon(const json::object& o, ApiKind kind, std::string_view served_model, ApiRequest& r) {
  r.kind = kind;
  RETURN_IF_ERROR(ParseModel(o, served_model, r));
  RETURN_IF_ERROR(RejectUnsupported(o, kind));

  // Chat: max_completion_tokens (the current name) wins over max_tokens.
  const char* max_key = "max_tokens";
  if (kind == ApiKind::kChat && Field(o, "max_completion_tokens")) max_key = "max_completion_tokens";
  ASSIGN_OR_RETURN(r.max_tokens, GetInt(o, max_key));
  if (r.max_tokens && *r.max_tokens < 1) {
    return InvalidParam(max_key, absl::StrCat(Quoted(max_key), " must be at least 1, got ", *r.max_tokens));
  }

  ASSIGN_OR_RETURN(auto temperature, GetNumber(o, "temperature"));
  if (temperature) {
    if (!(*temperature >= 0 && *temperature <= 2)) {
      return InvalidParam("temperature", absl::StrCat("`temperature` must be between 0 and 2, got ", *temperature));
    }
    r.sampling.temperature = static_cast<float>(*temperature);
  } else {
    r.sampling.temperature = 1.0f;  // OpenAI's default
  }
  ASSIGN_OR_RETURN(auto top_p, GetNumber(o, "top_p"));
  if (top_p) {
    if (!(*top_p > 0 && *top_p <= 1)) {
      return InvalidParam("top_p", absl::StrCat("`top_p` must be in (0, 1], got ", *top_p));
    }
    r.sampling.top_p = static_cast<float>(*top_p);
  }
  ASSIGN_OR_RETURN(auto top_k, GetInt(o, "top_k"));
  if (top_k) {
    if (*top_k < -1) return InvalidParam("top_k", absl::StrCat("`top_k` must be -1, 0 (off) or positive, got ", *top_k));
    r.sampling.top_k = *top_k <= 0 ? 0 : *top_k;
  }
  ASSIGN_OR_RETURN(auto seed, GetInt(o, "seed"));
  if (seed) {
    r.sampling.seed = static_cast<uint64_t>(*seed);
  } else {
    // No seed: a fresh one, so that two identical requests may differ (OpenAI).
    static thread_local std::mt19937_64 rng(std::random_device{}());
    r.sampling.seed = rng();
  }
  if (absl::Status s = r.sampling.Validate(); !s.ok()) return InvalidParam("", std::string(s.message()));

  RETURN_IF_ERROR(ParseStop(o, r));
  ASSIGN_OR_RETURN(auto stream, GetBool(o, "stream"));
  r.stream = stream.value_or(false);
  if (const json::value* v = Field(o, "stream_options")) {
    if (!v->is_object()) return InvalidParam("stream_options", "`stream_options` must be an object");
    if (const json::value* u = Field(v->get_object(), "include_usage")) {
      if (!u->is_bool()) return InvalidParam("stream_options", "`stream_options.include_usage` must be a boolean");
      r.include_usage = u->get_bool();
    }
  }
  ASSIGN_OR_RETURN(auto ignore_eos, GetBool(o, "ignore_eos"));
  r.ignore_eos = ignore_eos.value_or(false);
  ASSIGN_OR_RETURN(auto return_token_ids, GetBool(o, "return_token_ids"));
  r.return_token_ids = return_token_ids.value_or(false);
  return absl::OkStatus();
}

// One prompt of token ids; `where` names it in errors.
absl::StatusOr<std::vector<int32_t>> TokenIds(const json::array& a, const std::string& where) {
  if (a.empty()) return InvalidParam("prompt", absl::StrCat(Quoted(where), " must not be empty"));
  std::vector<int32_t> ids;
  ids.reserve(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string name = absl::StrCat(where, "[", i, "]");
    if (!a[i].is_number()) return InvalidParam("prompt", absl::StrCat(Quoted(name), " must be a token id (integer)"));
    auto id = AsInt(a[i], name);
    if (!id.ok() || *id < 0 || *id > std::numeric_limits<int32_t>::max()) {
      return InvalidParam("prompt", absl::StrCat(Quoted(name), " must be a token id (integer >= 0)"));
    }
    ids.push_back(static_cast<int32_t>(*id));
  }
  return ids;
}

absl::Status ParsePrompt(const json::object& o, ApiRequest& r) {
  const json::value* v = Field(o, "prompt");
  if (!v) return InvalidParam("prompt", "`prompt` is required");
  if (v->is_string()) {
    r.prompt_text = std::string(v->get_string());
    return absl::OkStatus();
  }
  if (!v->is_array()) {
    return InvalidParam("prompt", "`prompt` must be a string, an array of token ids, or an array with one of them");
  }
  const json::array& a = v->get_array();
  if (a.empty()) return InvalidParam("prompt", "`prompt` must not be empty");
  if (a[0].is_number()) {  // one prompt of ids
    ASSIGN_OR_RETURN(r.prompt_ids, TokenIds(a, "prompt"));
    r.prompt_is_ids = true;
    return absl::OkStatus();
  }
  if (a.size() > 1) {
    return InvalidParam("prompt", absl::StrCat("`prompt` holds ", a.size(),
                                               " prompts; this server takes one prompt per request"));
  }
  if (a[0].is_string()) {
    r.prompt_text = std::string(a[0].get_string());
    return absl::OkStatus();
  }
  if (a[0].is_array()) {
    ASSIGN_OR_RETURN(r.prompt_ids, TokenIds(a[0].get_array(), "prompt[0]"));
    r.prompt_is_ids = true;
    return absl::OkStatus();
  }
  return InvalidParam("prompt", "`prompt[0]` must be a string or an array of token ids");
}

absl::Status ParseMessages(const json::object& o, ApiRequest& r) {
  const json::value* v = Field(o, "messages");
  if (!v) return InvalidParam("messages", "`messages` is required");
  if (!v->is_array()) return InvalidParam("messages", "`messages` must be an array");
  const json::array& a = v->get_array();
  if (a.empty()) return InvalidParam("messages", "`messages` must not be empty");
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string where = absl::StrCat("messages[", i, "]");
    const json::object* m = a[i].if_object();
    if (!m) return InvalidParam("messages", absl::StrCat(Quoted(where), " must be an object"));
    const json::value* role = Field(*m, "role");
    if (!role || !role->is_string()) {
      return InvalidParam("messages", absl::StrCat(Quoted(where + ".role"), " must be a string"));
    }
    ChatMessage msg;
    msg.role = std::string(role->get_string());
    if (msg.role == "developer") msg.role = "system";  // OpenAI's newer name for it
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" && msg.role != "tool") {
      return InvalidParam("messages", absl::StrCat(Quoted(where + ".role"), " must be system, user, assistant or "
                                                   "tool, got \"", msg.role, "\""));
    }
    const std::string cwhere = where + ".content";
    const json::value* content = Field(*m, "content");
    if (content && content->is_string()) {
      msg.content = std::string(content->get_string());
    } else if (content && content->is_array()) {
      const json::array& parts = content->get_array();
      for (size_t k = 0; k < parts.size(); ++k) {
        const std::string pwhere = absl::StrCat(cwhere, "[", k, "]");
        const json::object* p = parts[k].if_object();
        const json::value* type = p ? Field(*p, "type") : nullptr;
        const json::value* text = p ? Field(*p, "text") : nullptr;
        if (!type || !type->is_string() || type->get_string() != "text" || !text || !text->is_string()) {
          return InvalidParam("messages", absl::StrCat(Quoted(pwhere), " must be {\"type\": \"text\", \"text\": "
                                                       "string}; other content types are not supported"));
        }
        if (k) msg.content += "\n";
        msg.content += std::string_view(text->get_string());
      }
    } else {
      return InvalidParam("messages", absl::StrCat(Quoted(cwhere), " must be a string or an array of text parts"));
    }
    r.messages.push_back(std::move(msg));
  }
  return absl::OkStatus();
}

std::string RandomHex(size_t n) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(n);
  uint64_t bits = 0;
  for (size_t i = 0; i < n; ++i) {
    if (i % 16 == 0) bits = rng();
    s += kHex[bits & 15];
    bits >>= 4;
  }
  return s;
}

json::object UsageObject(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json::object Envelope(const ResponseContext& ctx, std::string_view object) {
  return {{"id", ctx.id}, {"object", object}, {"created", ctx.created}, {"model", ctx.model}};
}

json::value Ids(std::span<const int32_t> ids) {
  json::array a;
  a.reserve(ids.size());
  for (int32_t id : ids) a.push_back(id);
  return a;
}

}  // namespace

// ---------------------------------------------------------------------------
// Errors

std::string ErrorJson(const ApiError& e) {
  json::object err{{"message", e.message}, {"type", e.type}};
  err["param"] = e.param.empty() ? json::value(nullptr) : json::value(e.param);
  err["code"] = e.code.empty() ? json::value(nullptr) : json::value(e.code);
  return json::serialize(json::object{{"error", std::move(err)}});
}

int HttpStatusForCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kUnavailable: return 503;
    default: return 500;
  }
}

absl::Status InvalidParam(std::string_view param, std::string_view message) {
  return WithParam(absl::InvalidArgumentError(AV(message)), param);
}

absl::Status WithParam(absl::Status s, std::string_view param) {
  if (!param.empty()) s.SetPayload(kParamPayload, absl::Cord(AV(param)));
  return s;
}

absl::Status WithCode(absl::Status s, std::string_view code) {
  if (!code.empty()) s.SetPayload(kCodePayload, absl::Cord(AV(code)));
  return s;
}

ApiError ToApiError(const absl::Status& s) {
  ApiError e;
  e.http_status = HttpStatusForCode(s.code());
  e.message = std::string(s.message());
  if (auto p = s.GetPayload(kParamPayload)) e.param = std::string(*p);
  if (auto c = s.GetPayload(kCodePayload)) e.code = std::string(*c);
  switch (e.http_status) {
    case 401: e.type = "authentication_error"; break;
    case 429: e.type = "rate_limit_error"; break;
    case 500:
    case 503: e.type = "server_error"; break;
    default: e.type = "invalid_request_error"; break;
  }
  if (e.code.empty() && e.http_status == 429) e.code = "rate_limit_exceeded";
  return e;
}

// ---------------------------------------------------------------------------
// Requests

absl::StatusOr<ApiRequest> ParseCompletionRequest(std::string_view body, std::string_view served_model) {
  ASSIGN_OR_RETURN(json::object o, ParseBody(body));
  ApiRequest r;
  RETURN_IF_ERROR(ParseCommon(o, ApiKind::kCompletion, served_model, r));
  RETURN_IF_ERROR(ParsePrompt(o, r));
  return r;
}

absl::StatusOr<ApiRequest> ParseChatRequest(std::string_view body, std::string_view served_model) {
  ASSIGN_OR_RETURN(json::object o, ParseBody(body));
  ApiRequest r;
  RETURN_IF_ERROR(ParseCommon(o, ApiKind::kChat, served_model, r));
  RETURN_IF_ERROR(ParseMessages(o, r));
  return r;
}

PromptBuilder::PromptBuilder(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {
  if (!tokenizer_) {
    template_status_ = InvalidParam("messages", "this server has no tokenizer, so it cannot render chats; "
                                                "use /v1/completions with token ids");
  } else if (tokenizer_->chat_template().empty()) {
    template_status_ = InvalidParam("messages", "the model's tokenizer_config.json has no chat_template; "
                                                "use /v1/completions");
  } else {
    auto t = ChatTemplate::Parse(tokenizer_->chat_template());
    if (t.ok()) {
      template_.emplace(*std::move(t));
    } else {
      template_status_ = absl::InternalError(absl::StrCat("the model's chat template: ", t.status().message()));
    }
  }
}

absl::StatusOr<std::vector<int32_t>> PromptBuilder::RenderChat(const std::vector<ChatMessage>& messages) const {
  if (!template_) return template_status_;
  json::array list;
  for (const ChatMessage& m : messages) list.push_back(json::object{{"role", m.role}, {"content", m.content}});
  // The variables transformers' apply_chat_template passes (see ApplyChatTemplate).
  json::object context;
  context["messages"] = std::move(list);
  context["tools"] = nullptr;
  context["documents"] = nullptr;
  context["add_generation_prompt"] = true;
  context["bos_token"] = tokenizer_->bos_token();
  context["eos_token"] = tokenizer_->eos_token();
  auto rendered = template_->Render(context);
  if (!rendered.ok()) {
    // A template's raise_exception (e.g. roles must alternate) is about the input.
    return InvalidParam("messages", absl::StrCat("the chat template rejected `messages`: ",
                                                 rendered.status().message()));
  }
  // The template writes BOS itself, as apply_chat_template(tokenize=True) does.
  return tokenizer_->Encode(*rendered, /*add_special_tokens=*/false);
}

absl::StatusOr<GenerationRequest> PromptBuilder::Build(const ApiRequest& r, int64_t max_context) const {
  GenerationRequest g;
  const bool chat = r.kind == ApiKind::kChat;
  const char* prompt_param = chat ? "messages" : "prompt";
  if (chat) {
    ASSIGN_OR_RETURN(g.prompt, RenderChat(r.messages));
  } else if (r.prompt_is_ids) {
    // Ids are checked against the model's vocabulary by the engine: the
    // embedding can be larger than the tokenizer (V3: 129,280 vs 128,815).
    g.prompt = r.prompt_ids;
  } else {
    if (!tokenizer_) {
      return InvalidParam("prompt", "this server has no tokenizer; send `prompt` as an array of token ids");
    }
    g.prompt = tokenizer_->Encode(r.prompt_text, /*add_special_tokens=*/true);
  }
  if (g.prompt.empty()) return InvalidParam(prompt_param, absl::StrCat(Quoted(prompt_param), " encodes to no tokens"));
  if (!r.stop.empty() && !tokenizer_) {
    return InvalidParam("stop", "`stop` needs text, and this server has no tokenizer");
  }
  const int64_t n = static_cast<int64_t>(g.prompt.size());
  if (max_context > 0 && n >= max_context) {
    return InvalidParam(prompt_param, absl::StrCat("This model's maximum context length is ", max_context,
                                                   " tokens, but the prompt has ", n, " tokens"));
  }
  if (r.max_tokens) {
    g.max_tokens = *r.max_tokens;
  } else {
    g.max_tokens = chat && max_context > 0 ? max_context - n : 16;
  }
  const char* max_param = chat ? "max_completion_tokens" : "max_tokens";
  if (max_context > 0 && n + g.max_tokens > max_context) {
    return InvalidParam(max_param, absl::StrCat("This model's maximum context length is ", max_context,
                                                " tokens; the prompt has ", n, " tokens and ", g.max_tokens,
                                                " more were requested (`max_tokens`)"));
  }
  g.sampling = r.sampling;
  g.ignore_eos = r.ignore_eos;
  return g;
}

// ---------------------------------------------------------------------------
// Output text

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (s.empty()) continue;
    max_len_ = std::max(max_len_, s.size());
    stops_.push_back(std::move(s));
  }
}

StopMatcher::Result StopMatcher::Feed(std::string_view piece) {
  Result r;
  if (stopped_) return r;
  held_.append(piece);
  if (stops_.empty()) {
    r.text.swap(held_);
    return r;
  }
  // The earliest occurrence of any stop string; held_ never contains a whole
  // one from before, so searching it all again is correct (and it is short).
  size_t best = std::string::npos;
  for (const std::string& s : stops_) best = std::min(best, held_.find(s));
  if (best != std::string::npos) {
    r.text = held_.substr(0, best);
    r.stopped = stopped_ = true;
    held_.clear();
    return r;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t keep = 0;
  for (size_t k = std::min(max_len_ - 1, held_.size()); k > 0 && keep == 0; --k) {
    std::string_view tail = std::string_view(held_).substr(held_.size() - k);
    for (const std::string& s : stops_) {
      if (s.size() > k && std::string_view(s).substr(0, k) == tail) {
        keep = k;
        break;
      }
    }
  }
  r.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return r;
}

std::string StopMatcher::Flush() {
  std::string out;
  if (!stopped_) out.swap(held_);
  held_.clear();
  return out;
}

GenerationText::GenerationText(const Tokenizer* tokenizer, std::vector<std::string> stops)
    : matcher_(std::move(stops)) {
  if (tokenizer) detok_ = std::make_unique<StreamingDetokenizer>(*tokenizer, /*skip_special_tokens=*/true);
}

GenerationText::Piece GenerationText::Add(std::span<const int32_t> tokens) {
  Piece out;
  if (matcher_.stopped()) {
    out.stopped = true;
    return out;
  }
  for (int32_t t : tokens) {
    ids_.push_back(t);
    if (!detok_) continue;
    StopMatcher::Result r = matcher_.Feed(detok_->Add(t));
    out.text += r.text;
    if (r.stopped) {
      out.stopped = true;
      break;
    }
  }
  return out;
}

std::string GenerationText::Finish() {
  if (matcher_.stopped() || !detok_) return "";
  StopMatcher::Result r = matcher_.Feed(detok_->Flush());
  if (r.stopped) return r.text;
  return r.text + matcher_.Flush();
}

// ---------------------------------------------------------------------------
// Responses

std::string NewRequestId(ApiKind kind) {
  return (kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-") + RandomHex(24);
}

std::string_view FinishReasonString(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return "length";
    case FinishReason::kStop:
    case FinishReason::kCancelled: return "stop";
    default: return "";
  }
}

std::string FinalResponseJson(const ResponseContext& ctx, std::string_view text, std::string_view finish_reason,
                              const Usage& usage, std::span<const int32_t> token_ids) {
  const bool chat = ctx.kind == ApiKind::kChat;
  json::object choice{{"index", 0}};
  if (chat) {
    choice["message"] = json::object{{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  if (ctx.with_token_ids) choice["token_ids"] = Ids(token_ids);
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason;
  json::object o = Envelope(ctx, chat ? "chat.completion" : "text_completion");
  o["choices"] = json::array();
  o["choices"].as_array().push_back(std::move(choice));
  o["usage"] = UsageObject(usage);
  return json::serialize(o);
}

std::string ChunkJson(const ResponseContext& ctx, std::string_view text, bool first, std::string_view finish_reason,
                      std::span<const int32_t> token_ids) {
  const bool chat = ctx.kind == ApiKind::kChat;
  json::object choice{{"index", 0}};
  if (chat) {
    json::object delta;
    if (first) delta["role"] = "assistant";
    if (first || !text.empty()) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  if (ctx.with_token_ids) choice["token_ids"] = Ids(token_ids);
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason.empty() ? json::value(nullptr) : json::value(finish_reason);
  json::object o = Envelope(ctx, chat ? "chat.completion.chunk" : "text_completion");
  o["choices"] = json::array();
  o["choices"].as_array().push_back(std::move(choice));
  if (ctx.include_usage) o["usage"] = nullptr;
  return json::serialize(o);
}

std::string UsageChunkJson(const ResponseContext& ctx, const Usage& usage) {
  json::object o = Envelope(ctx, ctx.kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion");
  o["choices"] = json::array();
  o["usage"] = UsageObject(usage);
  return json::serialize(o);
}

std::string SseEvent(std::string_view payload) { return absl::StrCat("data: ", AV(payload), "\n\n"); }

}  // namespace deepshard::serve
