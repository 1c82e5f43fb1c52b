// A sequence's KV cache: where its rows live, contiguous or in pool blocks.
//
// For MLA models a token's entry is exactly kv_lora_rank + qk_rope_head_dim
// floats per layer: the normalised latent c_kv followed by the rotated shared
// key k_pe (576 for V2/V3). For the MHA model (DeepSeekMoE 16B) it is the full
// K then V of every KV head (ModelConfig::kv_cache_width()).
//
// Rows are found through a block table. Token j of local layer l is at
//   layer_base(l) + block_table().blocks[j / block_size()] * block_stride()
//                 + (j % block_size()) * width()
// A contiguous cache is the case of one block of `capacity` tokens; a paged
// cache (runtime/engine/paged_kv_cache.h) is a view into a shared pool
// [layers][n_blocks][block_size][width] whose blocks the BlockManager hands out.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/config/model_config.h"

namespace deepshard {

// The blocks of one sequence, in token order: token j sits in blocks[j / block_size]
// at slot j % block_size. n_tokens is the number of slots reserved (written or
// about to be written); blocks.size() == ceil(n_tokens / block_size).
struct BlockTable {
  std::vector<int32_t> blocks;
  int64_t n_tokens = 0;
};

class KvCache {
 public:
  // Contiguous: owns [n_layers][capacity][width], room for `capacity` tokens.
  KvCache(const ModelConfig& config, int64_t n_layers, int64_t capacity);
  // Paged: a view into `pool` = [n_layers][n_blocks][block_size][width] owned
  // elsewhere (layer_stride = n_blocks * block_size * width). Starts empty: the
  // owner of the pool fills block_table() before each step.
  KvCache(float* pool, int64_t n_layers, int64_t width, int64_t layer_stride, int64_t block_size);

  int64_t width() const { return width_; }                   // floats per token per layer
  int64_t capacity() const { return table_.n_tokens; }       // tokens the cache has room for
  int64_t length() const { return length_; }                 // tokens written so far
  void set_length(int64_t n) { length_ = n; }
  bool paged() const { return owned_ == nullptr; }
  // True when rows [0, capacity) are one run at layer_base(l) (an owned cache).
  bool contiguous() const { return !paged(); }

  // Addressing (see the file comment).
  float* layer_base(int64_t l) const { return base_ + l * layer_stride_; }
  int64_t block_size() const { return block_size_; }
  int64_t block_stride() const { return block_size_ * width_; }  // floats between blocks
  const BlockTable& block_table() const { return table_; }
  BlockTable& block_table() { return table_; }
  float* row(int64_t l, int64_t pos) const {
    return layer_base(l) + table_.blocks[pos / block_size_] * block_stride() + (pos % block_size_) * width_;
  }

  // Bytes of the rows this cache holds (a paged cache: its blocks, shared or not).
  int64_t bytes() const;

 private:
  int64_t width_, block_size_, layer_stride_, n_layers_;
  int64_t length_ = 0;
  BlockTable table_;
  std::unique_ptr<float[]> owned_;  // contiguous storage; null for a paged view
  float* base_ = nullptr;
};

// Copies rows [pos, pos + n) of layer l from `src` (row stride `width`) into the
// cache, one memcpy per block run.
void WriteKvRows(KvCache& cache, int64_t l, int64_t pos, int64_t n, const float* src);
// Copies rows [0, n) of layer l into `dst` ([n, width]), one memcpy per block run.
void GatherKvRows(const KvCache& cache, int64_t l, int64_t n, float* dst);

}  // namespace deepshard
