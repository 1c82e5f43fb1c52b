// Normalizers from tokenizer.json's "normalizer" (internal).
//
// Supported: Sequence, NFC, NFKC, NFD, NFKD, Lowercase, Replace, Prepend, Strip,
// StripAccents. Any other type is an error that names it. Normalizers rewrite the
// text of one piece (the tokenizer applies them to each stretch of text between
// added tokens, as Hugging Face does); offsets are not tracked.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "text/tokenizer/json_node.h"

namespace deepshard::tokenizer_internal {

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
