// PagedKvCache: one DP slot's KV pool and the per-sequence views into it.
//
// Memory is [layers][n_blocks][block_size][width] values (f32 or bf16, in the
// backend's memory), width =
// ModelConfig::kv_cache_width() (the 576-float latent c_kv | k_pe of MLA, or
// K | V for the MHA model). Layer-major because a forward step walks the layers
// one at a time: layer l of every sequence in the batch lies in one region of
// n_blocks * block_size * width floats, and each layer is exactly the paged
// tensor [n_blocks, block_size, width] that paged-attention kernels (FlashMLA's
// included) take with a block table. Within a block a sequence's rows are
// contiguous, so decode reads block_size * width floats per block in one run.
//
//   ASSIGN_OR_RETURN(auto pool, PagedKvCache::FromBudget(backend, config, n_layers, 64, bytes, DType::kBF16));
//   auto seq = pool->NewSequence();
//   RETURN_IF_ERROR(pool->Reserve(*seq, prompt_len));  // ResourceExhausted: preempt
//   SequenceChunk ch{seq.get(), 0, prompt, prompt_len};
//   model.Forward({&ch, 1}, ...);
//   pool->Free(*seq);
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/config/model_config.h"
#include "runtime/batching/block_manager.h"
#include "runtime/model/kv_cache.h"

namespace deepshard {

// "4GiB", "512MiB", "64KiB", "2GB" (10^9), "4096" (bytes). Errors name the text.
absl::StatusOr<int64_t> ParseByteSize(std::string_view text);

class PagedKvCache {
 public:
  // A pool of n_blocks blocks for `n_layers` (local) layers, allocated from `backend`.
  static absl::StatusOr<std::unique_ptr<PagedKvCache>> Create(Backend& backend, const ModelConfig& config,
                                                              int64_t n_layers, int64_t block_size, int64_t n_blocks,
                                                              DType dtype);
  // As many blocks as fit in `budget_bytes` (--kv-cache-memory); InvalidArgument
  // if not even one does.
  static absl::StatusOr<std::unique_ptr<PagedKvCache>> FromBudget(Backend& backend, const ModelConfig& config,
                                                                  int64_t n_layers, int64_t block_size,
                                                                  int64_t budget_bytes, DType dtype);
  static int64_t BytesPerBlock(const ModelConfig& config, int64_t n_layers, int64_t block_size, DType dtype) {
    return n_layers * block_size * config.kv_cache_width() * DTypeSize(dtype);
  }

  int64_t n_layers() const { return n_layers_; }
  int64_t width() const { return width_; }
  int64_t block_size() const { return blocks_.block_size(); }
  int64_t n_blocks() const { return blocks_.n_blocks(); }
  DType dtype() const { return dtype_; }
  int64_t bytes() const { return n_layers_ * n_blocks() * block_size() * width_ * DTypeSize(dtype_); }
  const BlockManager& blocks() const { return blocks_; }

  // An empty sequence (no blocks) viewing this pool.
  std::unique_ptr<KvCache> NewSequence();
  // Reserves slots for n more tokens of `seq` (do it before the step that
  // writes them); copies a shared partly filled last block first.
  // ResourceExhausted, with nothing changed, when the pool is out of blocks.
  absl::Status Reserve(KvCache& seq, int64_t n);
  // A new sequence with seq's tokens, sharing its blocks (refcounts).
  std::unique_ptr<KvCache> Fork(const KvCache& seq);
  // Returns seq's blocks to the pool (finished or preempted); seq is empty after.
  void Free(KvCache& seq);

  // For an owner that keeps the block accounting elsewhere (the serving
  // scheduler on rank 0, which sends tables with each step): makes the
  // copy-on-write copies it decided on, every layer.
  void ApplyCopies(const std::vector<BlockCopy>& copies) {
    for (const BlockCopy& c : copies) CopyBlock(c.src, c.dst);
  }

 private:
  PagedKvCache(Backend& backend, const ModelConfig& config, int64_t n_layers, int64_t block_size, int64_t n_blocks,
               DType dtype);
  void CopyBlock(int32_t src, int32_t dst);

  Backend& backend_;
  int64_t n_layers_, width_;
  DType dtype_;
  BlockManager blocks_;
  Buffer pool_;  // backend memory, not zeroed: rows are read only after they are written
  std::vector<BlockCopy> copies_;  // scratch for Reserve
};

}  // namespace deepshard
