// Tests for text/output/reasoning_parser (suite `reasoning_parser`). Each case's
// reasoning and content are written by hand from the rules in the header; every
// case is then streamed under every split (two pieces at each byte, one byte at a
// time, random pieces), which must give the same text.
#include "text/output/reasoning_parser.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace deepshard {
namespace {

struct Case {
  const char* label;
  bool starts_in_reasoning;
  std::string output;
  std::string reasoning;
  std::string content;
};

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      // R1 with its template's "<think>\n" in the prompt: only the close comes.
      {"prompt_opened", true, "The user wants 2+2.\nThat is 4.\n</think>\n\nThe answer is 4.",
       "The user wants 2+2.\nThat is 4.\n", "\n\nThe answer is 4."},
      // The model opens the block itself: the tag is dropped, the newline kept.
      {"model_opened", false, "<think>\nHmm.\n</think>\n\nHi!", "\nHmm.\n", "\n\nHi!"},
      {"model_opened_in_open_prompt", true, "<think>Hmm.</think>Hi!", "Hmm.", "Hi!"},
      {"no_reasoning", false, "Hello, world.", "", "Hello, world."},
      // Not in a block: a stray close tag is content.
      {"stray_close_is_content", false, "a</think>b", "", "a</think>b"},
      {"late_open_is_content", false, "Hi <think>x</think>y", "", "Hi <think>x</think>y"},
      {"late_open_is_reasoning", true, "Hi <think>x</think>y", "Hi <think>x", "y"},
      {"never_closed_prompt_opened", true, "Still thinking about it", "Still thinking about it",
       ""},
      {"never_closed_model_opened", false, "<think>Still thinking", "Still thinking", ""},
      {"only_open_tag", false, "<think>", "", ""},
      {"empty_block", false, "<think></think>Answer", "", "Answer"},
      {"empty_output", false, "", "", ""},
      {"empty_output_prompt_opened", true, "", "", ""},
      {"close_then_nothing", true, "r</think>", "r", ""},
      // Only the first close tag counts; later tags are content.
      {"second_close_is_content", true, "r</think>c</think>d<think>e", "r", "c</think>d<think>e"},
      // Cut-off tags at the end are text of the side they are on.
      {"cut_open_tag_content", false, "<thi", "", "<thi"},
      {"cut_open_tag_reasoning", true, "<thi", "<thi", ""},
      {"cut_close_tag", true, "abc</thi", "abc</thi", ""},
      {"tag_lookalikes", true, "a <b> </thinking> </ think> < /think>",
       "a <b> </thinking> </ think> < /think>", ""},
      {"near_open", false, "<thinking>x</think>y", "", "<thinking>x</think>y"},
      {"unicode", true, "思考：二加二等于四。🤔</think>答案是 4。",
       "思考：二加二等于四。🤔", "答案是 4。"},
      {"unicode_model_opened", false, "<think>é</think>ü", "é", "ü"},
  };
  return cases;
}

ReasoningDelta Stream(const Case& c, const std::vector<size_t>& cuts) {
  ReasoningParser parser(c.starts_in_reasoning);
  ReasoningDelta all;
  size_t from = 0;
  auto add = [&](const ReasoningDelta& d) {
    all.reasoning += d.reasoning;
    all.content += d.content;
  };
  for (size_t cut : cuts) {
    add(parser.Feed(std::string_view(c.output).substr(from, cut - from)));
    from = cut;
  }
  add(parser.Feed(std::string_view(c.output).substr(from)));
  add(parser.Finish());
  return all;
}

TEST(reasoning_parser, WholeOutput) {
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.label);
    const ReasoningDelta got = ParseReasoning(c.output, c.starts_in_reasoning);
    EXPECT_EQ(got.reasoning, c.reasoning);
    EXPECT_EQ(got.content, c.content);
  }
}

TEST(reasoning_parser, EveryTwoPieceSplit) {
  for (const Case& c : Cases()) {
    for (size_t cut = 0; cut <= c.output.size(); ++cut) {
      SCOPED_TRACE(std::string(c.label) + " cut at " + std::to_string(cut));
      const ReasoningDelta got = Stream(c, {cut});
      EXPECT_EQ(got.reasoning, c.reasoning);
      EXPECT_EQ(got.content, c.content);
    }
  }
}

TEST(reasoning_parser, OneByteAtATime) {
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.label);
    std::vector<size_t> cuts;
    for (size_t i = 1; i < c.output.size(); ++i) cuts.push_back(i);
    const ReasoningDelta got = Stream(c, cuts);
    EXPECT_EQ(got.reasoning, c.reasoning);
    EXPECT_EQ(got.content, c.content);
  }
}

TEST(reasoning_parser, RandomSplits) {
  std::mt19937 rng(1234);
  for (const Case& c : Cases()) {
    for (int round = 0; round < 50; ++round) {
      std::vector<size_t> cuts;
      if (!c.output.empty()) {
        const int n = std::uniform_int_distribution<int>(1, 8)(rng);
        std::uniform_int_distribution<size_t> at(0, c.output.size());
        for (int i = 0; i < n; ++i) cuts.push_back(at(rng));
        std::sort(cuts.begin(), cuts.end());  // repeats give empty pieces
      }
      SCOPED_TRACE(std::string(c.label) + " round " + std::to_string(round));
      const ReasoningDelta got = Stream(c, cuts);
      EXPECT_EQ(got.reasoning, c.reasoning);
      EXPECT_EQ(got.content, c.content);
    }
  }
}

// What each step returns: decided text at once, a possible tag held back.
TEST(reasoning_parser, HoldsBackOnlyPossibleTags) {
  ReasoningParser parser(/*starts_in_reasoning=*/true);
  ReasoningDelta d = parser.Feed("Let me see</th");
  EXPECT_EQ(d.reasoning, "Let me see");
  EXPECT_EQ(d.content, "");
  d = parser.Feed("ink>\n\nIt");
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "\n\nIt");
  d = parser.Feed(" is 4</think>");
  EXPECT_EQ(d.content, " is 4</think>");
  d = parser.Finish();
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "");
}

TEST(reasoning_parser, StartIsHeldUntilDecided) {
  ReasoningParser parser(/*starts_in_reasoning=*/false);
  ReasoningDelta d = parser.Feed("<th");
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "");
  d = parser.Feed("e");  // "<the" is not "<think>": content, and no more holding
  EXPECT_EQ(d.content, "<the");
  d = parser.Feed("</think");
  EXPECT_EQ(d.content, "</think");
}

// Inside a multi-byte character, bytes pass through as they come: only the
// concatenation is whole.
TEST(reasoning_parser, SplitInsideUtf8Character) {
  ReasoningParser parser(/*starts_in_reasoning=*/true);
  const std::string text = "\xE6\x80\x9D</think>\xE7\xAD\x94";  // 思</think>答
  ReasoningDelta d = parser.Feed(text.substr(0, 2));
  EXPECT_EQ(d.reasoning, "\xE6\x80");
  d = parser.Feed(text.substr(2, 5));
  EXPECT_EQ(d.reasoning, "\x9D");
  d = parser.Feed(text.substr(7));
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "\xE7\xAD\x94");
}

TEST(reasoning_parser, FinishResets) {
  ReasoningParser parser(/*starts_in_reasoning=*/false);
  parser.Feed("<think>a</think>b");
  parser.Finish();
  const ReasoningDelta d = parser.Feed("<think>x");
  EXPECT_EQ(d.reasoning, "x");
  EXPECT_EQ(d.content, "");
}

TEST(reasoning_parser, PromptOpensThink) {
  // DeepSeek-R1 (2025-01-20 and later templates), V3.1 thinking and non-thinking.
  EXPECT_TRUE(PromptOpensThink("<｜User｜>2+2?<｜Assistant｜><think>\n"));
  EXPECT_TRUE(PromptOpensThink("<｜User｜>2+2?<｜Assistant｜><think>"));
  EXPECT_TRUE(PromptOpensThink("<think> \t\r\n\n"));
  EXPECT_FALSE(PromptOpensThink("<｜User｜>2+2?<｜Assistant｜></think>"));
  // DeepSeek-V3: no block at all.
  EXPECT_FALSE(PromptOpensThink("<｜User｜>2+2?<｜Assistant｜>"));
  EXPECT_FALSE(PromptOpensThink(""));
  // A "<think>" quoted earlier in the prompt does not open a block.
  EXPECT_FALSE(PromptOpensThink("<｜User｜>What does <think> mean?<｜Assistant｜>"));
  // An earlier turn's closed block, then a new one opened.
  EXPECT_TRUE(PromptOpensThink("<think>a</think>b<｜User｜>c<｜Assistant｜><think>\n"));
  EXPECT_FALSE(PromptOpensThink("<think>a</think>\n"));
  EXPECT_FALSE(PromptOpensThink("<think>\nLet me"));
  EXPECT_FALSE(PromptOpensThink("<think"));
}

}  // namespace
}  // namespace deepshard
