// Tests for text/output/tool_call_parser (suite `tool_call_parser`). Each case's
// content and calls are written by hand from the formats in the header (and
// DeepSeek-V3's chat template); every case is then streamed under every split (two
// pieces at each byte, one byte at a time, random pieces), which must give the
// same content and calls, the calls numbered 0, 1, ... in order.
#include "text/output/tool_call_parser.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "text/output/reasoning_parser.h"

namespace deepshard {
namespace {

// The markers, spelled in bytes: "｜" is U+FF5C (EF BD 9C), "▁" U+2581 (E2 96 81).
#define BAR "\xEF\xBD\x9C"
#define LOW "\xE2\x96\x81"
const std::string kB = "<" BAR "tool" LOW "calls" LOW "begin" BAR ">";
const std::string kE = "<" BAR "tool" LOW "calls" LOW "end" BAR ">";
const std::string kCB = "<" BAR "tool" LOW "call" LOW "begin" BAR ">";
const std::string kCE = "<" BAR "tool" LOW "call" LOW "end" BAR ">";
const std::string kSep = "<" BAR "tool" LOW "sep" BAR ">";
#undef BAR
#undef LOW

TEST(tool_call_parser, MarkerSpelling) {
  EXPECT_EQ(kB, "<｜tool▁calls▁begin｜>");
  EXPECT_EQ(kE, "<｜tool▁calls▁end｜>");
  EXPECT_EQ(kCB, "<｜tool▁call▁begin｜>");
  EXPECT_EQ(kCE, "<｜tool▁call▁end｜>");
  EXPECT_EQ(kSep, "<｜tool▁sep｜>");
}

// A V3 call as DeepSeek-V3's chat template writes it.
std::string V3Call(const std::string& name, const std::string& args) {
  return kCB + "function" + kSep + name + "\n```json\n" + args + "\n```" + kCE;
}
std::string V31Call(const std::string& name, const std::string& args) {
  return kCB + name + kSep + args + kCE;
}

struct Case {
  std::string label;
  std::string output;
  std::string content;
  std::vector<ToolCall> calls;
};

const std::string kParis = R"({"city": "Paris"})";
const std::string kTime = R"({"tz": "UTC", "format": 24})";
// Nested, with ``` fences, a marker and marker-like text inside strings.
const std::string kTricky =
    R"({"code": "```python\nprint(1)\n```", "note": "<｜tool▁call▁end｜> and <｜tool▁sep｜> and )"
    R"(<｜tool▁calls▁end｜>", "nested": {"list": [1, {"b": null}, "```"], "t": true}})";
const std::string kUnicode = R"({"city": "東京", "weather": "🌧️", "escaped": "caf\u00e9"})";

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"no_calls", "Just text, 100% plain.", "Just text, 100% plain.", {}},
      {"empty", "", "", {}},
      {"v3_one", kB + V3Call("get_weather", kParis) + kE, "", {{"get_weather", kParis}}},
      // As the V3 template joins calls: "\n" between them.
      {"v3_two_with_text_before",
       "Let me check.\n\n" + kB + V3Call("get_weather", kParis) + "\n" + V3Call("get_time", kTime) +
           kE,
       "Let me check.\n\n",
       {{"get_weather", kParis}, {"get_time", kTime}}},
      {"v31_one", kB + V31Call("get_weather", kParis) + kE, "", {{"get_weather", kParis}}},
      {"v31_three",
       "Sure." + kB + V31Call("a", "{}") + V31Call("b.c-d", R"({"x": [1, 2]})") +
           V31Call("e", kTime) + kE,
       "Sure.",
       {{"a", "{}"}, {"b.c-d", R"({"x": [1, 2]})"}, {"e", kTime}}},
      {"mixed_layouts",
       kB + V3Call("f", "{}") + " \n" + V31Call("g", "{}") + "\n" + kE,
       "",
       {{"f", "{}"}, {"g", "{}"}}},
      {"v3_tricky_args", kB + V3Call("run", kTricky) + kE, "", {{"run", kTricky}}},
      {"v31_tricky_args", kB + V31Call("run", kTricky) + kE, "", {{"run", kTricky}}},
      {"unicode_args",
       "Météo ☀ " + kB + V3Call("get_weather", kUnicode) + kE,
       "Météo ☀ ",
       {{"get_weather", kUnicode}}},
      // Arguments are kept as written, trimmed: spacing, number spellings, order.
      {"v31_args_trimmed",
       kB + V31Call("f", " \n{\"b\":1.0,\"a\":1e3}\n ") + kE,
       "",
       {{"f", "{\"b\":1.0,\"a\":1e3}"}}},
      {"v3_loose_fence",
       kB + kCB + "function" + kSep + "f\n```json  {\"a\": 1}```\n" + kCE + kE,
       "",
       {{"f", "{\"a\": 1}"}}},
      // A V3.1 call of a tool named "function".
      {"v31_named_function",
       kB + V31Call("function", "{\"x\": 1}") + kE,
       "",
       {{"function", "{\"x\": 1}"}}},
      {"text_after_block",
       "Before " + kB + V31Call("f", "{}") + kE + "\n\nAfter.",
       "Before \n\nAfter.",
       {{"f", "{}"}}},
      {"two_blocks",
       kB + V31Call("f", "{}") + kE + " and " + kB + V3Call("g", kParis) + kE,
       " and ",
       {{"f", "{}"}, {"g", kParis}}},
      // No <｜tool▁calls▁end｜> before the end: the calls count (as vLLM/SGLang).
      {"missing_calls_end", "x" + kB + V3Call("f", kParis), "x", {{"f", kParis}}},
      {"missing_calls_end_trailing_space",
       kB + V3Call("f", kParis) + "\n" + V3Call("g", "{}") + "\n\n",
       "",
       {{"f", kParis}, {"g", "{}"}}},
      // Stray text after a call, no block end: the call is kept, the text is content.
      {"text_after_call_without_end",
       kB + V31Call("f", "{}") + "\nDone.",
       "\nDone.",
       {{"f", "{}"}}},

      // Malformed: whatever did not parse comes back as written.
      {"invalid_json",
       "Hi" + kB + V3Call("f", "{\"a\": }") + kE,
       "Hi" + kB + V3Call("f", "{\"a\": }") + kE,
       {}},
      {"args_not_object", kB + V31Call("f", "[1, 2]") + kE, kB + V31Call("f", "[1, 2]") + kE, {}},
      {"args_trailing_garbage", kB + V31Call("f", "{} x") + kE, kB + V31Call("f", "{} x") + kE, {}},
      {"missing_call_end",
       kB + kCB + "function" + kSep + "f\n```json\n{}\n```" + kE + "Bye",
       kB + kCB + "function" + kSep + "f\n```json\n{}\n```" + kE + "Bye",
       {}},
      {"cut_off_in_call",
       "Ok" + kB + kCB + "f" + kSep + "{\"a\": \"unterminated",
       "Ok" + kB + kCB + "f" + kSep + "{\"a\": \"unterminated",
       {}},
      {"no_separator", kB + kCB + "f {}" + kCE + kE, kB + kCB + "f {}" + kCE + kE, {}},
      {"empty_name", kB + V31Call("", "{}") + kE, kB + V31Call("", "{}") + kE, {}},
      {"name_with_space",
       kB + V31Call("get weather", "{}") + kE,
       kB + V31Call("get weather", "{}") + kE,
       {}},
      {"v3_missing_fence",
       kB + kCB + "function" + kSep + "f\n{}" + kCE + kE,
       kB + kCB + "function" + kSep + "f\n{}" + kCE + kE,
       {}},
      {"empty_block", "a" + kB + kE + "b", "a" + kB + kE + "b", {}},
      {"garbage_in_block",
       kB + "oops" + V31Call("f", "{}") + kE,
       kB + "oops" + V31Call("f", "{}") + kE,
       {}},
      {"only_begin", "text" + kB, "text" + kB, {}},
      {"only_begin_and_space", kB + "\n", kB + "\n", {}},
      {"call_without_block", V31Call("f", "{}"), V31Call("f", "{}"), {}},
      // A good call, then a bad one: the first is kept, the rest is content.
      {"good_then_bad",
       "Hi" + kB + V31Call("ok", "{}") + "\n" + V31Call("bad", "{") + kE,
       "Hi\n" + V31Call("bad", "{") + kE,
       {{"ok", "{}"}}},
      {"good_then_garbage",
       kB + V3Call("ok", kParis) + "\nnot a call" + kE,
       "\nnot a call" + kE,
       {{"ok", kParis}}},
      // A bad call swallows later markers while it looks for a valid end.
      {"bad_then_good",
       kB + V31Call("bad", "{") + V31Call("good", "{}") + kE,
       kB + V31Call("bad", "{") + V31Call("good", "{}") + kE,
       {}},
      {"cut_marker_at_end", "Hello <｜tool▁calls", "Hello <｜tool▁calls", {}},
      {"cut_inner_marker_at_end",
       kB + V31Call("f", "{}") + "<｜tool▁call",
       "<｜tool▁call",
       {{"f", "{}"}}},
      {"marker_lookalikes",
       "<｜tool▁calls▁begin> <|tool▁calls▁begin|> <｜tool_calls_begin｜>",
       "<｜tool▁calls▁begin> <|tool▁calls▁begin|> <｜tool_calls_begin｜>",
       {}},
  };
  return cases;
}

ParsedToolCalls Stream(const Case& c, const std::vector<size_t>& cuts) {
  ToolCallStreamParser parser;
  ParsedToolCalls all;
  auto add = [&](const ToolCallStreamParser::Delta& d) {
    all.content += d.content;
    for (const ToolCallDelta& call : d.calls) {
      EXPECT_EQ(call.index, static_cast<int>(all.calls.size()));
      all.calls.push_back({call.name, call.arguments});
    }
  };
  size_t from = 0;
  for (size_t cut : cuts) {
    add(parser.Feed(std::string_view(c.output).substr(from, cut - from)));
    from = cut;
  }
  add(parser.Feed(std::string_view(c.output).substr(from)));
  add(parser.Finish());
  return all;
}

void ExpectCalls(const std::vector<ToolCall>& got, const std::vector<ToolCall>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].name, want[i].name) << "call " << i;
    EXPECT_EQ(got[i].arguments, want[i].arguments) << "call " << i;
  }
}

TEST(tool_call_parser, WholeOutput) {
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.label);
    const ParsedToolCalls got = ParseToolCalls(c.output);
    EXPECT_EQ(got.content, c.content);
    ExpectCalls(got.calls, c.calls);
  }
}

TEST(tool_call_parser, EveryTwoPieceSplit) {
  for (const Case& c : Cases()) {
    for (size_t cut = 0; cut <= c.output.size(); ++cut) {
      SCOPED_TRACE(c.label + " cut at " + std::to_string(cut));
      const ParsedToolCalls got = Stream(c, {cut});
      EXPECT_EQ(got.content, c.content);
      ExpectCalls(got.calls, c.calls);
    }
  }
}

// One byte at a time: every marker and every multi-byte character is split.
TEST(tool_call_parser, OneByteAtATime) {
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.label);
    std::vector<size_t> cuts;
    for (size_t i = 1; i < c.output.size(); ++i) cuts.push_back(i);
    const ParsedToolCalls got = Stream(c, cuts);
    EXPECT_EQ(got.content, c.content);
    ExpectCalls(got.calls, c.calls);
  }
}

TEST(tool_call_parser, RandomSplits) {
  std::mt19937 rng(4321);
  for (const Case& c : Cases()) {
    for (int round = 0; round < 50; ++round) {
      std::vector<size_t> cuts;
      if (!c.output.empty()) {
        const int n = std::uniform_int_distribution<int>(1, 12)(rng);
        std::uniform_int_distribution<size_t> at(0, c.output.size());
        for (int i = 0; i < n; ++i) cuts.push_back(at(rng));
        std::sort(cuts.begin(), cuts.end());  // repeats give empty pieces
      }
      SCOPED_TRACE(c.label + " round " + std::to_string(round));
      const ParsedToolCalls got = Stream(c, cuts);
      EXPECT_EQ(got.content, c.content);
      ExpectCalls(got.calls, c.calls);
    }
  }
}

// What each step returns: content at once (less a possible block start), each
// call whole as soon as its end marker arrives.
TEST(tool_call_parser, StreamsContentAndCallsAsTheyComplete) {
  ToolCallStreamParser parser;
  ToolCallStreamParser::Delta d = parser.Feed("Let me check. <｜tool▁calls");
  EXPECT_EQ(d.content, "Let me check. ");
  EXPECT_TRUE(d.calls.empty());

  d = parser.Feed("▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n");
  EXPECT_EQ(d.content, "");
  EXPECT_TRUE(d.calls.empty());

  d = parser.Feed(
      "{\"city\": "
      "\"Paris\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}");
  EXPECT_EQ(d.content, "");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0], (ToolCallDelta{0, "get_weather", "{\"city\": \"Paris\"}"}));

  d = parser.Feed("<｜tool▁call▁end｜><｜tool▁calls▁end｜>\n\nDone");
  EXPECT_EQ(d.content, "\n\nDone");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0], (ToolCallDelta{1, "get_time", "{}"}));

  d = parser.Finish();
  EXPECT_EQ(d.content, "");
  EXPECT_TRUE(d.calls.empty());
}

TEST(tool_call_parser, MarkerInsideArgumentsDoesNotEndTheCall) {
  ToolCallStreamParser parser;
  ToolCallStreamParser::Delta d = parser.Feed(kB + kCB + "f" + kSep + "{\"s\": \"" + kCE + "\"");
  EXPECT_TRUE(d.calls.empty());
  d = parser.Feed("}" + kCE);
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0], (ToolCallDelta{0, "f", "{\"s\": \"" + kCE + "\"}"}));
}

TEST(tool_call_parser, FinishResets) {
  ToolCallStreamParser parser;
  parser.Feed(kB + V31Call("f", "{}"));
  EXPECT_EQ(parser.Finish().content, "");
  ToolCallStreamParser::Delta d = parser.Feed("text " + kB + V31Call("g", "{}"));
  EXPECT_EQ(d.content, "text ");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].index, 0);  // a new output numbers its calls from 0
}

// DeepSeek-R1 with its prompt-opened think block, then tool calls in the content.
TEST(tool_call_parser, AfterReasoning) {
  const std::string output =
      "The user wants the weather.\n</think>\n\n" + kB + V3Call("get_weather", kParis) + kE;
  const ReasoningDelta split = ParseReasoning(output, /*starts_in_reasoning=*/true);
  EXPECT_EQ(split.reasoning, "The user wants the weather.\n");
  const ParsedToolCalls parsed = ParseToolCalls(split.content);
  EXPECT_EQ(parsed.content, "\n\n");
  ExpectCalls(parsed.calls, {{"get_weather", kParis}});
}

TEST(tool_call_parser, DeepNesting) {
  std::string args = "{\"a\": ";
  for (int i = 0; i < 100; ++i) args += "[";
  for (int i = 0; i < 100; ++i) args += "]";
  args += "}";
  const ParsedToolCalls parsed = ParseToolCalls(kB + V31Call("f", args) + kE);
  EXPECT_EQ(parsed.content, "");
  ExpectCalls(parsed.calls, {{"f", args}});
}

}  // namespace
}  // namespace deepshard
