#include "kernels/cpu/gemv.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/status_macros.h"

namespace deepshard::cpu {
namespace {

#if defined(__AVX512F__)
// 16 consecutive stored elements widened to f32.
template <DType T>
inline __m512 Load16(const uint8_t* p);
template <>
inline __m512 Load16<DType::kF32>(const uint8_t* p) {
  return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
}
template <>
inline __m512 Load16<DType::kBF16>(const uint8_t* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
inline __m512 Load16<DType::kF16>(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <>
inline __m512 Load16<DType::kF8E4M3>(const uint8_t* p) {
  // e4m3 bits placed in an f32's exponent/mantissa field, times 2^(127-7):
  // exact for normals and subnormals alike (the f32 is then a subnormal too).
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  __m512i mag = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x7f)), 20);
  __m512i sign = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
  __m512 f = _mm512_mul_ps(_mm512_castsi512_ps(mag), _mm512_set1_ps(0x1p120f));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign));
}
#endif

// Scalar widening of one element (tails and non-AVX-512 builds).
inline float LoadOne(DType t, const uint8_t* p) {
  float f;
  ConvertToF32(t, p, &f, 1);
  return f;
}

// Dot products of one weight row segment [c0, c1) with M activation rows.
template <DType T, int M>
inline void DotSegment(const uint8_t* wrow, const float* x, int64_t ldx, int64_t c0, int64_t c1,
                       float* out) {
  constexpr int64_t es = T == DType::kF32 ? 4 : (T == DType::kF8E4M3 ? 1 : 2);
  int64_t c = c0;
#if defined(__AVX512F__)
  __m512 acc[M];
  for (int i = 0; i < M; ++i) acc[i] = _mm512_setzero_ps();
  for (; c + 16 <= c1; c += 16) {
    __m512 w = Load16<T>(wrow + c * es);
    for (int i = 0; i < M; ++i) acc[i] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + i * ldx + c), acc[i]);
  }
  for (int i = 0; i < M; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
#else
  for (int i = 0; i < M; ++i) out[i] = 0.0f;
#endif
  for (; c < c1; ++c) {
    float w = LoadOne(T, wrow + c * es);
    for (int i = 0; i < M; ++i) out[i] += w * x[i * ldx + c];
  }
}

template <DType T, int M>
void GemvImpl(const float* x, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  const int64_t K = w.cols;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < w.rows; ++r) {
    const uint8_t* wrow = w.RowPtr(r);
    float acc[M];
    if constexpr (T == DType::kF8E4M3) {
      // Sum each 128-column block separately, then apply its scale.
      for (int i = 0; i < M; ++i) acc[i] = 0.0f;
      const float* srow = w.scale_inv + ((w.row0 + r) / w.block) * w.scale_cols();
      for (int64_t kb = 0; kb * w.block < K; ++kb) {
        float part[M];
        DotSegment<T, M>(wrow, x, ldx, kb * w.block, std::min(K, (kb + 1) * w.block), part);
        for (int i = 0; i < M; ++i) acc[i] += part[i] * srow[kb];
      }
    } else {
      DotSegment<T, M>(wrow, x, ldx, 0, K, acc);
    }
    for (int i = 0; i < M; ++i) y[i * ldy + r] = acc[i];
  }
}

template <DType T>
void GemvDispatchM(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                   int64_t ldy) {
  switch (m) {
    case 1: return GemvImpl<T, 1>(x, ldx, w, y, ldy);
    case 2: return GemvImpl<T, 2>(x, ldx, w, y, ldy);
    case 3: return GemvImpl<T, 3>(x, ldx, w, y, ldy);
    case 4: return GemvImpl<T, 4>(x, ldx, w, y, ldy);
    case 5: return GemvImpl<T, 5>(x, ldx, w, y, ldy);
    case 6: return GemvImpl<T, 6>(x, ldx, w, y, ldy);
    case 7: return GemvImpl<T, 7>(x, ldx, w, y, ldy);
    case 8: return GemvImpl<T, 8>(x, ldx, w, y, ldy);
    default: DS_CHECK(false && "GemvRows: m out of range");
  }
}

}  // namespace

void GemvRows(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  if (m == 0 || w.rows == 0) return;
  switch (w.dtype) {
    case DType::kF32: return GemvDispatchM<DType::kF32>(x, m, ldx, w, y, ldy);
    case DType::kBF16: return GemvDispatchM<DType::kBF16>(x, m, ldx, w, y, ldy);
    case DType::kF16: return GemvDispatchM<DType::kF16>(x, m, ldx, w, y, ldy);
    case DType::kF8E4M3:
      DS_CHECK(w.scale_inv != nullptr);
      return GemvDispatchM<DType::kF8E4M3>(x, m, ldx, w, y, ldy);
    default: DS_CHECK(false && "GemvRows: unsupported weight dtype");
  }
}

void WidenRowsF32(const WeightView& w, int64_t r0, int64_t n, float* dst) {
  const int64_t K = w.cols;
#pragma omp parallel for schedule(static)
  for (int64_t r = r0; r < r0 + n; ++r) {
    float* out = dst + (r - r0) * K;
    ConvertToF32(w.dtype, w.RowPtr(r), out, K);
    if (w.dtype == DType::kF8E4M3) {
      const float* srow = w.scale_inv + ((w.row0 + r) / w.block) * w.scale_cols();
      for (int64_t c = 0; c < K; ++c) out[c] *= srow[c / w.block];
    }
  }
}

void WidenRowsBf16(const WeightView& w, int64_t r0, int64_t n, uint16_t* dst) {
  const int64_t K = w.cols;
  if (w.dtype == DType::kBF16) {
    for (int64_t r = r0; r < r0 + n; ++r) std::memcpy(dst + (r - r0) * K, w.RowPtr(r), K * 2);
    return;
  }
#pragma omp parallel
  {
    std::vector<float> row(K);  // per-thread, only on the tiled (prefill) path
#pragma omp for schedule(static)
    for (int64_t r = r0; r < r0 + n; ++r) {
      ConvertToF32(w.dtype, w.RowPtr(r), row.data(), K);
      const float* srow = w.dtype == DType::kF8E4M3
                              ? w.scale_inv + ((w.row0 + r) / w.block) * w.scale_cols()
                              : nullptr;
      uint16_t* out = dst + (r - r0) * K;
      for (int64_t c = 0; c < K; ++c) out[c] = F32ToBf16(srow ? row[c] * srow[c / w.block] : row[c]);
    }
  }
}

}  // namespace deepshard::cpu
