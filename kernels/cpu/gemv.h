// Small-M matrix multiply against weights in their stored dtype: the decode path.
//
// Why hand-written: with M = 1..8 rows a GEMM is a stream over the weights, and
// the cost is the bytes read. oneDNN 2.6 reorders a transposed ("ba") weight
// into its blocked layout on every call, which reads the weights twice; and it
// has no FP8 at all. This kernel reads each weight row once, widens it to f32 in
// registers (bf16, f16, fp8 e4m3 with block scales) and accumulates in f32 for
// all M rows at once, so decode runs at memory bandwidth and matches a float32
// reference up to summation order.
#pragma once

#include <cstdint>

#include "kernels/tensor.h"

namespace deepshard::cpu {

inline constexpr int64_t kGemvMaxM = 8;

// y[m, w.rows] = x[m, w.cols] · wᵀ for m <= kGemvMaxM; parallel over rows of w.
void GemvRows(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy);

// y[m, w.cols] = x[m, w.rows] · w for m <= kGemvMaxM (the weight used
// untransposed, as in MLA's absorbed query); parallel over column blocks.
void GemvCols(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy);

// Widens rows [r0, r0 + n) of w to f32 into dst[n, w.cols] (dequantising FP8).
void WidenRowsF32(const WeightView& w, int64_t r0, int64_t n, float* dst);
// Same, to bf16 (uint16 bit patterns, round-to-nearest-even).
void WidenRowsBf16(const WeightView& w, int64_t r0, int64_t n, uint16_t* dst);

}  // namespace deepshard::cpu
