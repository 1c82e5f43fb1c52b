// Helpers shared by the output parsers (reasoning_parser, tool_call_parser): they
// match fixed marker strings on bytes, in text that arrives piece by piece.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string_view>

namespace deepshard::output_internal {

// Length of the longest suffix of `text` that is a proper prefix of `marker`:
// the bytes a streaming parser must hold back, since the next piece may complete
// the marker. 0 when none. Any occurrence of the whole marker in `text` is the
// caller's to find first.
inline size_t PartialMarkerSuffix(std::string_view text, std::string_view marker) {
  const size_t longest = std::min(text.size(), marker.size() - 1);
  for (size_t n = longest; n > 0; --n) {
    if (text.substr(text.size() - n) == marker.substr(0, n)) return n;
  }
  return 0;
}

// True when `text` could still grow into `marker` (a proper prefix of it,
// empty included).
inline bool IsProperPrefix(std::string_view text, std::string_view marker) {
  return text.size() < marker.size() && marker.substr(0, text.size()) == text;
}

inline bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

}  // namespace deepshard::output_internal
