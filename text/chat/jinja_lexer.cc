// Jinja lexer with transformers' whitespace settings. The structure follows
// jinja2's regex rules (root / comment / block / variable / raw states); each
// rule is written out by hand here.
#include "text/chat/jinja_lexer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "base/status_macros.h"
#include "text/chat/jinja_value.h"

namespace deepshard::jinja {

absl::Status ErrorAt(SourcePos pos, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("chat template line ", pos.line, " col ", pos.col, ": ", AV(message)));
}

absl::Status WithPos(SourcePos pos, const absl::Status& status) {
  if (status.ok() || absl::StartsWith(status.message(), "chat template")) return status;
  return absl::Status(status.code(),
                      absl::StrCat("chat template line ", pos.line, " col ", pos.col, ": ", status.message()));
}

std::string NormalizeSource(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

namespace {

// Decodes the code point at `p` (invalid bytes decode to themselves + a
// surrogate offset, as utf8::Decode does); `len` gets its byte length.
char32_t CodepointAt(std::string_view s, size_t p, size_t* len) {
  const auto b0 = static_cast<unsigned char>(s[p]);
  if (b0 < 0x80) {
    *len = 1;
    return b0;
  }
  size_t n = (b0 & 0xE0) == 0xC0 ? 2 : (b0 & 0xF0) == 0xE0 ? 3 : (b0 & 0xF8) == 0xF0 ? 4 : 0;
  if (n == 0 || p + n > s.size()) {
    *len = 1;
    return 0xDC80 + b0;
  }
  std::u32string cps = utf8::Decode(s.substr(p, n));
  if (cps.size() != 1) {
    *len = 1;
    return 0xDC80 + b0;
  }
  *len = n;
  return cps[0];
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

// Python's str.rstrip() (Unicode whitespace).
std::string_view RStripSpace(std::string_view s) {
  std::u32string cps = utf8::Decode(s);
  size_t keep = cps.size();
  while (keep > 0 && PyIsSpace(cps[keep - 1])) --keep;
  if (keep == cps.size()) return s;
  return s.substr(0, utf8::Encode(std::u32string_view(cps).substr(0, keep)).size());
}

// True if `s` is non-empty and all Unicode whitespace (jinja2's `\s+` fullmatch).
bool AllSpace(std::string_view s) {
  if (s.empty()) return false;
  for (char32_t c : utf8::Decode(s)) {
    if (!PyIsSpace(c)) return false;
  }
  return true;
}

const char* const kOperators[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                  "]",  "(",  ")",  "{",  "}",  ">",  "<", "=", ".", ":", "|", ",", ";"};

class Lexer {
 public:
  explicit Lexer(std::string_view src) : src_(src) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  absl::StatusOr<std::vector<Token>> Run() {
    const size_t n = src_.size();
    while (pos_ < n) {
      const size_t t = FindTagStart(pos_);
      if (t == std::string_view::npos) {
        EmitData(pos_, src_.substr(pos_));
        pos_ = n;
        break;
      }
      const char kind = src_[t + 1];  // '{', '%' or '#'
      const char sign = (t + 2 < n && (src_[t + 2] == '-' || src_[t + 2] == '+')) ? src_[t + 2] : 0;
      std::string_view text = ApplyLeftStrip(src_.substr(pos_, t - pos_), sign, kind != '{');
      EmitData(pos_, text);
      const size_t after_begin = t + 2 + (sign ? 1 : 0);
      size_t raw_end = 0;
      if (kind == '%' && MatchRawBegin(after_begin, &raw_end)) {
        pos_ = raw_end;
        line_starting_ = src_[raw_end - 1] == '\n';
        RETURN_IF_ERROR(LexRawBody(t));
      } else if (kind == '#') {
        RETURN_IF_ERROR(LexComment(t, after_begin));
      } else {
        RETURN_IF_ERROR(LexTag(kind == '%', t, after_begin));
      }
    }
    Token eof;
    eof.type = TokenType::kEof;
    eof.pos = PosOf(n);
    tokens_.push_back(eof);
    return std::move(tokens_);
  }

 private:
  // Tokens come in increasing offsets: the column continues from the last position
  // asked for on the same line, so that a long line costs linear time, not quadratic
  // (a 100k-link `a.b.b...` chain on one line took 15-55 s).
  SourcePos PosOf(size_t offset) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    const size_t line_start = *(it - 1);
    SourcePos p;
    p.line = static_cast<int>(it - line_starts_.begin());
    size_t from = line_start;
    int col = 1;
    if (p.line == last_pos_.line && last_offset_ >= line_start && last_offset_ <= offset) {
      from = last_offset_;
      col = last_pos_.col;
    }
    p.col = col + static_cast<int>(utf8::Length(src_.substr(from, offset - from)));
    last_offset_ = offset;
    last_pos_ = p;
    return p;
  }

  size_t FindTagStart(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string_view::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string_view::npos;
  }

  // jinja2's OptionalLStrip: `-` strips all trailing whitespace of the text;
  // otherwise, for blocks and comments (lstrip_blocks), whitespace between the
  // last line start and the tag goes.
  std::string_view ApplyLeftStrip(std::string_view text, char sign, bool block_or_comment) const {
    if (sign == '-') return RStripSpace(text);
    if (sign != '+' && block_or_comment) {
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && AllSpace(text.substr(l_pos))) return text.substr(0, l_pos);
    }
    return text;
  }

  void EmitData(size_t offset, std::string_view text) {
    if (text.empty()) return;
    Token tok;
    tok.type = TokenType::kData;
    tok.value = std::string(text);
    tok.pos = PosOf(offset);
    tokens_.push_back(std::move(tok));
  }

  size_t SkipSpace(size_t p) const {
    while (p < src_.size()) {
      size_t len;
      if (!PyIsSpace(CodepointAt(src_, p, &len))) break;
      p += len;
    }
    return p;
  }

  bool At(size_t p, std::string_view s) const { return src_.substr(p, s.size()) == s; }

  // `{%[-+]?\s*raw\s*(-%}\s*|%})` starting after the sign.
  bool MatchRawBegin(size_t p, size_t* end) const {
    p = SkipSpace(p);
    if (!At(p, "raw")) return false;
    p = SkipSpace(p + 3);
    if (At(p, "-%}")) {
      *end = SkipSpace(p + 3);
      return true;
    }
    if (At(p, "%}")) {
      *end = p + 2;
      return true;
    }
    return false;
  }

  absl::Status LexRawBody(size_t raw_begin) {
    for (size_t p = src_.find("{%", pos_); p != std::string_view::npos; p = src_.find("{%", p + 1)) {
      size_t q = p + 2;
      const char sign = (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ? src_[q] : 0;
      if (sign) ++q;
      q = SkipSpace(q);
      if (!At(q, "endraw")) continue;
      q = SkipSpace(q + 6);
      size_t end;
      if (At(q, "+%}")) {
        end = q + 3;
      } else if (At(q, "-%}")) {
        end = SkipSpace(q + 3);
      } else if (At(q, "%}")) {
        end = q + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      } else {
        continue;
      }
      EmitData(pos_, ApplyLeftStrip(src_.substr(pos_, p - pos_), sign, true));
      pos_ = end;
      line_starting_ = src_[end - 1] == '\n';
      return absl::OkStatus();
    }
    return ErrorAt(PosOf(raw_begin), "missing end of raw directive ('{% endraw %}')");
  }

  absl::Status LexComment(size_t begin, size_t p) {
    for (; p < src_.size(); ++p) {
      size_t end = 0;
      if (At(p, "+#}")) {
        end = p + 3;
      } else if (At(p, "-#}")) {
        end = SkipSpace(p + 3);
      } else if (At(p, "#}")) {
        end = p + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      } else {
        continue;
      }
      pos_ = end;
      line_starting_ = src_[end - 1] == '\n';
      return absl::OkStatus();
    }
    return ErrorAt(PosOf(begin), "missing end of comment tag ('#}')");
  }

  // `(\d+_)*\d+` at p; returns the end or npos.
  size_t ReadDigits(size_t p) const {
    if (p >= src_.size() || !IsDigit(src_[p])) return std::string_view::npos;
    while (true) {
      while (p < src_.size() && IsDigit(src_[p])) ++p;
      if (p + 1 < src_.size() && src_[p] == '_' && IsDigit(src_[p + 1])) {
        ++p;
        continue;
      }
      return p;
    }
  }

  // jinja2's float_re at p; returns the end or npos.
  size_t MatchFloat(size_t p) const {
    if (p > 0 && src_[p - 1] == '.') return std::string_view::npos;
    const size_t q = ReadDigits(p);
    if (q == std::string_view::npos) return q;
    auto exponent = [&](size_t e) -> size_t {
      if (e >= src_.size() || (src_[e] != 'e' && src_[e] != 'E')) return std::string_view::npos;
      ++e;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      return ReadDigits(e);
    };
    if (q < src_.size() && src_[q] == '.') {
      const size_t f = ReadDigits(q + 1);
      if (f != std::string_view::npos) {
        const size_t e = exponent(f);
        return e != std::string_view::npos ? e : f;
      }
    }
    return exponent(q);
  }

  static int HexDigit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // jinja2's integer_re at p; returns the end or npos, and the value.
  absl::StatusOr<size_t> MatchInteger(size_t p, int64_t* value) const {
    int base = 10;
    size_t q = p;
    if (src_[p] == '0' && p + 1 < src_.size()) {
      const char x = src_[p + 1];
      if (x == 'b' || x == 'B') base = 2;
      if (x == 'o' || x == 'O') base = 8;
      if (x == 'x' || x == 'X') base = 16;
    }
    std::string digits;
    if (base != 10) {
      // 0b(_?[01])+ etc.
      q = p + 2;
      while (true) {
        size_t r = q;
        if (r < src_.size() && src_[r] == '_') ++r;
        if (r >= src_.size()) break;
        const int d = HexDigit(src_[r]);
        if (d < 0 || d >= base) break;
        digits.push_back(src_[r]);
        q = r + 1;
      }
      if (digits.empty()) {
        base = 10;  // fall back to the decimal-zero rule: "0"
        q = p;
      }
    }
    if (base == 10) {
      if (src_[p] == '0') {
        // 0(_?0)*
        q = p + 1;
        digits = "0";
        while (true) {
          size_t r = q;
          if (r < src_.size() && src_[r] == '_') ++r;
          if (r < src_.size() && src_[r] == '0') {
            q = r + 1;
          } else {
            break;
          }
        }
      } else {
        // [1-9](_?\d)*
        q = p + 1;
        digits.push_back(src_[p]);
        while (true) {
          size_t r = q;
          if (r < src_.size() && src_[r] == '_') ++r;
          if (r < src_.size() && IsDigit(src_[r])) {
            digits.push_back(src_[r]);
            q = r + 1;
          } else {
            break;
          }
        }
      }
    }
    uint64_t v = 0;
    for (char c : digits) {
      const uint64_t d = static_cast<uint64_t>(HexDigit(c));
      if (v > (static_cast<uint64_t>(INT64_MAX) - d) / static_cast<uint64_t>(base)) {
        return ErrorAt(PosOf(p), "integer literal too large");
      }
      v = v * base + d;
    }
    *value = static_cast<int64_t>(v);
    return q;
  }

  // Python's "unicode-escape" decoding of a string literal's body.
  absl::StatusOr<std::string> Unescape(std::string_view raw, size_t offset) const {
    std::string out;
    out.reserve(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
      const char c = raw[i];
      if (c != '\\' || i + 1 >= raw.size()) {
        out.push_back(c);
        continue;
      }
      const char e = raw[++i];
      auto hex = [&](int count) -> absl::StatusOr<char32_t> {
        char32_t v = 0;
        for (int k = 0; k < count; ++k) {
          const int d = i + 1 < raw.size() ? HexDigit(raw[i + 1]) : -1;
          if (d < 0) return ErrorAt(PosOf(offset + i), absl::StrCat("truncated \\", std::string(1, e), " escape"));
          v = v * 16 + d;
          ++i;
        }
        return v;
      };
      switch (e) {
        case '\n': break;
        case '\\': out.push_back('\\'); break;
        case '\'': out.push_back('\''); break;
        case '"': out.push_back('"'); break;
        case 'a': out.push_back('\a'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'v': out.push_back('\v'); break;
        case 'x':
        case 'u':
        case 'U': {
          auto v = hex(e == 'x' ? 2 : e == 'u' ? 4 : 8);
          if (!v.ok()) return v.status();
          if (*v > 0x10FFFF) return ErrorAt(PosOf(offset + i), "illegal Unicode character in string escape");
          utf8::Append(out, *v);
          break;
        }
        case 'N':
          return ErrorAt(PosOf(offset + i - 1), "unsupported \\N{...} escape in string literal");
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = e - '0';
            for (int k = 0; k < 2 && i + 1 < raw.size() && raw[i + 1] >= '0' && raw[i + 1] <= '7'; ++k) {
              v = v * 8 + (raw[++i] - '0');
            }
            utf8::Append(out, v);
          } else {
            out.push_back('\\');  // unknown escapes stay as written
            out.push_back(e);
          }
      }
    }
    return out;
  }

  absl::Status LexTag(bool is_block, size_t begin, size_t p) {
    Token open;
    open.type = is_block ? TokenType::kBlockBegin : TokenType::kVariableBegin;
    open.pos = PosOf(begin);
    tokens_.push_back(open);
    std::vector<char> balance;  // expected closing brackets
    const size_t n = src_.size();
    while (true) {
      if (p >= n) {
        return ErrorAt(PosOf(begin), is_block ? "unexpected end of template: block tag '{%' is not closed ('%}')"
                                              : "unexpected end of template: '{{' is not closed ('}}')");
      }
      if (balance.empty()) {
        size_t end = 0;
        if (is_block) {
          if (At(p, "+%}")) {
            end = p + 3;
          } else if (At(p, "-%}")) {
            end = SkipSpace(p + 3);
          } else if (At(p, "%}")) {
            end = p + 2;
            if (end < n && src_[end] == '\n') ++end;  // trim_blocks
          }
        } else {
          if (At(p, "-}}")) {
            end = SkipSpace(p + 3);
          } else if (At(p, "}}")) {
            end = p + 2;
          }
        }
        if (end) {
          Token close;
          close.type = is_block ? TokenType::kBlockEnd : TokenType::kVariableEnd;
          close.pos = PosOf(p);
          tokens_.push_back(close);
          pos_ = end;
          line_starting_ = src_[end - 1] == '\n';
          return absl::OkStatus();
        }
      }
      size_t len;
      if (PyIsSpace(CodepointAt(src_, p, &len))) {
        p += len;
        continue;
      }
      Token tok;
      tok.pos = PosOf(p);
      const char c = src_[p];
      if (IsDigit(c)) {
        const size_t f = MatchFloat(p);
        if (f != std::string_view::npos) {
          std::string text;
          for (size_t k = p; k < f; ++k) {
            if (src_[k] != '_') text.push_back(src_[k]);
          }
          tok.type = TokenType::kFloat;
          tok.float_value = std::strtod(text.c_str(), nullptr);
          p = f;
        } else {
          auto end = MatchInteger(p, &tok.int_value);
          if (!end.ok()) return end.status();
          tok.type = TokenType::kInteger;
          p = *end;
        }
      } else if (IsNameStart(c)) {
        size_t q = p;
        while (q < n && IsNameChar(src_[q])) ++q;
        if (q < n && static_cast<unsigned char>(src_[q]) >= 0x80) {
          return ErrorAt(PosOf(q), "unsupported non-ASCII character in a name");
        }
        tok.type = TokenType::kName;
        tok.value = std::string(src_.substr(p, q - p));
        p = q;
      } else if (c == '\'' || c == '"') {
        size_t q = p + 1;
        while (q < n && src_[q] != c) q += src_[q] == '\\' ? 2 : 1;
        if (q >= n) return ErrorAt(tok.pos, "unterminated string literal");
        auto s = Unescape(src_.substr(p + 1, q - p - 1), p + 1);
        if (!s.ok()) return s.status();
        tok.type = TokenType::kString;
        tok.value = std::move(*s);
        p = q + 1;
      } else {
        const char* op = nullptr;
        for (const char* candidate : kOperators) {
          if (At(p, candidate)) {
            op = candidate;
            break;
          }
        }
        if (op == nullptr) {
          if (static_cast<unsigned char>(c) >= 0x80) {
            return ErrorAt(tok.pos, "unsupported non-ASCII character inside a tag");
          }
          return ErrorAt(tok.pos, absl::StrCat("unexpected char '", std::string(1, c), "' inside a tag"));
        }
        tok.type = TokenType::kOperator;
        tok.value = op;
        p += tok.value.size();
        const char o = op[0];
        if (tok.value.size() == 1 && (o == '(' || o == '[' || o == '{')) {
          balance.push_back(o == '(' ? ')' : o == '[' ? ']' : '}');
        } else if (tok.value.size() == 1 && (o == ')' || o == ']' || o == '}')) {
          if (balance.empty()) return ErrorAt(tok.pos, absl::StrCat("unexpected '", tok.value, "'"));
          if (balance.back() != o) {
            return ErrorAt(tok.pos, absl::StrCat("unexpected '", tok.value, "', expected '",
                                                 std::string(1, balance.back()), "'"));
          }
          balance.pop_back();
        }
      }
      tokens_.push_back(std::move(tok));
    }
  }

  std::string_view src_;
  size_t pos_ = 0;
  bool line_starting_ = true;
  std::vector<size_t> line_starts_;
  mutable size_t last_offset_ = 0;  // PosOf's last answer
  mutable SourcePos last_pos_{};
  std::vector<Token> tokens_;
};

}  // namespace

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source) { return Lexer(source).Run(); }

}  // namespace deepshard::jinja
