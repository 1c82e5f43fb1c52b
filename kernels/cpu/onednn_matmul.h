// oneDNN matmul with a cache of primitives keyed by shape, for the prefill path.
#pragma once

#include <cstdint>
#include <memory>

namespace deepshard::cpu {

// y[m, n] = x[m, k] · w[n, k]ᵀ where x and w are both f32 or both bf16 (uint16
// bit patterns) and y is f32. Strides are in elements. Primitives and their
// memory objects are created once per shape and reused (set_data_handle), so
// repeated calls at one shape do not allocate.
class OneDnnMatmul {
 public:
  OneDnnMatmul();
  ~OneDnnMatmul();
  // Whether this CPU has a bf16 matmul in oneDNN (AVX512-BF16 or AMX). oneDNN
  // 2.6 has none for AVX2-only CPUs.
  bool bf16_supported() const;
  void F32(const float* x, int64_t m, int64_t k, int64_t ldx, const float* w, int64_t n,
           int64_t ldw, bool w_transposed, float* y, int64_t ldy);
  void Bf16(const uint16_t* x, int64_t m, int64_t k, int64_t ldx, const uint16_t* w, int64_t n,
            int64_t ldw, bool w_transposed, float* y, int64_t ldy);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace deepshard::cpu
