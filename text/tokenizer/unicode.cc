#include "text/tokenizer/unicode.h"

#include <unicode/normalizer2.h>  // icu::Normalizer2 (NFC/NFKC/NFD/NFKD)
#include <unicode/uchar.h>        // u_charType, u_hasBinaryProperty, u_tolower
#include <unicode/unistr.h>       // icu::UnicodeString

namespace deepshard::tokenizer_internal {
namespace {

// Range of the second byte of a well-formed sequence with this lead byte (Unicode
// Table 3-7), and the sequence length. Length 0 marks a byte that cannot start one.
struct LeadInfo {
  int len;
  unsigned char lo, hi;
};

inline LeadInfo Lead(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Length of the well-formed sequence at s[i], or -(length of the maximal ill-formed
// subpart) when there is none (at least 1).
inline int ScanSequence(const unsigned char* s, size_t n, size_t i) {
  LeadInfo li = Lead(s[i]);
  if (li.len == 1) return 1;
  if (li.len == 0) return -1;
  size_t k = 1;
  for (; k < static_cast<size_t>(li.len); ++k) {
    if (i + k >= n) return -static_cast<int>(k);
    unsigned char c = s[i + k];
    bool ok = k == 1 ? (c >= li.lo && c <= li.hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) return -static_cast<int>(k);
  }
  return li.len;
}

std::string Normalize(const icu::Normalizer2* (*instance)(UErrorCode&), std::string_view s) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* norm = instance(status);
  if (U_FAILURE(status) || norm == nullptr) return std::string(s);  // ICU data missing
  icu::UnicodeString in =
      icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  // Fast path: most text is already normalized.
  if (norm->isNormalized(in, status) && U_SUCCESS(status)) return std::string(s);
  status = U_ZERO_ERROR;
  icu::UnicodeString out = norm->normalize(in, status);
  if (U_FAILURE(status)) return std::string(s);
  std::string result;
  out.toUTF8String(result);
  return result;
}

}  // namespace

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t CountCodePoints(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool IsValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // Skip ASCII eight bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    int len = ScanSequence(p, n, i);
    if (len < 0) return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

void AppendUtf8Lossy(std::string_view s, std::string* out) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    int len = ScanSequence(p, n, i);
    if (len > 0) {
      out->append(s.data() + i, static_cast<size_t>(len));
      i += static_cast<size_t>(len);
    } else {
      AppendUtf8(kReplacementChar, out);
      i += static_cast<size_t>(-len);
    }
  }
}

bool IsWhiteSpace(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_WHITE_SPACE);
}

bool IsNumeric(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  int8_t t = u_charType(static_cast<UChar32>(cp));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool IsWordChar(uint32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '_';
  }
  UChar32 c = static_cast<UChar32>(cp);
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL)) {
    return true;
  }
  int8_t t = u_charType(c);
  return t == U_NON_SPACING_MARK || t == U_ENCLOSING_MARK || t == U_COMBINING_SPACING_MARK ||
         t == U_DECIMAL_DIGIT_NUMBER || t == U_CONNECTOR_PUNCTUATION;
}

std::string NormalizeNfc(std::string_view s) { return Normalize(&icu::Normalizer2::getNFCInstance, s); }
std::string NormalizeNfkc(std::string_view s) { return Normalize(&icu::Normalizer2::getNFKCInstance, s); }
std::string NormalizeNfd(std::string_view s) { return Normalize(&icu::Normalizer2::getNFDInstance, s); }
std::string NormalizeNfkd(std::string_view s) { return Normalize(&icu::Normalizer2::getNFKDInstance, s); }

std::string LowercaseChars(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      out.push_back(b >= 'A' && b <= 'Z' ? static_cast<char>(b + 32) : static_cast<char>(b));
      ++i;
      continue;
    }
    uint32_t cp = NextCodePoint(s, &i);
    if (cp == 0x130) {
      // The only unconditional multi-character lowercase mapping (SpecialCasing.txt).
      out.push_back('i');
      AppendUtf8(0x307, &out);
    } else {
      AppendUtf8(static_cast<uint32_t>(u_tolower(static_cast<UChar32>(cp))), &out);
    }
  }
  return out;
}

}  // namespace deepshard::tokenizer_internal
