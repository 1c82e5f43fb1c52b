#include "kernels/cpu/gemv.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/status_macros.h"

namespace deepshard::cpu {
namespace {

// SIMD widening loads: kLanes consecutive stored elements as f32 lanes.
// AVX-512 where the build machine has it, else AVX2 + F16C (AMD EPYC here).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
using VecF = __m512;
inline VecF VZero() { return _mm512_setzero_ps(); }
inline VecF VLoadF32(const float* p) { return _mm512_loadu_ps(p); }
inline VecF VFma(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
inline float VSum(VecF v) { return _mm512_reduce_add_ps(v); }
template <DType T>
inline VecF VLoad(const uint8_t* p);
template <>
inline VecF VLoad<DType::kF32>(const uint8_t* p) { return _mm512_loadu_ps(reinterpret_cast<const float*>(p)); }
template <>
inline VecF VLoad<DType::kBF16>(const uint8_t* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
inline VecF VLoad<DType::kF16>(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <>
inline VecF VLoad<DType::kF8E4M3>(const uint8_t* p) {
  // e4m3 bits placed in an f32's exponent/mantissa field, times 2^(127-7):
  // exact for normals and subnormals alike (the f32 is then a subnormal too).
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  __m512i mag = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x7f)), 20);
  __m512i sign = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
  __m512 f = _mm512_mul_ps(_mm512_castsi512_ps(mag), _mm512_set1_ps(0x1p120f));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign));
}
#define DS_HAVE_SIMD 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr int64_t kLanes = 8;
using VecF = __m256;
inline VecF VZero() { return _mm256_setzero_ps(); }
inline VecF VLoadF32(const float* p) { return _mm256_loadu_ps(p); }
inline VecF VFma(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
inline float VSum(VecF v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
template <DType T>
inline VecF VLoad(const uint8_t* p);
template <>
inline VecF VLoad<DType::kF32>(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
template <>
inline VecF VLoad<DType::kBF16>(const uint8_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
template <>
inline VecF VLoad<DType::kF16>(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <>
inline VecF VLoad<DType::kF8E4M3>(const uint8_t* p) {
  // See the AVX-512 version: exponent re-bias by multiplying with 2^120.
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  __m256i mag = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7f)), 20);
  __m256i sign = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x80)), 24);
  __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(mag), _mm256_set1_ps(0x1p120f));
  return _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(f), sign));
}
#define DS_HAVE_SIMD 1
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
#if defined(DS_HAVE_SIMD)
  VecF acc[M];
  for (int i = 0; i < M; ++i) acc[i] = VZero();
  for (; c + kLanes <= c1; c += kLanes) {
    VecF w = VLoad<T>(wrow + c * es);
    for (int i = 0; i < M; ++i) acc[i] = VFma(w, VLoadF32(x + i * ldx + c), acc[i]);
  }
  for (int i = 0; i < M; ++i) out[i] = VSum(acc[i]);
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

void GemvCols(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  DS_CHECK(m <= kGemvMaxM);
  const int64_t K = w.rows, N = w.cols;
  const int64_t es = DTypeSize(w.dtype);
  constexpr int64_t kColBlock = 64;
  const int64_t n_blocks = (N + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (K * N > 32768)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t c0 = b * kColBlock, c1 = std::min(N, c0 + kColBlock);
    float acc[kGemvMaxM][kColBlock];
    float wrow[kColBlock];
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < c1 - c0; ++c) acc[i][c] = 0.0f;
    for (int64_t r = 0; r < K; ++r) {
      ConvertToF32(w.dtype, w.RowPtr(r) + c0 * es, wrow, c1 - c0);
      if (w.dtype == DType::kF8E4M3) {
        const float* srow = w.scale_inv + ((w.row0 + r) / w.block) * w.scale_cols();
        for (int64_t c = c0; c < c1; ++c) wrow[c - c0] *= srow[c / w.block];
      }
      for (int64_t i = 0; i < m; ++i) {
        const float xv = x[i * ldx + r];
        for (int64_t c = 0; c < c1 - c0; ++c) acc[i][c] += xv * wrow[c];
      }
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = c0; c < c1; ++c) y[i * ldy + c] = acc[i][c - c0];
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
