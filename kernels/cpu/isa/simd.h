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
    case DType::kF8E4M3:
    case DType::kQ8: return 1;
    default: return 0;  // kQ4 packs two values per byte: see RowBytesOf
  }
}
// Bytes of one weight row (RowBytes in dtype.h, not called: see the rule above).
inline int64_t RowBytesOf(DType t, int64_t cols) { return t == DType::kQ4 ? cols / 2 : cols * ElemSize(t); }
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

// One f16 value as f32 (F16C where the level has it; F16ToF32 is out of line in
// dtype.cc, so calling it is allowed).
inline float HalfToF32(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return F16ToF32(h);
#endif
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
// v rounded to bf16 (round-to-nearest-even, NaN quieted: ToBf16's rule, lane
// by lane, subnormals kept; VCVTNEPS2BF16 would flush them) at p.
inline void VStoreBf16(uint16_t* p, VecF v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i hi = _mm512_srli_epi32(b, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
// The integer values (not scaled) of one 32-column block of a kQ8/kQ4 row
// (kernels/quant.h) as 32 / kLanes f32 vectors, columns in order; p is the
// block's first byte.
template <DType T>
inline void QUnpack32(const uint8_t* p, VecF* v);
template <>
inline void QUnpack32<DType::kQ8>(const uint8_t* p, VecF* v) {
  v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  v[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
}
template <>
inline void QUnpack32<DType::kQ4>(const uint8_t* p, VecF* v) {
  // VPERMPS reads only the low 4 bits of each index lane, so a 16-entry table
  // of q - 8 turns a widened byte into its low nibble's value with no masking,
  // subtraction or conversion: 4 instructions per 32 values against 7, and
  // instructions are what bound int4 (see Rows1xGQ in gemv.cc).
  const __m512 lut = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  v[0] = _mm512_permutexvar_ps(b, lut);                         // columns 0..15: low nibbles
  v[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut);  // columns 16..31: high nibbles
}
// n f16 values to f32.
inline void HalvesToF32(const uint16_t* s, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
  }
  for (; i < n; ++i) out[i] = HalfToF32(s[i]);
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
// See the AVX-512 version.
inline void VStoreBf16(uint16_t* p, VecF v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i hi = _mm256_srli_epi32(b, 16);
  const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
  // Values fit 16 bits: pack within 128-bit lanes, then gather the two halves.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
// See the AVX-512 versions.
template <DType T>
inline void QUnpack32(const uint8_t* p, VecF* v);
template <>
inline void QUnpack32<DType::kQ8>(const uint8_t* p, VecF* v) {
#pragma GCC unroll 4  // else GCC keeps the loop and passes v through memory
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * k))));
  }
}
template <>
inline void QUnpack32<DType::kQ4>(const uint8_t* p, VecF* v) {
  // A byte widened to 32 bits: & 15 is its low nibble, >> 4 its high one.
  const __m256i eight = _mm256_set1_epi32(8), low = _mm256_set1_epi32(15);
#pragma GCC unroll 2
  for (int k = 0; k < 2; ++k) {
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * k)));
    v[k] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(b, low), eight));
    v[k + 2] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(b, 4), eight));
  }
}
inline void HalvesToF32(const uint16_t* s, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  }
  for (; i < n; ++i) out[i] = HalfToF32(s[i]);
}
#define DS_HAVE_SIMD 1
#else
inline void HalvesToF32(const uint16_t* s, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = HalfToF32(s[i]);
}
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

// Columns [c0, c0 + n) of one kQ8/kQ4 row (values q, f16 group scales s) as
// f32, q * d: exact, as DequantizeRow. c0 and n are multiples of 32, so each
// 32-column block lies in one group.
template <DType T>
inline void DequantF32(const uint8_t* q, const uint16_t* s, int64_t group, int64_t c0, int64_t n, float* dst) {
  for (int64_t c = c0; c < c0 + n; c += 32) {
    const float d = HalfToF32(s[c / group]);
    float* out = dst + (c - c0);
#if defined(DS_HAVE_SIMD)
    VecF v[32 / kLanes];
    QUnpack32<T>(q + (T == DType::kQ4 ? c / 2 : c), v);
#pragma GCC unroll 4
    for (int k = 0; k < 32 / kLanes; ++k) VStoreF32(out + k * kLanes, VMul(v[k], VSet(d)));
#else
    for (int j = 0; j < 32; ++j) {
      int qi;
      if constexpr (T == DType::kQ4) {
        const uint8_t b = q[c / 2 + j % 16];
        qi = (j < 16 ? b & 15 : b >> 4) - 8;
      } else {
        qi = static_cast<int8_t>(q[c + j]);
      }
      out[j] = static_cast<float>(qi) * d;
    }
#endif
  }
}
inline void DequantAnyF32(DType t, const uint8_t* q, const uint16_t* s, int64_t group, int64_t c0, int64_t n,
                          float* dst) {
  if (t == DType::kQ4) return DequantF32<DType::kQ4>(q, s, group, c0, n, dst);
  DequantF32<DType::kQ8>(q, s, group, c0, n, dst);
}
inline bool IsQuant(DType t) { return t == DType::kQ8 || t == DType::kQ4; }

// Runtime-dtype version of WidenF32 (the quantised dtypes need their scales:
// DequantF32; ConvertToF32 refuses them).
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
  return static_cast<const uint8_t*>(w.data) + (w.row0 + r) * RowBytesOf(w.dtype, w.cols);
}
// The f16 group scales of row r of a kQ8/kQ4 view.
inline const uint16_t* QScaleRow(const WeightView& w, int64_t r) {
  return w.qscale + (w.row0 + r) * (w.cols / w.group);
}
inline const float* ScaleRow(const WeightView& w, int64_t r) {
  return w.scale_inv + ((w.row0 + r) / w.block) * ((w.cols + w.block - 1) / w.block);
}

}  // namespace deepshard::cpu::DS_ISA_NS
