// Regex: the pattern engine behind Split, Replace and ByteLevel (internal).
//
// Hugging Face `tokenizers` compiles `tokenizer.json` patterns with Oniguruma (Ruby
// syntax). deepshard runs them with PCRE2 (UTF + UCP mode, JIT when available) after
// translating the constructs whose meaning differs:
//   \s \S  -> White_Space property (Oniguruma's \s), not PCRE2's own set
//   \w \W  -> Alphabetic | Mark | Nd | Pc (Oniguruma's \w; outside a class also
//            the Latin-1 signs ¹ ² ³ ¼ ½ ¾, as Oniguruma does)
//   \p{Han} -> \p{sc:Han}: scripts by Script, not PCRE2's Script_Extensions
//   \d \D  -> Nd
//   \h \H  -> hex digit (Ruby), not horizontal space
//   (?m)   -> (?s): in Ruby syntax `m` makes `.` match newlines
//   ^ $    -> line anchors (PCRE2_MULTILINE), as in Ruby
// Iteration over matches reproduces the `onig` crate's `find_iter`, including its
// treatment of empty matches.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "text/tokenizer/json_node.h"

namespace deepshard::tokenizer_internal {

// A piece of a string: [start, end) in bytes, and whether the pattern matched it.
struct MatchSpan {
  size_t start;
  size_t end;
  bool is_match;
};

class Regex {
 public:
  // Compiles an Oniguruma-syntax pattern. Errors name the pattern and the position.
  static absl::StatusOr<Regex> FromOniguruma(std::string_view pattern);
  // A pattern that matches `literal` exactly (Split/Replace "String" patterns).
  static absl::StatusOr<Regex> FromLiteral(std::string_view literal);

  // Splits valid UTF-8 `text` into consecutive spans covering it entirely, alternating
  // between unmatched text and matches (HF `Pattern::find_matches`). Empty text
  // yields one empty unmatched span. Spans may be empty (empty matches).
  void FindMatches(std::string_view text, std::vector<MatchSpan>* out) const;

  // The PCRE2 pattern actually compiled (after translation).
  const std::string& pcre2_pattern() const;

 private:
  struct Impl;
  explicit Regex(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  // Finds the first match at or after `start`; false when none.
  bool Search(std::string_view text, size_t start, size_t* m_start, size_t* m_end) const;

  std::shared_ptr<const Impl> impl_;
};

// Parses a tokenizer.json pattern: {"String": "..."} (literal) or {"Regex": "..."}.
absl::StatusOr<Regex> ParsePattern(const JsonNode& node);

// Translates an Oniguruma (Ruby syntax) pattern to PCRE2 syntax (see above).
absl::StatusOr<std::string> TranslateOnigurumaPattern(std::string_view pattern);

}  // namespace deepshard::tokenizer_internal
