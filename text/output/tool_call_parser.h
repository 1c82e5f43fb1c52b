// Tool calls in DeepSeek-V3 / R1 / V3.1 output, whole or streamed.
//
// DeepSeek writes tool calls with marker tokens. They are ordinary added tokens of
// the DeepSeek-V3 tokenizer, so they appear in the decoded text; "｜" is U+FF5C
// FULLWIDTH VERTICAL LINE and "▁" is U+2581 LOWER ONE EIGHTH BLOCK. A block of
// calls follows any text. Below, line breaks are only for reading; "\n" is a
// newline in the output:
//
// V3 / R1 (DeepSeek-V3's chat template writes calls back this way):
//   Let me look.<｜tool▁calls▁begin｜>
//   <｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n
//   {"city": "Paris"}\n```<｜tool▁call▁end｜>\n
//   <｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜>
//   <｜tool▁calls▁end｜>
// V3.1:
//   <｜tool▁calls▁begin｜>
//   <｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>
//   <｜tool▁calls▁end｜>
//
// The grammar accepted (both layouts, even mixed in one block):
//   - A block opens with <｜tool▁calls▁begin｜>; text before it is content, as
//     written. A <｜tool▁call▁begin｜> outside a block is ordinary text.
//   - In a block: calls, with any ASCII whitespace before and between them, then
//     <｜tool▁calls▁end｜>. After the block, text is content again (and may hold
//     another block).
//   - A call is <｜tool▁call▁begin｜>BODY<｜tool▁call▁end｜>, where BODY is
//       V3:   function<｜tool▁sep｜>NAME\n```json\nARGS\n```   (whitespace around
//             ARGS is free, "```json" must follow NAME's newline), or else
//       V3.1: NAME<｜tool▁sep｜>ARGS
//     with NAME non-empty and free of whitespace, and ARGS a JSON object
//     (boost::json) once surrounding whitespace is trimmed. The call ends at the
//     first <｜tool▁call▁end｜> after which BODY is valid, so a marker inside a JSON
//     string does not cut the call short.
//   - ToolCall::arguments is ARGS as the model wrote it (trimmed), not
//     re-serialised: it parsed as a JSON object, and keeping the text keeps
//     number spellings, key order and escapes as written (as vLLM does).
//
// Malformed output is never an error; what did not parse is returned as content,
// byte for byte. Calls are committed one at a time, each as soon as its
// <｜tool▁call▁end｜> makes it valid, so:
//   - a call that parsed is kept even when what follows it is malformed;
//   - when the grammar breaks (text other than whitespace, a call or the block's
//     end where a call may start), the text since the last kept call (from
//     <｜tool▁calls▁begin｜> when there is none) becomes content, and parsing
//     continues on what follows as content;
//   - a call that never becomes valid (bad JSON, unknown layout, missing
//     <｜tool▁call▁end｜>) makes the rest of the output content, from the end of
//     the last kept call (from <｜tool▁calls▁begin｜> when there is none). Where such
//     a call ends cannot be known, so a stream holds the rest of the output until
//     Finish();
//   - a block with no calls (<｜tool▁calls▁begin｜><｜tool▁calls▁end｜>) is content;
//   - a missing <｜tool▁calls▁end｜> at the end of the output is accepted (as vLLM
//     and SGLang do): the calls before it count, whitespace after them is dropped.
//
// Streaming: ToolCallStreamParser::Feed takes pieces of the output split
// anywhere (inside a marker, inside a UTF-8 character); content streams as it
// comes, holding back only a suffix that could begin <｜tool▁calls▁begin｜>, and
// text inside a block is held until it is a kept call or content. For every split,
// the concatenated content and the calls of all Feed() results and Finish() equal
// ParseToolCalls of the whole output.
//
// Example:
//   ToolCallStreamParser parser;
//   for (const std::string& piece : pieces) {
//     ToolCallStreamParser::Delta d = parser.Feed(piece);
//     SendContent(d.content);
//     for (const ToolCallDelta& call : d.calls) SendCall(call);
//   }
//   ToolCallStreamParser::Delta last = parser.Finish();
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace deepshard {

struct ToolCall {
  std::string name;       // "get_weather"
  std::string arguments;  // a JSON object, as written: {"city": "Paris"}

  bool operator==(const ToolCall&) const = default;
};

struct ParsedToolCalls {
  std::string content;          // the output less the kept calls' blocks
  std::vector<ToolCall> calls;  // in output order
};

// Parses a whole output.
ParsedToolCalls ParseToolCalls(std::string_view text);

// One complete call of a stream.
struct ToolCallDelta {
  int index = 0;          // 0, 1, ... over the whole output
  std::string name;
  std::string arguments;  // complete, as ToolCall::arguments

  bool operator==(const ToolCallDelta&) const = default;
};

class ToolCallStreamParser {
 public:
  struct Delta {
    std::string content;
    std::vector<ToolCallDelta> calls;
  };

  // Adds the next piece of output; returns the content and calls that became
  // final.
  Delta Feed(std::string_view piece);
  // Ends the output: returns what is left (held text becomes content) and resets
  // the parser.
  Delta Finish();

 private:
  enum class State {
    kContent,  // outside a block: looking for <｜tool▁calls▁begin｜>
    kBlock,    // in a block, where a call or the block's end may start
    kCall,     // in a call, looking for a <｜tool▁call▁end｜> that closes it
  };

  void Process(Delta& out);
  void Fail(Delta& out);

  State state_ = State::kContent;
  std::string input_;    // text not yet looked at by the current state
  std::string pending_;  // block text since the last kept call (or the block's start)
  size_t body_start_ = 0;     // kCall: where the call's BODY starts in pending_
  size_t search_from_ = 0;    // kCall: where to look next for <｜tool▁call▁end｜>
  int block_calls_ = 0;       // calls kept in the current block
  int next_index_ = 0;        // index of the next call
};

}  // namespace deepshard
