#include "runtime/batching/block_manager.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {

namespace {

// splitmix64's finaliser: a bijective mix with full avalanche.
uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

}  // namespace

BlockHash ChainHash(const BlockHash& parent, std::span<const int32_t> tokens) {
  uint64_t a = Mix(parent.lo ^ 0x9e3779b97f4a7c15ull), b = Mix(parent.hi + 0x632be59bd9b4e019ull);
  for (int32_t t : tokens) {
    const uint64_t v = static_cast<uint32_t>(t);
    a = Mix(a ^ (v * 0xd6e8feb86659fd93ull));
    b = Mix((b + v) * 0xa0761d6478bd642full ^ (b >> 29));
  }
  a = Mix(a ^ tokens.size());
  b = Mix(b + (static_cast<uint64_t>(tokens.size()) << 32));
  return {a, b};
}

BlockManager::BlockManager(int64_t n_blocks, int64_t block_size)
    : block_size_(block_size), refcount_(n_blocks, 0), entries_(n_blocks) {
  DS_CHECK(n_blocks >= 0 && block_size > 0);
  // Pushed in reverse so that a fresh pool hands out blocks 0, 1, 2, ...
  free_.reserve(n_blocks);
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

int32_t BlockManager::Take() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    DS_CHECK(!lru_.empty());
    b = lru_.front();
    Unregister(b);  // leaves the LRU
    ++n_evicted_;
  }
  refcount_[b] = 1;
  return b;
}

void BlockManager::Release(int32_t b) {
  DS_CHECK(refcount_[b] > 0);
  if (--refcount_[b] > 0) return;
  Entry& e = entries_[b];
  if (e.registered) {
    e.lru = lru_.insert(lru_.end(), b);  // most recently used
  } else {
    free_.push_back(b);
  }
}

void BlockManager::Unregister(int32_t b) {
  Entry& e = entries_[b];
  DS_CHECK(e.registered);
  if (refcount_[b] == 0) lru_.erase(e.lru);
  by_hash_.erase(e.hash);
  e.registered = false;
  e.tokens.clear();
}

bool BlockManager::Register(int32_t b, const BlockHash& hash, const BlockHash& parent,
                            std::span<const int32_t> tokens) {
  DS_CHECK(refcount_[b] > 0 && static_cast<int64_t>(tokens.size()) == block_size_);
  Entry& e = entries_[b];
  if (e.registered || by_hash_.contains(hash)) return false;
  e.registered = true;
  e.hash = hash;
  e.parent = parent;
  e.tokens.assign(tokens.begin(), tokens.end());
  by_hash_.emplace(hash, b);
  return true;
}

int32_t BlockManager::Lookup(const BlockHash& hash, const BlockHash& parent, std::span<const int32_t> tokens) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  const Entry& e = entries_[it->second];
  if (!(e.parent == parent) || !std::equal(e.tokens.begin(), e.tokens.end(), tokens.begin(), tokens.end())) {
    return -1;  // a hash collision: not the same prefix
  }
  return it->second;
}

void BlockManager::AppendCached(BlockTable& t, int32_t b) {
  DS_CHECK(entries_[b].registered && t.n_tokens % block_size_ == 0 &&
           static_cast<int64_t>(t.blocks.size()) == BlocksFor(t.n_tokens));
  if (refcount_[b]++ == 0) lru_.erase(entries_[b].lru);
  t.blocks.push_back(b);
  t.n_tokens += block_size_;
}

void BlockManager::ClearCache() {
  while (!lru_.empty()) {
    const int32_t b = lru_.front();
    Unregister(b);
    free_.push_back(b);
  }
}

int64_t BlockManager::BlocksNeeded(const BlockTable& t, int64_t n) const {
  const int64_t grow = BlocksFor(t.n_tokens + n) - static_cast<int64_t>(t.blocks.size());
  const bool cow = n > 0 && t.n_tokens % block_size_ != 0 && refcount_[t.blocks.back()] > 1;
  return grow + (cow ? 1 : 0);
}

absl::Status BlockManager::AppendSlots(BlockTable& t, int64_t n, std::vector<BlockCopy>* copies) {
  DS_CHECK(n >= 0 && static_cast<int64_t>(t.blocks.size()) == BlocksFor(t.n_tokens));
  const int64_t need = BlocksNeeded(t, n);
  if (need > n_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache out of blocks: ", n, " more tokens after ",
                                                     t.n_tokens, " need ", need, " blocks of ", block_size_,
                                                     " tokens, ", n_free(), " of ", n_blocks(), " are free"));
  }
  if (n > 0 && t.n_tokens % block_size_ != 0 && refcount_[t.blocks.back()] > 1) {
    DS_CHECK(copies != nullptr);
    const int32_t shared = t.blocks.back();
    t.blocks.back() = Take();
    Release(shared);
    copies->push_back({shared, t.blocks.back()});
  }
  t.n_tokens += n;
  while (static_cast<int64_t>(t.blocks.size()) < BlocksFor(t.n_tokens)) t.blocks.push_back(Take());
  return absl::OkStatus();
}

BlockTable BlockManager::Fork(const BlockTable& t, int64_t n_tokens) {
  DS_CHECK(n_tokens >= 0 && n_tokens <= t.n_tokens);
  BlockTable f;
  f.n_tokens = n_tokens;
  f.blocks.assign(t.blocks.begin(), t.blocks.begin() + BlocksFor(n_tokens));
  for (int32_t b : f.blocks) ++refcount_[b];
  return f;
}

void BlockManager::Free(BlockTable& t) {
  for (auto it = t.blocks.rbegin(); it != t.blocks.rend(); ++it) Release(*it);
  t.blocks.clear();
  t.n_tokens = 0;
}

}  // namespace deepshard
