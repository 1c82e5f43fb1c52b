#include "text/tokenizer/bpe.h"

#include <algorithm>
#include <climits>
#include <queue>

#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "text/tokenizer/unicode.h"

namespace deepshard::tokenizer_internal {
namespace {

constexpr int32_t kNoRank = INT32_MAX;
// Words with more symbols than this merge through the heap; shorter ones through a
// quadratic scan, which is faster when there are only a few symbols.
constexpr size_t kScanMaxSymbols = 48;
constexpr int32_t kMaxVocabId = (1 << 26) - 1;
// The id table is dense, sized by the largest id: ids must stay below
// 2 x (number of entries) + kVocabIdSlack, so that its size is bounded by the file's
// (an id near 2^26 in a tiny file would otherwise allocate gigabytes).
constexpr int64_t kVocabIdSlack = 1 << 16;

enum MergeMode { kAuto = 0, kScan = 1, kHeap = 2 };

// Reads one merge ("a b" or ["a", "b"]) without building a JSON path unless it fails.
bool ParseMergeEntry(const boost::json::value& v, std::string_view* a, std::string_view* b) {
  if (const auto* s = v.if_string()) {
    std::string_view line(s->data(), s->size());
    size_t sp = line.find(' ');
    if (sp == std::string_view::npos || line.find(' ', sp + 1) != std::string_view::npos) return false;
    *a = line.substr(0, sp);
    *b = line.substr(sp + 1);
    return true;
  }
  if (const auto* arr = v.if_array()) {
    if (arr->size() != 2 || !(*arr)[0].is_string() || !(*arr)[1].is_string()) return false;
    const auto& s0 = (*arr)[0].get_string();
    const auto& s1 = (*arr)[1].get_string();
    *a = std::string_view(s0.data(), s0.size());
    *b = std::string_view(s1.data(), s1.size());
    return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Parse(const JsonNode& model) {
  RETURN_IF_ERROR(model.Object().status());
  ASSIGN_OR_RETURN(std::string type, model["type"].StringOr("BPE"));
  if (type != "BPE") {
    return model["type"].Error(absl::StrCat("unsupported model \"", type, "\" (only BPE is supported)"));
  }
  auto bpe = std::unique_ptr<BpeModel>(new BpeModel());

  ASSIGN_OR_RETURN(double dropout, model["dropout"].NumberOr(0.0));
  if (dropout != 0.0) {
    return model["dropout"].Error("BPE dropout makes tokenization random and is not supported");
  }
  ASSIGN_OR_RETURN(bpe->fuse_unk_, model["fuse_unk"].BoolOr(false));
  ASSIGN_OR_RETURN(bpe->byte_fallback_, model["byte_fallback"].BoolOr(false));
  ASSIGN_OR_RETURN(bpe->ignore_merges_, model["ignore_merges"].BoolOr(false));
  ASSIGN_OR_RETURN(bpe->continuing_subword_prefix_, model["continuing_subword_prefix"].StringOr(""));
  ASSIGN_OR_RETURN(bpe->end_of_word_suffix_, model["end_of_word_suffix"].StringOr(""));
  if (!model["unk_token"].is_null()) {
    ASSIGN_OR_RETURN(std::string unk, model["unk_token"].String());
    bpe->unk_token_ = unk;
  }

  // Vocabulary.
  JsonNode vocab_node = model["vocab"];
  ASSIGN_OR_RETURN(const boost::json::object* vocab, vocab_node.Object());
  bpe->vocab_.reserve(vocab->size());
  const int64_t id_bound = std::min<int64_t>(kMaxVocabId, 2 * static_cast<int64_t>(vocab->size()) + kVocabIdSlack - 1);
  int32_t max_id = -1;
  for (const auto& kv : *vocab) {
    std::string_view token(kv.key().data(), kv.key().size());
    int64_t id = -1;
    if (const auto* i64 = kv.value().if_int64()) {
      id = *i64;
    } else if (const auto* u64 = kv.value().if_uint64(); u64 != nullptr && *u64 <= kMaxVocabId) {
      id = static_cast<int64_t>(*u64);
    } else {
      return vocab_node[token].Error(absl::StrCat("expected an integer id, got ", vocab_node[token].Kind()));
    }
    if (id < 0 || id > kMaxVocabId) {
      return vocab_node[token].Error(absl::StrCat("token id ", id, " is out of range [0, ", kMaxVocabId, "]"));
    }
    if (id > id_bound) {
      return vocab_node[token].Error(absl::StrCat("token id ", id, " is out of range [0, ", id_bound,
                                                  "]: ids must be below 2 x the number of entries (",
                                                  vocab->size(), ") + ", kVocabIdSlack));
    }
    bpe->vocab_[token] = static_cast<int32_t>(id);
    max_id = std::max(max_id, static_cast<int32_t>(id));
  }
  bpe->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  bpe->has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : bpe->vocab_) {
    bpe->id_to_token_[static_cast<size_t>(id)] = token;
    bpe->has_id_[static_cast<size_t>(id)] = true;
  }
  bpe->small_char_ids_.assign(kSmallChars, -1);
  for (const auto& [token, id] : bpe->vocab_) {
    if (token.empty()) continue;
    size_t i = 0;
    uint32_t cp = NextCodePoint(token, &i);
    if (i == token.size() && cp < kSmallChars) bpe->small_char_ids_[cp] = id;
  }
  if (bpe->unk_token_) {
    auto it = bpe->vocab_.find(*bpe->unk_token_);
    if (it == bpe->vocab_.end()) {
      return model["unk_token"].Error(absl::StrCat("unk_token \"", *bpe->unk_token_, "\" is not in the vocabulary"));
    }
    bpe->unk_id_ = it->second;
  }
  bpe->byte_fallback_ids_.assign(256, -1);
  if (bpe->byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      auto it = bpe->vocab_.find(absl::StrFormat("<0x%02X>", b));
      if (it != bpe->vocab_.end()) bpe->byte_fallback_ids_[static_cast<size_t>(b)] = it->second;
    }
  }

  // Merges: rank = position among the entries (a "#version" header line is skipped).
  JsonNode merges_node = model["merges"];
  ASSIGN_OR_RETURN(const boost::json::array* merges, merges_node.Array());
  bpe->merges_.reserve(merges->size());
  const size_t prefix_len = bpe->continuing_subword_prefix_.size();
  int32_t rank = 0;
  std::string_view a, b;
  std::string merged;
  for (size_t i = 0; i < merges->size(); ++i) {
    const boost::json::value& v = (*merges)[i];
    if (const auto* s = v.if_string(); s != nullptr && s->starts_with("#version")) continue;
    if (!ParseMergeEntry(v, &a, &b)) {
      return merges_node[i].Error(absl::StrCat(
          "a merge must be a string \"a b\" (one space) or a pair [\"a\", \"b\"], got ",
          v.is_string() ? absl::StrCat("\"", std::string(v.get_string()), "\"")
                        : std::string(merges_node[i].Kind())));
    }
    auto ia = bpe->vocab_.find(a);
    auto ib = bpe->vocab_.find(b);
    if (ia == bpe->vocab_.end() || ib == bpe->vocab_.end()) {
      return merges_node[i].Error(absl::StrCat("merge token \"", AsAbsl(ia == bpe->vocab_.end() ? a : b),
                                               "\" is not in the vocabulary"));
    }
    merged.assign(a);
    if (b.size() >= prefix_len) merged.append(b.substr(prefix_len));
    auto im = bpe->vocab_.find(merged);
    if (im == bpe->vocab_.end()) {
      return merges_node[i].Error(absl::StrCat("merged token \"", merged, "\" is not in the vocabulary"));
    }
    // A repeated pair keeps its last rank, as Hugging Face's map construction does.
    bpe->merges_[PairKey(ia->second, ib->second)] = Merge{rank, im->second};
    ++rank;
  }
  return bpe;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[static_cast<size_t>(id)]) {
    return nullptr;
  }
  return &id_to_token_[static_cast<size_t>(id)];
}

void BpeModel::InitialSymbols(std::string_view word, std::vector<int32_t>* syms) const {
  const bool affixes = !continuing_subword_prefix_.empty() || !end_of_word_suffix_.empty();
  // Pending unknown token (fused runs of unknown characters share one).
  bool unk_pending = false;
  std::string lookup;
  size_t i = 0;
  while (i < word.size()) {
    const size_t start = i;
    const uint32_t cp = NextCodePoint(word, &i);
    int32_t id = -1;
    std::string_view s = word.substr(start, i - start);
    if (!affixes) {
      if (cp < kSmallChars) {
        id = small_char_ids_[cp];
      } else if (auto it = vocab_.find(s); it != vocab_.end()) {
        id = it->second;
      }
    } else {
      lookup.clear();
      if (start != 0) lookup += continuing_subword_prefix_;
      lookup.append(s);
      if (i == word.size()) lookup += end_of_word_suffix_;
      s = lookup;
      if (auto it = vocab_.find(s); it != vocab_.end()) id = it->second;
    }
    if (id >= 0) {
      if (unk_pending) {
        syms->push_back(*unk_id_);
        unk_pending = false;
      }
      syms->push_back(id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : s) all = all && byte_fallback_ids_[c] >= 0;
      if (all) {
        // Note: Hugging Face does not flush a pending unknown token here.
        for (unsigned char c : s) syms->push_back(byte_fallback_ids_[c]);
        continue;
      }
    }
    if (unk_id_) {
      if (unk_pending && !fuse_unk_) syms->push_back(*unk_id_);
      unk_pending = true;
    }
    // Otherwise the character is dropped, as in Hugging Face.
  }
  if (unk_pending) syms->push_back(*unk_id_);
}

void BpeModel::MergeScan(std::vector<int32_t>* syms_ptr) const {
  std::vector<int32_t>& syms = *syms_ptr;
  if (syms.size() < 2) return;
  std::vector<int32_t> ranks(syms.size() - 1), new_ids(syms.size() - 1);
  auto compute = [&](size_t k) {
    const Merge* m = FindMerge(syms[k], syms[k + 1]);
    ranks[k] = m ? m->rank : kNoRank;
    new_ids[k] = m ? m->new_id : -1;
  };
  for (size_t k = 0; k + 1 < syms.size(); ++k) compute(k);
  while (!ranks.empty()) {
    size_t best = 0;
    for (size_t k = 1; k < ranks.size(); ++k) {
      if (ranks[k] < ranks[best]) best = k;
    }
    if (ranks[best] == kNoRank) break;
    syms[best] = new_ids[best];
    syms.erase(syms.begin() + static_cast<ptrdiff_t>(best) + 1);
    ranks.erase(ranks.begin() + static_cast<ptrdiff_t>(best));
    new_ids.erase(new_ids.begin() + static_cast<ptrdiff_t>(best));
    if (best < ranks.size()) compute(best);
    if (best > 0) compute(best - 1);
  }
}

void BpeModel::MergeHeap(std::vector<int32_t>* syms_ptr) const {
  std::vector<int32_t>& ids = *syms_ptr;
  const int32_t n = static_cast<int32_t>(ids.size());
  if (n < 2) return;
  std::vector<int32_t> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  std::vector<bool> alive(static_cast<size_t>(n), true);
  for (int32_t k = 0; k < n; ++k) {
    prev[static_cast<size_t>(k)] = k - 1;
    next[static_cast<size_t>(k)] = k + 1 < n ? k + 1 : -1;
  }
  struct Entry {
    int32_t rank, pos, new_id;
    // Min-heap on (rank, pos): the lowest rank first, the leftmost among equals.
    bool operator<(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Entry> queue;
  for (int32_t k = 0; k + 1 < n; ++k) {
    if (const Merge* m = FindMerge(ids[static_cast<size_t>(k)], ids[static_cast<size_t>(k) + 1])) {
      queue.push({m->rank, k, m->new_id});
    }
  }
  while (!queue.empty()) {
    Entry top = queue.top();
    queue.pop();
    const size_t pos = static_cast<size_t>(top.pos);
    if (!alive[pos] || next[pos] < 0) continue;
    const size_t right = static_cast<size_t>(next[pos]);
    // Skip entries made stale by an earlier merge.
    const Merge* current = FindMerge(ids[pos], ids[right]);
    if (current == nullptr || current->new_id != top.new_id) continue;
    ids[pos] = top.new_id;
    alive[right] = false;
    next[pos] = next[right];
    if (next[right] >= 0) prev[static_cast<size_t>(next[right])] = top.pos;
    if (prev[pos] >= 0) {
      const size_t left = static_cast<size_t>(prev[pos]);
      if (const Merge* m = FindMerge(ids[left], ids[pos])) queue.push({m->rank, prev[pos], m->new_id});
    }
    if (next[pos] >= 0) {
      if (const Merge* m = FindMerge(ids[pos], ids[static_cast<size_t>(next[pos])])) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
  size_t w = 0;
  for (int32_t k = 0; k >= 0; k = next[static_cast<size_t>(k)]) ids[w++] = ids[static_cast<size_t>(k)];
  ids.resize(w);
}

void BpeModel::MergeWord(std::string_view word, int mode, std::vector<int32_t>* out) const {
  std::vector<int32_t> syms;
  syms.reserve(word.size());
  InitialSymbols(word, &syms);
  bool scan = mode == kScan || (mode == kAuto && syms.size() <= kScanMaxSymbols);
  if (scan) {
    MergeScan(&syms);
  } else {
    MergeHeap(&syms);
  }
  out->insert(out->end(), syms.begin(), syms.end());
}

void BpeModel::TokenizeForTest(std::string_view word, bool use_scan, std::vector<int32_t>* out) const {
  MergeWord(word, use_scan ? kScan : kHeap, out);
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = out->size();
  MergeWord(word, kAuto, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() < kCacheCapacity) {
      cache_.emplace(word, std::vector<int32_t>(out->begin() + static_cast<ptrdiff_t>(before), out->end()));
    }
  }
}

}  // namespace deepshard::tokenizer_internal
