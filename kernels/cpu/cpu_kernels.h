// The CPU backend's compute kernels, one table per instruction-set level
// (kernels/cpu/isa.h). The table's functions are compiled in
// kernels/cpu/isa/*.cc once per level; CpuBackend holds the table of the level
// it was made for and calls nothing else for arithmetic, except oneDNN (which
// dispatches on the CPU by itself).
#pragma once

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/tensor.h"

namespace deepshard::cpu {

// Products of at most this many rows run as GEMV (decode); larger ones as GEMM.
inline constexpr int64_t kGemvMaxM = 8;
// The GEMV gives each thread one contiguous slab of weight rows, [t, t + 1) of
// nthreads equal parts with ends on multiples of this; the CPU backend's
// Upload first-touches a weight copy with the same slabs.
inline constexpr int64_t kGemvSlabRows = 8;

// One product of a gemv_batch: y[m, w.rows] = x[m, w.cols] · wᵀ, m <= kGemvMaxM.
// xb, when set, holds x rounded to bf16 (w.cols values, dense): an M = 1
// product of bf16 weights then takes the bf16 dot product of gemv_rows_fast.
// xq, when set, holds x's m rows quantised by quantize_act (QActBytes(w.cols)
// apart): a product of kQ8/kQ4 weights then takes the integer dot products of
// gemv_rows_qdot.
struct GemvJob {
  const float* x = nullptr;
  int64_t m = 0, ldx = 0;
  WeightView w;
  float* y = nullptr;
  int64_t ldy = 0;
  const uint16_t* xb = nullptr;
  const uint8_t* xq = nullptr;
};

// An activation row quantised for the integer dot products of --math fast
// with kQ8/kQ4 weights (kernels/cpu/isa/qdot.cc; llama.cpp quantises its
// activations the same way, as Q8_0): per 32 columns an f32 scale
// d = amax / 127 and int8 values q = round-half-even(x * (1 / d)) (all zero when
// amax is 0; a NaN scale when the block holds a NaN or infinity), and per 4
// columns -8 times their sum (an int4 weight is stored as u = q + 8, so its
// products need sum (u - 8) q_x = sum u q_x - 8 sum q_x). For k columns, k a
// multiple of 32, QActBytes(k) bytes: q[k] int8, then neg8sum[k / 4] int32,
// then d[k / 32] f32.
inline constexpr int64_t QActBytes(int64_t k) { return 2 * k + k / 8; }

struct CpuKernels {
  CpuIsa isa;

  // ---- Decode products: stream the weight once in its stored dtype ----
  // y[m, w.rows] = x[m, w.cols] · wᵀ, m <= kGemvMaxM; parallel over rows of w.
  void (*gemv_rows)(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy);
  // --math fast: gemv_rows with the activations rounded to bf16 and bf16 dot
  // products, where this level has them (AVX512_BF16) for this product (M = 1,
  // bf16 weights); returns false, computing nothing, otherwise. `xb` is
  // scratch for w.cols bf16 values.
  bool (*gemv_rows_fast)(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy,
                         uint16_t* xb);
  // Several independent products in one parallel region (an MoE layer's
  // experts in decode: one region for every gate and up, one for every down,
  // instead of one per product), each thread taking the slab of every job
  // that gemv_rows gives it (the rows Upload placed on its NUMA node). Each
  // row's result is what gemv_rows (or gemv_rows_fast, with xb) gives, bit
  // for bit.
  void (*gemv_batch)(const GemvJob* jobs, int64_t n_jobs);
  // --math fast with kQ8/kQ4 weights: x[k] (k a multiple of 32) into the
  // QActBytes(k) bytes at out (layout above). Every level gives the same bytes.
  void (*quantize_act)(const float* x, int64_t k, uint8_t* out);
  // y[m, w.rows] = the integer dot products of xq (m <= kGemvMaxM activation
  // rows, each quantize_act'ed, QActBytes(w.cols) apart) with a kQ8/kQ4 weight,
  // parallel over rows of w, each weight block unpacked once for the m rows;
  // false (nothing computed) for other dtypes or columns not a multiple of 32.
  bool (*gemv_rows_qdot)(const uint8_t* xq, int64_t m, const WeightView& w, float* y, int64_t ldy);
  // Exact math, any m (prefill): y[m, w.rows] = x · wᵀ in f32 from the stored
  // bf16/f16/f32 weight, widened in registers; false (nothing computed) for
  // other dtypes or a level without SIMD, where oneDNN takes the product.
  bool (*gemm_rows)(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy);
  // y[m, w.cols] = x[m, w.rows] · w, m <= kGemvMaxM; parallel over column blocks.
  void (*gemv_cols)(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy);
  // Every head of a per-head product (HeadsLinearParams), p.m <= kGemvMaxM, in
  // one parallel pass over heads (MLA's absorbed decode).
  void (*gemv_heads)(const HeadsLinearParams& p);

  // ---- Weight widening for the GEMM (prefill) path ----
  // Rows [r0, r0 + n) of w into dst[n, w.cols] as f32 (FP8 dequantised).
  void (*widen_rows_f32)(const WeightView& w, int64_t r0, int64_t n, float* dst);
  // Same, to bf16 bit patterns (round-to-nearest-even).
  void (*widen_rows_bf16)(const WeightView& w, int64_t r0, int64_t n, uint16_t* dst);
  // y[i, :k] = bf16(x[i, :k]) for i < m (activations for a bf16 GEMM; y dense).
  void (*f32_to_bf16_rows)(const float* x, int64_t m, int64_t k, int64_t ldx, uint16_t* y);

  // ---- Element-wise (semantics in kernels/backend.h) ----
  void (*rms_norm)(const float* x, int64_t m, int64_t d, int64_t ldx, const float* gamma, float eps, float* y,
                   int64_t ldy);
  void (*add_rms_norm)(float* x, const float* h, int64_t m, int64_t d, const float* gamma, float eps, float* xn);
  void (*add)(float* y, const float* x, int64_t n);
  void (*rope)(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride, int64_t head_stride, int64_t dim,
               const int32_t* positions, const float* cos_table, const float* sin_table, RopeLayout layout);
  void (*silu_mul)(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld_in, float* out,
                   int64_t ld_out);
  void (*weighted_sum_rows)(float* out, const float* rows, const float* weights, int64_t n, int64_t k,
                            int64_t cols);
  // Rows to and from a bf16 KV cache.
  void (*kv_write_bf16)(uint16_t* base, int64_t width, const int32_t* slots, int64_t n, const float* src,
                        int64_t ld_src);
  void (*kv_gather_bf16)(const uint16_t* base, int64_t width, const int32_t* slots, int64_t n, float* dst,
                         int64_t ld_dst);

  // ---- Attention ----
  // Scratch floats Attention needs for `threads` threads (it does not grow
  // with the context: keys are taken in tiles).
  int64_t (*attention_scratch)(const AttentionParams& p, int threads);
  // p validated by the caller (heads divisible, dtype f32 or bf16); `scratch`
  // holds attention_scratch(p, omp_get_max_threads()) floats.
  void (*attention)(const AttentionParams& p, float* scratch);

  // ---- Measuring ----
  // Sums `bytes` (a multiple of 64 KiB) of f32 at p with every thread, each
  // thread reading its share as `streams` interleaved sub-ranges (1..8) with
  // software prefetch `prefetch` bytes ahead (0: none): the decode bandwidth
  // ceiling is the best of these (tests/bench/forward_bench.cc).
  float (*read_sum)(const void* p, int64_t bytes, int streams, int prefetch);
};

// The table of `isa`, or null when this build does not carry that level.
const CpuKernels* CpuKernelsFor(CpuIsa isa);
// The table of SelectCpuIsa() (the best level unless DEEPSHARD_CPU_KERNELS
// says otherwise; an invalid setting falls back to the best level here, and
// MakeBackend reports it).
const CpuKernels& ActiveCpuKernels();

}  // namespace deepshard::cpu
