#include "runtime/model/kv_cache.h"

namespace deepshard {

KvCache::KvCache(const ModelConfig& config, int64_t n_layers, int64_t capacity)
    : width_(config.kv_cache_width()), capacity_(capacity), data_(n_layers * capacity * width_) {}

}  // namespace deepshard
