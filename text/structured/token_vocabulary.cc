#include "text/structured/token_vocabulary.h"

#include <algorithm>
#include <atomic>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "text/tokenizer/pre_tokenizer.h"
#include "text/tokenizer/unicode.h"

namespace deepshard::structured {
namespace {

namespace ti = ::deepshard::tokenizer_internal;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<0xXX>" -> XX, else -1.
int ByteFallbackValue(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int hi = HexValue(t[3]), lo = HexValue(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// Token string -> bytes through the GPT-2 alphabet; the string itself when some
// character is outside it (the ByteLevel decoder does the same).
std::string ByteLevelBytes(const std::string& token) {
  if (!ti::IsValidUtf8(token)) return token;
  std::string bytes;
  bytes.reserve(token.size());
  size_t i = 0;
  while (i < token.size()) {
    int b = ti::ByteLevelByte(ti::NextCodePoint(token, &i));
    if (b < 0) return token;
    bytes.push_back(static_cast<char>(b));
  }
  return bytes;
}

std::string MetaspaceBytes(const std::string& token) {
  static constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581
  std::string out;
  out.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    if (std::string_view(token).substr(i, 3) == kMetaspace) {
      out.push_back(' ');
      i += 3;
    } else {
      out.push_back(token[i++]);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TokenVocabulary>> TokenVocabulary::FromTokenizer(const Tokenizer& t) {
  const int64_t n = t.vocab_size();
  if (n <= 0) return absl::InvalidArgumentError("TokenVocabulary: the tokenizer has no tokens");
  const bool byte_level = t.decoder_is_byte_level();
  const bool byte_fallback = t.decoder_has_byte_fallback();
  std::vector<std::string> bytes(static_cast<size_t>(n));
  for (int64_t id = 0; id < n; ++id) {
    const auto i = static_cast<int32_t>(id);
    if (t.IsAddedId(i)) continue;  // control tokens: never inside constrained text
    std::string token = t.IdToToken(i);
    if (token.empty()) continue;
    if (byte_fallback) {
      if (int b = ByteFallbackValue(token); b >= 0) {
        bytes[id] = std::string(1, static_cast<char>(b));
        continue;
      }
    }
    bytes[id] = byte_level ? ByteLevelBytes(token) : MetaspaceBytes(token);
  }
  const int32_t eos = t.eos_id().has_value() ? *t.eos_id() : -1;
  return FromBytes(std::move(bytes), eos);
}

std::shared_ptr<const TokenVocabulary> TokenVocabulary::FromBytes(std::vector<std::string> token_bytes,
                                                                  int32_t eos_id) {
  return std::shared_ptr<const TokenVocabulary>(new TokenVocabulary(std::move(token_bytes), eos_id));
}

TokenVocabulary::TokenVocabulary(std::vector<std::string> token_bytes, int32_t eos_id)
    : token_bytes_(std::move(token_bytes)) {
  static std::atomic<uint64_t> next_uid{1};
  uid_ = next_uid.fetch_add(1);
  if (eos_id >= 0 && eos_id < size()) {
    eos_id_ = eos_id;
    token_bytes_[static_cast<size_t>(eos_id)].clear();
  }
  // Ids with bytes, sorted by bytes: a preorder walk of the trie meets them in order.
  std::vector<int32_t> ids;
  ids.reserve(token_bytes_.size());
  for (size_t i = 0; i < token_bytes_.size(); ++i) {
    if (!token_bytes_[i].empty() && token_bytes_[i].size() < 65535) ids.push_back(static_cast<int32_t>(i));
  }
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    const std::string& x = token_bytes_[static_cast<size_t>(a)];
    const std::string& y = token_bytes_[static_cast<size_t>(b)];
    return x != y ? x < y : a < b;
  });
  token_ids_ = ids;
  std::vector<uint32_t> path;  // trie nodes of the previous token's bytes
  std::string_view prev;
  for (int32_t id : ids) {
    std::string_view s = token_bytes_[static_cast<size_t>(id)];
    size_t lcp = 0;
    while (lcp < s.size() && lcp < prev.size() && s[lcp] == prev[lcp]) ++lcp;
    if (lcp == s.size() && lcp == prev.size()) continue;  // same bytes: same node
    while (path.size() > lcp) {
      trie_[path.back()].subtree_end = static_cast<uint32_t>(trie_.size());
      path.pop_back();
    }
    for (size_t k = lcp; k < s.size(); ++k) {
      path.push_back(static_cast<uint32_t>(trie_.size()));
      trie_.push_back({static_cast<uint8_t>(s[k]), static_cast<uint16_t>(k + 1), 0});
      token_begin_.push_back(0);
    }
    max_depth_ = std::max(max_depth_, static_cast<int>(s.size()));
    prev = s;
  }
  while (!path.empty()) {
    trie_[path.back()].subtree_end = static_cast<uint32_t>(trie_.size());
    path.pop_back();
  }
  // token_begin_: the ids of node i are those whose bytes end at depth == length.
  // Walk again in the same order to assign them (ids are sorted, nodes in preorder).
  token_begin_.assign(trie_.size() + 1, 0);
  std::vector<uint32_t> count(trie_.size(), 0);
  {
    // Re-derive, for each id, the node where its bytes end.
    size_t node = 0;
    std::vector<uint32_t> stack;  // node indices along the current path
    prev = {};
    for (int32_t id : ids) {
      std::string_view s = token_bytes_[static_cast<size_t>(id)];
      size_t lcp = 0;
      while (lcp < s.size() && lcp < prev.size() && s[lcp] == prev[lcp]) ++lcp;
      if (!(lcp == s.size() && lcp == prev.size())) {
        stack.resize(lcp);
        for (size_t k = lcp; k < s.size(); ++k) stack.push_back(static_cast<uint32_t>(node++));
      }
      ++count[stack.back()];
      prev = s;
    }
  }
  for (size_t i = 0; i < trie_.size(); ++i) token_begin_[i + 1] = token_begin_[i] + count[i];
}

}  // namespace deepshard::structured
