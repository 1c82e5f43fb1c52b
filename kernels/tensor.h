// Plain views over tensors owned by someone else (mmapped files, buffers).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace deepshard {

// A 2-D weight in its stored dtype, row-major [rows, cols]. A torch Linear
// weight is [out_features, in_features].
//
// FP8 weights carry DeepSeek-V3 block scales: `scale_inv` is F32
// [ceil(total_rows / block), ceil(cols / block)] and element (r, c) is
// fp8(r, c) * scale_inv[r / block][c / block]; edge blocks may be partial.
//
// Group-quantised weights (DType::kQ8, kQ4; kernels/quant.h) carry one f16
// scale per `group` columns of each row: `qscale` is [total_rows, cols /
// group], element (r, g) at qscale[r * (cols / group) + g].
//
// `row0` lets a view select a row range (one head's slice of kv_b_proj, one
// tile) without losing track of which scale block a row falls in.
struct WeightView {
  DType dtype = DType::kF32;
  const void* data = nullptr;  // points at physical row 0
  int64_t rows = 0;            // logical rows in this view
  int64_t cols = 0;
  int64_t row0 = 0;            // first physical row of the view
  const float* scale_inv = nullptr;  // FP8 only
  int64_t block = 128;               // FP8 block edge (rows and cols)
  const uint16_t* qscale = nullptr;  // kQ8/kQ4 only: f16 scales
  int64_t group = 0;                 // kQ8/kQ4 only: columns per scale

  // Rows [r, r + n) of this view.
  WeightView Rows(int64_t r, int64_t n) const {
    WeightView v = *this;
    v.row0 = row0 + r;
    v.rows = n;
    return v;
  }
  // Pointer to the first element of logical row r (not valid for scales).
  const uint8_t* RowPtr(int64_t r) const {
    return static_cast<const uint8_t*>(data) + (row0 + r) * RowBytes(dtype, cols);
  }
  int64_t scale_cols() const { return (cols + block - 1) / block; }
  int64_t bytes() const { return rows * RowBytes(dtype, cols); }
  // Bytes of a quantised view's scales (0 for other dtypes).
  int64_t qscale_bytes() const { return qscale != nullptr ? rows * (cols / group) * 2 : 0; }
  bool empty() const { return data == nullptr; }
};

// A 1-D vector of weights (norm gammas, biases) in its stored dtype.
struct VectorView {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t size = 0;
  float At(int64_t i) const;
  bool empty() const { return data == nullptr; }
};

inline float VectorView::At(int64_t i) const {
  float f;
  ConvertToF32(dtype, static_cast<const uint8_t*>(data) + i * DTypeSize(dtype), &f, 1);
  return f;
}

// SwiGLU MLP: down(silu(gate(x)) * up(x)). Dense layers, routed and shared experts.
struct MlpWeights {
  WeightView gate_proj;  // [inter, hidden]
  WeightView up_proj;    // [inter, hidden]
  WeightView down_proj;  // [hidden, inter]
};

}  // namespace deepshard
