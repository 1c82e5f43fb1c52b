// TokenVocabulary: the bytes each token id adds to the text, and a byte trie over
// them, for constrained decoding (json_constraint.h).
//
// FromTokenizer maps each id of a Tokenizer to bytes:
//   - added tokens (special or not: BOS, EOS, "<｜User｜>", tool-call markers...) get
//     no bytes: they are never allowed inside constrained output (EOS is handled
//     apart, by id);
//   - with a ByteFallback decoder, "<0xXX>" tokens are the one byte XX;
//   - with a ByteLevel decoder, the token string is spelled in the GPT-2
//     byte<->unicode alphabet ("Ġworld" -> " world"); a string outside that alphabet
//     is taken as is (as the decoder does);
//   - otherwise (SentencePiece-style vocabularies) the string is taken as is, with
//     U+2581 "▁" read as a space.
// A token's bytes need not be valid UTF-8: byte-level tokens may hold part of a
// multi-byte character.
//
// The trie is stored in preorder: node i has the byte on the edge from its parent,
// its depth (1 for children of the root), the index one past its subtree, and the
// token ids whose bytes end there. A walk with a byte automaton is then a linear
// scan that jumps over the subtree of any node where the automaton dies:
//
//   for (size_t i = 0; i < nodes.size();) {
//     state[d] = Step(state[d - 1], nodes[i].byte)   // d = nodes[i].depth
//     if dead: i = nodes[i].subtree_end; else: allow TokensAt(i); ++i;
//   }
//
// Tokens sharing a prefix share the automaton steps for that prefix: the
// DeepSeek-V3 vocabulary (129k tokens) has 274k trie nodes and is built in ~80 ms.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "text/tokenizer/tokenizer.h"

namespace deepshard::structured {

class TokenVocabulary {
 public:
  struct TrieNode {
    uint8_t byte;
    uint16_t depth;         // 1 for a child of the root
    uint32_t subtree_end;   // index one past the last node of this subtree
  };

  // Ids [0, t.vocab_size()); EOS is t.eos_id() (-1 when none). ~80 ms for 129k tokens.
  static absl::StatusOr<std::shared_ptr<const TokenVocabulary>> FromTokenizer(const Tokenizer& t);
  // For tests: explicit byte strings per id (an empty string: never allowed);
  // `eos_id` may be -1 (no EOS).
  static std::shared_ptr<const TokenVocabulary> FromBytes(std::vector<std::string> token_bytes, int32_t eos_id);

  int64_t size() const { return static_cast<int64_t>(token_bytes_.size()); }
  int32_t eos_id() const { return eos_id_; }
  // The bytes of `id`; "" for EOS and for tokens that are never allowed.
  const std::string& token_bytes(int32_t id) const { return token_bytes_[static_cast<size_t>(id)]; }
  // Unique for the life of the process: keys the mask caches shared by constraints.
  uint64_t uid() const { return uid_; }

  const std::vector<TrieNode>& trie() const { return trie_; }
  // Token ids whose bytes end at trie node `i`.
  std::span<const int32_t> TokensAt(size_t i) const {
    return {token_ids_.data() + token_begin_[i], token_ids_.data() + token_begin_[i + 1]};
  }
  int max_depth() const { return max_depth_; }

 private:
  TokenVocabulary(std::vector<std::string> token_bytes, int32_t eos_id);

  std::vector<std::string> token_bytes_;
  int32_t eos_id_ = -1;
  uint64_t uid_ = 0;
  std::vector<TrieNode> trie_;
  std::vector<uint32_t> token_begin_;  // trie_.size() + 1 entries into token_ids_
  std::vector<int32_t> token_ids_;     // ids in trie order
  int max_depth_ = 0;
};

}  // namespace deepshard::structured
