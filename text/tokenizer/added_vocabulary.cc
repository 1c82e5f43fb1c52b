#include "text/tokenizer/added_vocabulary.h"

#include <algorithm>

#include "text/tokenizer/unicode.h"

namespace deepshard::tokenizer_internal {
namespace {

// Start of the code point that ends at `end` (exclusive) in valid UTF-8 `s`.
size_t PrevCodePointStart(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

bool EndsWithWordChar(std::string_view s, size_t end) {
  if (end == 0) return false;
  size_t i = PrevCodePointStart(s, end);
  return IsWordChar(NextCodePoint(s, &i));
}

bool StartsWithWordChar(std::string_view s, size_t start) {
  if (start >= s.size()) return false;
  return IsWordChar(NextCodePoint(s, &start));
}

// Start of the whitespace run that ends at `end` (Rust regex `\s*$` on s[..end]).
size_t WhitespaceRunStart(std::string_view s, size_t end) {
  while (end > 0) {
    size_t i = PrevCodePointStart(s, end);
    size_t j = i;
    if (!IsWhiteSpace(NextCodePoint(s, &j))) break;
    end = i;
  }
  return end;
}

// End of the whitespace run that starts at `start` (Rust regex `^\s*` on s[start..]).
size_t WhitespaceRunEnd(std::string_view s, size_t start) {
  while (start < s.size()) {
    size_t j = start;
    if (!IsWhiteSpace(NextCodePoint(s, &j))) break;
    start = j;
  }
  return start;
}

}  // namespace

// ---------------------------------------------------------------------------------
// Trie

void AddedVocabulary::Trie::Build(const std::vector<std::pair<std::string, int32_t>>& patterns) {
  root_.assign(256, -1);
  edges_.clear();
  terminal_.assign(1, -1);  // node 0 is the root
  n_patterns_ = 0;
  for (const auto& [content, id] : patterns) {
    if (content.empty()) continue;  // an empty pattern would match everywhere
    ++n_patterns_;
    int32_t node = 0;
    for (size_t k = 0; k < content.size(); ++k) {
      unsigned char b = static_cast<unsigned char>(content[k]);
      int32_t child = -1;
      if (node == 0) {
        child = root_[b];
      } else if (auto it = edges_.find((static_cast<uint64_t>(node) << 8) | b); it != edges_.end()) {
        child = it->second;
      }
      if (child < 0) {
        child = static_cast<int32_t>(terminal_.size());
        terminal_.push_back(-1);
        if (node == 0) {
          root_[b] = child;
        } else {
          edges_[(static_cast<uint64_t>(node) << 8) | b] = child;
        }
      }
      node = child;
    }
    // With duplicate contents the first pattern wins, as in Aho-Corasick.
    if (terminal_[static_cast<size_t>(node)] < 0) terminal_[static_cast<size_t>(node)] = id;
  }
}

size_t AddedVocabulary::Trie::LongestAt(std::string_view text, size_t pos, int32_t* id) const {
  int32_t node = root_[static_cast<unsigned char>(text[pos])];
  size_t best = 0;
  size_t k = pos + 1;
  while (node >= 0) {
    if (terminal_[static_cast<size_t>(node)] >= 0) {
      best = k - pos;
      *id = terminal_[static_cast<size_t>(node)];
    }
    if (k >= text.size()) break;
    auto it = edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[k]));
    if (it == edges_.end()) break;
    node = it->second;
    ++k;
  }
  return best;
}

// ---------------------------------------------------------------------------------
// AddedVocabulary

std::optional<int32_t> AddedVocabulary::TokenToId(std::string_view content) const {
  auto it = ids_.find(content);
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

const AddedToken* AddedVocabulary::Find(int32_t id) const {
  auto it = tokens_.find(id);
  return it == tokens_.end() ? nullptr : &it->second;
}

int32_t AddedVocabulary::max_id() const {
  int32_t m = -1;
  for (const auto& [id, token] : tokens_) m = std::max(m, id);
  return m;
}

void AddedVocabulary::AddTokens(const std::vector<AddedToken>& tokens, const BpeModel& model,
                                const Normalizer* normalizer) {
  for (const AddedToken& t : tokens) {
    if (t.special && !t.content.empty() && !special_set_.contains(t.content)) {
      special_.push_back(t);
      special_set_.insert(t.content);
    }
  }
  // The next free id: after the largest added id when that is beyond the model's
  // vocabulary, else the model's vocabulary size (its number of entries).
  const int64_t model_size = model.size();
  int64_t next_id = model_size;
  if (!tokens_.empty()) {
    int64_t max = max_id();
    next_id = (max >= model_size || model_size == 0) ? max + 1 : model_size;
  }
  for (const AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    // An identical token (same content and flags) is already there.
    auto existing = ids_.find(t.content);
    if (existing != ids_.end()) {
      auto it = tokens_.find(existing->second);
      if (it != tokens_.end() && it->second == t) continue;
    }
    int32_t id;
    if (existing != ids_.end()) {
      id = existing->second;
    } else if (auto mid = model.TokenToId(t.content)) {
      id = *mid;
    } else {
      id = static_cast<int32_t>(next_id++);
    }
    ids_[t.content] = id;
    tokens_[id] = t;
    if (!special_set_.contains(t.content)) added_.push_back(t);
  }
  Rebuild(model, normalizer);
}

void AddedVocabulary::Rebuild(const BpeModel& model, const Normalizer* normalizer) {
  std::vector<std::pair<std::string, int32_t>> raw, normalized;
  auto add = [&](const AddedToken& t) {
    std::optional<int32_t> id = TokenToId(t.content);
    if (!id) id = model.TokenToId(t.content);
    if (!id) return;
    if (t.normalized) {
      std::string content = t.content;
      if (normalizer != nullptr) normalizer->Normalize(&content);
      normalized.emplace_back(std::move(content), *id);
    } else {
      raw.emplace_back(t.content, *id);
    }
  };
  for (const AddedToken& t : special_) add(t);
  for (const AddedToken& t : added_) add(t);
  raw_trie_.Build(raw);
  normalized_trie_.Build(normalized);
}

void AddedVocabulary::FindMatches(std::string_view text, const Trie& trie, std::vector<Piece>* out) const {
  out->clear();
  const size_t n = text.size();
  size_t start_offset = 0;
  size_t i = 0;
  while ((i = trie.NextCandidate(text, i)) < n) {
    int32_t id = -1;
    size_t len = trie.LongestAt(text, i, &id);
    if (len == 0) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + len;
    i = stop;  // matches do not overlap; the search resumes after this one
    const AddedToken* tok = Find(id);
    if (tok == nullptr) continue;
    if (tok->single_word) {
      bool start_space = start == 0 || !EndsWithWordChar(text, start);
      bool stop_space = stop == n || !StartsWithWordChar(text, stop);
      if (!start_space || !stop_space) continue;
    }
    if (tok->lstrip) start = std::max(WhitespaceRunStart(text, start), start_offset);
    if (tok->rstrip) stop = WhitespaceRunEnd(text, stop);
    if (start_offset < start) out->push_back({start_offset, start, -1});
    out->push_back({start, stop, id});
    start_offset = stop;
  }
  if (start_offset < n) out->push_back({start_offset, n, -1});
}

void AddedVocabulary::Split(std::string_view text, const Normalizer* normalizer,
                            absl::FunctionRef<void(int32_t)> on_token,
                            absl::FunctionRef<void(std::string_view)> on_text) const {
  if (text.empty()) return;
  auto second_pass = [&](std::string_view raw_piece) {
    std::string normalized;
    std::string_view piece = raw_piece;
    if (normalizer != nullptr) {
      normalized.assign(raw_piece);
      normalizer->Normalize(&normalized);
      piece = normalized;
    }
    if (piece.empty()) return;
    if (normalized_trie_.empty()) {
      on_text(piece);
      return;
    }
    std::vector<Piece> pieces;
    FindMatches(piece, normalized_trie_, &pieces);
    for (const Piece& p : pieces) {
      if (p.id >= 0) {
        on_token(p.id);
      } else if (p.end > p.start) {
        on_text(piece.substr(p.start, p.end - p.start));
      }
    }
  };
  if (raw_trie_.empty()) {
    second_pass(text);
    return;
  }
  std::vector<Piece> pieces;
  FindMatches(text, raw_trie_, &pieces);
  for (const Piece& p : pieces) {
    if (p.id >= 0) {
      on_token(p.id);
    } else if (p.end > p.start) {
      second_pass(text.substr(p.start, p.end - p.start));
    }
  }
}

}  // namespace deepshard::tokenizer_internal
