// AddedVocabulary: the "added_tokens" of tokenizer.json (internal).
//
// Added tokens are cut out of the input before pre-tokenization, matched
// leftmost-longest. Tokens with `normalized: false` are matched in the raw text; the
// text between them is then normalized and tokens with `normalized: true` are matched
// in that normalized text (against their normalized content). `single_word` keeps a
// match only at word boundaries; `lstrip` / `rstrip` swallow the whitespace on that
// side. Ids follow Hugging Face's `AddedVocabulary::add_tokens`: a token already in
// the vocabulary keeps its id, a new one gets the next free id.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "text/tokenizer/bpe.h"
#include "text/tokenizer/normalizer.h"
#include "text/tokenizer/string_util.h"

namespace deepshard::tokenizer_internal {

struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;

  bool operator==(const AddedToken&) const = default;
};

class AddedVocabulary {
 public:
  // Adds tokens the way Hugging Face does (see the file comment). `normalizer` may be
  // null. Empty contents are ignored.
  void AddTokens(const std::vector<AddedToken>& tokens, const BpeModel& model, const Normalizer* normalizer);

  std::optional<int32_t> TokenToId(std::string_view content) const;
  const AddedToken* Find(int32_t id) const;
  bool IsSpecial(std::string_view content) const { return special_set_.contains(content); }
  bool Contains(std::string_view content) const { return ids_.contains(content); }
  bool empty() const { return ids_.empty(); }
  int32_t max_id() const;

  // Splits `text` (valid UTF-8) into added tokens and normalized text. Calls
  // `on_token(id)` for each added token and `on_text(normalized_piece)` for each
  // non-empty stretch of text between them, in order.
  void Split(std::string_view text, const Normalizer* normalizer, absl::FunctionRef<void(int32_t)> on_token,
             absl::FunctionRef<void(std::string_view)> on_text) const;

 private:
  // Leftmost-longest matching of token contents in time linear in the text, however
  // long and alike the contents are: an Aho-Corasick automaton over the *reversed*
  // contents, run backwards over the text, gives at each position the longest content
  // that starts there (its state is the longest suffix of the reversed text read that
  // prefixes a reversed content, so every content starting there is a suffix of it).
  // A trie walk from every position instead costs O(text x content length): a 30 KB
  // normalized added token (or a long Prepend) made Encode take a minute.
  class Trie {
   public:
    void Build(const std::vector<std::pair<std::string, int32_t>>& patterns);
    // For each position p of `text`: (*len)[p] = length of the longest pattern
    // starting at p (0 = none) and (*id)[p] its id. Both are resized to text.size().
    void LongestStarting(std::string_view text, std::vector<int32_t>* len, std::vector<int32_t>* id) const;
    // Whether some pattern may start with byte `b`.
    bool CanStart(unsigned char b) const { return can_start_[b]; }
    bool empty() const { return n_patterns_ == 0; }

   private:
    int32_t Child(int32_t node, unsigned char b) const {
      if (node == 0) return root_[b];
      auto it = edges_.find((static_cast<uint64_t>(node) << 8) | b);
      return it == edges_.end() ? -1 : it->second;
    }
    std::vector<int32_t> root_;                       // 256 children of the root
    absl::flat_hash_map<uint64_t, int32_t> edges_;    // (node << 8 | byte) -> child
    std::vector<int32_t> terminal_;                   // node -> pattern id, -1 if none
    std::vector<int32_t> depth_;                      // node -> length of its string
    std::vector<int32_t> fail_;                       // node -> longest proper suffix node
    std::vector<int32_t> best_;                       // node -> longest terminal suffix (itself included), -1 if none
    std::array<bool, 256> can_start_{};
    size_t n_patterns_ = 0;
  };

  struct Piece {
    size_t start, end;
    int32_t id;  // -1: text
  };
  // Matches `trie` in `text` and applies single_word / lstrip / rstrip.
  void FindMatches(std::string_view text, const Trie& trie, std::vector<Piece>* out) const;
  void Rebuild(const BpeModel& model, const Normalizer* normalizer);

  StringMap<int32_t> ids_;
  absl::flat_hash_map<int32_t, AddedToken> tokens_;
  std::vector<AddedToken> added_;    // non-special, in order
  std::vector<AddedToken> special_;  // special, in order
  StringSet special_set_;
  Trie raw_trie_;
  Trie normalized_trie_;
};

}  // namespace deepshard::tokenizer_internal
