// ChoiceOutput on the real DeepSeek-V3 tokenizer: crafted model outputs
// (random-weight models never write tool calls or <think>), fed one token per
// event, give the same message streamed (deltas merged as the openai client
// merges them) as whole; logprobs, echo and stop_token_ids take OpenAI's
// shapes.
#include "serve/choice_output.h"

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "boost/json.hpp"
#include "gtest/gtest.h"

namespace deepshard::serve {
namespace {

namespace json = boost::json;

const Tokenizer& Tok() {
  static const std::unique_ptr<Tokenizer> t = [] {
    auto r = Tokenizer::FromDirectory(std::string(DS_SOURCE_DIR) + "/tests/data/tokenizers/deepseek-v3");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : nullptr;
  }();
  return *t;
}

// What a streaming client ends up with, merging deltas the way the openai
// client does: content and reasoning appended; tool calls by index, with name
// and arguments appended.
struct Merged {
  std::string content, reasoning;
  std::vector<std::pair<std::string, std::string>> calls;  // name, arguments
  std::string finish_reason;
  int role_count = 0;
};

void MergeDelta(const json::object& choice, Merged& m) {
  if (choice.at("finish_reason").is_string()) m.finish_reason = choice.at("finish_reason").as_string();
  const json::object& d = choice.at("delta").as_object();
  if (d.contains("role")) ++m.role_count;
  if (auto* c = d.if_contains("content"); c && c->is_string()) m.content += c->as_string();
  if (auto* r = d.if_contains("reasoning_content")) m.reasoning += r->as_string();
  if (auto* tc = d.if_contains("tool_calls")) {
    for (const json::value& v : tc->as_array()) {
      const size_t i = static_cast<size_t>(v.at("index").as_int64());
      if (m.calls.size() <= i) m.calls.resize(i + 1);
      const json::object& f = v.at("function").as_object();
      if (auto* n = f.if_contains("name")) m.calls[i].first += n->as_string();
      if (auto* a = f.if_contains("arguments")) m.calls[i].second += a->as_string();
    }
  }
}

TokenEvent Event(std::vector<int32_t> tokens, bool finished = false, FinishReason reason = FinishReason::kNone) {
  TokenEvent ev;
  ev.tokens = std::move(tokens);
  ev.finished = finished;
  ev.reason = reason;
  return ev;
}

// Streams `text` (as the model's tokens, one per event, then EOS) through one
// ChoiceOutput and builds the whole message with another.
std::pair<Merged, json::object> StreamAndWhole(ChoiceOptions o, const std::string& text) {
  std::vector<int32_t> ids = Tok().Encode(text, /*add_special_tokens=*/false);
  ids.push_back(*Tok().eos_id());
  ChoiceOutput streamed(o), whole(o);
  Merged m;
  for (size_t i = 0; i < ids.size(); ++i) {
    const bool last = i + 1 == ids.size();
    TokenEvent ev = Event({ids[i]}, last, last ? FinishReason::kStop : FinishReason::kNone);
    for (const json::object& d : streamed.Add(ev).deltas) MergeDelta(d, m);
    (void)whole.Add(ev);
  }
  for (const json::object& d : streamed.FinishStream("stop")) MergeDelta(d, m);
  return {m, whole.FinalChoice("stop")};
}

ChoiceOptions Chat() {
  ChoiceOptions o;
  o.kind = ApiKind::kChat;
  o.tokenizer = &Tok();
  o.request_id = "chatcmpl-0123456789abcdef01234567";
  return o;
}

TEST(ChoiceOutput, ToolCallsStreamedEqualWhole) {
  ChoiceOptions o = Chat();
  o.tools = true;
  const std::string text =
      "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
      "{\"city\": \"Zürich\", \"days\": [1, 2]}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>"
      "get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
  auto [m, whole] = StreamAndWhole(o, text);
  EXPECT_EQ(m.content, "Let me check.");
  ASSERT_EQ(m.calls.size(), 2u);
  EXPECT_EQ(m.calls[0].first, "get_weather");
  EXPECT_EQ(m.calls[0].second, "{\"city\": \"Zürich\", \"days\": [1, 2]}");
  EXPECT_EQ(m.calls[1].first, "get_time");
  EXPECT_EQ(m.calls[1].second, "{}");
  EXPECT_EQ(m.finish_reason, "tool_calls");
  EXPECT_EQ(m.role_count, 1);
  const json::object& msg = whole.at("message").as_object();
  EXPECT_EQ(msg.at("content").as_string(), "Let me check.");
  const json::array& calls = msg.at("tool_calls").as_array();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].at("function").at("name").as_string(), "get_weather");
  EXPECT_EQ(calls[0].at("function").at("arguments").as_string(), m.calls[0].second);
  EXPECT_EQ(calls[0].at("type").as_string(), "function");
  EXPECT_NE(calls[0].at("id").as_string(), calls[1].at("id").as_string());
  EXPECT_EQ(whole.at("finish_reason").as_string(), "tool_calls");
}

TEST(ChoiceOutput, MalformedToolCallIsText) {
  ChoiceOptions o = Chat();
  o.tools = true;
  const std::string text =
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\": }\n```<｜tool▁call▁end｜>";
  auto [m, whole] = StreamAndWhole(o, text);
  EXPECT_TRUE(m.calls.empty());
  EXPECT_EQ(m.content, text);
  EXPECT_EQ(m.finish_reason, "stop");
  EXPECT_EQ(whole.at("message").at("content").as_string(), text);
  EXPECT_FALSE(whole.at("message").as_object().contains("tool_calls"));
}

TEST(ChoiceOutput, ReasoningGoesToReasoningContent) {
  ChoiceOptions o = Chat();
  o.reasoning = true;
  o.starts_in_reasoning = true;  // R1's prompt ends with "<think>\n"
  auto [m, whole] = StreamAndWhole(o, "2 + 2 is 4.\n</think>\n\nThe answer is 4.");
  EXPECT_EQ(m.reasoning, "2 + 2 is 4.\n");
  EXPECT_EQ(m.content, "\n\nThe answer is 4.");
  EXPECT_EQ(whole.at("message").at("reasoning_content").as_string(), m.reasoning);
  EXPECT_EQ(whole.at("message").at("content").as_string(), m.content);
}

TEST(ChoiceOutput, ForcedFunctionStreamsArgumentsWithTheNameOnce) {
  ChoiceOptions o = Chat();
  o.forced_function = "extract";
  auto [m, whole] = StreamAndWhole(o, "{\"name\": \"Ada\", \"age\": 36}");
  ASSERT_EQ(m.calls.size(), 1u);
  EXPECT_EQ(m.calls[0].first, "extract");  // not "extractextract..."
  EXPECT_EQ(m.calls[0].second, "{\"name\": \"Ada\", \"age\": 36}");
  EXPECT_EQ(m.content, "");
  EXPECT_EQ(m.finish_reason, "stop");  // OpenAI: a forced function ends with "stop"
  const json::array& calls = whole.at("message").at("tool_calls").as_array();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].at("function").at("arguments").as_string(), m.calls[0].second);
  EXPECT_TRUE(whole.at("message").at("content").is_null());
}

TEST(ChoiceOutput, RequiredToolsParsesTheArrayOfCalls) {
  ChoiceOptions o = Chat();
  o.required_tools = true;
  auto [m, whole] = StreamAndWhole(o, "[{\"name\": \"a\", \"parameters\": {\"x\": 1}}, {\"name\": \"b\", \"parameters\": {}}]");
  ASSERT_EQ(m.calls.size(), 2u);
  EXPECT_EQ(m.calls[0].first, "a");
  EXPECT_EQ(m.calls[0].second, "{\"x\":1}");
  EXPECT_EQ(m.calls[1].first, "b");
  EXPECT_EQ(m.finish_reason, "tool_calls");
  EXPECT_EQ(whole.at("message").at("tool_calls").as_array().size(), 2u);
}

TEST(ChoiceOutput, CompletionLogprobsWithEcho) {
  ChoiceOptions o;
  o.kind = ApiKind::kCompletion;
  o.tokenizer = &Tok();
  o.logprobs = 2;
  o.echo = true;
  o.echo_text = "Hello world";
  o.prompt_ids = Tok().Encode("Hello world", /*add_special_tokens=*/false);
  ASSERT_EQ(o.prompt_ids.size(), 2u);
  ChoiceOutput c(o);
  TokenEvent prompt;
  prompt.prompt_logprobs.push_back({o.prompt_ids[1], -1.5f, {{7, -0.5f}, {o.prompt_ids[1], -1.5f}}});
  (void)c.Add(prompt);
  const int32_t bang = Tok().Encode("!", false)[0];
  TokenEvent tok = Event({bang}, true, FinishReason::kLength);
  tok.logprobs.push_back({bang, -0.25f, {{bang, -0.25f}, {9, -2.0f}}});
  (void)c.Add(tok);
  const json::object choice = c.FinalChoice("length");
  EXPECT_EQ(choice.at("text").as_string(), "Hello world!");
  const json::object& lp = choice.at("logprobs").as_object();
  const json::array& tokens = lp.at("tokens").as_array();
  ASSERT_EQ(tokens.size(), 3u);
  EXPECT_EQ(tokens[0].as_string(), "Hello");
  EXPECT_EQ(tokens[1].as_string(), " world");
  EXPECT_EQ(tokens[2].as_string(), "!");
  const json::array& values = lp.at("token_logprobs").as_array();
  EXPECT_TRUE(values[0].is_null());
  EXPECT_DOUBLE_EQ(values[1].as_double(), -1.5);
  EXPECT_DOUBLE_EQ(values[2].as_double(), -0.25);
  EXPECT_TRUE(lp.at("top_logprobs").as_array()[0].is_null());
  EXPECT_EQ(lp.at("top_logprobs").as_array()[2].as_object().size(), 2u);
  const json::array& offsets = lp.at("text_offset").as_array();
  EXPECT_EQ(offsets[0].as_int64(), 0);
  EXPECT_EQ(offsets[1].as_int64(), 5);
  EXPECT_EQ(offsets[2].as_int64(), 11);
  EXPECT_EQ(c.completion_tokens(), 1);
}

TEST(ChoiceOutput, TextOffsetCountsCharactersNotBytes) {
  ChoiceOptions o;
  o.kind = ApiKind::kCompletion;
  o.tokenizer = &Tok();
  o.logprobs = 0;
  o.echo = true;
  o.echo_text = "h\u00e9\u00e9 \u00fcn\u00ef";  // héé ünï: 7 characters, 11 bytes
  o.prompt_ids = Tok().Encode(o.echo_text, /*add_special_tokens=*/false);
  ChoiceOutput c(o);
  TokenEvent prompt;
  for (size_t i = 1; i < o.prompt_ids.size(); ++i) prompt.prompt_logprobs.push_back({o.prompt_ids[i], -1.0f, {}});
  (void)c.Add(prompt);
  const int32_t e = Tok().Encode("\u00e9", false)[0];
  TokenEvent tok = Event({e}, true, FinishReason::kLength);
  tok.logprobs.push_back({e, -0.5f, {}});
  (void)c.Add(tok);
  const json::object choice = c.FinalChoice("length");
  const json::array& tokens = choice.at("logprobs").at("tokens").as_array();
  const json::array& offsets = choice.at("logprobs").at("text_offset").as_array();
  ASSERT_EQ(tokens.size(), o.prompt_ids.size() + 1);
  int64_t chars = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_EQ(offsets[i].as_int64(), chars) << i;
    for (unsigned char ch : std::string_view(tokens[i].as_string())) chars += (ch & 0xC0) != 0x80;
  }
  EXPECT_EQ(chars, 8);  // the text, "héé ünïé"
  EXPECT_EQ(offsets.back().as_int64(), 7);
}

TEST(ChoiceOutput, ChatLogprobsCarryBytesAndTop) {
  ChoiceOptions o = Chat();
  o.logprobs = 1;
  ChoiceOutput c(o);
  const int32_t hi = Tok().Encode("Hi", false)[0];
  TokenEvent ev = Event({hi}, true, FinishReason::kLength);
  ev.logprobs.push_back({hi, -std::numeric_limits<float>::infinity(), {{hi, -0.1f}}});
  const auto step = c.Add(ev);
  ASSERT_EQ(step.deltas.size(), 1u);
  const json::array& content = step.deltas[0].at("logprobs").at("content").as_array();
  ASSERT_EQ(content.size(), 1u);
  EXPECT_EQ(content[0].at("token").as_string(), "Hi");
  EXPECT_DOUBLE_EQ(content[0].at("logprob").as_double(), -9999.0);  // JSON has no -inf
  EXPECT_EQ(content[0].at("bytes").as_array().size(), 2u);
  EXPECT_EQ(content[0].at("top_logprobs").as_array().size(), 1u);
}

TEST(ChoiceOutput, StopTokenIdEndsWithoutItsText) {
  ChoiceOptions o;
  o.kind = ApiKind::kCompletion;
  o.tokenizer = &Tok();
  const std::vector<int32_t> ids = Tok().Encode("one two three", false);
  o.stop_token_ids = {ids[2]};
  ChoiceOutput c(o);
  (void)c.Add(Event({ids[0]}));
  (void)c.Add(Event({ids[1]}));
  (void)c.Add(Event({ids[2]}, true, FinishReason::kStop));
  const json::object choice = c.FinalChoice("stop");
  EXPECT_EQ(choice.at("text").as_string(), "one two");
  EXPECT_EQ(c.completion_tokens(), 3);
}

TEST(ChoiceOutput, EchoWithMaxTokensZeroDropsTheGeneratedToken) {
  ChoiceOptions o;
  o.kind = ApiKind::kCompletion;
  o.tokenizer = &Tok();
  o.echo = true;
  o.echo_text = "abc";
  o.discard_output = true;
  ChoiceOutput c(o);
  (void)c.Add(Event({Tok().Encode("zzz", false)[0]}, true, FinishReason::kLength));
  EXPECT_EQ(c.FinalChoice("length").at("text").as_string(), "abc");
  EXPECT_EQ(c.completion_tokens(), 0);
}

}  // namespace
}  // namespace deepshard::serve
