// OpenAI request parsing, prompt building, output text and response JSON:
// see openai_api.h.
#include "serve/openai_api.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "boost/json.hpp"
#include "base/status_macros.h"
#include "text/output/reasoning_parser.h"
#include "text/tokenizer/unicode.h"

namespace deepshard::serve {

namespace json = boost::json;

namespace {

constexpr char kParamPayload[] = "type.deepshard/openai.param";
constexpr char kCodePayload[] = "type.deepshard/openai.code";
constexpr int kMaxJsonDepth = 64;
constexpr size_t kMaxStops = kMaxStopStrings;

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
absl::Status RejectUnsupported(const json::object& o, ApiKind kind, int64_t n) {
  if (kind == ApiKind::kCompletion) {
    ASSIGN_OR_RETURN(auto best_of, GetInt(o, "best_of"));
    if (best_of && *best_of != 1 && *best_of != n) {
      return Unsupported("best_of", absl::StrCat("= ", *best_of, " (other than 1 or n)"));
    }
    if (const json::value* v = Field(o, "suffix")) {
      if (!v->is_string()) return InvalidParam("suffix", "`suffix` must be a string");
      if (!v->get_string().empty()) return Unsupported("suffix", "(insertion)");
    }
  }
  if (const json::value* v = Field(o, "functions")) {
    if (!v->is_array()) return InvalidParam("functions", "`functions` must be an array");
    if (!v->get_array().empty()) return Unsupported("functions", "(the legacy form; send `tools`)");
  }
  if (Field(o, "function_call")) return Unsupported("function_call", "(the legacy form; send `tool_choice`)");
  ASSIGN_OR_RETURN(auto parallel, GetBool(o, "parallel_tool_calls"));
  if (parallel && !*parallel && kind != ApiKind::kChat) return Unsupported("parallel_tool_calls", "= false");
  if (Field(o, "prediction")) return Unsupported("prediction", "(predicted outputs)");
  if (const json::value* v = Field(o, "modalities")) {
    const json::array* a = v->if_array();
    if (!a || a->size() != 1 || !(*a)[0].is_string() || (*a)[0].get_string() != "text") {
      return Unsupported("modalities", "other than [\"text\"]");
    }
  }
  if (Field(o, "audio")) return Unsupported("audio", "");
  // vLLM's extensions that change the output and are not implemented here: a
  // client that sends them expects their effect.
  for (const char* key : {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
                          "structured_outputs", "allowed_token_ids", "bad_words", "prompt_logprobs",
                          "truncate_prompt_tokens", "logits_processors", "top_a", "typical_p", "mirostat"}) {
    if (Field(o, key)) return Unsupported(key, "");
  }
  ASSIGN_OR_RETURN(auto beam, GetBool(o, "use_beam_search"));
  if (beam && *beam) return Unsupported("use_beam_search", "= true");
  ASSIGN_OR_RETURN(auto length_penalty, GetNumber(o, "length_penalty"));
  if (length_penalty && *length_penalty != 1) return Unsupported("length_penalty", "other than 1");
  ASSIGN_OR_RETURN(auto include_stop, GetBool(o, "include_stop_str_in_output"));
  if (include_stop && *include_stop) return Unsupported("include_stop_str_in_output", "= true");
  ASSIGN_OR_RETURN(auto skip_special, GetBool(o, "skip_special_tokens"));
  if (skip_special && !*skip_special) return Unsupported("skip_special_tokens", "= false");
  ASSIGN_OR_RETURN(auto spaces, GetBool(o, "spaces_between_special_tokens"));
  if (spaces && !*spaces) return Unsupported("spaces_between_special_tokens", "= false");
  return absl::OkStatus();
}

absl::Status ParseResponseFormat(const json::object& o, ApiRequest& r) {
  const json::value* v = Field(o, "response_format");
  if (!v) return absl::OkStatus();
  const json::object* f = v->if_object();
  const json::value* type = f ? Field(*f, "type") : nullptr;
  if (!f || !type || !type->is_string()) {
    return InvalidParam("response_format", "`response_format` must be an object with a string `type`");
  }
  const std::string_view t = type->get_string();
  if (t == "text") return absl::OkStatus();
  if (t == "json_object") {
    r.json_mode = true;
    return absl::OkStatus();
  }
  if (t == "json_schema") {
    const json::value* js = Field(*f, "json_schema");
    const json::object* jo = js ? js->if_object() : nullptr;
    const json::value* schema = jo ? Field(*jo, "schema") : nullptr;
    if (!jo) return InvalidParam("response_format", "`response_format.json_schema` must be an object");
    if (!schema || !schema->is_object()) {
      return InvalidParam("response_format", "`response_format.json_schema.schema` must be a JSON Schema object");
    }
    r.json_mode = true;
    r.json_schema = *schema;
    return absl::OkStatus();
  }
  return InvalidParam("response_format", absl::StrCat("`response_format.type` must be text, json_object or "
                                                      "json_schema, got \"", AV(t), "\""));
}

absl::Status ParseLogprobs(const json::object& o, ApiKind kind, ApiRequest& r) {
  const json::value* v = Field(o, "logprobs");
  if (kind == ApiKind::kCompletion) {
    if (Field(o, "top_logprobs")) return InvalidParam("top_logprobs", "`top_logprobs` is for chat; completions take "
                                                                      "`logprobs: k`");
    if (!v) return absl::OkStatus();
    if (v->is_bool()) return InvalidParam("logprobs", "`logprobs` must be an integer in [0, 20] for completions");
    ASSIGN_OR_RETURN(int64_t k, AsInt(*v, "logprobs"));
    if (k < 0 || k > 20) return InvalidParam("logprobs", absl::StrCat("`logprobs` must be in [0, 20], got ", k));
    r.logprobs = static_cast<int32_t>(k);
    return absl::OkStatus();
  }
  bool on = false;
  if (v) {
    if (!v->is_bool()) return InvalidParam("logprobs", "`logprobs` must be a boolean");
    on = v->get_bool();
  }
  ASSIGN_OR_RETURN(auto top, GetInt(o, "top_logprobs"));
  if (top && (*top < 0 || *top > 20)) {
    return InvalidParam("top_logprobs", absl::StrCat("`top_logprobs` must be in [0, 20], got ", *top));
  }
  if (top && !on && *top > 0) return InvalidParam("top_logprobs", "`top_logprobs` needs `logprobs: true`");
  if (on) r.logprobs = static_cast<int32_t>(top.value_or(0));
  return absl::OkStatus();
}

absl::Status ParseSamplingExtras(const json::object& o, ApiRequest& r) {
  SamplingParams& s = r.sampling;
  ASSIGN_OR_RETURN(auto presence, GetNumber(o, "presence_penalty"));
  if (presence) s.presence_penalty = static_cast<float>(*presence);
  ASSIGN_OR_RETURN(auto frequency, GetNumber(o, "frequency_penalty"));
  if (frequency) s.frequency_penalty = static_cast<float>(*frequency);
  ASSIGN_OR_RETURN(auto rep, GetNumber(o, "repetition_penalty"));
  if (rep) {
    s.repetition_penalty = static_cast<float>(*rep);
    r.given.repetition_penalty = true;
  }
  ASSIGN_OR_RETURN(auto min_p, GetNumber(o, "min_p"));
  if (min_p) {
    s.min_p = static_cast<float>(*min_p);
    r.given.min_p = true;
  }
  ASSIGN_OR_RETURN(auto min_tokens, GetInt(o, "min_tokens"));
  if (min_tokens) s.min_tokens = *min_tokens;
  if (const json::value* v = Field(o, "stop_token_ids")) {
    const json::array* a = v->if_array();
    if (!a) return InvalidParam("stop_token_ids", "`stop_token_ids` must be an array of token ids");
    if (a->size() > kMaxStopTokenIds) {
      return InvalidParam("stop_token_ids", absl::StrCat("`stop_token_ids` has ", a->size(), " ids; at most ",
                                                         kMaxStopTokenIds, " are allowed"));
    }
    for (size_t i = 0; i < a->size(); ++i) {
      const std::string name = absl::StrCat("stop_token_ids[", i, "]");
      auto parsed = AsInt((*a)[i], name);
      if (!parsed.ok()) return InvalidParam("stop_token_ids", std::string(parsed.status().message()));
      const int64_t id = *parsed;
      if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
        return InvalidParam("stop_token_ids", absl::StrCat(Quoted(name), " must be a token id"));
      }
      s.stop_token_ids.push_back(static_cast<int32_t>(id));
    }
  }
  if (const json::value* v = Field(o, "logit_bias")) {
    const json::object* m = v->if_object();
    if (!m) return InvalidParam("logit_bias", "`logit_bias` must be an object of token id -> bias");
    if (m->size() > kMaxLogitBias) {
      return InvalidParam("logit_bias", absl::StrCat("`logit_bias` has ", m->size(), " entries; at most ",
                                                     kMaxLogitBias, " are allowed"));
    }
    for (const auto& kv : *m) {
      const std::string key(kv.key());
      char* end = nullptr;
      const long long id = std::strtoll(key.c_str(), &end, 10);
      if (key.empty() || *end != '\0' || id < 0 || id > std::numeric_limits<int32_t>::max()) {
        return InvalidParam("logit_bias", absl::StrCat("`logit_bias` keys must be token ids, got \"", key, "\""));
      }
      if (!kv.value().is_number()) {
        return InvalidParam("logit_bias", absl::StrCat("`logit_bias[\"", key, "\"]` must be a number"));
      }
      s.logit_bias.emplace_back(static_cast<int32_t>(id), kv.value().to_number<float>());
    }
  }
  return absl::OkStatus();
}

absl::Status ParseCommon(const json::object& o, ApiKind kind, std::string_view served_model, ApiRequest& r) {
  r.kind = kind;
  RETURN_IF_ERROR(ParseModel(o, served_model, r));
  ASSIGN_OR_RETURN(auto n, GetInt(o, "n"));
  if (n) {
    if (*n < 1 || *n > kMaxChoices) {
      return InvalidParam("n", absl::StrCat("`n` must be between 1 and ", kMaxChoices, ", got ", *n));
    }
    r.n = *n;
  }
  RETURN_IF_ERROR(RejectUnsupported(o, kind, r.n));
  RETURN_IF_ERROR(ParseLogprobs(o, kind, r));
  RETURN_IF_ERROR(ParseResponseFormat(o, r));
  if (kind == ApiKind::kCompletion) {
    ASSIGN_OR_RETURN(auto echo, GetBool(o, "echo"));
    r.echo = echo.value_or(false);
  }

  // Chat: max_completion_tokens (the current name) wins over max_tokens.
  const char* max_key = "max_tokens";
  if (kind == ApiKind::kChat && Field(o, "max_completion_tokens")) max_key = "max_completion_tokens";
  ASSIGN_OR_RETURN(r.max_tokens, GetInt(o, max_key));
  r.given.max_tokens = r.max_tokens.has_value();
  if (r.max_tokens && *r.max_tokens < 1 && !(r.echo && *r.max_tokens == 0)) {
    return InvalidParam(max_key, absl::StrCat(Quoted(max_key), " must be at least 1 (0 only with `echo`), got ",
                                              *r.max_tokens));
  }

  ASSIGN_OR_RETURN(auto temperature, GetNumber(o, "temperature"));
  if (temperature) {
    if (!(*temperature >= 0 && *temperature <= 2)) {
      return InvalidParam("temperature", absl::StrCat("`temperature` must be between 0 and 2, got ", *temperature));
    }
    r.sampling.temperature = static_cast<float>(*temperature);
    r.given.temperature = true;
  } else {
    r.sampling.temperature = 1.0f;  // OpenAI's default (unless the model's generation_config says otherwise)
  }
  ASSIGN_OR_RETURN(auto top_p, GetNumber(o, "top_p"));
  if (top_p) {
    if (!(*top_p > 0 && *top_p <= 1)) {
      return InvalidParam("top_p", absl::StrCat("`top_p` must be in (0, 1], got ", *top_p));
    }
    r.sampling.top_p = static_cast<float>(*top_p);
    r.given.top_p = true;
  }
  ASSIGN_OR_RETURN(auto top_k, GetInt(o, "top_k"));
  if (top_k) {
    if (*top_k < -1) return InvalidParam("top_k", absl::StrCat("`top_k` must be -1, 0 (off) or positive, got ", *top_k));
    r.sampling.top_k = *top_k <= 0 ? 0 : *top_k;
    r.given.top_k = true;
  }
  RETURN_IF_ERROR(ParseSamplingExtras(o, r));
  ASSIGN_OR_RETURN(auto seed, GetInt(o, "seed"));
  if (seed) {
    r.sampling.seed = static_cast<uint64_t>(*seed);
  } else {
    // No seed: a fresh one, so that two identical requests may differ (OpenAI).
    static thread_local std::mt19937_64 rng(std::random_device{}());
    r.sampling.seed = rng();
  }
  if (absl::Status s = r.sampling.Validate(); !s.ok()) {
    const std::string m(s.message());
    return InvalidParam(m.substr(0, m.find_first_of(" :")), absl::StrCat("`", m.substr(0, m.find_first_of(" :")), "`",
                                                                         m.substr(m.find_first_of(" :"))));
  }

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
  auto add_text = [&](std::string_view text) { r.prompts.push_back({false, std::string(text), {}}); };
  if (v->is_string()) {
    add_text(v->get_string());
  } else if (!v->is_array()) {
    return InvalidParam("prompt", "`prompt` must be a string, an array of token ids, or an array of those");
  } else {
    const json::array& a = v->get_array();
    if (a.empty()) return InvalidParam("prompt", "`prompt` must not be empty");
    if (a[0].is_number()) {  // one prompt of ids
      ASSIGN_OR_RETURN(auto ids, TokenIds(a, "prompt"));
      r.prompts.push_back({true, "", std::move(ids)});
    } else {
      for (size_t i = 0; i < a.size(); ++i) {
        if (a[i].is_string()) {
          add_text(a[i].get_string());
        } else if (a[i].is_array()) {
          ASSIGN_OR_RETURN(auto ids, TokenIds(a[i].get_array(), absl::StrCat("prompt[", i, "]")));
          r.prompts.push_back({true, "", std::move(ids)});
        } else {
          return InvalidParam("prompt", absl::StrCat("`prompt[", i, "]` must be a string or an array of token ids"));
        }
      }
    }
  }
  if (static_cast<int64_t>(r.prompts.size()) * r.n > kMaxChoices) {
    return InvalidParam("prompt", absl::StrCat("`prompt` holds ", r.prompts.size(), " prompts with n = ", r.n,
                                               ": at most ", kMaxChoices, " choices per request"));
  }
  r.prompt_is_ids = r.prompts[0].is_ids;
  r.prompt_text = r.prompts[0].text;
  r.prompt_ids = r.prompts[0].ids;
  return absl::OkStatus();
}

// tool_calls of an assistant message, checked and normalised for the template.
absl::StatusOr<json::array> ToolCalls(const json::value& v, const std::string& where) {
  const json::array* a = v.if_array();
  if (!a) return InvalidParam("messages", absl::StrCat(Quoted(where), " must be an array"));
  json::array out;
  for (size_t i = 0; i < a->size(); ++i) {
    const std::string w = absl::StrCat(where, "[", i, "]");
    const json::object* c = (*a)[i].if_object();
    const json::value* fn = c ? Field(*c, "function") : nullptr;
    const json::object* f = fn ? fn->if_object() : nullptr;
    const json::value* name = f ? Field(*f, "name") : nullptr;
    const json::value* args = f ? Field(*f, "arguments") : nullptr;
    if (!f || !name || !name->is_string()) {
      return InvalidParam("messages", absl::StrCat(Quoted(w), " must be {\"type\": \"function\", \"function\": "
                                                   "{\"name\": string, \"arguments\": string}}"));
    }
    json::object call{{"type", "function"}};
    if (const json::value* id = Field(*c, "id"); id && id->is_string()) call["id"] = *id;
    // Arguments are a JSON string in OpenAI's schema; an object is accepted and serialised.
    std::string arguments = args == nullptr ? "{}" : args->is_string() ? std::string(args->get_string())
                                                                         : json::serialize(*args);
    call["function"] = json::object{{"name", *name}, {"arguments", arguments}};
    out.push_back(std::move(call));
  }
  return out;
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
    } else if (content != nullptr) {
      return InvalidParam("messages", absl::StrCat(Quoted(cwhere), " must be a string or an array of text parts"));
    }
    msg.raw["role"] = msg.role;
    const json::value* calls = Field(*m, "tool_calls");
    if (content == nullptr && !(msg.role == "assistant" && calls)) {
      return InvalidParam("messages", absl::StrCat(Quoted(cwhere), " is required (null only for an assistant turn "
                                                   "with tool_calls)"));
    }
    msg.raw["content"] = content == nullptr ? json::value(nullptr) : json::value(msg.content);
    if (calls) {
      if (msg.role != "assistant") {
        return InvalidParam("messages", absl::StrCat(Quoted(where + ".tool_calls"), " is only for assistant turns"));
      }
      ASSIGN_OR_RETURN(json::array normalised, ToolCalls(*calls, where + ".tool_calls"));
      if (!normalised.empty()) msg.raw["tool_calls"] = std::move(normalised);
    }
    for (const char* key : {"tool_call_id", "name", "reasoning_content"}) {
      if (const json::value* x = Field(*m, key)) {
        if (!x->is_string()) {
          return InvalidParam("messages", absl::StrCat(Quoted(absl::StrCat(where, ".", key)), " must be a string"));
        }
        msg.raw[key] = *x;
      }
    }
    r.messages.push_back(std::move(msg));
  }
  return absl::OkStatus();
}

absl::Status ParseTools(const json::object& o, ApiRequest& r) {
  if (const json::value* v = Field(o, "tools")) {
    const json::array* a = v->if_array();
    if (!a) return InvalidParam("tools", "`tools` must be an array");
    for (size_t i = 0; i < a->size(); ++i) {
      const std::string w = absl::StrCat("tools[", i, "]");
      const json::object* t = (*a)[i].if_object();
      const json::value* type = t ? Field(*t, "type") : nullptr;
      const json::value* fn = t ? Field(*t, "function") : nullptr;
      const json::object* f = fn ? fn->if_object() : nullptr;
      const json::value* name = f ? Field(*f, "name") : nullptr;
      if (!type || !type->is_string() || type->get_string() != "function" || !name || !name->is_string() ||
          name->get_string().empty()) {
        return InvalidParam("tools", absl::StrCat(Quoted(w), " must be {\"type\": \"function\", \"function\": "
                                                  "{\"name\": string, \"description\"?: string, "
                                                  "\"parameters\"?: JSON Schema}}"));
      }
      if (const json::value* p = Field(*f, "parameters"); p && !p->is_object()) {
        return InvalidParam("tools", absl::StrCat(Quoted(w + ".function.parameters"), " must be an object"));
      }
    }
    r.tools = *a;
  }
  if (const json::value* v = Field(o, "tool_choice")) {
    if (v->is_string()) {
      const std::string_view c = v->get_string();
      if (c == "auto") {
        r.tool_choice.kind = ToolChoice::kAuto;
      } else if (c == "none") {
        r.tool_choice.kind = ToolChoice::kNone;
      } else if (c == "required") {
        r.tool_choice.kind = ToolChoice::kRequired;
      } else {
        return InvalidParam("tool_choice", "`tool_choice` must be \"auto\", \"none\", \"required\" or "
                                           "{\"type\": \"function\", \"function\": {\"name\": ...}}");
      }
    } else {
      const json::object* t = v->if_object();
      const json::value* fn = t ? Field(*t, "function") : nullptr;
      const json::value* name = fn && fn->is_object() ? Field(fn->get_object(), "name") : nullptr;
      if (!name || !name->is_string()) {
        return InvalidParam("tool_choice", "`tool_choice` must be a string or {\"type\": \"function\", "
                                           "\"function\": {\"name\": string}}");
      }
      r.tool_choice.kind = ToolChoice::kFunction;
      r.tool_choice.function = std::string(name->get_string());
    }
    if (r.tool_choice.kind != ToolChoice::kNone && r.tool_choice.kind != ToolChoice::kAuto && r.tools.empty()) {
      return InvalidParam("tool_choice", "`tool_choice` names tools, but the request has no `tools`");
    }
    if (r.tool_choice.kind == ToolChoice::kFunction) {
      bool found = false;
      for (const json::value& t : r.tools) {
        found |= t.at("function").at("name").as_string() == r.tool_choice.function;
      }
      if (!found) {
        return InvalidParam("tool_choice", absl::StrCat("`tool_choice` names the function `", r.tool_choice.function,
                                                        "`, which is not in `tools`"));
      }
    }
  }
  // false: at most one call. A named function makes exactly one and "required"
  // is constrained to one (structured_output.cc); "auto" output is not
  // constrained, so it cannot be held to one.
  ASSIGN_OR_RETURN(auto parallel, GetBool(o, "parallel_tool_calls"));
  r.parallel_tool_calls = parallel.value_or(true);
  if (!r.parallel_tool_calls && !r.tools.empty() && r.tool_choice.kind == ToolChoice::kAuto) {
    return Unsupported("parallel_tool_calls", "= false with tool_choice \"auto\"");
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

// cached_tokens >= 0 adds prompt_tokens_details.cached_tokens.
json::object UsageObject(const Usage& u, int64_t cached_tokens) {
  json::object o{{"prompt_tokens", u.prompt_tokens},
                 {"completion_tokens", u.completion_tokens},
                 {"total_tokens", u.prompt_tokens + u.completion_tokens}};
  if (cached_tokens >= 0) o["prompt_tokens_details"] = json::object{{"cached_tokens", cached_tokens}};
  return o;
}

json::object Envelope(const ResponseContext& ctx, std::string_view object) {
  return {{"id", ctx.id}, {"object", object}, {"created", ctx.created}, {"model", ctx.model}};
}

}  // namespace

// ---------------------------------------------------------------------------
// Errors

namespace {
// JSON text must be UTF-8 (RFC 8259) and Boost.JSON writes a string's bytes as
// they are; an error may quote what a client sent (a path, a model id, an
// Origin), which need not be. Ill-formed bytes become U+FFFD, as Python's
// errors="replace" does.
std::string Utf8Lossy(std::string_view s) {
  if (tokenizer_internal::IsValidUtf8(s)) return std::string(s);
  std::string out;
  tokenizer_internal::AppendUtf8Lossy(s, &out);
  return out;
}
}  // namespace

std::string ErrorJson(const ApiError& e) {
  json::object err{{"message", Utf8Lossy(e.message)}, {"type", Utf8Lossy(e.type)}};
  err["param"] = e.param.empty() ? json::value(nullptr) : json::value(Utf8Lossy(e.param));
  err["code"] = e.code.empty() ? json::value(nullptr) : json::value(Utf8Lossy(e.code));
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
  RETURN_IF_ERROR(ParseTools(o, r));
  if (const json::value* v = Field(o, "chat_template_kwargs")) {
    if (!v->is_object()) return InvalidParam("chat_template_kwargs", "`chat_template_kwargs` must be an object");
    r.chat_template_kwargs = v->get_object();
  }
  // vLLM's: continue the last (assistant) message instead of starting a new turn.
  ASSIGN_OR_RETURN(auto continue_final, GetBool(o, "continue_final_message"));
  ASSIGN_OR_RETURN(auto add_generation_prompt, GetBool(o, "add_generation_prompt"));
  r.continue_final_message = continue_final.value_or(false);
  if (r.continue_final_message && add_generation_prompt.value_or(false)) {
    return InvalidParam("continue_final_message",
                        "cannot set both `continue_final_message` and `add_generation_prompt` to true");
  }
  r.add_generation_prompt = r.continue_final_message ? false : add_generation_prompt.value_or(true);
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

absl::StatusOr<std::vector<int32_t>> PromptBuilder::RenderChat(const std::vector<ChatMessage>& messages,
                                                              const ApiRequest* request,
                                                              std::string* rendered_out) const {
  if (!template_) return template_status_;
  json::array list;
  for (const ChatMessage& m : messages) {
    list.push_back(m.raw.empty() ? json::object{{"role", m.role}, {"content", m.content}} : m.raw);
  }
  // The variables transformers' apply_chat_template passes (see ApplyChatTemplate),
  // then chat_template_kwargs (as vLLM passes them: they may set any variable).
  json::object context;
  context["messages"] = std::move(list);
  const bool with_tools = request && !request->tools.empty() && request->tool_choice.kind != ToolChoice::kNone;
  context["tools"] = with_tools ? json::value(request->tools) : json::value(nullptr);
  context["documents"] = nullptr;
  context["add_generation_prompt"] = request ? request->add_generation_prompt : true;
  context["bos_token"] = tokenizer_->bos_token();
  context["eos_token"] = tokenizer_->eos_token();
  if (request) {
    for (const auto& kv : request->chat_template_kwargs) context[kv.key()] = kv.value();
  }
  auto rendered = template_->Render(context);
  if (!rendered.ok()) {
    // A template's raise_exception (e.g. roles must alternate) is about the input.
    return InvalidParam("messages", absl::StrCat("the chat template rejected `messages`: ",
                                                 rendered.status().message()));
  }
  if (request && request->continue_final_message) {
    // transformers' apply_chat_template(continue_final_message=True): the text
    // ends right after the last message's (stripped) content.
    const std::string last(absl::StripAsciiWhitespace(AV(messages.back().content)));
    const size_t at = rendered->rfind(last);
    if (last.empty() || at == std::string::npos) {
      return InvalidParam("continue_final_message",
                          "`continue_final_message` is set but the final message does not appear in the chat "
                          "as the template renders it");
    }
    rendered->resize(at + last.size());
  }
  if (rendered_out) *rendered_out = *rendered;
  // The template writes BOS itself, as apply_chat_template(tokenize=True) does.
  return tokenizer_->Encode(*rendered, /*add_special_tokens=*/false);
}

absl::StatusOr<GenerationRequest> PromptBuilder::Build(const ApiRequest& r, int64_t max_context) const {
  ASSIGN_OR_RETURN(Built b, BuildAll(r, max_context));
  return std::move(b.choices[0]);
}

absl::StatusOr<PromptBuilder::Built> PromptBuilder::BuildAll(const ApiRequest& r, int64_t max_context) const {
  Built out;
  const bool chat = r.kind == ApiKind::kChat;
  const char* prompt_param = chat ? "messages" : "prompt";
  std::vector<PromptInput> prompts = r.prompts;
  if (!chat && prompts.empty()) prompts.push_back({r.prompt_is_ids, r.prompt_text, r.prompt_ids});
  if (chat) {
    std::string rendered;
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, RenderChat(r.messages, &r, &rendered));
    out.starts_in_reasoning = PromptOpensThink(rendered);
    out.prompt_ids.push_back(std::move(ids));
    out.prompt_texts.push_back(std::move(rendered));
  } else {
    for (const PromptInput& p : prompts) {
      if (p.is_ids) {
        // Ids are checked against the model's vocabulary by the engine: the
        // embedding can be larger than the tokenizer (V3: 129,280 vs 128,815).
        out.prompt_ids.push_back(p.ids);
        out.prompt_texts.push_back(tokenizer_ ? tokenizer_->Decode(p.ids, /*skip_special_tokens=*/false) : "");
      } else {
        if (!tokenizer_) {
          return InvalidParam("prompt", "this server has no tokenizer; send `prompt` as an array of token ids");
        }
        out.prompt_ids.push_back(tokenizer_->Encode(p.text, /*add_special_tokens=*/true));
        out.prompt_texts.push_back(p.text);
      }
    }
  }
  if (!r.stop.empty() && !tokenizer_) {
    return InvalidParam("stop", "`stop` needs text, and this server has no tokenizer");
  }
  const char* max_param = chat ? "max_completion_tokens" : "max_tokens";
  SamplingParams sampling = r.sampling;
  // The model's generation_config.json fills what the request left out.
  if (!r.given.temperature && defaults_.temperature) sampling.temperature = *defaults_.temperature;
  if (!r.given.top_p && defaults_.top_p) sampling.top_p = *defaults_.top_p;
  if (!r.given.top_k && defaults_.top_k) sampling.top_k = *defaults_.top_k;
  if (!r.given.min_p && defaults_.min_p) sampling.min_p = *defaults_.min_p;
  if (!r.given.repetition_penalty && defaults_.repetition_penalty) {
    sampling.repetition_penalty = *defaults_.repetition_penalty;
  }
  for (size_t i = 0; i < out.prompt_ids.size(); ++i) {
    const std::vector<int32_t>& ids = out.prompt_ids[i];
    const std::string where = out.prompt_ids.size() > 1 ? absl::StrCat(prompt_param, "[", i, "]") : prompt_param;
    if (ids.empty()) return InvalidParam(prompt_param, absl::StrCat(Quoted(where), " encodes to no tokens"));
    const int64_t n = static_cast<int64_t>(ids.size());
    if (max_context > 0 && n >= max_context) {
      return InvalidParam(prompt_param, absl::StrCat("This model's maximum context length is ", max_context,
                                                     " tokens, but the prompt has ", n, " tokens"));
    }
    int64_t max_tokens;
    if (r.max_tokens) {
      max_tokens = *r.max_tokens;
    } else if (defaults_.max_new_tokens) {
      max_tokens = std::min(*defaults_.max_new_tokens, max_context > 0 ? max_context - n : *defaults_.max_new_tokens);
    } else {
      max_tokens = chat && max_context > 0 ? max_context - n : 16;
    }
    if (max_tokens == 0) {  // echo only: run one token and drop it
      out.discard_output = true;
      max_tokens = 1;
    }
    if (max_context > 0 && n + max_tokens > max_context) {
      return InvalidParam(max_param, absl::StrCat("This model's maximum context length is ", max_context,
                                                  " tokens; the prompt has ", n, " tokens and ", max_tokens,
                                                  " more were requested (`max_tokens`)"));
    }
    for (int64_t j = 0; j < r.n; ++j) {
      GenerationRequest g;
      g.prompt = ids;
      g.max_tokens = max_tokens;
      g.sampling = sampling;
      g.sampling.seed = sampling.seed + static_cast<uint64_t>(j);  // each choice its own stream
      g.ignore_eos = r.ignore_eos;
      g.logprobs = r.logprobs;
      g.prompt_logprobs = r.echo && r.logprobs >= 0;
      out.choices.push_back(std::move(g));
    }
  }
  return out;
}

absl::StatusOr<GenerationDefaults> GenerationDefaults::FromDirectory(const std::string& dir) {
  GenerationDefaults d;
  const std::string path = dir + "/generation_config.json";
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return d;  // no file: no defaults
  std::string text;
  char buf[4096];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0 && text.size() < (1 << 20)) text.append(buf, got);
  std::fclose(f);
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object", ec ? ": " + ec.message() : ""));
  }
  const json::object& o = v.get_object();
  auto number = [&](const char* key, double lo, double hi, std::optional<float>& out) -> absl::Status {
    const json::value* x = Field(o, key);
    if (!x) return absl::OkStatus();
    if (!x->is_number() || !(x->to_number<double>() >= lo && x->to_number<double>() <= hi)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": `", key, "` must be a number in [", lo, ", ", hi, "]"));
    }
    out = x->to_number<float>();
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(number("temperature", 0, 2, d.temperature));
  RETURN_IF_ERROR(number("top_p", 1e-9, 1, d.top_p));
  RETURN_IF_ERROR(number("min_p", 0, 1, d.min_p));
  RETURN_IF_ERROR(number("repetition_penalty", 1e-9, 2, d.repetition_penalty));
  for (const char* key : {"top_k", "max_new_tokens"}) {
    const json::value* x = Field(o, key);
    if (!x) continue;
    auto i = AsInt(*x, key);
    if (!i.ok() || *i < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": `", key, "` must be an integer >= 0"));
    (std::string_view(key) == "top_k" ? d.top_k : d.max_new_tokens) = *i;
  }
  if (d.max_new_tokens && *d.max_new_tokens == 0) d.max_new_tokens.reset();
  return d;
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

std::string ResponseJson(const ResponseContext& ctx, std::vector<json::object> choices, const Usage& usage,
                         int64_t cached_tokens) {
  json::object o = Envelope(ctx, ctx.kind == ApiKind::kChat ? "chat.completion" : "text_completion");
  std::sort(choices.begin(), choices.end(), [](const json::object& x, const json::object& y) {
    return x.at("index").as_int64() < y.at("index").as_int64();
  });
  json::array list;
  for (json::object& c : choices) list.push_back(std::move(c));
  o["choices"] = std::move(list);
  o["usage"] = UsageObject(usage, cached_tokens);
  return json::serialize(o);
}

std::string ChunkWithChoices(const ResponseContext& ctx, std::vector<json::object> choices) {
  json::object o = Envelope(ctx, ctx.kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion");
  json::array list;
  for (json::object& c : choices) list.push_back(std::move(c));
  o["choices"] = std::move(list);
  if (ctx.include_usage) o["usage"] = nullptr;
  return json::serialize(o);
}

std::string UsageChunkJson(const ResponseContext& ctx, const Usage& usage, int64_t cached_tokens) {
  json::object o = Envelope(ctx, ctx.kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion");
  o["choices"] = json::array();
  o["usage"] = UsageObject(usage, cached_tokens);
  return json::serialize(o);
}

std::string SseEvent(std::string_view payload) { return absl::StrCat("data: ", AV(payload), "\n\n"); }

}  // namespace deepshard::serve
