// Decode GEMV and weight widening for code outside the backend (tests, tools),
// on the active kernel level (kernels/cpu/cpu_kernels.h has every level's).
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/tensor.h"

namespace deepshard::cpu {

// y[m, w.rows] = x[m, w.cols] · wᵀ for m <= kGemvMaxM; parallel over rows of w.
inline void GemvRows(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  ActiveCpuKernels().gemv_rows(x, m, ldx, w, y, ldy);
}
// y[m, w.cols] = x[m, w.rows] · w for m <= kGemvMaxM (the weight used
// untransposed, as in MLA's absorbed query).
inline void GemvCols(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  ActiveCpuKernels().gemv_cols(x, m, ldx, w, y, ldy);
}
// Widens rows [r0, r0 + n) of w to f32 into dst[n, w.cols] (dequantising FP8).
inline void WidenRowsF32(const WeightView& w, int64_t r0, int64_t n, float* dst) {
  ActiveCpuKernels().widen_rows_f32(w, r0, n, dst);
}
// Same, to bf16 (uint16 bit patterns, round-to-nearest-even).
inline void WidenRowsBf16(const WeightView& w, int64_t r0, int64_t n, uint16_t* dst) {
  ActiveCpuKernels().widen_rows_bf16(w, r0, n, dst);
}

}  // namespace deepshard::cpu
