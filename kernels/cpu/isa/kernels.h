// The functions of one ISA level's kernel table (kernels/cpu/cpu_kernels.h),
// declared in that level's namespace. Included only by kernels/cpu/isa/*.cc.
#pragma once

#include <omp.h>

#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

#ifndef DS_ISA_NS
#error "kernels/cpu/isa/kernels.h is for the per-ISA kernel files only"
#endif

namespace deepshard::cpu::DS_ISA_NS {

// [begin, end) of part `t` of `n` equal parts of [0, total), ends rounded to `align`.
inline void Part(int64_t total, int t, int n, int64_t align, int64_t* begin, int64_t* end) {
  const int64_t units = (total + align - 1) / align;
  const int64_t b = units * t / n * align, e = units * (t + 1) / n * align;
  *begin = b < total ? b : total;
  *end = e < total ? e : total;
}

// f(begin, end) over [0, total): on this thread when `serial`, else once per
// thread on its Part (ends multiples of `align`) in one parallel region.
template <typename F>
void ForEachSlab(int64_t total, int64_t align, bool serial, F&& f) {
  if (serial || omp_get_max_threads() == 1) {
    f(int64_t{0}, total);
    return;
  }
#pragma omp parallel
  {
    int64_t b, e;
    Part(total, omp_get_thread_num(), omp_get_num_threads(), align, &b, &e);
    if (b < e) f(b, e);
  }
}

// gemv.cc
void GemvRowsSerial(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t r0,
                    int64_t r1);
void GemvColsSerial(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t c0,
                    int64_t c1);
void GemvRows(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy);
void GemvCols(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy);
bool GemvRowsFast(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy,
                  uint16_t* xb);
void GemvHeads(const HeadsLinearParams& p);
void GemvBatch(const GemvJob* jobs, int64_t n_jobs);
bool GemmRows(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy);
void WidenRowsF32(const WeightView& w, int64_t r0, int64_t n, float* dst);
void WidenRowsBf16(const WeightView& w, int64_t r0, int64_t n, uint16_t* dst);
void F32ToBf16Rows(const float* x, int64_t m, int64_t k, int64_t ldx, uint16_t* y);
float ReadSum(const void* p, int64_t bytes, int streams, int prefetch);

// qdot.cc
void QuantizeAct(const float* x, int64_t k, uint8_t* out);
void QDotRowsSerial(const uint8_t* xq, int64_t m, const WeightView& w, float* y, int64_t ldy, int64_t r0,
                    int64_t r1);
bool GemvRowsQDot(const uint8_t* xq, int64_t m, const WeightView& w, float* y, int64_t ldy);

// ops.cc
void RmsNorm(const float* x, int64_t m, int64_t d, int64_t ldx, const float* gamma, float eps, float* y,
             int64_t ldy);
void AddRmsNorm(float* x, const float* h, int64_t m, int64_t d, const float* gamma, float eps, float* xn);
void Add(float* y, const float* x, int64_t n);
void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride, int64_t head_stride, int64_t dim,
          const int32_t* positions, const float* cos_table, const float* sin_table, RopeLayout layout);
void SiluMul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld_in, float* out, int64_t ld_out);
void WeightedSumRows(float* out, const float* rows, const float* weights, int64_t n, int64_t k, int64_t cols);
void KvWriteBf16(uint16_t* base, int64_t width, const int32_t* slots, int64_t n, const float* src, int64_t ld_src);
void KvGatherBf16(const uint16_t* base, int64_t width, const int32_t* slots, int64_t n, float* dst, int64_t ld_dst);

// attention.cc
int64_t AttentionScratch(const AttentionParams& p, int threads);
void Attention(const AttentionParams& p, float* scratch);

}  // namespace deepshard::cpu::DS_ISA_NS
