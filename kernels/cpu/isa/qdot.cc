// Integer dot products for group-quantised weights (kQ8, kQ4) in --math fast,
// compiled once per ISA level (see kernels/cpu/isa/simd.h for the rules).
//
// Exact math widens every int8/int4 weight to f32 and multiplies it by the f32
// activation: for int4 that unpacking, not memory, bounds decode (Rows1xGQ in
// gemv.cc). Fast math does what llama.cpp does with Q8_0/Q4_0: the activation
// row is quantised once to int8 per 32 columns (QuantizeAct, layout in
// cpu_kernels.h), and each 32-column block of a weight row is one integer dot
// product, exact in int32, scaled by the weight's and the activation's scales:
//
//   y[r] = sum over blocks b of  d_w[r, b] * d_x[b] * sum_j q_w[r, 32b + j] * q_x[32b + j]
//
// AVX512_VNNI: VPDPBUSD multiplies 64 unsigned by 64 signed bytes and sums
// each four into an int32 lane. An int4 weight's nibble u = q + 8 is the
// unsigned side (sum (u - 8) q_x = sum u q_x - 8 sum q_x, and the second sum,
// one per four columns, comes with the activation as the accumulator's start);
// an int8 weight gives |q| as the unsigned side and moves its sign onto q_x.
// Two blocks (64 columns) per instruction, lanes 0-7 block b, 8-15 block b+1.
// AVX2 (and AVX-512 without VNNI): VPMADDUBSW then VPMADDWD, one block per
// vector; no sum overflows int16 (|q_w| <= 127 and nibbles <= 15).
// The scalar level computes the same sums one value at a time. All levels
// have the same integers; they differ in the f32 arithmetic after them: the
// scalar level scales each block's exact sum, the SIMD levels each lane's (4
// columns), as llama.cpp does, so their rounding is that of the lane terms.
#include <omp.h>

#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/isa/kernels.h"
#include "kernels/cpu/isa/simd.h"

namespace deepshard::cpu::DS_ISA_NS {
namespace {

constexpr int64_t kParallelMinWork = 1 << 18;  // as gemv.cc


struct QAct {
  const int8_t* q = nullptr;
  const int32_t* neg8sum = nullptr;
  const float* d = nullptr;
  QAct() = default;
  QAct(const uint8_t* p, int64_t k)
      : q(reinterpret_cast<const int8_t*>(p)),
        neg8sum(reinterpret_cast<const int32_t*>(p + k)),
        d(reinterpret_cast<const float*>(p + 2 * k)) {}
};

// Block b (32 columns) of a weight row against the activation's block b.
template <DType T>
inline int32_t BlockDot(const uint8_t* wrow, const int8_t* q, int64_t b) {
  int32_t s = 0;
  if constexpr (T == DType::kQ8) {
    const int8_t* w = reinterpret_cast<const int8_t*>(wrow) + b * 32;
    for (int j = 0; j < 32; ++j) s += int32_t{w[j]} * q[b * 32 + j];
  } else {
    const uint8_t* w = wrow + b * 16;
    for (int j = 0; j < 16; ++j) {
      s += (int32_t{w[j] & 15} - 8) * q[b * 32 + j];
      s += (int32_t{w[j] >> 4} - 8) * q[b * 32 + 16 + j];
    }
  }
  return s;
}

// Blocks [b0, b1) of one row, one value at a time.
template <DType T>
float RowBlocks(const uint8_t* wrow, const uint16_t* s, int64_t group, const QAct& a, int64_t b0, int64_t b1) {
  float acc = 0.0f;
  for (int64_t b = b0; b < b1; ++b) {
    acc += HalfToF32(s[b * 32 / group]) * a.d[b] * static_cast<float>(BlockDot<T>(wrow, a.q, b));
  }
  return acc;
}

// The f32 scale of each of blocks [b0, b0 + n) of a row whose f16 scales
// (one per `group` columns) start at s: the inner loops then index by block,
// with no division by the group.
inline void BlockScales(const uint16_t* s, int64_t group, int64_t b0, int64_t n, float* out) {
  if (group == 32) return HalvesToF32(s + b0, n, out);
  const int64_t per = group / 32;
  int64_t g = b0 / per, left = per - b0 % per;
  for (int64_t j = 0; j < n; ++j) {
    out[j] = HalfToF32(s[g]);
    if (--left == 0) ++g, left = per;
  }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr int kRows = 8;         // rows per group, sharing each activation load (as gemv.cc)
constexpr int64_t kChunk = 32;   // block pairs whose weight scales are widened at once

template <DType T>
void Rows(const QAct& a, const WeightView& w, float* y, int64_t r0, int64_t r1) {
  constexpr bool q4 = T == DType::kQ4;
  const int64_t K = w.cols, nb = K / 32, pairs = nb / 2, group = w.group;
  const int64_t rs = RowBytesOf(w.dtype, K);
  // Prefetch the same columns of the next row group: quantised rows are
  // short (1 KiB of int4 for 2048 columns), so a fixed distance within the
  // row runs past its end half the time; the groups are contiguous, and one
  // group ahead was faster than 512 B ahead in every round measured (1.04-1.6x
  // on this noisy 2-core VM, int8 and int4).
  const int64_t ahead = kRows * rs;
  const __m512i zero = _mm512_setzero_si512(), nib = _mm512_set1_epi8(15);
  // 16-bit shift counts: the second and fourth 128-bit lanes hold the high nibbles.
  constexpr long long kFour = 0x0004000400040004LL;
  const __m512i shifts = _mm512_setr_epi64(0, 0, kFour, kFour, 0, 0, kFour, kFour);
  int64_t r = r0;
  for (; r + kRows <= r1; r += kRows) {
    const uint8_t* p0 = RowPtr(w, r);
    const uint16_t* s[kRows];
    __m512 acc[kRows];
    for (int i = 0; i < kRows; ++i) s[i] = QScaleRow(w, r + i), acc[i] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < pairs; c0 += kChunk) {
      const int64_t c1 = Min(pairs, c0 + kChunk);
      alignas(64) float d[kRows][2 * kChunk];
      for (int i = 0; i < kRows; ++i) BlockScales(s[i], group, 2 * c0, 2 * (c1 - c0), d[i]);
      for (int64_t pr = c0; pr < c1; ++pr) {
        const int64_t b = 2 * pr, ga = b - 2 * c0, gb = ga + 1;
        const __m512i qx = _mm512_loadu_si512(a.q + b * 32);
        const __m512 dx = _mm512_shuffle_f32x4(_mm512_set1_ps(a.d[b]), _mm512_set1_ps(a.d[b + 1]), 0);
        const __m512i start = q4 ? _mm512_loadu_si512(a.neg8sum + b * 8) : zero;
#pragma GCC unroll 8
        for (int i = 0; i < kRows; ++i) {
          const uint8_t* pi = p0 + i * rs;
          __m512i sum;
          if constexpr (q4) {
            const uint8_t* pw = pi + b * 16;
            if ((pr & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(pw) + ahead, _MM_HINT_T0);
            const __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pw)));
            // [block b, block b, block b+1, block b+1], then low nibbles, high nibbles of each:
            // columns in order.
            const __m512i z = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(1, 1, 0, 0));
            sum = _mm512_dpbusd_epi32(start, _mm512_and_si512(_mm512_srlv_epi16(z, shifts), nib), qx);
          } else {
            const uint8_t* pw = pi + b * 32;
            _mm_prefetch(reinterpret_cast<const char*>(pw) + ahead, _MM_HINT_T0);
            const __m512i wv = _mm512_loadu_si512(pw);
            const __m512i sx = _mm512_mask_sub_epi8(qx, _mm512_movepi8_mask(wv), zero, qx);
            sum = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(wv), sx);
          }
          const __m512 dw = _mm512_shuffle_f32x4(_mm512_set1_ps(d[i][ga]), _mm512_set1_ps(d[i][gb]), 0);
          acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sum), dx), dw, acc[i]);
        }
      }
    }
    for (int i = 0; i < kRows; ++i) {
      y[r + i] = _mm512_reduce_add_ps(acc[i]) + RowBlocks<T>(p0 + i * rs, s[i], group, a, 2 * pairs, nb);
    }
  }
  for (; r < r1; ++r) y[r] = RowBlocks<T>(RowPtr(w, r), QScaleRow(w, r), group, a, 0, nb);
}
// M = 2..8 activation rows (a decode batch, or an expert's tokens): two weight
// rows at a time, each block unpacked once and multiplied into all M rows.
template <DType T, int M>
void RowsMulti(const QAct* a, const WeightView& w, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  constexpr bool q4 = T == DType::kQ4;
  constexpr int R = 2;
  const int64_t K = w.cols, nb = K / 32, pairs = nb / 2, group = w.group;
  const int64_t rs = RowBytesOf(w.dtype, K), ahead = 8 * rs;
  const __m512i zero = _mm512_setzero_si512(), nib = _mm512_set1_epi8(15);
  constexpr long long kFour = 0x0004000400040004LL;
  const __m512i shifts = _mm512_setr_epi64(0, 0, kFour, kFour, 0, 0, kFour, kFour);
  int64_t r = r0;
  for (; r + R <= r1; r += R) {
    const uint8_t* p0 = RowPtr(w, r);
    const uint16_t* s[R] = {QScaleRow(w, r), QScaleRow(w, r + 1)};
    __m512 acc[R][M];
    for (int i = 0; i < R; ++i)
      for (int m = 0; m < M; ++m) acc[i][m] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < pairs; c0 += kChunk) {
      const int64_t c1 = Min(pairs, c0 + kChunk);
      alignas(64) float d[R][2 * kChunk];
      for (int i = 0; i < R; ++i) BlockScales(s[i], group, 2 * c0, 2 * (c1 - c0), d[i]);
      for (int64_t pr = c0; pr < c1; ++pr) {
        const int64_t b = 2 * pr, ga = b - 2 * c0;
        __m512i u[R];
        __mmask64 neg[R];
        __m512 dw[R];
        for (int i = 0; i < R; ++i) {
          const uint8_t* pi = p0 + i * rs;
          if constexpr (q4) {
            const uint8_t* pw = pi + b * 16;
            if ((pr & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(pw) + ahead, _MM_HINT_T0);
            const __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pw)));
            u[i] = _mm512_and_si512(_mm512_srlv_epi16(_mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(1, 1, 0, 0)), shifts), nib);
          } else {
            const uint8_t* pw = pi + b * 32;
            _mm_prefetch(reinterpret_cast<const char*>(pw) + ahead, _MM_HINT_T0);
            const __m512i wv = _mm512_loadu_si512(pw);
            neg[i] = _mm512_movepi8_mask(wv);
            u[i] = _mm512_abs_epi8(wv);
          }
          dw[i] = _mm512_shuffle_f32x4(_mm512_set1_ps(d[i][ga]), _mm512_set1_ps(d[i][ga + 1]), 0);
        }
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const __m512i qx = _mm512_loadu_si512(a[m].q + b * 32);
          const __m512 dx = _mm512_shuffle_f32x4(_mm512_set1_ps(a[m].d[b]), _mm512_set1_ps(a[m].d[b + 1]), 0);
          const __m512i start = q4 ? _mm512_loadu_si512(a[m].neg8sum + b * 8) : zero;
          for (int i = 0; i < R; ++i) {
            const __m512i sx = q4 ? qx : _mm512_mask_sub_epi8(qx, neg[i], zero, qx);
            const __m512i sum = _mm512_dpbusd_epi32(start, u[i], sx);
            acc[i][m] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sum), dx), dw[i], acc[i][m]);
          }
        }
      }
    }
    for (int i = 0; i < R; ++i)
      for (int m = 0; m < M; ++m)
        y[m * ldy + r + i] = _mm512_reduce_add_ps(acc[i][m]) + RowBlocks<T>(p0 + i * rs, s[i], group, a[m], 2 * pairs, nb);
  }
  for (; r < r1; ++r)
    for (int m = 0; m < M; ++m) y[m * ldy + r] = RowBlocks<T>(RowPtr(w, r), QScaleRow(w, r), group, a[m], 0, nb);
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr int kRows = 4;          // AVX2 has 16 registers
constexpr int64_t kChunk = 64;    // blocks whose weight scales are widened at once

template <DType T>
void Rows(const QAct& a, const WeightView& w, float* y, int64_t r0, int64_t r1) {
  constexpr bool q4 = T == DType::kQ4;
  const int64_t K = w.cols, nb = K / 32, group = w.group;
  const int64_t rs = RowBytesOf(w.dtype, K);
  const int64_t ahead = kRows * rs;  // the next row group's same columns (as above)
  const __m256i ones = _mm256_set1_epi16(1), nib = _mm256_set1_epi8(15);
  int64_t r = r0;
  for (; r + kRows <= r1; r += kRows) {
    const uint8_t* p0 = RowPtr(w, r);
    const uint16_t* s[kRows];
    __m256 acc[kRows];
    for (int i = 0; i < kRows; ++i) s[i] = QScaleRow(w, r + i), acc[i] = _mm256_setzero_ps();
    for (int64_t c0 = 0; c0 < nb; c0 += kChunk) {
      const int64_t c1 = Min(nb, c0 + kChunk);
      alignas(32) float d[kRows][kChunk];
      for (int i = 0; i < kRows; ++i) BlockScales(s[i], group, c0, c1 - c0, d[i]);
      for (int64_t b = c0; b < c1; ++b) {
        const int64_t g = b - c0;
        const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + b * 32));
        const __m256 dx = _mm256_set1_ps(a.d[b]);
#pragma GCC unroll 4
        for (int i = 0; i < kRows; ++i) {
          const uint8_t* pi = p0 + i * rs;
          __m256i sum;
          if constexpr (q4) {
            const uint8_t* pw = pi + b * 16;
            if ((b & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(pw) + ahead, _MM_HINT_T0);
            const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pw));
            const __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), nib);
            sum = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u, qx), ones),
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.neg8sum + b * 8)));
          } else {
            const uint8_t* pw = pi + b * 32;
            if ((b & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(pw) + ahead, _MM_HINT_T0);
            const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pw));
            sum = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(qx, wv)), ones);
          }
          acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sum), dx), _mm256_set1_ps(d[i][g]), acc[i]);
        }
      }
    }
    for (int i = 0; i < kRows; ++i) {
      __m128 t = _mm_add_ps(_mm256_castps256_ps128(acc[i]), _mm256_extractf128_ps(acc[i], 1));
      t = _mm_add_ps(t, _mm_movehl_ps(t, t));
      y[r + i] = _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
    }
  }
  for (; r < r1; ++r) y[r] = RowBlocks<T>(RowPtr(w, r), QScaleRow(w, r), group, a, 0, nb);
}
// M = 2..8 activation rows: one weight row at a time, each block unpacked
// once and multiplied into all M rows.
template <DType T, int M>
void RowsMulti(const QAct* a, const WeightView& w, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  constexpr bool q4 = T == DType::kQ4;
  const int64_t K = w.cols, nb = K / 32, group = w.group;
  const int64_t rs = RowBytesOf(w.dtype, K), ahead = 4 * rs;
  const __m256i ones = _mm256_set1_epi16(1), nib = _mm256_set1_epi8(15);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* pr = RowPtr(w, r);
    const uint16_t* s = QScaleRow(w, r);
    __m256 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t c0 = 0; c0 < nb; c0 += kChunk) {
      const int64_t c1 = Min(nb, c0 + kChunk);
      alignas(32) float d[kChunk];
      BlockScales(s, group, c0, c1 - c0, d);
      for (int64_t b = c0; b < c1; ++b) {
        __m256i u, wv;
        if constexpr (q4) {
          const uint8_t* pw = pr + b * 16;
          if ((b & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(pw) + ahead, _MM_HINT_T0);
          const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pw));
          u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), nib);
          wv = u;
        } else {
          const uint8_t* pw = pr + b * 32;
          if ((b & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(pw) + ahead, _MM_HINT_T0);
          wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pw));
          u = _mm256_sign_epi8(wv, wv);
        }
        const __m256 dw = _mm256_set1_ps(d[b - c0]);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[m].q + b * 32));
          __m256i sum = _mm256_madd_epi16(_mm256_maddubs_epi16(u, q4 ? qx : _mm256_sign_epi8(qx, wv)), ones);
          if constexpr (q4) {
            sum = _mm256_add_epi32(sum, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[m].neg8sum + b * 8)));
          }
          acc[m] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(a[m].d[b])), dw, acc[m]);
        }
      }
    }
    for (int m = 0; m < M; ++m) {
      __m128 t = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
      t = _mm_add_ps(t, _mm_movehl_ps(t, t));
      y[m * ldy + r] = _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
    }
  }
}
#else
template <DType T>
void Rows(const QAct& a, const WeightView& w, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) y[r] = RowBlocks<T>(RowPtr(w, r), QScaleRow(w, r), w.group, a, 0, w.cols / 32);
}
template <DType T, int M>
void RowsMulti(const QAct* a, const WeightView& w, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r)
    for (int m = 0; m < M; ++m) y[m * ldy + r] = RowBlocks<T>(RowPtr(w, r), QScaleRow(w, r), w.group, a[m], 0, w.cols / 32);
}
#endif

template <DType T>
void RowsAnyM(const uint8_t* xq, int64_t m, const WeightView& w, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t bytes = QActBytes(w.cols);
  if (m == 1) return Rows<T>(QAct(xq, w.cols), w, y, r0, r1);
  QAct a[kGemvMaxM];
  for (int64_t i = 0; i < m; ++i) a[i] = QAct(xq + i * bytes, w.cols);
  switch (m) {
    case 2: return RowsMulti<T, 2>(a, w, y, ldy, r0, r1);
    case 3: return RowsMulti<T, 3>(a, w, y, ldy, r0, r1);
    case 4: return RowsMulti<T, 4>(a, w, y, ldy, r0, r1);
    case 5: return RowsMulti<T, 5>(a, w, y, ldy, r0, r1);
    case 6: return RowsMulti<T, 6>(a, w, y, ldy, r0, r1);
    case 7: return RowsMulti<T, 7>(a, w, y, ldy, r0, r1);
    default: return RowsMulti<T, 8>(a, w, y, ldy, r0, r1);
  }
}

}  // namespace

void QuantizeAct(const float* x, int64_t k, uint8_t* out) {
  int8_t* q = reinterpret_cast<int8_t*>(out);
  int32_t* neg8sum = reinterpret_cast<int32_t*>(out + k);
  float* d = reinterpret_cast<float*>(out + 2 * k);
  for (int64_t b = 0; b < k / 32; ++b) {
    const float* xb = x + b * 32;
    float amax = 0.0f;
    bool finite = true;
    for (int j = 0; j < 32; ++j) {
      amax = std::fmax(amax, std::fabs(xb[j]));
      finite = finite && std::isfinite(xb[j]);
    }
    // A NaN or infinity gives the block a NaN scale (and zero values), so the
    // products it enters are NaN, as in exact math.
    const float db = finite ? amax / 127.0f : std::nanf("");
    const float inv = finite && db != 0.0f ? 1.0f / db : 0.0f;
    d[b] = db;
    for (int j = 0; j < 32; ++j) {
      const float v = std::nearbyint(xb[j] * inv);  // round half to even (the default mode)
      q[b * 32 + j] = static_cast<int8_t>(v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v));
    }
    for (int l = 0; l < 8; ++l) {
      const int8_t* ql = q + b * 32 + 4 * l;
      neg8sum[b * 8 + l] = -8 * (int32_t{ql[0]} + ql[1] + ql[2] + ql[3]);
    }
  }
}

void QDotRowsSerial(const uint8_t* xq, int64_t m, const WeightView& w, float* y, int64_t ldy, int64_t r0,
                    int64_t r1) {
  if (w.dtype == DType::kQ8) return RowsAnyM<DType::kQ8>(xq, m, w, y, ldy, r0, r1);
  if (w.dtype == DType::kQ4) return RowsAnyM<DType::kQ4>(xq, m, w, y, ldy, r0, r1);
}

bool GemvRowsQDot(const uint8_t* xq, int64_t m, const WeightView& w, float* y, int64_t ldy) {
  if (!IsQuant(w.dtype) || w.cols % 32 != 0 || m < 1 || m > kGemvMaxM) return false;
  if (w.rows == 0) return true;
  ForEachSlab(w.rows, kGemvSlabRows, w.rows * w.cols * m < kParallelMinWork,
              [&](int64_t r0, int64_t r1) { QDotRowsSerial(xq, m, w, y, ldy, r0, r1); });
  return true;
}

}  // namespace deepshard::cpu::DS_ISA_NS
