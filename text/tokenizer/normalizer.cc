#include "text/tokenizer/normalizer.h"

#include <unicode/uchar.h>  // u_charType (StripAccents)

#include <algorithm>
#include <vector>

#include "base/status_macros.h"
#include "text/tokenizer/regex.h"
#include "text/tokenizer/unicode.h"

namespace deepshard::tokenizer_internal {
namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void Normalize(std::string* text) const override {
    for (const auto& p : parts_) p->Normalize(text);
  }
  bool IsNoop() const override {
    for (const auto& p : parts_) {
      if (!p->IsNoop()) return false;
    }
    return true;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(std::string (*fn)(std::string_view)) : fn_(fn) {}
  void Normalize(std::string* text) const override {
    // ASCII is invariant under every normalization form.
    for (unsigned char c : *text) {
      if (c >= 0x80) {
        *text = fn_(*text);
        return;
      }
    }
  }

 private:
  std::string (*fn_)(std::string_view);
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = LowercaseChars(*text); }
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Regex pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Normalize(std::string* text) const override {
    std::vector<MatchSpan> spans;
    pattern_.FindMatches(*text, &spans);
    std::string out;
    out.reserve(text->size());
    for (const MatchSpan& s : spans) {
      if (s.is_match) {
        out += content_;
      } else {
        out.append(*text, s.start, s.end - s.start);
      }
    }
    *text = std::move(out);
  }

 private:
  Regex pattern_;
  std::string content_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string* text) const override {
    size_t begin = 0, end = text->size();
    if (left_) {
      size_t i = 0;
      while (i < end) {
        size_t j = i;
        if (!IsWhiteSpace(NextCodePoint(*text, &j))) break;
        i = j;
      }
      begin = i;
    }
    if (right_) {
      // Walk back over whole code points.
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>((*text)[start]) & 0xC0) == 0x80) --start;
        size_t j = start;
        if (!IsWhiteSpace(NextCodePoint(*text, &j))) break;
        end = start;
      }
    }
    *text = text->substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class StripAccentsNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    size_t i = 0;
    while (i < text->size()) {
      size_t start = i;
      uint32_t cp = NextCodePoint(*text, &i);
      int8_t t = cp < 0x300 ? static_cast<int8_t>(U_UNASSIGNED) : u_charType(static_cast<UChar32>(cp));
      bool mark = t == U_NON_SPACING_MARK || t == U_ENCLOSING_MARK || t == U_COMBINING_SPACING_MARK;
      if (!mark) out.append(*text, start, i - start);
    }
    *text = std::move(out);
  }
};

absl::Status GrowthError(const JsonNode& node, int64_t growth) {
  return node.Error(absl::StrCat("Replace may grow the text ", growth, "x (its content is long for its pattern); "
                                 "the normalizers together may grow it at most ", kMaxNormalizerGrowth, "x"));
}

}  // namespace

// How much a normalizer may grow a piece: |out| <= growth x |in| + constant. Only
// Replace multiplies (Prepend adds kMaxPrependBytes at most; the Unicode forms and
// Lowercase grow by small fixed factors and are not counted). A Sequence multiplies
// the growth of its parts.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizerImpl(const JsonNode& node, int64_t* growth) {
  RETURN_IF_ERROR(node.Object().status());
  ASSIGN_OR_RETURN(std::string type, node["type"].String());
  if (type == "Sequence") {
    JsonNode list = node["normalizers"];
    ASSIGN_OR_RETURN(const boost::json::array* arr, list.Array());
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < arr->size(); ++i) {
      int64_t part_growth = 1;
      ASSIGN_OR_RETURN(auto part, ParseNormalizerImpl(list[i], &part_growth));
      *growth *= part_growth;
      if (*growth > kMaxNormalizerGrowth) return GrowthError(list[i], *growth);
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(&NormalizeNfc);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(&NormalizeNfkc);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(&NormalizeNfd);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(&NormalizeNfkd);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "Replace") {
    ASSIGN_OR_RETURN(Regex pattern, ParsePattern(node["pattern"]));
    ASSIGN_OR_RETURN(std::string content, node["content"].String());
    // A literal of L bytes becomes `content` (each match consumes L bytes); a regex
    // may match empty strings, between every two characters.
    int64_t c = static_cast<int64_t>(std::min<size_t>(content.size(), kMaxNormalizerGrowth + 1));
    ASSIGN_OR_RETURN(std::string literal, node["pattern"]["String"].StringOr(""));
    *growth = !literal.empty() ? std::max<int64_t>(1, (c + static_cast<int64_t>(literal.size()) - 1) /
                                                          static_cast<int64_t>(literal.size()))
                               : c + 1;
    if (*growth > kMaxNormalizerGrowth) return GrowthError(node, *growth);
    return std::make_unique<ReplaceNormalizer>(std::move(pattern), std::move(content));
  }
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prefix, node["prepend"].String());
    if (prefix.size() > kMaxPrependBytes) {
      return node["prepend"].Error(absl::StrCat("Prepend of ", prefix.size(), " bytes exceeds the limit of ",
                                                kMaxPrependBytes, " bytes (it is added to every piece of text)"));
    }
    return std::make_unique<PrependNormalizer>(std::move(prefix));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(bool left, node["strip_left"].BoolOr(false));
    ASSIGN_OR_RETURN(bool right, node["strip_right"].BoolOr(false));
    return std::make_unique<StripNormalizer>(left, right);
  }
  return node["type"].Error(absl::StrCat("unsupported normalizer \"", type,
                                         "\" (supported: Sequence, NFC, NFKC, NFD, NFKD, Lowercase, "
                                         "Replace, Prepend, Strip, StripAccents)"));
}

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const JsonNode& node) {
  int64_t growth = 1;
  return ParseNormalizerImpl(node, &growth);
}

}  // namespace deepshard::tokenizer_internal
