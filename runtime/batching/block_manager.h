// BlockManager: which KV blocks of one DP slot's pool belong to which sequences.
//
// The pool holds n_blocks blocks of block_size tokens each. A sequence's
// blocks are listed, in token order, in its BlockTable (runtime/model/kv_cache.h),
// which the sequence owns; the manager keeps the free list and a refcount per
// block, so that sequences may share blocks (Fork now, prefix sharing later).
// It never touches KV memory: when a sequence must write into a block it
// shares, AppendSlots gives it a private copy and reports the copy to make
// (PagedKvCache does the memcpy).
//
// Every call that needs blocks either succeeds completely or returns
// ResourceExhausted and changes nothing, so a scheduler can preempt and retry.
//
//   BlockManager m(/*n_blocks=*/1024, /*block_size=*/64);
//   BlockTable t;
//   RETURN_IF_ERROR(m.AppendSlots(t, prompt_len, nullptr));   // prefill
//   RETURN_IF_ERROR(m.AppendSlots(t, 1, &copies));             // each decode step
//   m.Free(t);                                                  // finished or preempted
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "runtime/model/kv_cache.h"

namespace deepshard {

// A block that must be copied before a sequence writes into it (copy-on-write).
struct BlockCopy {
  int32_t src = 0, dst = 0;
};

class BlockManager {
 public:
  BlockManager(int64_t n_blocks, int64_t block_size);

  int64_t n_blocks() const { return static_cast<int64_t>(refcount_.size()); }
  int64_t block_size() const { return block_size_; }
  int64_t n_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t n_used() const { return n_blocks() - n_free(); }
  int refcount(int32_t block) const { return refcount_[block]; }
  // Blocks needed to hold n_tokens tokens.
  int64_t BlocksFor(int64_t n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }

  // Free blocks that AppendSlots(t, n) would take (new blocks, plus one if the
  // partly filled last block is shared and must be copied).
  int64_t BlocksNeeded(const BlockTable& t, int64_t n) const;
  bool CanAppend(const BlockTable& t, int64_t n) const { return BlocksNeeded(t, n) <= n_free(); }

  // A fresh table for n_tokens tokens (t must be empty): prefill.
  absl::Status Allocate(BlockTable& t, int64_t n_tokens) { return AppendSlots(t, n_tokens, nullptr); }
  // Reserves n more token slots at the end of t. If t's partly filled last block
  // is shared, t gets a private copy and {old, new} is appended to `copies`
  // (which may then not be null). ResourceExhausted, with t and the pool
  // unchanged, when the free blocks do not suffice.
  absl::Status AppendSlots(BlockTable& t, int64_t n, std::vector<BlockCopy>* copies);
  // A table sharing the blocks of t's first n_tokens tokens (each refcount + 1).
  BlockTable Fork(const BlockTable& t, int64_t n_tokens);
  BlockTable Fork(const BlockTable& t) { return Fork(t, t.n_tokens); }
  // Drops t's references (blocks whose count reaches 0 become free); t is emptied.
  void Free(BlockTable& t);

 private:
  int32_t Take();
  void Release(int32_t block);

  int64_t block_size_;
  std::vector<int32_t> free_;      // stack of free block ids
  std::vector<int32_t> refcount_;  // per block; 0 = free
};

}  // namespace deepshard
