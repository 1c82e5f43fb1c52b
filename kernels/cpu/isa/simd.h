// SIMD helpers for the CPU kernels: widening loads of stored dtypes into f32
// lanes. Included only by the per-ISA kernel files (kernels/cpu/isa/*.cc), which
// are compiled once per instruction-set level with DS_ISA_NS naming the level's
// namespace: AVX-512 when the level enables it, else AVX2 + FMA + F16C, else no
// SIMD at all (the scalar level, DS_HAVE_SIMD undefined).
//
// Rule for these files (checked by the isa_symbols test): everything they define
// lives in deepshard::cpu::DS_ISA_NS, and they call no inline function or
// template from a shared header that could be emitted out of line, because the
// linker keeps one copy of such a function for the whole program and it would
// carry this level's instructions into code that runs on any CPU.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/tensor.h"

#ifndef DS_ISA_NS
#error "kernels/cpu/isa/simd.h is for the per-ISA kernel files only"
#endif

namespace deepshard::cpu::DS_ISA_NS {

inline int64_t ElemSize(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kBF16:
    case DType::kF16: return 2;
    case DType::kF8E4M3: return 1;
    default: return 0;
  }
}
inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t Max(int64_t a, int64_t b) { return a > b ? a : b; }
inline float MaxF(float a, float b) { return a > b ? a : b; }
inline float Bf16Bits(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
// Round-to-nearest-even, NaN kept (the same rule as F32ToBf16 in dtype.h).
inline uint16_t ToBf16(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
using VecF = __m512;
inline VecF VZero() { return _mm512_setzero_ps(); }
inline VecF VSet(float x) { return _mm512_set1_ps(x); }
inline VecF VMul(VecF a, VecF b) { return _mm512_mul_ps(a, b); }
inline VecF VAdd(VecF a, VecF b) { return _mm512_add_ps(a, b); }
inline void VStoreF32(float* p, VecF v) { _mm512_storeu_ps(p, v); }
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
inline VecF VSet(float x) { return _mm256_set1_ps(x); }
inline VecF VMul(VecF a, VecF b) { return _mm256_mul_ps(a, b); }
inline VecF VAdd(VecF a, VecF b) { return _mm256_add_ps(a, b); }
inline void VStoreF32(float* p, VecF v) { _mm256_storeu_ps(p, v); }
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


// Widens n elements of type T at src to f32 at dst, `scale` applied.
template <DType T>
inline void WidenF32(const uint8_t* src, float* dst, int64_t n, float scale) {
  constexpr int64_t es = T == DType::kF32 ? 4 : (T == DType::kF8E4M3 ? 1 : 2);
  int64_t i = 0;
#if defined(DS_HAVE_SIMD)
  for (; i + kLanes <= n; i += kLanes) VStoreF32(dst + i, VMul(VLoad<T>(src + i * es), VSet(scale)));
#endif
  if (i < n) {
    ConvertToF32(T, src + i * es, dst + i, n - i);
    for (; i < n; ++i) dst[i] *= scale;
  }
}

// Runtime-dtype version of WidenF32.
inline void WidenAnyF32(DType t, const uint8_t* src, float* dst, int64_t n, float scale) {
  switch (t) {
    case DType::kF32: return WidenF32<DType::kF32>(src, dst, n, scale);
    case DType::kBF16: return WidenF32<DType::kBF16>(src, dst, n, scale);
    case DType::kF16: return WidenF32<DType::kF16>(src, dst, n, scale);
    case DType::kF8E4M3: return WidenF32<DType::kF8E4M3>(src, dst, n, scale);
    default: ConvertToF32(t, src, dst, n);
  }
}

// Row r of a weight view (WeightView::RowPtr, not called: see the rule above).
inline const uint8_t* RowPtr(const WeightView& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + (w.row0 + r) * w.cols * ElemSize(w.dtype);
}
inline const float* ScaleRow(const WeightView& w, int64_t r) {
  return w.scale_inv + ((w.row0 + r) / w.block) * ((w.cols + w.block - 1) / w.block);
}

}  // namespace deepshard::cpu::DS_ISA_NS
