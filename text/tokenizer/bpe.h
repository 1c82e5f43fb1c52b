// BpeModel: the "model" of tokenizer.json when its type is "BPE" (internal).
//
// Reads `vocab` (token -> id) and `merges` (either "a b" strings or ["a", "b"] pairs;
// the rank is the position in the list) plus the options `unk_token`, `fuse_unk`,
// `byte_fallback`, `continuing_subword_prefix`, `end_of_word_suffix` and
// `ignore_merges`. A word is split into characters and the adjacent pair with the
// lowest merge rank is merged, leftmost first, until no pair has a merge: the result
// is identical to Hugging Face's heap-based `Word::merge_all`. Merged words are kept
// in a bounded cache (thread-safe).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "text/tokenizer/json_node.h"
#include "text/tokenizer/string_util.h"

namespace deepshard::tokenizer_internal {

class BpeModel {
 public:
  // Parses the "model" object (type must be "BPE").
  static absl::StatusOr<std::unique_ptr<BpeModel>> Parse(const JsonNode& model);

  // Appends the ids of one pre-tokenized word to `out`. Characters that are not in
  // the vocabulary become byte-fallback tokens, the unknown token, or nothing, in
  // that order of preference (as in Hugging Face).
  void Tokenize(std::string_view word, std::vector<int32_t>* out) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token of `id`, or nullptr when the vocabulary has none.
  const std::string* IdToToken(int32_t id) const;
  // Number of vocabulary entries (Hugging Face `get_vocab_size`).
  int64_t size() const { return static_cast<int64_t>(vocab_.size()); }
  // Largest id in the vocabulary (-1 when empty).
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

  // Test hook: merge with the quadratic scan (true) or the heap (false) regardless of
  // word length, bypassing the cache.
  void TokenizeForTest(std::string_view word, bool use_scan, std::vector<int32_t>* out) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Merge* FindMerge(int32_t a, int32_t b) const {
    auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  // Initial symbols of `word` (one per character, or byte-fallback/unk ids).
  void InitialSymbols(std::string_view word, std::vector<int32_t>* syms) const;
  void MergeScan(std::vector<int32_t>* syms) const;
  void MergeHeap(std::vector<int32_t>* syms) const;
  void MergeWord(std::string_view word, int mode, std::vector<int32_t>* out) const;

  StringMap<int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  // Ids of single-character tokens for code points below kSmallChars (-1: none).
  static constexpr uint32_t kSmallChars = 0x800;
  std::vector<int32_t> small_char_ids_;

  std::optional<std::string> unk_token_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  std::vector<int32_t> byte_fallback_ids_;  // id of "<0xXX>" per byte, -1 if absent

  static constexpr size_t kCacheCapacity = 1 << 17;
  static constexpr size_t kCacheMaxWordBytes = 256;
  mutable std::mutex cache_mu_;
  mutable StringMap<std::vector<int32_t>> cache_;
};

}  // namespace deepshard::tokenizer_internal
