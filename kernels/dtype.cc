#include "kernels/dtype.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "base/status_macros.h"

namespace deepshard {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kF8E4M3: return "F8_E4M3";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
    case DType::kF64: return "F64";
    case DType::kQ8: return "Q8";  // internal formats: ParseDType never accepts them
    case DType::kQ4: return "Q4";
  }
  return "?";
}

bool ParseDType(std::string_view s, DType* out) {
  static constexpr struct { std::string_view name; DType t; } kTable[] = {
      {"F32", DType::kF32},         {"BF16", DType::kBF16}, {"F16", DType::kF16},
      {"F8_E4M3", DType::kF8E4M3},  {"I64", DType::kI64},   {"I32", DType::kI32},
      {"U8", DType::kU8},           {"BOOL", DType::kBool}, {"F64", DType::kF64},
  };
  for (const auto& e : kTable) {
    if (e.name == s) {
      *out = e.t;
      return true;
    }
  }
  return false;
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1u;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);  // subnormal (or zero)
  } else if (exp == 31) {
    v = mant ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  }
  return sign ? -v : v;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00u;
  if (a >= 65520.0f) return sign | 0x7c00u;  // rounds to inf
  if (a < std::ldexp(1.0f, -14)) {           // subnormal: units of 2^-24
    const float q = std::nearbyint(std::ldexp(a, 24));
    return sign | static_cast<uint16_t>(q);  // q == 1024 becomes the smallest normal
  }
  int e;
  const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  float q = std::nearbyint(std::ldexp(m, 11)) - 1024.0f;  // 10 mantissa bits
  int exp = e - 1 + 15;
  if (q >= 1024.0f) { q = 0; ++exp; }
  if (exp >= 31) return sign | 0x7c00u;
  return sign | static_cast<uint16_t>((exp << 10) | static_cast<uint32_t>(q));
}

float F8E4M3ToF32(uint8_t v) {
  const uint32_t sign = v >> 7;
  const uint32_t exp = (v >> 3) & 0xfu;
  const uint32_t mant = v & 0x7u;
  float r;
  if (exp == 15 && mant == 7) {
    r = NAN;
  } else if (exp == 0) {
    r = std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant/8 * 2^-6
  } else {
    r = std::ldexp(static_cast<float>(8 + mant), static_cast<int>(exp) - 10);
  }
  return sign ? -r : r;
}

uint8_t F32ToF8E4M3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;
  if (a < std::ldexp(1.0f, -6)) {  // subnormal range: units of 2^-9
    const float q = std::nearbyint(std::ldexp(a, 9));
    return sign | static_cast<uint8_t>(q);  // q == 8 is the smallest normal, same bits
  }
  int e;
  const float m = std::frexp(a, &e);  // m in [0.5, 1)
  float q = std::nearbyint(std::ldexp(m, 4)) - 8.0f;  // 3 mantissa bits
  int exp = e - 1 + 7;
  if (q >= 8.0f) { q = 0; ++exp; }
  if (exp > 15 || (exp == 15 && q > 6.0f)) return sign | 0x7e;
  return sign | static_cast<uint8_t>((exp << 3) | static_cast<uint32_t>(q));
}

void ConvertToF32(DType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(s[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(s[i]);
      return;
    }
    case DType::kF8E4M3: {
      // 256-entry table: decoding each byte with ldexp would dominate the cost.
      static const auto* table = [] {
        auto* t = new float[256];
        for (int b = 0; b < 256; ++b) t[b] = F8E4M3ToF32(static_cast<uint8_t>(b));
        return t;
      }();
      const uint8_t* s = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = table[s[i]];
      return;
    }
    default:
      DS_CHECK(false && "ConvertToF32: not a float dtype");
  }
}

}  // namespace deepshard
