// Normalizers from tokenizer.json's "normalizer" (internal).
//
// Supported: Sequence, NFC, NFKC, NFD, NFKD, Lowercase, Replace, Prepend, Strip,
// StripAccents. Any other type is an error that names it. Normalizers rewrite the
// text of one piece (the tokenizer applies them to each stretch of text between
// added tokens, as Hugging Face does); offsets are not tracked.
//
// Limits (tokenizer.json is untrusted input; each is a load error naming the key):
// the normalizers together may grow a piece at most kMaxNormalizerGrowth times (a
// Replace counts as ceil(content / literal pattern length), or content + 1 for a
// regex, which may match empty strings; a Sequence multiplies), and a Prepend is at
// most kMaxPrependBytes. Encode's memory stays proportional to its input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "text/tokenizer/json_node.h"

namespace deepshard::tokenizer_internal {

inline constexpr int64_t kMaxNormalizerGrowth = 64;
inline constexpr size_t kMaxPrependBytes = 256;

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites valid UTF-8 `text` in place.
  virtual void Normalize(std::string* text) const = 0;
  // True when Normalize never changes anything (an empty Sequence).
  virtual bool IsNoop() const { return false; }
};

// Parses one normalizer object (`node` must not be null).
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const JsonNode& node);

}  // namespace deepshard::tokenizer_internal
