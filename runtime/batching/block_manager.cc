#include "runtime/batching/block_manager.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {

BlockManager::BlockManager(int64_t n_blocks, int64_t block_size)
    : block_size_(block_size), refcount_(n_blocks, 0) {
  DS_CHECK(n_blocks >= 0 && block_size > 0);
  // Pushed in reverse so that a fresh pool hands out blocks 0, 1, 2, ...
  free_.reserve(n_blocks);
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

int32_t BlockManager::Take() {
  const int32_t b = free_.back();
  free_.pop_back();
  refcount_[b] = 1;
  return b;
}

void BlockManager::Release(int32_t b) {
  DS_CHECK(refcount_[b] > 0);
  if (--refcount_[b] == 0) free_.push_back(b);
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
  for (int32_t b : t.blocks) Release(b);
  t.blocks.clear();
  t.n_tokens = 0;
}

}  // namespace deepshard
