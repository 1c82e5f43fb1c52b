// Element types of stored tensors and their scalar conversions to float.
//
// Weights stay in their stored dtype in memory; kernels convert on the fly with
// these helpers. Conversions are exact where the format allows (bf16, f16 and
// e4m3 are all exactly representable in f32).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace deepshard {

// kQ8 and kQ4 are deepshard's own group-quantised weight formats
// (kernels/quant.h), made at load by --weights int8|int4; no file stores them.
enum class DType : uint8_t { kF32, kBF16, kF16, kF8E4M3, kI64, kI32, kU8, kBool, kF64, kQ8, kQ4 };

// Bytes per element (kQ4 packs two elements per byte: it answers 0; use
// RowBytes).
inline int64_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kF8E4M3: return 1;
    case DType::kI64: return 8;
    case DType::kI32: return 4;
    case DType::kU8: return 1;
    case DType::kBool: return 1;
    case DType::kF64: return 8;
    case DType::kQ8: return 1;
    case DType::kQ4: return 0;
  }
  return 0;
}

// Bytes of one row of `cols` elements (the quantised formats' scales are
// stored apart, kernels/quant.h).
inline int64_t RowBytes(DType t, int64_t cols) { return t == DType::kQ4 ? cols / 2 : cols * DTypeSize(t); }
// The group-quantised weight formats (kernels/quant.h).
inline bool IsQuantized(DType t) { return t == DType::kQ8 || t == DType::kQ4; }

// The safetensors spelling ("F32", "BF16", "F8_E4M3", ...).
const char* DTypeName(DType t);
// Parses a safetensors dtype string; returns false for an unknown one.
bool ParseDType(std::string_view s, DType* out);

inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even, as torch's .to(torch.bfloat16). NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// FP8 e4m3fn (OCP "E4M3FN" as used by torch.float8_e4m3fn and DeepSeek-V3):
// 1 sign, 4 exponent (bias 7), 3 mantissa bits, no infinities, 0x7f/0xff = NaN,
// max finite 448.
float F8E4M3ToF32(uint8_t v);
// Round-to-nearest-even with saturation to ±448 (torch saturates on the cast
// DeepSeek's quantiser uses after clamping; we clamp explicitly).
uint8_t F32ToF8E4M3(float f);

// Converts `n` elements of `src` (stored as `t`) to float.
void ConvertToF32(DType t, const void* src, float* dst, int64_t n);

}  // namespace deepshard
