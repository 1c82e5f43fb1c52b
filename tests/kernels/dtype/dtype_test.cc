// Conformance tests for kernels/dtype: every bf16, f16 and fp8 e4m3 code, and
// round-to-nearest-even on the way back from f32. Expected values are computed
// here from the format definitions, not with the functions under test.
#include "kernels/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace deepshard {
namespace {

float BitsToF32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
uint32_t F32ToBits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// OCP 8-bit floating point spec, E4M3 ("FN": no infinities): bias 7,
// S.1111.111 is NaN, everything else is finite. Subnormals: 2^-6 * m/8.
double E4M3Reference(uint8_t code, bool* is_nan) {
  const int s = code >> 7, e = (code >> 3) & 0xf, m = code & 0x7;
  *is_nan = (e == 15 && m == 7);
  double mag = e == 0 ? std::pow(2.0, -6) * (m / 8.0) : std::pow(2.0, e - 7) * (1.0 + m / 8.0);
  return s ? -mag : mag;
}

// IEEE binary16: bias 15, 10 mantissa bits, e == 31 is inf/NaN.
double F16Reference(uint16_t code, bool* is_nan, bool* is_inf) {
  const int s = code >> 15, e = (code >> 10) & 0x1f, m = code & 0x3ff;
  *is_nan = (e == 31 && m != 0);
  *is_inf = (e == 31 && m == 0);
  double mag = e == 0 ? std::pow(2.0, -14) * (m / 1024.0) : std::pow(2.0, e - 15) * (1.0 + m / 1024.0);
  return s ? -mag : mag;
}

TEST(DTypeTest, NamesParseAndSizes) {
  const DType all[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kI64,
                       DType::kI32, DType::kU8,   DType::kBool, DType::kF64};
  const int64_t sizes[] = {4, 2, 2, 1, 8, 4, 1, 1, 8};
  for (int i = 0; i < 9; ++i) {
    DType parsed;
    ASSERT_TRUE(ParseDType(DTypeName(all[i]), &parsed)) << DTypeName(all[i]);
    EXPECT_EQ(parsed, all[i]);
    EXPECT_EQ(DTypeSize(all[i]), sizes[i]) << DTypeName(all[i]);
  }
  EXPECT_STREQ(DTypeName(DType::kF8E4M3), "F8_E4M3");
  EXPECT_STREQ(DTypeName(DType::kBF16), "BF16");
  DType t;
  for (const char* bad : {"", "f32", "F8_E5M2", "F8E4M3", "BF16 ", "FP32", "I8", "U16"}) {
    EXPECT_FALSE(ParseDType(bad, &t)) << bad;
  }
}

// ---------------------------------------------------------------------------
// FP8 e4m3fn
// ---------------------------------------------------------------------------

TEST(F8E4M3Test, AllCodesDecodeToSpecValue) {
  for (int c = 0; c < 256; ++c) {
    bool is_nan;
    const double want = E4M3Reference(static_cast<uint8_t>(c), &is_nan);
    const float got = F8E4M3ToF32(static_cast<uint8_t>(c));
    if (is_nan) {
      EXPECT_TRUE(std::isnan(got)) << "code 0x" << std::hex << c;
      continue;
    }
    EXPECT_EQ(static_cast<double>(got), want) << "code 0x" << std::hex << c;
    EXPECT_EQ(std::signbit(got), c >= 0x80) << "code 0x" << std::hex << c;
  }
  // Landmarks of the format.
  EXPECT_EQ(F8E4M3ToF32(0x7e), 448.0f);
  EXPECT_EQ(F8E4M3ToF32(0xfe), -448.0f);
  EXPECT_EQ(F8E4M3ToF32(0x01), 0x1p-9f);  // smallest subnormal
  EXPECT_EQ(F8E4M3ToF32(0x07), 7 * 0x1p-9f);
  EXPECT_EQ(F8E4M3ToF32(0x08), 0x1p-6f);  // smallest normal
  EXPECT_EQ(F8E4M3ToF32(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToF32(0x78), 256.0f);  // e = 15 is finite in the FN variant
  EXPECT_EQ(F8E4M3ToF32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(F8E4M3ToF32(0x80)));
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0xff)));
}

TEST(F8E4M3Test, EveryFiniteCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;  // NaN
    const float v = F8E4M3ToF32(static_cast<uint8_t>(c));
    EXPECT_EQ(F32ToF8E4M3(v), c) << "code 0x" << std::hex << c << " value " << v;
  }
}

TEST(F8E4M3Test, NaNEncodesAsNaN) {
  const uint8_t n = F32ToF8E4M3(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(n & 0x7f, 0x7f);
  const uint8_t m = F32ToF8E4M3(-std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(m & 0x7f, 0x7f);
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(n)));
}

TEST(F8E4M3Test, RoundsToNearestEvenBetweenNeighbours) {
  // Consecutive positive finite codes a, a+1 (0x00..0x7e): the midpoint goes to
  // the even code, anything off the midpoint goes to the nearer one. All the
  // midpoints are exact in f32.
  for (int a = 0; a < 0x7e; ++a) {
    const float lo = F8E4M3ToF32(static_cast<uint8_t>(a));
    const float hi = F8E4M3ToF32(static_cast<uint8_t>(a + 1));
    const float mid = (lo + hi) / 2;
    ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(lo) + hi) / 2);
    const int even = (a % 2 == 0) ? a : a + 1;
    for (int sign : {0, 0x80}) {
      const float s = sign ? -1.0f : 1.0f;
      EXPECT_EQ(F32ToF8E4M3(s * mid), even | sign) << "midpoint " << s * mid << " of codes " << a;
      EXPECT_EQ(F32ToF8E4M3(s * std::nextafter(mid, 0.0f)), a | sign) << s * mid;
      EXPECT_EQ(F32ToF8E4M3(s * std::nextafter(mid, 1e9f)), (a + 1) | sign) << s * mid;
      // A quarter of the way in from either side.
      EXPECT_EQ(F32ToF8E4M3(s * (lo + (hi - lo) / 4)), a | sign);
      EXPECT_EQ(F32ToF8E4M3(s * (hi - (hi - lo) / 4)), (a + 1) | sign);
    }
  }
  // Below half the smallest subnormal rounds to (signed) zero; exactly half is a tie to 0.
  EXPECT_EQ(F32ToF8E4M3(0x1p-10f), 0x00);
  EXPECT_EQ(F32ToF8E4M3(-0x1p-10f), 0x80);
  EXPECT_EQ(F32ToF8E4M3(0x1p-11f), 0x00);
  EXPECT_EQ(F32ToF8E4M3(1e-30f), 0x00);
  EXPECT_EQ(F32ToF8E4M3(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(F32ToF8E4M3(std::nextafter(0x1p-10f, 1.0f)), 0x01);
  EXPECT_EQ(F32ToF8E4M3(-0.0f), 0x80);
}

TEST(F8E4M3Test, SaturatesAt448) {
  for (float v : {448.0f, std::nextafter(448.0f, 1e9f), 449.0f, 463.99f, 464.0f, 465.0f, 480.0f,
                  512.0f, 1e6f, 3.4e38f, std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(F32ToF8E4M3(v), 0x7e) << v;
    EXPECT_EQ(F32ToF8E4M3(-v), 0xfe) << -v;
  }
  // The largest value below 448 is 416; values between round to nearest.
  EXPECT_EQ(F32ToF8E4M3(431.0f), 0x7d);
  EXPECT_EQ(F32ToF8E4M3(432.0f), 0x7e);  // tie 416|448 -> even mantissa (448 = 0x7e)
  EXPECT_EQ(F32ToF8E4M3(447.9f), 0x7e);
}

// Brute force: the nearest finite code by distance, ties to the even code,
// saturating outside [-448, 448].
uint8_t NearestE4M3(float f) {
  const double x = f;
  int best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= 0x7e; ++c) {
    bool nan;
    const double d = std::fabs(std::fabs(x) - E4M3Reference(static_cast<uint8_t>(c), &nan));
    if (d < best_d || (d == best_d && c % 2 == 0)) {
      best = c;
      best_d = d;
    }
  }
  return static_cast<uint8_t>(best | (std::signbit(f) ? 0x80 : 0));
}

TEST(F8E4M3Test, RandomValuesMatchBruteForceNearest) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> expo(-14.0f, 10.0f);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (int i = 0; i < 20000; ++i) {
    const float f = unit(rng) * std::exp2(expo(rng));
    ASSERT_EQ(F32ToF8E4M3(f), NearestE4M3(f)) << "value " << f;
  }
}

// ---------------------------------------------------------------------------
// f16
// ---------------------------------------------------------------------------

TEST(F16Test, AllCodesDecodeAndRoundTrip) {
  for (uint32_t c = 0; c < 65536; ++c) {
    const uint16_t h = static_cast<uint16_t>(c);
    bool nan, inf;
    const double want = F16Reference(h, &nan, &inf);
    const float v = F16ToF32(h);
    if (nan) {
      ASSERT_TRUE(std::isnan(v)) << "code 0x" << std::hex << c;
      const uint16_t back = F32ToF16(v);
      ASSERT_EQ(back & 0x7c00, 0x7c00) << std::hex << c;
      ASSERT_NE(back & 0x3ff, 0) << "NaN came back as inf, code 0x" << std::hex << c;
      continue;
    }
    if (inf) {
      ASSERT_TRUE(std::isinf(v)) << std::hex << c;
      ASSERT_EQ(std::signbit(v), (c & 0x8000) != 0);
    } else {
      ASSERT_EQ(static_cast<double>(v), want) << "code 0x" << std::hex << c;
      ASSERT_EQ(std::signbit(v), (c & 0x8000) != 0) << std::hex << c;
    }
    ASSERT_EQ(F32ToF16(v), h) << "code 0x" << std::hex << c << " value " << v;
  }
}

TEST(F16Test, RoundsToNearestEvenBetweenNeighbours) {
  // Positive finite codes 0x0000..0x7bff (65504).
  for (int a = 0; a < 0x7bff; ++a) {
    const float lo = F16ToF32(static_cast<uint16_t>(a));
    const float hi = F16ToF32(static_cast<uint16_t>(a + 1));
    const float mid = (lo + hi) / 2;
    const int even = (a % 2 == 0) ? a : a + 1;
    ASSERT_EQ(F32ToF16(mid), even) << "midpoint " << mid;
    ASSERT_EQ(F32ToF16(-mid), even | 0x8000) << "midpoint " << -mid;
    ASSERT_EQ(F32ToF16(std::nextafter(mid, 0.0f)), a) << mid;
    ASSERT_EQ(F32ToF16(std::nextafter(mid, 1e9f)), a + 1) << mid;
  }
  // Overflow: 65504 is the largest finite; the midpoint to 65536 (65520) rounds to inf.
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);
  EXPECT_EQ(F32ToF16(-65520.0f), 0xfc00);
  EXPECT_EQ(F32ToF16(1e10f), 0x7c00);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  // Underflow: half the smallest subnormal (2^-25) ties to zero.
  EXPECT_EQ(F32ToF16(0x1p-25f), 0x0000);
  EXPECT_EQ(F32ToF16(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(1e-30f), 0x0000);
}

// ---------------------------------------------------------------------------
// bf16
// ---------------------------------------------------------------------------

TEST(Bf16Test, AllCodesDecodeAndRoundTrip) {
  for (uint32_t c = 0; c < 65536; ++c) {
    const uint16_t h = static_cast<uint16_t>(c);
    const float v = Bf16ToF32(h);
    ASSERT_EQ(F32ToBits(v), c << 16);
    if (std::isnan(v)) {
      const uint16_t back = F32ToBf16(v);
      ASSERT_TRUE(std::isnan(Bf16ToF32(back))) << "NaN lost, code 0x" << std::hex << c;
      ASSERT_EQ(back & 0x8000, c & 0x8000);
      continue;
    }
    ASSERT_EQ(F32ToBf16(v), h) << "code 0x" << std::hex << c;
  }
}

TEST(Bf16Test, RoundsToNearestEven) {
  // Every pair of neighbouring positive finite codes: the f32 halfway between
  // them has low half 0x8000.
  for (uint32_t a = 0; a < 0x7f7f; ++a) {
    const uint32_t mid = (a << 16) | 0x8000u;
    const uint16_t even = (a % 2 == 0) ? a : a + 1;
    ASSERT_EQ(F32ToBf16(BitsToF32(mid)), even) << std::hex << a;
    ASSERT_EQ(F32ToBf16(BitsToF32(mid | 0x80000000u)), even | 0x8000) << std::hex << a;
    ASSERT_EQ(F32ToBf16(BitsToF32(mid - 1)), a) << std::hex << a;
    ASSERT_EQ(F32ToBf16(BitsToF32(mid + 1)), a + 1) << std::hex << a;
  }
  EXPECT_EQ(F32ToBf16(1.0f + 0x1p-8f), 0x3f80);   // tie, 1.0 is even
  EXPECT_EQ(F32ToBf16(1.0f + 3 * 0x1p-8f), 0x3f82);  // tie, up to even
  // The largest finite bf16 is 0x7f7f; at and past its upper midpoint -> inf.
  EXPECT_EQ(F32ToBf16(BitsToF32(0x7f7f7fffu)), 0x7f7f);
  EXPECT_EQ(F32ToBf16(BitsToF32(0x7f7f8000u)), 0x7f80);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(F32ToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  // Signalling-ish NaNs whose payload is only in the low half stay NaN (not inf).
  for (uint32_t nan_bits : {0x7f800001u, 0x7f80ffffu, 0xff800001u, 0x7fc00000u, 0x7fffffffu}) {
    EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(BitsToF32(nan_bits))))) << std::hex << nan_bits;
  }
}

TEST(Bf16Test, RandomValuesMatchDoubleReference) {
  std::mt19937 rng(99);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t bits = rng();
    const float f = BitsToF32(bits);
    if (!std::isfinite(f)) continue;
    const uint32_t lo = bits & 0xffff0000u, hi = lo + 0x10000u;
    const double dlo = std::fabs(static_cast<double>(f) - BitsToF32(lo));
    const uint16_t lo16 = static_cast<uint16_t>(lo >> 16), hi16 = static_cast<uint16_t>(hi >> 16);
    uint16_t want;
    if ((hi & 0x7f800000u) == 0x7f800000u) {
      // hi is inf: round to it iff f is at or past the midpoint.
      want = (bits & 0xffffu) >= 0x8000u ? hi16 : lo16;
    } else {
      const double dhi = std::fabs(static_cast<double>(f) - BitsToF32(hi));
      want = dlo < dhi ? lo16 : dhi < dlo ? hi16 : ((lo16 % 2 == 0) ? lo16 : hi16);
    }
    ASSERT_EQ(F32ToBf16(f), want) << "bits 0x" << std::hex << bits;
  }
}

// ---------------------------------------------------------------------------
// ConvertToF32
// ---------------------------------------------------------------------------

TEST(ConvertToF32Test, MatchesScalarConversions) {
  std::vector<uint8_t> f8(256);
  for (int i = 0; i < 256; ++i) f8[i] = static_cast<uint8_t>(i);
  std::vector<float> out(256);
  ConvertToF32(DType::kF8E4M3, f8.data(), out.data(), 256);
  for (int i = 0; i < 256; ++i) {
    const float want = F8E4M3ToF32(static_cast<uint8_t>(i));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(out[i]));
    } else {
      EXPECT_EQ(F32ToBits(out[i]), F32ToBits(want)) << i;
    }
  }

  std::vector<uint16_t> h(65536);
  for (uint32_t i = 0; i < 65536; ++i) h[i] = static_cast<uint16_t>(i);
  std::vector<float> o16(65536);
  ConvertToF32(DType::kF16, h.data(), o16.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    const float want = F16ToF32(static_cast<uint16_t>(i));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(o16[i]));
    } else {
      ASSERT_EQ(F32ToBits(o16[i]), F32ToBits(want)) << i;
    }
  }
  ConvertToF32(DType::kBF16, h.data(), o16.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) ASSERT_EQ(F32ToBits(o16[i]), i << 16) << i;

  const float src[5] = {1.5f, -0.0f, 3e38f, 1e-40f, -7.25f};
  float dst[5];
  ConvertToF32(DType::kF32, src, dst, 5);
  EXPECT_EQ(std::memcmp(src, dst, sizeof(src)), 0);

  ConvertToF32(DType::kF32, src, dst, 0);  // n = 0 is a no-op
}

}  // namespace
}  // namespace deepshard
