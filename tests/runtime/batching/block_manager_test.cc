// BlockManager: allocation, growth, sharing, copy-on-write, exhaustion, and a
// long random workload after which every block must be free again.
#include "runtime/batching/block_manager.h"

#include <map>
#include <random>

#include "gtest/gtest.h"

namespace deepshard {
namespace {

TEST(BlockManager, GrowsOneBlockPerBlockSizeTokens) {
  BlockManager m(8, 4);
  BlockTable t;
  ASSERT_TRUE(m.Allocate(t, 5).ok());
  EXPECT_EQ(t.blocks, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(t.n_tokens, 5);
  EXPECT_EQ(m.n_used(), 2);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(m.AppendSlots(t, 1, nullptr).ok());  // fills block 1
  EXPECT_EQ(t.blocks.size(), 2u);
  ASSERT_TRUE(m.AppendSlots(t, 1, nullptr).ok());
  EXPECT_EQ(t.blocks.size(), 3u);
  EXPECT_EQ(m.BlocksNeeded(t, 3), 0);
  EXPECT_EQ(m.BlocksNeeded(t, 4), 1);
  m.Free(t);
  EXPECT_TRUE(t.blocks.empty());
  EXPECT_EQ(t.n_tokens, 0);
  EXPECT_EQ(m.n_free(), 8);
}

TEST(BlockManager, OutOfBlocksIsResourceExhaustedAndChangesNothing) {
  BlockManager m(3, 4);
  BlockTable a, b;
  ASSERT_TRUE(m.Allocate(a, 8).ok());
  const auto st = m.Allocate(b, 5);  // needs 2, 1 free
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(std::string(st.message()).find("1 of 3 are free"), std::string::npos) << st;
  EXPECT_TRUE(b.blocks.empty());
  EXPECT_EQ(b.n_tokens, 0);
  EXPECT_EQ(m.n_free(), 1);
  EXPECT_EQ(m.AppendSlots(a, 5, nullptr).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(a.n_tokens, 8);
  EXPECT_EQ(a.blocks.size(), 2u);
  EXPECT_TRUE(m.AppendSlots(a, 4, nullptr).ok());
  EXPECT_EQ(m.n_free(), 0);
}

TEST(BlockManager, ForkSharesBlocksAndCopiesAPartlyFilledOneBeforeWriting) {
  BlockManager m(8, 4);
  BlockTable a;
  ASSERT_TRUE(m.Allocate(a, 6).ok());  // blocks 0 (full), 1 (2 of 4)
  BlockTable f = m.Fork(a);
  EXPECT_EQ(f.blocks, a.blocks);
  EXPECT_EQ(m.refcount(0), 2);
  EXPECT_EQ(m.refcount(1), 2);
  EXPECT_EQ(m.n_used(), 2);
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(m.AppendSlots(f, 1, &copies).ok());  // f writes slot 6: block 1 is shared
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, 1);
  EXPECT_EQ(copies[0].dst, f.blocks[1]);
  EXPECT_NE(f.blocks[1], 1);
  EXPECT_EQ(f.blocks[0], 0);
  EXPECT_EQ(m.refcount(1), 1);
  copies.clear();
  ASSERT_TRUE(m.AppendSlots(a, 1, &copies).ok());  // a's block 1 is its own again
  EXPECT_TRUE(copies.empty());
  // A fork at a block boundary copies nothing: the next token opens a new block.
  BlockTable g = m.Fork(a, 4);
  EXPECT_EQ(g.blocks, (std::vector<int32_t>{0}));
  ASSERT_TRUE(m.AppendSlots(g, 1, &copies).ok());
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(m.refcount(0), 3);
  m.Free(a);
  m.Free(f);
  EXPECT_EQ(m.refcount(0), 1);
  m.Free(g);
  EXPECT_EQ(m.n_free(), 8);
}

TEST(BlockManager, CopyOnWriteCountsTowardsTheBlocksNeeded) {
  BlockManager m(3, 4);
  BlockTable a;
  ASSERT_TRUE(m.Allocate(a, 6).ok());
  BlockTable f = m.Fork(a);
  EXPECT_EQ(m.BlocksNeeded(f, 3), 2);  // a copy of block 1, then a new block
  std::vector<BlockCopy> copies;
  EXPECT_EQ(m.AppendSlots(f, 3, &copies).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(m.refcount(1), 2);
  EXPECT_TRUE(m.AppendSlots(f, 2, &copies).ok());
  m.Free(a);
  m.Free(f);
  EXPECT_EQ(m.n_free(), 3);
}

// Registered blocks outlive their tables as cached (evictable) blocks, count as
// free, are found again only with the same parent and tokens, and are evicted
// least recently used first once the free list is empty.
TEST(BlockManager, PrefixCacheKeepsRegisteredBlocksUntilEvicted) {
  BlockManager m(3, 2);
  BlockTable a;
  ASSERT_TRUE(m.Allocate(a, 4).ok());  // blocks 0, 1
  const std::vector<int32_t> t0 = {1, 2}, t1 = {3, 4};
  const BlockHash root{7, 9};
  const BlockHash h0 = ChainHash(root, t0), h1 = ChainHash(h0, t1);
  EXPECT_FALSE(h0 == h1);
  EXPECT_TRUE(ChainHash(root, t0) == h0);           // deterministic
  EXPECT_FALSE(ChainHash(BlockHash{}, t0) == h0);  // depends on the parent
  EXPECT_TRUE(m.Register(a.blocks[0], h0, root, t0));
  EXPECT_TRUE(m.Register(a.blocks[1], h1, h0, t1));
  EXPECT_FALSE(m.Register(a.blocks[1], h1, h0, t1));  // already registered
  EXPECT_EQ(m.Lookup(h0, root, t0), 0);
  EXPECT_EQ(m.Lookup(h1, h0, t1), 1);
  EXPECT_EQ(m.Lookup(h1, h0, t0), -1);    // same hash, other tokens: a collision is no hit
  EXPECT_EQ(m.Lookup(h1, root, t1), -1);  // other parent
  m.Free(a);
  EXPECT_EQ(m.n_cached(), 2);
  EXPECT_EQ(m.n_free(), 3);
  EXPECT_EQ(m.n_used(), 0);
  EXPECT_TRUE(m.is_cached(0));
  // A table takes cached block 0 back; then needs two more blocks: the free
  // one, then an eviction of block 1 (the only cached one left).
  BlockTable b;
  m.AppendCached(b, 0);
  EXPECT_EQ(b.n_tokens, 2);
  EXPECT_EQ(m.refcount(0), 1);
  EXPECT_EQ(m.n_cached(), 1);
  ASSERT_TRUE(m.AppendSlots(b, 3, nullptr).ok());
  EXPECT_EQ(m.n_evicted(), 1);
  EXPECT_EQ(m.Lookup(h1, h0, t1), -1);  // evicted: unregistered
  EXPECT_FALSE(m.registered(1));
  EXPECT_EQ(m.n_free(), 0);
  EXPECT_EQ(m.AppendSlots(b, 2, nullptr).code(), absl::StatusCode::kResourceExhausted);
  m.Free(b);
  EXPECT_EQ(m.n_cached(), 1);  // block 0 again
  m.ClearCache();
  EXPECT_EQ(m.n_cached(), 0);
  EXPECT_EQ(m.Lookup(h0, root, t0), -1);
  EXPECT_EQ(m.n_free(), 3);
}

// 1,000 requests through a 200-block pool: random prompt lengths, growth one
// token at a time or in chunks, forks, random finish order, and preemption
// whenever the pool runs dry. Refcounts are checked against the live tables
// throughout; at the end every block must be free.
TEST(BlockManager, ThousandRandomRequestsReturnEveryBlock) {
  constexpr int64_t kBlocks = 200, kBlockSize = 16;
  BlockManager m(kBlocks, kBlockSize);
  std::mt19937 rng(1234);
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  std::map<int, BlockTable> live;
  int admitted = 0, next_id = 0, exhausted = 0, preempted = 0, forks = 0, finished = 0;
  auto check = [&] {
    std::vector<int> refs(kBlocks, 0);
    for (const auto& [id, t] : live) {
      EXPECT_EQ(static_cast<int64_t>(t.blocks.size()), m.BlocksFor(t.n_tokens));
      for (int32_t b : t.blocks) ++refs[b];
    }
    int64_t used = 0;
    for (int32_t b = 0; b < kBlocks; ++b) {
      ASSERT_EQ(refs[b], m.refcount(b)) << "block " << b;
      used += refs[b] > 0;
    }
    ASSERT_EQ(used, m.n_used());
  };
  auto random_live = [&] {
    auto it = live.begin();
    std::advance(it, uniform(0, static_cast<int64_t>(live.size()) - 1));
    return it;
  };
  auto preempt = [&] {
    if (live.empty()) return;
    auto it = random_live();
    m.Free(it->second);
    live.erase(it);
    ++preempted;
  };
  std::vector<BlockCopy> copies;
  while (admitted < 1000 || !live.empty()) {
    const int64_t action = uniform(0, 9);
    if (admitted < 1000 && (action < 3 || live.empty())) {
      BlockTable t;
      const auto st = m.Allocate(t, uniform(1, 300));
      if (st.ok()) {
        live[next_id++] = std::move(t);
        ++admitted;
      } else {
        ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
        ASSERT_TRUE(t.blocks.empty());
        ++exhausted;
        preempt();
      }
    } else if (action < 7) {  // a decode step (or a prefill chunk) for one sequence
      auto it = random_live();
      const int64_t before = m.n_free();
      const auto st = m.AppendSlots(it->second, uniform(0, 3) == 0 ? uniform(2, 40) : 1, &copies);
      if (!st.ok()) {
        ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
        ASSERT_EQ(m.n_free(), before);
        ++exhausted;
        preempt();
      }
    } else if (action == 7 && uniform(0, 3) == 0) {
      auto it = random_live();
      live[next_id++] = m.Fork(it->second, uniform(0, it->second.n_tokens));
      ++forks;
    } else {  // finishes (or is cancelled) in random order
      auto it = random_live();
      m.Free(it->second);
      live.erase(it);
      ++finished;
    }
    if ((admitted + finished) % 50 == 0) check();
  }
  check();
  EXPECT_EQ(m.n_free(), kBlocks);
  for (int32_t b = 0; b < kBlocks; ++b) EXPECT_EQ(m.refcount(b), 0);
  // The workload did exercise every path.
  EXPECT_GT(exhausted, 0);
  EXPECT_GT(preempted, 0);
  EXPECT_GT(forks, 0);
  EXPECT_GT(copies.size(), 0u);
  std::printf("admitted %d, finished %d, forks %d, out-of-blocks %d, preempted %d, copies %zu\n", admitted, finished,
              forks, exhausted, preempted, copies.size());
}

}  // namespace
}  // namespace deepshard
