// UTF-8 and Unicode helpers for the tokenizer (internal).
//
// The tokenizer works on UTF-8 text. Input that is not valid UTF-8 is repaired the
// way Rust's `String::from_utf8_lossy` and Python's `bytes.decode("utf-8",
// errors="replace")` do: every maximal ill-formed subpart becomes U+FFFD.
//
// Character classes follow the definitions that Hugging Face `tokenizers` gets from
// Rust's `char` methods: `IsWhiteSpace` is the White_Space property
// (`char::is_whitespace`), `IsNumeric` is general category N (`char::is_numeric`).
// Normalization and lowercasing use ICU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace deepshard::tokenizer_internal {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Appends the UTF-8 encoding of `cp` (a Unicode scalar value) to `out`.
void AppendUtf8(uint32_t cp, std::string* out);

// Decodes the code point starting at `s[*i]` and advances `*i`. `s` must be valid
// UTF-8 and `*i < s.size()`.
inline uint32_t NextCodePoint(std::string_view s, size_t* i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + *i;
  uint32_t c = p[0];
  if (c < 0x80) {
    *i += 1;
    return c;
  }
  if (c < 0xE0) {
    *i += 2;
    return ((c & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (c < 0xF0) {
    *i += 3;
    return ((c & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  *i += 4;
  return ((c & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

// Byte length of the UTF-8 sequence whose lead byte is `lead` (valid UTF-8 only).
inline size_t Utf8SeqLen(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// Number of code points in valid UTF-8 `s`.
size_t CountCodePoints(std::string_view s);

// True when `s` is well-formed UTF-8.
bool IsValidUtf8(std::string_view s);

// Appends `s` to `out`, replacing each maximal ill-formed subpart by U+FFFD
// (from_utf8_lossy semantics).
void AppendUtf8Lossy(std::string_view s, std::string* out);

bool IsWhiteSpace(uint32_t cp);  // Unicode White_Space (Rust char::is_whitespace)
bool IsNumeric(uint32_t cp);     // general category Nd, Nl or No (Rust char::is_numeric)
// Oniguruma / Rust-regex `\w`: Alphabetic, Mark, Nd, Pc or Join_Control.
bool IsWordChar(uint32_t cp);

// Unicode normalization forms of valid UTF-8 `s` (ICU).
std::string NormalizeNfc(std::string_view s);
std::string NormalizeNfkc(std::string_view s);
std::string NormalizeNfd(std::string_view s);
std::string NormalizeNfkd(std::string_view s);

// Per-character full lowercase mapping without context (Rust `char::to_lowercase`
// applied to each char: U+0130 becomes "i̇", final sigma is not special-cased).
std::string LowercaseChars(std::string_view s);

}  // namespace deepshard::tokenizer_internal
