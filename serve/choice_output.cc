#include "serve/choice_output.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace deepshard::serve {

namespace json = boost::json;

namespace {

double Finite(float lp) { return std::isfinite(lp) ? static_cast<double>(lp) : -9999.0; }

// OpenAI's text_offset counts characters (code points), not UTF-8 bytes.
int64_t CodePoints(std::string_view s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

json::array Bytes(std::string_view s) {
  json::array a;
  for (unsigned char c : s) a.push_back(static_cast<int64_t>(c));
  return a;
}

}  // namespace

ChoiceOutput::ChoiceOutput(ChoiceOptions options) : o_(std::move(options)), text_(o_.tokenizer, o_.stops) {
  if (o_.kind == ApiKind::kChat && o_.reasoning) reasoning_.emplace(o_.starts_in_reasoning);
  if (o_.kind == ApiKind::kChat && o_.tools) tools_.emplace();
}

int64_t ChoiceOutput::completion_tokens() const { return o_.discard_output ? 0 : n_tokens_; }

std::string ChoiceOutput::TokenString(int32_t id) const {
  if (!o_.tokenizer) return absl::StrCat("token_id:", id);
  const int32_t one[1] = {id};
  return o_.tokenizer->Decode(one, /*skip_special_tokens=*/false);
}

ChoiceOutput::Pieces ChoiceOutput::Route(const std::string& text, bool final) {
  Pieces p;
  std::string content = text;
  if (reasoning_) {
    ReasoningDelta d = reasoning_->Feed(text);
    if (final) {
      ReasoningDelta f = reasoning_->Finish();
      d.reasoning += f.reasoning;
      d.content += f.content;
    }
    p.reasoning = std::move(d.reasoning);
    content = std::move(d.content);
  }
  if (!o_.forced_function.empty()) {
    if (!content.empty()) p.calls.push_back({0, o_.forced_function, std::move(content)});
    return p;
  }
  if (o_.required_tools) {
    required_json_ += content;
    if (final) {
      // [{"name": ..., "parameters": {...}}, ...] -> calls; anything else stays text.
      boost::system::error_code ec;
      json::value v = json::parse(required_json_, ec);
      bool ok = !ec && v.is_array() && !v.as_array().empty();
      std::vector<ToolCallDelta> calls;
      for (size_t i = 0; ok && i < v.as_array().size(); ++i) {
        const json::object* c = v.as_array()[i].if_object();
        const json::value* name = c ? c->if_contains("name") : nullptr;
        const json::value* params = c ? c->if_contains("parameters") : nullptr;
        ok = name && name->is_string() && params;
        if (ok) calls.push_back({static_cast<int>(i), std::string(name->as_string()), json::serialize(*params)});
      }
      if (ok) {
        p.calls = std::move(calls);
      } else {
        p.content = std::move(required_json_);
      }
    }
    return p;
  }
  if (tools_) {
    ToolCallStreamParser::Delta d = tools_->Feed(content);
    if (final) {
      ToolCallStreamParser::Delta f = tools_->Finish();
      d.content += f.content;
      d.calls.insert(d.calls.end(), f.calls.begin(), f.calls.end());
    }
    p.content = std::move(d.content);
    p.calls = std::move(d.calls);
  } else {
    p.content = std::move(content);
  }
  return p;
}

json::object ChoiceOutput::ToolCallJson(const ToolCallDelta& d) {
  while (static_cast<int>(call_ids_.size()) <= d.index) {
    // OpenAI-style ids, unique per response: "call_" + the request id's hex + the index.
    std::string base = o_.request_id;
    const size_t dash = base.find('-');
    if (dash != std::string::npos) base = base.substr(dash + 1);
    call_ids_.push_back(absl::StrCat("call_", base.substr(0, 16), "_", o_.index, "_", call_ids_.size()));
  }
  if (static_cast<int>(call_started_.size()) <= d.index) call_started_.resize(d.index + 1, false);
  if (call_started_[d.index]) {  // a later piece of the same call: only its arguments
    return json::object{{"index", d.index}, {"function", json::object{{"arguments", d.arguments}}}};
  }
  call_started_[d.index] = true;
  return json::object{{"index", d.index},
                      {"id", call_ids_[d.index]},
                      {"type", "function"},
                      {"function", json::object{{"name", d.name}, {"arguments", d.arguments}}}};
}

json::value ChoiceOutput::LogprobsJson(const std::vector<TokenLogprob>& lps, bool with_null_first) {
  if (o_.kind == ApiKind::kChat) {
    json::array content;
    for (const TokenLogprob& l : lps) {
      const std::string s = TokenString(l.token);
      json::array top;
      for (const auto& [t, v] : l.top) {
        const std::string ts = TokenString(t);
        top.push_back(json::object{{"token", ts}, {"logprob", Finite(v)}, {"bytes", Bytes(ts)}});
      }
      content.push_back(json::object{
          {"token", s}, {"logprob", Finite(l.logprob)}, {"bytes", Bytes(s)}, {"top_logprobs", std::move(top)}});
    }
    return json::object{{"content", std::move(content)}, {"refusal", nullptr}};
  }
  json::array tokens, token_logprobs, top_logprobs, text_offset;
  for (size_t i = 0; i < lps.size(); ++i) {
    const TokenLogprob& l = lps[i];
    const std::string s = TokenString(l.token);
    tokens.push_back(json::string(s));
    text_offset.push_back(text_offset_);
    text_offset_ += CodePoints(s);
    if (i == 0 && with_null_first) {  // the prompt's first token has no logprob
      token_logprobs.push_back(nullptr);
      top_logprobs.push_back(nullptr);
      continue;
    }
    token_logprobs.push_back(Finite(l.logprob));
    json::object top;
    for (const auto& [t, v] : l.top) top[TokenString(t)] = Finite(v);
    top_logprobs.push_back(std::move(top));
  }
  return json::object{{"tokens", std::move(tokens)},
                      {"token_logprobs", std::move(token_logprobs)},
                      {"top_logprobs", std::move(top_logprobs)},
                      {"text_offset", std::move(text_offset)}};
}

json::object ChoiceOutput::Delta(const Pieces& p, json::value logprobs, bool first) {
  json::object choice{{"index", o_.index}};
  if (o_.kind == ApiKind::kChat) {
    json::object delta;
    if (first) delta["role"] = "assistant";
    if (!p.reasoning.empty()) delta["reasoning_content"] = p.reasoning;
    if (first || !p.content.empty()) delta["content"] = p.content;
    if (!p.calls.empty()) {
      json::array calls;
      for (const ToolCallDelta& d : p.calls) calls.push_back(ToolCallJson(d));
      delta["tool_calls"] = std::move(calls);
    }
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = p.content;
  }
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = nullptr;
  return choice;
}

json::object ChoiceOutput::OpeningDelta() {
  sent_first_ = true;
  return Delta(Pieces{}, nullptr, /*first=*/true);
}

ChoiceOutput::Step ChoiceOutput::Add(const TokenEvent& ev) {
  Step step;
  prompt_lps_.insert(prompt_lps_.end(), ev.prompt_logprobs.begin(), ev.prompt_logprobs.end());
  std::vector<TokenLogprob> lps;  // this event's, for the delta
  std::string echo;
  bool echo_now = false;
  if (o_.echo && !echoed_ && (!ev.tokens.empty() || ev.finished)) {
    // The engine sends every prompt row before the first token.
    echoed_ = echo_now = true;
    echo = o_.echo_text;
    if (o_.logprobs >= 0) {
      TokenLogprob first;
      first.token = o_.prompt_ids.empty() ? -1 : o_.prompt_ids[0];
      lps.push_back(first);
      lps.insert(lps.end(), prompt_lps_.begin(), prompt_lps_.end());
      all_lps_has_echo_ = true;
    }
  }
  std::span<const int32_t> tokens = ev.tokens;
  if (o_.discard_output) tokens = {};
  n_tokens_ += static_cast<int64_t>(ev.tokens.size());
  all_ids_.insert(all_ids_.end(), tokens.begin(), tokens.end());
  // A stop_token_id that ends the choice is counted, not written.
  std::span<const int32_t> text_tokens = tokens;
  if (ev.finished && ev.reason == FinishReason::kStop && !tokens.empty() &&
      std::find(o_.stop_token_ids.begin(), o_.stop_token_ids.end(), tokens.back()) != o_.stop_token_ids.end()) {
    text_tokens = tokens.first(tokens.size() - 1);
  }
  const bool was_stopped = text_.stopped();
  GenerationText::Piece piece = text_.Add(text_tokens);
  step.stopped = piece.stopped && !was_stopped;
  if (o_.logprobs >= 0 && !was_stopped) {
    for (size_t i = 0; i < tokens.size() && i < ev.logprobs.size(); ++i) lps.push_back(ev.logprobs[i]);
  }
  Pieces p = Route(piece.text, /*final=*/false);
  if (!echo.empty()) p.content = echo + p.content;
  // Non-streamed accumulation.
  all_.content += p.content;
  all_.reasoning += p.reasoning;
  all_.calls.insert(all_.calls.end(), p.calls.begin(), p.calls.end());
  all_lps_.insert(all_lps_.end(), lps.begin(), lps.end());
  const bool first = !sent_first_;
  if (echo_now || !p.content.empty() || !p.reasoning.empty() || !p.calls.empty() || !lps.empty() ||
      (o_.with_token_ids && !tokens.empty())) {
    json::value lj = o_.logprobs >= 0 ? LogprobsJson(lps, echo_now) : json::value(nullptr);
    json::object d = Delta(p, std::move(lj), first);
    if (o_.with_token_ids) {
      json::array ids;
      for (int32_t t : tokens) ids.push_back(t);
      d["token_ids"] = std::move(ids);
    }
    step.deltas.push_back(std::move(d));
    sent_first_ = true;
  }
  return step;
}

std::string ChoiceOutput::FinishReason(std::string_view reason) const {
  // OpenAI: a forced named function ends with "stop", calls the model chose with "tool_calls".
  if (reason == "stop" && !all_.calls.empty() && o_.forced_function.empty()) return "tool_calls";
  return std::string(reason);
}

std::vector<json::object> ChoiceOutput::FinishStream(std::string_view reason) {
  std::vector<json::object> out;
  Pieces p = Route(text_.Finish(), /*final=*/true);
  all_.content += p.content;
  all_.reasoning += p.reasoning;
  all_.calls.insert(all_.calls.end(), p.calls.begin(), p.calls.end());
  const bool first = !sent_first_;
  if (first || !p.content.empty() || !p.reasoning.empty() || !p.calls.empty()) {
    out.push_back(Delta(p, nullptr, first));
    sent_first_ = true;
  }
  json::object last{{"index", o_.index}};
  if (o_.kind == ApiKind::kChat) {
    last["delta"] = json::object{};
  } else {
    last["text"] = "";
  }
  last["logprobs"] = nullptr;
  last["finish_reason"] = FinishReason(reason);
  out.push_back(std::move(last));
  return out;
}

json::object ChoiceOutput::FinalChoice(std::string_view reason) {
  (void)FinishStream(reason);  // flushes the held-back text into all_
  json::object choice{{"index", o_.index}};
  if (o_.kind == ApiKind::kChat) {
    json::object message{{"role", "assistant"}};
    if (!all_.calls.empty()) {
      message["content"] = all_.content.empty() ? json::value(nullptr) : json::value(all_.content);
      // Pieces of one call (a forced function streams its arguments) merge by index.
      std::vector<ToolCallDelta> merged;
      for (const ToolCallDelta& d : all_.calls) {
        if (!merged.empty() && merged.back().index == d.index) {
          merged.back().arguments += d.arguments;
        } else {
          merged.push_back(d);
        }
      }
      json::array calls;
      call_started_.clear();
      for (const ToolCallDelta& d : merged) {
        json::object c = ToolCallJson(d);
        c.erase("index");
        calls.push_back(std::move(c));
      }
      message["tool_calls"] = std::move(calls);
    } else {
      message["content"] = all_.content;
    }
    if (reasoning_) message["reasoning_content"] = all_.reasoning;
    choice["message"] = std::move(message);
  } else {
    choice["text"] = all_.content;
  }
  if (o_.with_token_ids) {
    json::array ids;
    for (int32_t t : all_ids_) ids.push_back(t);
    choice["token_ids"] = std::move(ids);
  }
  text_offset_ = 0;
  choice["logprobs"] = o_.logprobs >= 0 ? LogprobsJson(all_lps_, all_lps_has_echo_) : json::value(nullptr);
  choice["finish_reason"] = FinishReason(reason);
  return choice;
}

}  // namespace deepshard::serve
