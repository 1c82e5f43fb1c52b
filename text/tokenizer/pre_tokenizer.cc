#include "text/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <array>
#include <string>
#include <utility>
#include <vector>

#include "base/status_macros.h"
#include "text/tokenizer/regex.h"
#include "text/tokenizer/unicode.h"

namespace deepshard::tokenizer_internal {
namespace {

// ---------------------------------------------------------------------------------
// Byte-level alphabet.

struct ByteLevelTables {
  std::array<uint32_t, 256> byte_to_char{};
  std::array<char, 512> utf8{};  // 2 bytes per byte value (first may be the only one)
  std::array<uint8_t, 256> utf8_len{};
  std::array<int16_t, 324> char_to_byte{};  // code points 0..323

  ByteLevelTables() {
    // Printable bytes stand for themselves; the rest are shifted to 256 + n, in order.
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) byte_to_char[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
    char_to_byte.fill(-1);
    for (int b = 0; b < 256; ++b) {
      std::string s;
      AppendUtf8(byte_to_char[b], &s);
      utf8_len[b] = static_cast<uint8_t>(s.size());
      utf8[2 * b] = s[0];
      utf8[2 * b + 1] = s.size() > 1 ? s[1] : 0;
      char_to_byte[byte_to_char[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables tables;
  return tables;
}

// ---------------------------------------------------------------------------------
// Split behaviours.

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Range {
  size_t start, end;
};

// Turns the match spans of a piece into the ranges to keep (HF NormalizedString::split).
void ApplyBehavior(const std::vector<MatchSpan>& spans, Behavior behavior, std::vector<Range>* out) {
  out->clear();
  switch (behavior) {
    case Behavior::kIsolated:
      for (const auto& s : spans) out->push_back({s.start, s.end});
      return;
    case Behavior::kRemoved:
      for (const auto& s : spans) {
        if (!s.is_match) out->push_back({s.start, s.end});
      }
      return;
    case Behavior::kContiguous: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.is_match == previous_match && !out->empty()) {
          out->back().end = s.end;
        } else {
          out->push_back({s.start, s.end});
        }
        previous_match = s.is_match;
      }
      return;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.is_match && !previous_match && !out->empty()) {
          out->back().end = s.end;
        } else {
          out->push_back({s.start, s.end});
        }
        previous_match = s.is_match;
      }
      return;
    }
    case Behavior::kMergedWithNext: {
      bool previous_match = false;
      for (size_t k = spans.size(); k-- > 0;) {
        const auto& s = spans[k];
        if (s.is_match && !previous_match && !out->empty()) {
          out->back().start = s.start;
        } else {
          out->push_back({s.start, s.end});
        }
        previous_match = s.is_match;
      }
      std::reverse(out->begin(), out->end());
      return;
    }
  }
}

void EmitRanges(std::string_view piece, const std::vector<Range>& ranges, PreTokenizer::Emit emit) {
  for (const Range& r : ranges) {
    if (r.end > r.start) emit(piece.substr(r.start, r.end - r.start));
  }
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void PreTokenize(std::string_view piece, Emit emit) const override { Run(0, piece, emit); }

 private:
  void Run(size_t k, std::string_view piece, Emit emit) const {
    if (k == parts_.size()) {
      emit(piece);
      return;
    }
    parts_[k]->PreTokenize(piece, [&](std::string_view word) { Run(k + 1, word, emit); });
  }
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void PreTokenize(std::string_view piece, Emit emit) const override {
    std::vector<MatchSpan> spans;
    pattern_.FindMatches(piece, &spans);
    if (invert_) {
      for (auto& s : spans) s.is_match = !s.is_match;
    }
    std::vector<Range> ranges;
    ApplyBehavior(spans, behavior_, &ranges);
    EmitRanges(piece, ranges, emit);
  }

 private:
  Regex pattern_;
  Behavior behavior_;
  bool invert_;
};

class DigitsPreTokenizer : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void PreTokenize(std::string_view piece, Emit emit) const override {
    // Every numeric character is its own match (HF's char-predicate pattern).
    std::vector<MatchSpan> spans;
    size_t last = 0, i = 0;
    while (i < piece.size()) {
      size_t start = i;
      uint32_t cp = NextCodePoint(piece, &i);
      if (IsNumeric(cp)) {
        if (last < start) spans.push_back({last, start, false});
        spans.push_back({start, i, true});
        last = i;
      }
    }
    if (piece.size() > last) spans.push_back({last, piece.size(), false});
    std::vector<Range> ranges;
    ApplyBehavior(spans, individual_ ? Behavior::kIsolated : Behavior::kContiguous, &ranges);
    EmitRanges(piece, ranges, emit);
  }

 private:
  bool individual_;
};

const Regex& Gpt2Regex() {
  static const Regex* regex = [] {
    auto r = Regex::FromOniguruma(
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
    DS_CHECK(r.ok());
    return new Regex(std::move(*r));
  }();
  return *regex;
}

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) Gpt2Regex();  // compile up front
  }
  void PreTokenize(std::string_view piece, Emit emit) const override {
    std::string prefixed;
    if (add_prefix_space_ && (piece.empty() || piece[0] != ' ')) {
      prefixed.reserve(piece.size() + 1);
      prefixed.push_back(' ');
      prefixed.append(piece);
      piece = prefixed;
    }
    std::string mapped;
    if (!use_regex_) {
      AppendByteLevel(piece, &mapped);
      if (!mapped.empty()) emit(mapped);
      return;
    }
    std::vector<MatchSpan> spans;
    Gpt2Regex().FindMatches(piece, &spans);
    for (const MatchSpan& s : spans) {
      if (s.end == s.start) continue;
      mapped.clear();
      AppendByteLevel(piece.substr(s.start, s.end - s.start), &mapped);
      emit(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
};

absl::StatusOr<Behavior> ParseBehavior(const JsonNode& node) {
  ASSIGN_OR_RETURN(std::string b, node.String());
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return node.Error(absl::StrCat("unknown split behavior \"", b,
                                 "\" (expected Removed, Isolated, MergedWithPrevious, "
                                 "MergedWithNext or Contiguous)"));
}

}  // namespace

uint32_t ByteLevelChar(unsigned char b) { return Tables().byte_to_char[b]; }

int ByteLevelByte(uint32_t cp) {
  const auto& t = Tables();
  return cp < t.char_to_byte.size() ? t.char_to_byte[cp] : -1;
}

void AppendByteLevel(std::string_view bytes, std::string* out) {
  const auto& t = Tables();
  size_t n = out->size();
  out->resize(n + 2 * bytes.size());
  char* dst = out->data() + n;
  for (unsigned char b : bytes) {
    dst[0] = t.utf8[2 * b];
    dst[1] = t.utf8[2 * b + 1];
    dst += t.utf8_len[b];
  }
  out->resize(static_cast<size_t>(dst - out->data()));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const JsonNode& node) {
  RETURN_IF_ERROR(node.Object().status());
  ASSIGN_OR_RETURN(std::string type, node["type"].String());
  if (type == "Sequence") {
    JsonNode list = node["pretokenizers"];
    ASSIGN_OR_RETURN(const boost::json::array* arr, list.Array());
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < arr->size(); ++i) {
      ASSIGN_OR_RETURN(auto part, ParsePreTokenizer(list[i]));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(Regex pattern, ParsePattern(node["pattern"]));
    ASSIGN_OR_RETURN(Behavior behavior, ParseBehavior(node["behavior"]));
    ASSIGN_OR_RETURN(bool invert, node["invert"].BoolOr(false));
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), behavior, invert);
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool add_prefix_space, node["add_prefix_space"].BoolOr(true));
    ASSIGN_OR_RETURN(bool use_regex, node["use_regex"].BoolOr(true));
    RETURN_IF_ERROR(node["trim_offsets"].BoolOr(true).status());  // offsets only
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, use_regex);
  }
  if (type == "Digits") {
    ASSIGN_OR_RETURN(bool individual, node["individual_digits"].BoolOr(false));
    return std::make_unique<DigitsPreTokenizer>(individual);
  }
  return node["type"].Error(absl::StrCat("unsupported pre-tokenizer \"", type,
                                         "\" (supported: Sequence, Split, ByteLevel, Digits)"));
}

}  // namespace deepshard::tokenizer_internal
