// ReasoningParser: splits DeepSeek-R1 style output into reasoning and content.
//
// DeepSeek-R1 (and V3.1 in thinking mode) write their chain of thought inside a
// think block, then the answer:
//
//   <think>\nThe user wants 2+2. That is 4.\n</think>\n\nThe answer is 4.
//
// Recent R1 chat templates open the block in the prompt itself (the generation
// prompt ends with "<think>\n"), so the model's output starts inside the block and
// carries only the closing tag:
//
//   The user wants 2+2. That is 4.\n</think>\n\nThe answer is 4.
//
// Rules (those of vLLM's `deepseek_r1` reasoning parser, except where noted):
//   - A "<think>" at the very start of the output is dropped, and the output is
//     then inside the block. A "<think>" anywhere else is ordinary text.
//   - Inside the block, text before the first "</think>" is reasoning; everything
//     after it is content, verbatim. The newlines that usually follow "</think>"
//     stay in the content, and the newline after "<think>" stays in the
//     reasoning, as in vLLM (which strips nothing). Later "<think>"/"</think>"
//     tags are ordinary content text.
//   - A block that never closes (output cut off, or still thinking at the token
//     limit) is all reasoning, as in vLLM.
//   - When the prompt did not open the block (starts_in_reasoning false) and the
//     output does not start with "<think>", the model is not reasoning (DeepSeek-V3,
//     or V3.1 whose non-thinking prompt ends with "</think>"): everything is
//     content, a stray "</think>" included. vLLM instead treats text before a
//     "</think>" as reasoning even then; here the caller says whether the block is
//     open (see PromptOpensThink), so content can stream without waiting for a
//     "</think>" that may never come.
//
// Streaming: Feed() returns what is decided; a suffix that could still grow into
// "<think>" (only at the start) or "</think>" (inside the block) is held back until
// the next piece decides it, or until Finish(). For any split of an output into
// pieces, the concatenated reasoning and content of all Feed() results and
// Finish() equal ParseReasoning() of the whole output. Tags are matched on bytes,
// so pieces may split anywhere, inside a tag or inside a UTF-8 character; the
// returned text then splits there too, and only the concatenation is whole.
//
// Example:
//   ReasoningParser parser(PromptOpensThink(prompt));
//   for (const std::string& piece : pieces) {
//     ReasoningDelta d = parser.Feed(piece);
//     Send(d.reasoning, d.content);
//   }
//   ReasoningDelta last = parser.Finish();
#pragma once

#include <string>
#include <string_view>

namespace deepshard {

// Reasoning and content text, of one streamed step or of a whole output.
struct ReasoningDelta {
  std::string reasoning;
  std::string content;
};

class ReasoningParser {
 public:
  // `starts_in_reasoning`: the rendered prompt already opened a think block, so
  // the output starts inside it (see PromptOpensThink).
  explicit ReasoningParser(bool starts_in_reasoning);

  // Adds the next piece of output; returns the text that became final.
  ReasoningDelta Feed(std::string_view text);
  // Returns the text still held back (the output has ended), and resets the
  // parser to its state at construction.
  ReasoningDelta Finish();

 private:
  enum class State {
    kStart,      // at the start of the output: is it "<think>"?
    kReasoning,  // inside the think block
    kContent,    // after "</think>", or never in a block
  };

  void Process(ReasoningDelta& out);

  bool starts_in_reasoning_;
  State state_;
  std::string held_;  // undecided text: a possible prefix of a tag
};

// The whole output at once: the same as one Feed() and Finish().
ReasoningDelta ParseReasoning(std::string_view output, bool starts_in_reasoning);

// True when `rendered_prompt` ends inside an open think block: it ends with
// "<think>" followed only by whitespace (" ", "\t", "\n", "\r"). DeepSeek-R1's
// generation prompt ends "<｜Assistant｜><think>\n", V3.1's thinking one
// "<｜Assistant｜><think>" and its non-thinking one "<｜Assistant｜></think>".
// A "<think>" earlier in the prompt (say, quoted in a user message) does not count.
bool PromptOpensThink(std::string_view rendered_prompt);

}  // namespace deepshard
