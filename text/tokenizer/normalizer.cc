#include "text/tokenizer/normalizer.h"

#include <unicode/uchar.h>  // u_charType (StripAccents)

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

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const JsonNode& node) {
  RETURN_IF_ERROR(node.Object().status());
  ASSIGN_OR_RETURN(std::string type, node["type"].String());
  if (type == "Sequence") {
    JsonNode list = node["normalizers"];
    ASSIGN_OR_RETURN(const boost::json::array* arr, list.Array());
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < arr->size(); ++i) {
      ASSIGN_OR_RETURN(auto part, ParseNormalizer(list[i]));
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
    return std::make_unique<ReplaceNormalizer>(std::move(pattern), std::move(content));
  }
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prefix, node["prepend"].String());
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

}  // namespace deepshard::tokenizer_internal
