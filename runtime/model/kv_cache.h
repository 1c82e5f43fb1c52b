// A sequence's KV cache: where its rows live, contiguous or in pool blocks.
//
// For MLA models a token's entry is exactly kv_lora_rank + qk_rope_head_dim
// values per layer: the normalised latent c_kv followed by the rotated shared
// key k_pe (576 for V2/V3). For the MHA model (DeepSeekMoE 16B) it is the full
// K then V of every KV head (ModelConfig::kv_cache_width()). Values are f32 or
// bf16 (--kv-cache-dtype); the memory is the backend's.
//
// Rows are found through a block table: token j of local layer l is row
//   slot(j) = block_table().blocks[j / block_size()] * block_size() + j % block_size()
// of layer(l). A contiguous cache is the case of one block of `capacity`
// tokens; a paged cache (runtime/batching/paged_kv_cache.h) is a view into a
// shared pool [layers][n_blocks][block_size][width] whose blocks the
// BlockManager hands out.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "runtime/config/model_config.h"

namespace deepshard {

// The blocks of one sequence, in token order: token j sits in blocks[j / block_size]
// at slot j % block_size. n_tokens is the number of slots reserved (written or
// about to be written); blocks.size() == ceil(n_tokens / block_size).
struct BlockTable {
  std::vector<int32_t> blocks;
  int64_t n_tokens = 0;
};

// "f32" or "bf16" (--kv-cache-dtype); errors name the flag's value.
absl::StatusOr<DType> ParseKvCacheDType(std::string_view text);

class KvCache {
 public:
  // Contiguous: owns [n_layers][capacity][width] in backend memory, room for
  // `capacity` tokens.
  static absl::StatusOr<std::unique_ptr<KvCache>> Contiguous(Backend& backend, const ModelConfig& config,
                                                             int64_t n_layers, int64_t capacity, DType dtype);
  // Paged: a view into `pool` = [n_layers][n_blocks][block_size][width] owned
  // elsewhere (layer_stride = n_blocks * block_size * width elements). Starts
  // empty: the owner of the pool fills block_table() before each step.
  KvCache(void* pool, DType dtype, int64_t n_layers, int64_t width, int64_t layer_stride, int64_t block_size);

  int64_t width() const { return width_; }              // values per token per layer
  DType dtype() const { return dtype_; }
  int64_t capacity() const { return table_.n_tokens; }  // tokens the cache has room for
  int64_t length() const { return length_; }            // tokens written so far
  void set_length(int64_t n) { length_ = n; }
  bool paged() const { return owned_.empty(); }
  bool contiguous() const { return !paged(); }

  // Addressing (see the file comment).
  KvLayer layer(int64_t l) const {
    return {static_cast<uint8_t*>(base_) + l * layer_stride_ * DTypeSize(dtype_), dtype_, width_};
  }
  int64_t block_size() const { return block_size_; }
  const BlockTable& block_table() const { return table_; }
  BlockTable& block_table() { return table_; }
  int64_t slot(int64_t j) const { return table_.blocks[j / block_size_] * block_size_ + j % block_size_; }

  // Bytes of the rows this cache holds (a paged cache: its blocks, shared or not).
  int64_t bytes() const;

 private:
  KvCache() = default;
  DType dtype_ = DType::kF32;
  int64_t width_ = 0, block_size_ = 0, layer_stride_ = 0, n_layers_ = 0;
  int64_t length_ = 0;
  BlockTable table_;
  Buffer owned_;  // contiguous storage; empty for a paged view
  void* base_ = nullptr;
};

}  // namespace deepshard
