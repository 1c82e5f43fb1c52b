// StreamingDetokenizer: turns generated token ids into text as they arrive.
//
// One token can end in the middle of a UTF-8 character (byte-level BPE spells a
// character over several tokens), and some decoders treat runs of tokens as a unit,
// so text is only emitted once it can no longer change. The concatenation of every
// Add() result and the final Flush() equals Tokenizer::Decode of all the ids with the
// same skip_special_tokens (checked by tests on every fixture tokenizer).
//
// How: ids collect in a window until the window ends at a clean boundary (its text
// does not end in U+FFFD, and it does not end inside a run of "<0xXX>" byte tokens
// when the decoder has ByteFallback). The window is then decoded after the previous
// windows' ids as context, and the new text is the part after the context's text.
// With transformers' clean_up_tokenization_spaces, a tail that could still become
// " n't", " 's", ... is held back.
//
// Example:
//   StreamingDetokenizer stream(*tokenizer, /*skip_special_tokens=*/true);
//   for (int32_t id : generated) std::cout << stream.Add(id) << std::flush;
//   std::cout << stream.Flush();
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deepshard {

class Tokenizer;

class StreamingDetokenizer {
 public:
  // `tokenizer` must outlive this object.
  StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens);

  // Adds one id; returns the text that became final ("" when none did).
  std::string Add(int32_t id);
  // Returns whatever text is still held back, and resets the stream.
  std::string Flush();

 private:
  std::string EmitWindow();
  std::string CleanUp(std::string raw, bool final);

  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  bool byte_fallback_;
  bool clean_up_;
  std::vector<int32_t> window_;   // ids not decoded yet
  std::vector<int32_t> context_;  // previous ids, each window boundary clean
  std::vector<size_t> context_windows_;  // sizes of the windows in context_
  std::string context_text_;      // Decode of context_
  std::string held_;              // raw text held back by the clean-up
};

}  // namespace deepshard
