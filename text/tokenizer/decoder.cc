#include "text/tokenizer/decoder.h"

#include "base/status_macros.h"
#include "text/tokenizer/normalizer.h"
#include "text/tokenizer/pre_tokenizer.h"
#include "text/tokenizer/regex.h"
#include "text/tokenizer/unicode.h"

namespace deepshard::tokenizer_internal {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Parses "<0xXX>"; -1 when `token` is not a byte token. Rust's u8::from_str_radix
// also accepts a leading '+', so "<0x+A>" is byte 10 in Hugging Face too.
int ByteTokenValue(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  if (t[3] == '+') return HexValue(t[4]);
  int hi = HexValue(t[3]), lo = HexValue(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class ByteLevelDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& t : *tokens) {
      // A token whose characters are all in the byte-level alphabet stands for those
      // bytes; any other token (an added token such as "<｜User｜>") is taken as is.
      const size_t mark = bytes.size();
      bool all = true;
      size_t i = 0;
      while (i < t.size()) {
        int b = ByteLevelByte(NextCodePoint(t, &i));
        if (b < 0) {
          all = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!all) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    std::string text;
    text.reserve(bytes.size());
    AppendUtf8Lossy(bytes, &text);
    tokens->assign(1, std::move(text));
  }
  bool IsByteLevel() const override { return true; }
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& p : parts_) p->DecodeChain(tokens);
  }
  bool HasByteFallback() const override {
    for (const auto& p : parts_) {
      if (p->HasByteFallback()) return true;
    }
    return false;
  }
  bool IsByteLevel() const override {
    for (const auto& p : parts_) {
      if (p->IsByteLevel()) return true;
    }
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Regex pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<MatchSpan> spans;
    for (std::string& t : *tokens) {
      spans.clear();
      pattern_.FindMatches(t, &spans);
      std::string out;
      for (const MatchSpan& s : spans) {
        if (s.is_match) {
          out += content_;
        } else {
          out.append(t, s.start, s.end - s.start);
        }
      }
      t = std::move(out);
    }
  }

 private:
  Regex pattern_;
  std::string content_;
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(uint32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& t : *tokens) {
      // Code point boundaries of t.
      std::vector<size_t> bounds;
      std::vector<uint32_t> cps;
      size_t i = 0;
      while (i < t.size()) {
        bounds.push_back(i);
        cps.push_back(NextCodePoint(t, &i));
      }
      bounds.push_back(t.size());
      const size_t n = cps.size();
      size_t start_cut = 0;
      for (size_t k = 0; k < start_ && k < n; ++k) {
        if (cps[k] != content_) break;
        start_cut = k + 1;
      }
      size_t stop_cut = n;
      for (size_t k = 0; k < stop_ && k < n; ++k) {
        size_t index = n - k - 1;
        if (cps[index] != content_) break;
        stop_cut = index;
      }
      if (stop_cut < start_cut) stop_cut = start_cut;  // Hugging Face would panic here
      t = t.substr(bounds[start_cut], bounds[stop_cut] - bounds[start_cut]);
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

class FuseDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string all;
    for (const std::string& t : *tokens) all += t;
    tokens->assign(1, std::move(all));
  }
};

class ByteFallbackDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    std::string pending;  // bytes of consecutive byte tokens
    size_t pending_count = 0;
    auto flush = [&] {
      if (pending_count == 0) return;
      if (IsValidUtf8(pending)) {
        out.push_back(pending);
      } else {
        // An invalid run becomes one U+FFFD per byte token.
        std::string replacement;
        AppendUtf8(kReplacementChar, &replacement);
        for (size_t k = 0; k < pending_count; ++k) out.push_back(replacement);
      }
      pending.clear();
      pending_count = 0;
    };
    for (std::string& t : *tokens) {
      int b = ByteTokenValue(t);
      if (b >= 0) {
        pending.push_back(static_cast<char>(b));
        ++pending_count;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    *tokens = std::move(out);
  }
  bool HasByteFallback() const override { return true; }
};

}  // namespace

bool IsByteFallbackToken(std::string_view token) { return ByteTokenValue(token) >= 0; }

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const JsonNode& node) {
  RETURN_IF_ERROR(node.Object().status());
  ASSIGN_OR_RETURN(std::string type, node["type"].String());
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Sequence") {
    JsonNode list = node["decoders"];
    ASSIGN_OR_RETURN(const boost::json::array* arr, list.Array());
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < arr->size(); ++i) {
      ASSIGN_OR_RETURN(auto part, ParseDecoder(list[i]));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(Regex pattern, ParsePattern(node["pattern"]));
    ASSIGN_OR_RETURN(std::string content, node["content"].String());
    // As for the Replace normalizer (normalizer.h): the decoded text may grow at
    // most kMaxNormalizerGrowth times through one Replace.
    ASSIGN_OR_RETURN(std::string literal, node["pattern"]["String"].StringOr(""));
    const size_t growth = literal.empty() ? content.size() + 1 : (content.size() + literal.size() - 1) / literal.size();
    if (growth > static_cast<size_t>(kMaxNormalizerGrowth)) {
      return node["content"].Error(absl::StrCat("Replace may grow the text ", growth, "x (its content is long for its pattern); the limit is ", kMaxNormalizerGrowth, "x"));
    }
    return std::make_unique<ReplaceDecoder>(std::move(pattern), std::move(content));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(std::string content, node["content"].String());
    if (!IsValidUtf8(content) || CountCodePoints(content) != 1) {
      return node["content"].Error("must be exactly one character");
    }
    size_t i = 0;
    uint32_t cp = NextCodePoint(content, &i);
    ASSIGN_OR_RETURN(int64_t start, node["start"].IntOr(0));
    ASSIGN_OR_RETURN(int64_t stop, node["stop"].IntOr(0));
    if (start < 0 || stop < 0) return node.Error("start and stop must be non-negative");
    return std::make_unique<StripDecoder>(cp, static_cast<size_t>(start), static_cast<size_t>(stop));
  }
  return node["type"].Error(absl::StrCat("unsupported decoder \"", type,
                                         "\" (supported: ByteLevel, Sequence, Replace, Strip, Fuse, "
                                         "ByteFallback)"));
}

}  // namespace deepshard::tokenizer_internal
