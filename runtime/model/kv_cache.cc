#include "runtime/model/kv_cache.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/checked_math.h"
#include "base/status_macros.h"

namespace deepshard {

absl::StatusOr<DType> ParseKvCacheDType(std::string_view text) {
  if (text == "f32" || text == "float32") return DType::kF32;
  if (text == "bf16" || text == "bfloat16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("--kv-cache-dtype must be f32 or bf16, got \"", std::string(text), "\""));
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Contiguous(Backend& backend, const ModelConfig& config,
                                                             int64_t n_layers, int64_t capacity, DType dtype) {
  const std::string what = absl::StrCat("a KV cache of ", capacity, " tokens");
  ASSIGN_OR_RETURN(const int64_t stride, CheckedMul({capacity, config.kv_cache_width()}, what));
  ASSIGN_OR_RETURN(const int64_t bytes, CheckedMul({n_layers, stride, static_cast<int64_t>(DTypeSize(dtype))}, what));
  auto c = std::unique_ptr<KvCache>(new KvCache());
  c->dtype_ = dtype;
  c->width_ = config.kv_cache_width();
  c->block_size_ = std::max<int64_t>(capacity, 1);
  c->layer_stride_ = stride;
  c->n_layers_ = n_layers;
  auto buf = backend.Allocate(bytes, what);
  if (!buf.ok()) return buf.status();
  c->owned_ = *std::move(buf);
  c->base_ = c->owned_.data();
  c->table_.blocks = {0};
  c->table_.n_tokens = capacity;
  return c;
}

KvCache::KvCache(void* pool, DType dtype, int64_t n_layers, int64_t width, int64_t layer_stride, int64_t block_size)
    : dtype_(dtype), width_(width), block_size_(block_size), layer_stride_(layer_stride), n_layers_(n_layers),
      base_(pool) {}

int64_t KvCache::bytes() const {
  const int64_t rows = paged() ? static_cast<int64_t>(table_.blocks.size()) * block_size_ : capacity();
  return n_layers_ * rows * width_ * DTypeSize(dtype_);
}

}  // namespace deepshard
