// Pre-tokenizers from tokenizer.json's "pre_tokenizer" (internal).
//
// Supported: Sequence, Split (String or Regex pattern; behaviours Removed, Isolated,
// MergedWithPrevious, MergedWithNext, Contiguous; invert), ByteLevel
// (add_prefix_space, use_regex) and Digits (individual_digits). Any other type is an
// error that names it.
//
// A pre-tokenizer cuts one piece of normalized text into words and hands each
// non-empty word to a callback, in order. Chained pre-tokenizers run depth first,
// which yields the same words as Hugging Face's breadth-first passes because every
// step only looks inside the piece it is given.
#pragma once

#include <memory>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "text/tokenizer/json_node.h"

namespace deepshard::tokenizer_internal {

class PreTokenizer {
 public:
  using Emit = absl::FunctionRef<void(std::string_view)>;
  virtual ~PreTokenizer() = default;
  // Calls `emit` with each non-empty word of `piece` (valid UTF-8). The view passed
  // to `emit` is only valid during the call.
  virtual void PreTokenize(std::string_view piece, Emit emit) const = 0;
};

// Parses one pre-tokenizer object (`node` must not be null).
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const JsonNode& node);

// The byte-level alphabet of GPT-2: byte b is spelled as the code point ByteLevelChar(b).
uint32_t ByteLevelChar(unsigned char b);
// The byte a byte-level code point stands for, or -1 when `cp` is not in the alphabet.
int ByteLevelByte(uint32_t cp);
// Appends the byte-level spelling of `bytes` to `out`.
void AppendByteLevel(std::string_view bytes, std::string* out);

}  // namespace deepshard::tokenizer_internal
