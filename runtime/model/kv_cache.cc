#include "runtime/model/kv_cache.h"

#include <algorithm>
#include <cstring>

namespace deepshard {

KvCache::KvCache(const ModelConfig& config, int64_t n_layers, int64_t capacity)
    : width_(config.kv_cache_width()),
      block_size_(std::max<int64_t>(capacity, 1)),
      layer_stride_(capacity * width_),
      n_layers_(n_layers),
      owned_(new float[n_layers * capacity * width_]()) {
  base_ = owned_.get();
  table_.blocks = {0};
  table_.n_tokens = capacity;
}

KvCache::KvCache(float* pool, int64_t n_layers, int64_t width, int64_t layer_stride, int64_t block_size)
    : width_(width), block_size_(block_size), layer_stride_(layer_stride), n_layers_(n_layers), base_(pool) {}

int64_t KvCache::bytes() const {
  const int64_t rows = paged() ? static_cast<int64_t>(table_.blocks.size()) * block_size_ : capacity();
  return n_layers_ * rows * width_ * static_cast<int64_t>(sizeof(float));
}

void WriteKvRows(KvCache& cache, int64_t l, int64_t pos, int64_t n, const float* src) {
  const int64_t W = cache.width(), bs = cache.block_size();
  while (n > 0) {
    const int64_t run = std::min(n, bs - pos % bs);  // rows left in this block
    std::memcpy(cache.row(l, pos), src, run * W * sizeof(float));
    src += run * W, pos += run, n -= run;
  }
}

void GatherKvRows(const KvCache& cache, int64_t l, int64_t n, float* dst) {
  const int64_t W = cache.width(), bs = cache.block_size();
  for (int64_t pos = 0; pos < n;) {
    const int64_t run = std::min(n - pos, bs - pos % bs);
    std::memcpy(dst + pos * W, cache.row(l, pos), run * W * sizeof(float));
    pos += run;
  }
}

}  // namespace deepshard
