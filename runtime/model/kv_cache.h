// A sequence's KV cache, contiguous per layer.
//
// For MLA models a token's entry is exactly kv_lora_rank + qk_rope_head_dim
// floats per layer: the normalised latent c_kv followed by the rotated shared
// key k_pe (576 for V2/V3). For the MHA model (DeepSeekMoE 16B) it is the full
// K then V of every KV head. The serving issue replaces this with a paged pool.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/config/model_config.h"

namespace deepshard {

class KvCache {
 public:
  // Room for `capacity` tokens in each of `n_layers` layers.
  KvCache(const ModelConfig& config, int64_t n_layers, int64_t capacity);

  int64_t width() const { return width_; }        // floats per token per layer
  int64_t capacity() const { return capacity_; }  // tokens
  int64_t length() const { return length_; }      // tokens written so far
  void set_length(int64_t n) { length_ = n; }
  // [capacity, width] block of layer `l` (local layer index).
  float* layer(int64_t l) { return data_.data() + l * capacity_ * width_; }
  const float* layer(int64_t l) const { return data_.data() + l * capacity_ * width_; }
  int64_t bytes() const { return static_cast<int64_t>(data_.size() * sizeof(float)); }

 private:
  int64_t width_, capacity_, length_ = 0;
  std::vector<float> data_;
};

}  // namespace deepshard
