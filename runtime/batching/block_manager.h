// BlockManager: which KV blocks of one DP slot's pool belong to which sequences.
//
// The pool holds n_blocks blocks of block_size tokens each. A sequence's
// blocks are listed, in token order, in its BlockTable (runtime/model/kv_cache.h),
// which the sequence owns; the manager keeps the free list and a refcount per
// block, so that sequences may share blocks (Fork, and the prefix cache).
// It never touches KV memory: when a sequence must write into a block it
// shares, AppendSlots gives it a private copy and reports the copy to make
// (PagedKvCache does the memcpy).
//
// Every call that needs blocks either succeeds completely or returns
// ResourceExhausted and changes nothing, so a scheduler can preempt and retry.
//
// Prefix cache. A full block whose KV is written can be registered under the
// chain hash of its tokens and of every token before it (BlockHash, ChainHash;
// the caller computes it). When its refcount drops to 0 a registered block is
// not freed but becomes *cached*: evictable, in LRU order. Lookup finds a
// registered block (referenced or cached) by hash, comparing the stored parent
// hash and tokens exactly; AppendCached gives a table a reference to it (a
// cached block leaves the LRU). Taking a block uses the free list first and
// evicts the least recently used cached block (unregistering it) when the free
// list is empty. So every block is exactly one of: free, cached (refcount 0,
// registered) or referenced (refcount > 0, registered or not); n_free() counts
// free + cached blocks: what allocation can take.
//
//   BlockManager m(/*n_blocks=*/1024, /*block_size=*/64);
//   BlockTable t;
//   RETURN_IF_ERROR(m.AppendSlots(t, prompt_len, nullptr));   // prefill
//   RETURN_IF_ERROR(m.AppendSlots(t, 1, &copies));             // each decode step
//   m.Free(t);                                                  // finished or preempted
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "runtime/model/kv_cache.h"

namespace deepshard {

// A block that must be copied before a sequence writes into it (copy-on-write).
struct BlockCopy {
  int32_t src = 0, dst = 0;
};

// A full block's identity in the prefix cache: a 128-bit chain hash of the
// block's tokens and of everything before them.
struct BlockHash {
  uint64_t lo = 0, hi = 0;
  friend bool operator==(const BlockHash& a, const BlockHash& b) { return a.lo == b.lo && a.hi == b.hi; }
  template <typename H>
  friend H AbslHashValue(H h, const BlockHash& k) {
    return H::combine(std::move(h), k.lo, k.hi);
  }
};

// hash(parent, tokens): two independent 64-bit multiply-xorshift chains over
// the parent's hash, the tokens and their count. Deterministic; a chain starts
// from a root of the caller's choosing (the scheduler draws a random one, so
// hashes cannot be predicted from outside the process).
BlockHash ChainHash(const BlockHash& parent, std::span<const int32_t> tokens);

class BlockManager {
 public:
  BlockManager(int64_t n_blocks, int64_t block_size);

  int64_t n_blocks() const { return static_cast<int64_t>(refcount_.size()); }
  int64_t block_size() const { return block_size_; }
  // Blocks allocation can take: free plus cached (evictable).
  int64_t n_free() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  // Referenced blocks (refcount > 0).
  int64_t n_used() const { return n_blocks() - n_free(); }
  // Cached blocks: registered, refcount 0, evictable (a subset of n_free()).
  int64_t n_cached() const { return static_cast<int64_t>(lru_.size()); }
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
  // Drops t's references, last block first (blocks whose count reaches 0
  // become free, or cached when registered: a prefix's first blocks are then
  // evicted last); t is emptied.
  void Free(BlockTable& t);

  // Prefix cache (see above).
  // Registers full, referenced block b under `hash` (whose parent hash is
  // `parent`) with its block_size tokens. Returns false and changes nothing
  // when b is already registered or another block holds `hash` (a duplicate
  // stays unregistered and is freed as usual).
  bool Register(int32_t b, const BlockHash& hash, const BlockHash& parent, std::span<const int32_t> tokens);
  // The registered block for hash whose parent hash and tokens are exactly
  // these, or -1.
  int32_t Lookup(const BlockHash& hash, const BlockHash& parent, std::span<const int32_t> tokens) const;
  // Appends registered block b to t, which must end at a block boundary:
  // refcount + 1 (a cached block leaves the LRU), t.n_tokens += block_size.
  void AppendCached(BlockTable& t, int32_t b);
  bool registered(int32_t b) const { return entries_[b].registered; }
  bool is_cached(int32_t b) const { return entries_[b].registered && refcount_[b] == 0; }
  // Cached blocks evicted so far (taken for new data).
  int64_t n_evicted() const { return n_evicted_; }
  // Evicts every cached block (they become free).
  void ClearCache();

 private:
  struct Entry {
    bool registered = false;
    BlockHash hash, parent;
    std::vector<int32_t> tokens;
    std::list<int32_t>::iterator lru;  // valid while cached
  };
  int32_t Take();
  void Release(int32_t block);
  void Unregister(int32_t block);

  int64_t block_size_;
  std::vector<int32_t> free_;      // stack of free block ids
  std::vector<int32_t> refcount_;  // per block; 0 = free or cached
  std::vector<Entry> entries_;     // per block
  absl::flat_hash_map<BlockHash, int32_t> by_hash_;  // registered blocks
  std::list<int32_t> lru_;         // cached blocks, least recently used first
  int64_t n_evicted_ = 0;
};

}  // namespace deepshard
