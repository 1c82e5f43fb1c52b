// Unicode case mapping and character classes as Python's str methods use
// them, implemented with ICU (root locale, so no language-specific rules:
// Python has none either).
#include <unicode/ucasemap.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include <string>

#include "text/chat/jinja_value.h"

namespace deepshard::jinja {
namespace {

enum class CaseOp { kUpper, kLower, kTitle };

bool IsSurrogate(char32_t c) { return c >= 0xD800 && c <= 0xDFFF; }

const UCaseMap* TitleMap() {
  // Whole-string titlecasing of one code point gives its full titlecase
  // mapping without a word break iterator.
  static const UCaseMap* const map = [] {
    UErrorCode err = U_ZERO_ERROR;
    UCaseMap* m = ucasemap_open("", U_TITLECASE_WHOLE_STRING | U_TITLECASE_NO_LOWERCASE, &err);
    return U_SUCCESS(err) ? m : nullptr;
  }();
  return map;
}

// Appends the full (one-to-many) case mapping of `c`.
void AppendMapped(std::string& out, char32_t c, CaseOp op) {
  if (c < 0x80) {
    char ch = static_cast<char>(c);
    if (op == CaseOp::kLower) {
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch + 32);
    } else if (ch >= 'a' && ch <= 'z') {
      ch = static_cast<char>(ch - 32);
    }
    out.push_back(ch);
    return;
  }
  if (IsSurrogate(c) || c > 0x10FFFF) {
    utf8::Append(out, c);
    return;
  }
  UChar src[2];
  int32_t n = 0;
  U16_APPEND_UNSAFE(src, n, c);
  UChar dst[16];
  UErrorCode err = U_ZERO_ERROR;
  int32_t m = 0;
  switch (op) {
    case CaseOp::kUpper: m = u_strToUpper(dst, 16, src, n, "", &err); break;
    case CaseOp::kLower: m = u_strToLower(dst, 16, src, n, "", &err); break;
    case CaseOp::kTitle:
      if (TitleMap() == nullptr) {
        m = u_strToUpper(dst, 16, src, n, "", &err);
      } else {
        m = ucasemap_toTitle(const_cast<UCaseMap*>(TitleMap()), dst, 16, src, n, &err);
      }
      break;
  }
  if (U_FAILURE(err) || m <= 0 || m > 16) {
    utf8::Append(out, c);
    return;
  }
  for (int32_t i = 0; i < m;) {
    UChar32 cp;
    U16_NEXT(dst, i, m, cp);
    utf8::Append(out, static_cast<char32_t>(cp));
  }
}

bool IsCaseIgnorable(char32_t c) {
  return !IsSurrogate(c) && u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_CASE_IGNORABLE);
}

// Python's lower() of U+03A3 at cps[i]: final sigma when preceded by a cased
// letter and not followed by one (case-ignorable characters skipped).
char32_t LowerSigma(const std::u32string& cps, size_t i) {
  size_t j = i;
  while (j > 0 && IsCaseIgnorable(cps[j - 1])) --j;
  bool final_sigma = j > 0 && IsCasedChar(cps[j - 1]);
  if (final_sigma) {
    size_t k = i + 1;
    while (k < cps.size() && IsCaseIgnorable(cps[k])) ++k;
    final_sigma = k == cps.size() || !IsCasedChar(cps[k]);
  }
  return final_sigma ? 0x3C2 : 0x3C3;
}

void AppendLower(std::string& out, const std::u32string& cps, size_t i) {
  if (cps[i] == 0x3A3) {
    utf8::Append(out, LowerSigma(cps, i));
  } else {
    AppendMapped(out, cps[i], CaseOp::kLower);
  }
}

bool AllAscii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

UChar32 U(char32_t c) { return static_cast<UChar32>(c); }

}  // namespace

std::string PyUpper(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  if (AllAscii(s)) {
    for (char c : s) out.push_back((c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c);
    return out;
  }
  for (char32_t c : utf8::Decode(s)) AppendMapped(out, c, CaseOp::kUpper);
  return out;
}

std::string PyLower(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  if (AllAscii(s)) {
    for (char c : s) out.push_back((c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c);
    return out;
  }
  const std::u32string cps = utf8::Decode(s);
  for (size_t i = 0; i < cps.size(); ++i) AppendLower(out, cps, i);
  return out;
}

std::string PyTitle(std::string_view s) {
  const std::u32string cps = utf8::Decode(s);
  std::string out;
  out.reserve(s.size());
  bool previous_is_cased = false;
  for (size_t i = 0; i < cps.size(); ++i) {
    if (previous_is_cased) {
      AppendLower(out, cps, i);
    } else {
      AppendMapped(out, cps[i], CaseOp::kTitle);
    }
    previous_is_cased = IsCasedChar(cps[i]);
  }
  return out;
}

std::string PyCapitalize(std::string_view s) {
  const std::u32string cps = utf8::Decode(s);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < cps.size(); ++i) {
    if (i == 0) {
      AppendMapped(out, cps[0], CaseOp::kTitle);
    } else {
      AppendLower(out, cps, i);
    }
  }
  return out;
}

bool IsCasedChar(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return !IsSurrogate(c) && c <= 0x10FFFF && u_hasBinaryProperty(U(c), UCHAR_CASED);
}
bool IsUpperChar(char32_t c) {
  if (c < 0x80) return c >= 'A' && c <= 'Z';
  return !IsSurrogate(c) && c <= 0x10FFFF && u_hasBinaryProperty(U(c), UCHAR_UPPERCASE);
}
bool IsLowerChar(char32_t c) {
  if (c < 0x80) return c >= 'a' && c <= 'z';
  return !IsSurrogate(c) && c <= 0x10FFFF && u_hasBinaryProperty(U(c), UCHAR_LOWERCASE);
}
bool IsTitleChar(char32_t c) { return c >= 0x80 && c <= 0x10FFFF && u_charType(U(c)) == U_TITLECASE_LETTER; }
bool IsAlphaChar(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return c <= 0x10FFFF && u_isalpha(U(c));
}
bool IsDecimalChar(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return c <= 0x10FFFF && u_getIntPropertyValue(U(c), UCHAR_NUMERIC_TYPE) == U_NT_DECIMAL;
}
bool IsDigitChar(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  if (c > 0x10FFFF) return false;
  const int32_t t = u_getIntPropertyValue(U(c), UCHAR_NUMERIC_TYPE);
  return t == U_NT_DECIMAL || t == U_NT_DIGIT;
}
bool IsNumericChar(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return c <= 0x10FFFF && u_getIntPropertyValue(U(c), UCHAR_NUMERIC_TYPE) != U_NT_NONE;
}
bool IsPrintableChar(char32_t c) {
  if (c < 0x80) return c >= 0x20 && c < 0x7F;
  if (c > 0x10FFFF) return false;
  switch (u_charType(U(c))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_GENERAL_OTHER_TYPES:  // unassigned
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

}  // namespace deepshard::jinja
