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
  depth_.assign(1, 0);
  can_start_.fill(false);
  n_patterns_ = 0;
  std::vector<int32_t> parent(1, -1);
  std::vector<unsigned char> byte(1, 0);
  for (const auto& [content, id] : patterns) {
    if (content.empty()) continue;  // an empty pattern would match everywhere
    ++n_patterns_;
    can_start_[static_cast<unsigned char>(content.front())] = true;
    int32_t node = 0;
    for (size_t k = content.size(); k-- > 0;) {  // reversed
      unsigned char b = static_cast<unsigned char>(content[k]);
      int32_t child = Child(node, b);
      if (child < 0) {
        child = static_cast<int32_t>(terminal_.size());
        terminal_.push_back(-1);
        depth_.push_back(depth_[static_cast<size_t>(node)] + 1);
        parent.push_back(node);
        byte.push_back(b);
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
  // Failure links in breadth-first order (by depth; a counting sort).
  const size_t n = terminal_.size();
  int32_t max_depth = 0;
  for (int32_t d : depth_) max_depth = std::max(max_depth, d);
  std::vector<int32_t> start(static_cast<size_t>(max_depth) + 2, 0), order(n);
  for (int32_t d : depth_) ++start[static_cast<size_t>(d) + 1];
  for (size_t d = 1; d < start.size(); ++d) start[d] += start[d - 1];
  for (size_t v = 0; v < n; ++v) order[static_cast<size_t>(start[static_cast<size_t>(depth_[v])]++)] = static_cast<int32_t>(v);
  fail_.assign(n, 0);
  best_.assign(n, -1);
  for (int32_t v : order) {
    const size_t vi = static_cast<size_t>(v);
    if (v != 0 && parent[vi] != 0) {
      int32_t f = fail_[static_cast<size_t>(parent[vi])];
      while (true) {
        int32_t c = Child(f, byte[vi]);
        if (c >= 0) {
          fail_[vi] = c;
          break;
        }
        if (f == 0) break;
        f = fail_[static_cast<size_t>(f)];
      }
    }
    best_[vi] = terminal_[vi] >= 0 ? v : (v == 0 ? -1 : best_[static_cast<size_t>(fail_[vi])]);
  }
}

void AddedVocabulary::Trie::LongestStarting(std::string_view text, std::vector<int32_t>* len,
                                            std::vector<int32_t>* id) const {
  len->assign(text.size(), 0);
  id->assign(text.size(), -1);
  int32_t state = 0;
  for (size_t p = text.size(); p-- > 0;) {
    const unsigned char b = static_cast<unsigned char>(text[p]);
    int32_t next;
    while ((next = Child(state, b)) < 0 && state != 0) state = fail_[static_cast<size_t>(state)];
    state = next < 0 ? 0 : next;
    const int32_t best = best_[static_cast<size_t>(state)];
    if (best >= 0) {
      (*len)[p] = depth_[static_cast<size_t>(best)];
      (*id)[p] = terminal_[static_cast<size_t>(best)];
    }
  }
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
  while (i < n && !trie.CanStart(static_cast<unsigned char>(text[i]))) ++i;
  std::vector<int32_t> longest, ids;
  if (i < n) trie.LongestStarting(text, &longest, &ids);
  for (; i < n; ++i) {
    if (longest[i] == 0) continue;
    const int32_t id = ids[i];
    size_t start = i, stop = i + static_cast<size_t>(longest[i]);
    i = stop - 1;  // matches do not overlap; the search resumes after this one
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
