// Tests of the group-quantised weight formats' reference code (kernels/quant.h):
// QuantizeRow's error bounds, scales and packing, QuantizeRows from every
// source dtype (fp8 with its block scales), DequantizeRow on row sub-views, and
// CheckQuantizable. The CPU kernels are checked against DequantizeRow in
// gemv_test.cc, so this file is what ties them to the format.
#include "kernels/quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/tensor.h"

namespace deepshard {
namespace {

// A quantised matrix [rows, cols] and its view.
struct QMatrix {
  DType dtype;
  int64_t rows, cols, group;
  std::vector<uint8_t> q;
  std::vector<uint16_t> scales;

  QMatrix(DType t, int64_t r, int64_t c, int64_t g)
      : dtype(t), rows(r), cols(c), group(g), q(r * RowBytes(t, c)), scales(r * (c / g)) {}
  WeightView View() const {
    WeightView w;
    w.dtype = dtype;
    w.data = q.data();
    w.rows = rows;
    w.cols = cols;
    w.qscale = scales.data();
    w.group = group;
    return w;
  }
  uint8_t* Row(int64_t r) { return q.data() + r * RowBytes(dtype, cols); }
  uint16_t* ScaleRow(int64_t r) { return scales.data() + r * (cols / group); }
  // The stored integer of (r, c): int8 q, or the int4 nibble 0..15.
  int Q(int64_t r, int64_t c) const {
    const uint8_t* row = q.data() + r * RowBytes(dtype, cols);
    if (dtype == DType::kQ8) return static_cast<int8_t>(row[c]);
    const uint8_t b = row[c / 32 * 16 + c % 16];
    return c % 32 < 16 ? (b & 15) : (b >> 4);
  }
  float Scale(int64_t r, int64_t c) const { return F16ToF32(scales[r * (cols / group) + c / group]); }
};

// |w - deq| in double, against `bound` steps of d. q = round(w / d) rounds the
// f32 quotient, which can sit one f32 rounding away from a half step: hence
// the 2^-20 slack.
::testing::AssertionResult WithinSteps(float w, float deq, float d, double bound) {
  const double err = std::fabs(static_cast<double>(w) - deq), lim = bound * std::fabs(d) * (1 + std::ldexp(1.0, -20));
  if (err <= lim) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "w " << w << " deq " << deq << " d " << d << ": error " << err
                                       << " over " << bound << " steps";
}

// Random values whose magnitude changes by group (10^-3 .. 10^2) and by row.
std::vector<float> RandomRows(int64_t rows, int64_t cols, int64_t group, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), e(-3.0f, 2.0f);
  std::vector<float> x(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g0 = 0; g0 < cols; g0 += group) {
      const float mag = std::pow(10.0f, e(rng));
      for (int64_t c = g0; c < g0 + group; ++c) x[r * cols + c] = u(rng) * mag;
    }
  }
  return x;
}

QMatrix Quantize(const std::vector<float>& x, DType t, int64_t rows, int64_t cols, int64_t group) {
  QMatrix m(t, rows, cols, group);
  for (int64_t r = 0; r < rows; ++r) QuantizeRow(&x[r * cols], cols, t, group, m.Row(r), m.ScaleRow(r));
  return m;
}

std::vector<float> Dequantize(const WeightView& w) {
  std::vector<float> out(w.rows * w.cols);
  for (int64_t r = 0; r < w.rows; ++r) DequantizeRow(w, r, &out[r * w.cols]);
  return out;
}

TEST(QuantizeRow, Int8ErrorWithinHalfAStep) {
  for (int64_t group : {32, 64, 128}) {
    SCOPED_TRACE("group " + std::to_string(group));
    const int64_t rows = 20, cols = 512;
    const std::vector<float> x = RandomRows(rows, cols, group, 1 + group);
    const QMatrix m = Quantize(x, DType::kQ8, rows, cols, group);
    ASSERT_EQ(m.scales.size(), static_cast<size_t>(rows * cols / group));
    const std::vector<float> y = Dequantize(m.View());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float d = m.Scale(r, c), w = x[r * cols + c], deq = y[r * cols + c];
        ASSERT_GT(d, 0.0f);
        ASSERT_GE(m.Q(r, c), -127) << r << "," << c;
        ASSERT_LE(m.Q(r, c), 127) << r << "," << c;
        ASSERT_EQ(deq, static_cast<float>(m.Q(r, c)) * d);  // q * d is exact in f32
        ASSERT_TRUE(WithinSteps(w, deq, d, 0.5)) << "(" << r << ", " << c << ")";
      }
    }
  }
}

TEST(QuantizeRow, Int4ErrorWithinHalfAStepUnlessClamped) {
  for (int64_t group : {32, 64, 128}) {
    SCOPED_TRACE("group " + std::to_string(group));
    const int64_t rows = 20, cols = 512;
    const std::vector<float> x = RandomRows(rows, cols, group, 2 + group);
    const QMatrix m = Quantize(x, DType::kQ4, rows, cols, group);
    const std::vector<float> y = Dequantize(m.View());
    int clamped = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float d = m.Scale(r, c), w = x[r * cols + c], deq = y[r * cols + c];
        const int q = m.Q(r, c);
        ASSERT_NE(d, 0.0f);
        ASSERT_EQ(deq, static_cast<float>(q - 8) * d);
        // Values of the other sign than the group's extreme reach +8 steps,
        // which clamps to q = 15: up to one step off.
        const bool clamp = q == 15 && std::fabs(w / d) > 7.5f;
        clamped += clamp;
        ASSERT_TRUE(WithinSteps(w, deq, d, clamp ? 1.0 : 0.5)) << "(" << r << ", " << c << ") q " << q;
      }
    }
    EXPECT_GT(clamped, 0);  // the data do exercise the clamp
  }
}

TEST(QuantizeRow, Int4LargestMagnitudeLandsOnQZero) {
  // The group's value of largest magnitude (the first on ties) sets d = m / -8,
  // so it is stored as q = 0 and dequantises to -8 d, within the f16 rounding of d.
  const int64_t rows = 30, cols = 256, group = 32;
  std::vector<float> x = RandomRows(rows, cols, group, 3);
  // A tie of opposite signs: the first one sets d (= 125) and lands on q = 0;
  // the second would need q = 16 and clamps to 15.
  x[5 * cols + 40] = -1000.0f;
  x[5 * cols + 41] = 1000.0f;
  const QMatrix m = Quantize(x, DType::kQ4, rows, cols, group);
  const std::vector<float> y = Dequantize(m.View());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g0 = 0; g0 < cols; g0 += group) {
      int64_t imax = g0;
      for (int64_t c = g0; c < g0 + group; ++c) {
        if (std::fabs(x[r * cols + c]) > std::fabs(x[r * cols + imax])) imax = c;
      }
      SCOPED_TRACE("row " + std::to_string(r) + " group at " + std::to_string(g0));
      EXPECT_EQ(m.Q(r, imax), 0);
      const float mv = x[r * cols + imax];
      EXPECT_EQ(std::signbit(m.Scale(r, imax)), !std::signbit(mv));  // d = m / -8
      if (std::fabs(mv) / 8 >= std::ldexp(1.0f, -14)) {  // a normal f16 d: within one f16 step of m / -8
        EXPECT_LE(std::fabs(y[r * cols + imax] - mv), std::fabs(mv) * std::ldexp(1.0f, -10));
      }
      // The rest stay within [-8, +7] steps: no |w / d| beyond 8.
      for (int64_t c = g0; c < g0 + group; ++c) {
        EXPECT_LE(std::fabs(x[r * cols + c] / m.Scale(r, c)), 8.0f);
      }
    }
  }
  EXPECT_EQ(m.Scale(5, 40), 125.0f);
  EXPECT_EQ(m.Q(5, 40), 0);
  EXPECT_EQ(m.Q(5, 41), 15);
}

TEST(QuantizeRow, ScaleIsTheSmallestF16NotBelowTheExactOne) {
  for (DType t : {DType::kQ8, DType::kQ4}) {
    for (int64_t group : {32, 64, 128}) {
      SCOPED_TRACE(std::string(DTypeName(t)) + " group " + std::to_string(group));
      const int64_t rows = 40, cols = 1024;
      const std::vector<float> x = RandomRows(rows, cols, group, 4 + group);
      const QMatrix m = Quantize(x, t, rows, cols, group);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t g0 = 0; g0 < cols; g0 += group) {
          float mv = 0.0f;
          for (int64_t c = g0; c < g0 + group; ++c) {
            if (std::fabs(x[r * cols + c]) > std::fabs(mv)) mv = x[r * cols + c];
          }
          const float exact = t == DType::kQ4 ? mv / -8.0f : std::fabs(mv) / 127.0f;  // in f32, as the quantiser
          const uint16_t h = m.scales[r * (cols / group) + g0 / group];
          ASSERT_GE(std::fabs(F16ToF32(h)), std::fabs(exact)) << r << " " << g0;
          ASSERT_EQ(std::signbit(F16ToF32(h)), std::signbit(exact));
          // One f16 step less would be below it.
          ASSERT_LT(std::fabs(F16ToF32(static_cast<uint16_t>(h - 1))), std::fabs(exact)) << r << " " << g0;
        }
      }
    }
  }
}

TEST(QuantizeRow, ScaleRoundedUpWhenNearestIsSmaller) {
  // amax = 127 * (1 + 2^-12): d = amax / 127 rounds to nearest f16 1.0,
  // below d; the stored scale must be the next f16 up, and q = 127 then still
  // represents amax within half a step.
  const float amax = 127.0f * (1.0f + std::ldexp(1.0f, -12));
  std::vector<float> x(32, 0.5f);
  x[7] = amax;
  uint8_t q[32];
  uint16_t s;
  QuantizeRow(x.data(), 32, DType::kQ8, 32, q, &s);
  EXPECT_EQ(F16ToF32(s), 1.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(static_cast<int8_t>(q[7]), 127);
}

TEST(QuantizeRow, AllZeroGroups) {
  for (DType t : {DType::kQ8, DType::kQ4}) {
    SCOPED_TRACE(DTypeName(t));
    const int64_t cols = 128, group = 32;
    std::vector<float> x(cols, 0.0f);
    for (int64_t c = 64; c < 96; ++c) x[c] = 0.25f * static_cast<float>(c - 80);  // group 2 only
    x[100] = -0.0f;  // a negative zero is zero too
    QMatrix m(t, 1, cols, group);
    std::memset(m.q.data(), 0xa5, m.q.size());  // stale bytes must be overwritten
    QuantizeRow(x.data(), cols, t, group, m.Row(0), m.ScaleRow(0));
    const std::vector<float> y = Dequantize(m.View());
    for (int64_t g : {0, 1, 3}) {
      EXPECT_EQ(F16ToF32(m.scales[g]), 0.0f) << g;
      for (int64_t c = g * group; c < (g + 1) * group; ++c) {
        EXPECT_EQ(m.Q(0, c), t == DType::kQ4 ? 8 : 0) << c;
        EXPECT_EQ(y[c], 0.0f) << c;
      }
    }
    EXPECT_NE(F16ToF32(m.scales[2]), 0.0f);
    for (int64_t c = 64; c < 96; ++c) EXPECT_TRUE(WithinSteps(x[c], y[c], m.Scale(0, c), 1.0)) << c;
  }
}

TEST(QuantizeRow, Int4PackingLayout) {
  // Two 32-column blocks with d = +1 and d = -1: column j of a block in the low
  // nibble of byte j, column j + 16 in the high nibble.
  std::vector<float> x(64);
  std::vector<int> q(64);
  for (int j = 0; j < 16; ++j) {
    q[j] = j;            // block 0 low: w = j - 8 (-8 at column 0: the extreme, d = 1)
    q[j + 16] = 15 - j;  // block 0 high
    q[32 + j] = (j * 7 + 3) % 16;
    q[48 + j] = (j * 5 + 1) % 16;
  }
  q[32 + 4] = 0;  // block 1's extreme, +8 at column 36 with d = -1
  q[48 + 4] = 8;
  for (int c = 0; c < 32; ++c) x[c] = static_cast<float>(q[c] - 8);
  for (int c = 32; c < 64; ++c) x[c] = -static_cast<float>(q[c] - 8);
  // Block 1's first value of magnitude 8 is column 36 (later ties do not count).
  for (int c = 32; c < 36; ++c) ASSERT_LT(std::fabs(x[c]), 8.0f) << c;
  uint8_t bytes[32];
  uint16_t s[2];
  QuantizeRow(x.data(), 64, DType::kQ4, 32, bytes, s);
  EXPECT_EQ(F16ToF32(s[0]), 1.0f);
  EXPECT_EQ(F16ToF32(s[1]), -1.0f);
  for (int b = 0; b < 2; ++b) {
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(bytes[b * 16 + j], q[b * 32 + j] | (q[b * 32 + j + 16] << 4)) << "block " << b << " byte " << j;
    }
  }
  QMatrix m(DType::kQ4, 1, 64, 32);
  std::memcpy(m.q.data(), bytes, 32);
  std::memcpy(m.scales.data(), s, 4);
  const std::vector<float> y = Dequantize(m.View());
  for (int c = 0; c < 64; ++c) EXPECT_EQ(y[c], x[c]) << c;  // integers times +-1: exact
}

TEST(QuantizeRow, Int8Layout) {
  // d = 1 (amax 127): one int8 per column, in order.
  std::vector<float> x(32);
  for (int c = 0; c < 32; ++c) x[c] = static_cast<float>(c * 9 % 255 - 127);
  x[3] = 127.0f;
  uint8_t bytes[32];
  uint16_t s;
  QuantizeRow(x.data(), 32, DType::kQ8, 32, bytes, &s);
  EXPECT_EQ(F16ToF32(s), 1.0f);
  for (int c = 0; c < 32; ++c) EXPECT_EQ(static_cast<int8_t>(bytes[c]), static_cast<int>(x[c])) << c;
}

// Halfway values round to even, both signs, as torch.round in the reference
// quantiser (tools/reference/make_fixtures.py): the rounding decides bytes.
TEST(QuantizeRow, HalfwayValuesRoundToEven) {
  std::vector<float> x(32, 0.0f);
  const float ties[] = {0.5f, 1.5f, 2.5f, 3.5f, -0.5f, -1.5f, -2.5f, -3.5f, 126.5f, -126.5f, 4.4f, -4.6f};
  for (int c = 0; c < 12; ++c) x[c] = ties[c];
  x[31] = 127.0f;  // d = 1
  uint8_t q8[32];
  uint16_t s;
  QuantizeRow(x.data(), 32, DType::kQ8, 32, q8, &s);
  ASSERT_EQ(F16ToF32(s), 1.0f);
  const int want8[] = {0, 2, 2, 4, 0, -2, -2, -4, 126, -126, 4, -5};
  for (int c = 0; c < 12; ++c) EXPECT_EQ(static_cast<int8_t>(q8[c]), want8[c]) << "value " << x[c];
  // int4, d = m / -8 = 1 with m = -8: q - 8 = round(x), clamped to [-8, 7].
  std::vector<float> y(32, 0.0f);
  const float ties4[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 6.5f, 7.5f, -7.5f, 3.4f};
  for (int c = 0; c < 10; ++c) y[c] = ties4[c];
  y[20] = -8.0f;
  uint8_t q4[16];
  QuantizeRow(y.data(), 32, DType::kQ4, 32, q4, &s);
  ASSERT_EQ(F16ToF32(s), 1.0f);
  const int want4[] = {0, 2, 2, 0, -2, -2, 6, 7, -8, 3};
  for (int c = 0; c < 10; ++c) EXPECT_EQ((q4[c] & 15) - 8, want4[c]) << "value " << y[c];
}

// QuantizeRows must equal QuantizeRow over the row widened to f32 (with fp8's
// block scales applied), for rows [r0, r1) of a sub-view.
void CheckQuantizeRows(const WeightView& w, const std::vector<float>& widened, int64_t r0, int64_t r1) {
  for (DType t : {DType::kQ8, DType::kQ4}) {
    for (int64_t group : {32, 64, 128}) {
      if (w.cols % group != 0) continue;
      SCOPED_TRACE(std::string(DTypeName(w.dtype)) + " to " + DTypeName(t) + " group " + std::to_string(group));
      ASSERT_TRUE(CheckQuantizable(w, group).ok());
      const int64_t n = r1 - r0, rb = RowBytes(t, w.cols), g = w.cols / group;
      std::vector<uint8_t> q(n * rb, 0x5a), want_q(n * rb);
      std::vector<uint16_t> s(n * g, 0x1234), want_s(n * g);
      QuantizeRows(w, r0, r1, t, group, q.data(), s.data());
      for (int64_t r = r0; r < r1; ++r) {
        QuantizeRow(&widened[(w.row0 + r) * w.cols], w.cols, t, group, &want_q[(r - r0) * rb],
                    &want_s[(r - r0) * g]);
      }
      EXPECT_EQ(q, want_q);
      EXPECT_EQ(s, want_s);
    }
  }
}

TEST(QuantizeRows, FromF32Bf16AndF16) {
  const int64_t rows = 12, cols = 256;
  const std::vector<float> x = RandomRows(rows, cols, 32, 9);
  for (DType src : {DType::kF32, DType::kBF16, DType::kF16}) {
    std::vector<uint8_t> bytes(rows * cols * DTypeSize(src));
    std::vector<float> widened(rows * cols);
    for (int64_t i = 0; i < rows * cols; ++i) {
      if (src == DType::kF32) {
        std::memcpy(&bytes[i * 4], &x[i], 4);
        widened[i] = x[i];
      } else {
        const uint16_t h = src == DType::kBF16 ? F32ToBf16(x[i]) : F32ToF16(x[i]);
        std::memcpy(&bytes[i * 2], &h, 2);
        widened[i] = src == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
      }
    }
    WeightView w;
    w.dtype = src;
    w.data = bytes.data();
    w.rows = rows;
    w.cols = cols;
    CheckQuantizeRows(w, widened, 0, rows);
    CheckQuantizeRows(w.Rows(3, 7), widened, 2, 6);  // rows 5..8 of the tensor
  }
}

TEST(QuantizeRows, FromBlockScaledFp8) {
  // 300 x 384 with 128-blocks: sub-views starting inside a scale block.
  const int64_t rows = 300, cols = 384, block = 128, sc = 3;
  std::mt19937 rng(10);
  std::vector<uint8_t> bytes(rows * cols);
  std::vector<float> scale_inv(3 * sc), widened(rows * cols);
  for (int64_t i = 0; i < 3 * sc; ++i) scale_inv[i] = std::ldexp(1.0f + 0.37f * i, -(int)(i % 5)) * 1e-2f;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      uint8_t b;
      do {
        b = static_cast<uint8_t>(rng());
      } while ((b & 0x7f) == 0x7f);
      bytes[r * cols + c] = b;
      widened[r * cols + c] = F8E4M3ToF32(b) * scale_inv[(r / block) * sc + c / block];
    }
  }
  WeightView w;
  w.dtype = DType::kF8E4M3;
  w.data = bytes.data();
  w.rows = rows;
  w.cols = cols;
  w.scale_inv = scale_inv.data();
  w.block = block;
  CheckQuantizeRows(w, widened, 0, rows);
  CheckQuantizeRows(w.Rows(120, 150), widened, 5, 140);  // tensor rows 125..259: three scale blocks
}

TEST(DequantizeRow, RowSubViewsUseTheirPhysicalScales) {
  for (DType t : {DType::kQ8, DType::kQ4}) {
    SCOPED_TRACE(DTypeName(t));
    const int64_t rows = 17, cols = 192, group = 64;
    const std::vector<float> x = RandomRows(rows, cols, group, 11);
    const QMatrix m = Quantize(x, t, rows, cols, group);
    const std::vector<float> full = Dequantize(m.View());
    const WeightView v = m.View().Rows(4, 9).Rows(2, 5);  // tensor rows 6..10
    ASSERT_EQ(v.row0, 6);
    std::vector<float> row(cols);
    for (int64_t r = 0; r < 5; ++r) {
      DequantizeRow(v, r, row.data());
      for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(row[c], full[(6 + r) * cols + c]) << r << "," << c;
    }
  }
}

TEST(CheckQuantizable, Errors) {
  std::vector<uint8_t> data(64 * 256 * 4);
  WeightView w;
  w.dtype = DType::kBF16;
  w.data = data.data();
  w.rows = 64;
  w.cols = 256;
  EXPECT_TRUE(CheckQuantizable(w, 32).ok());
  EXPECT_TRUE(CheckQuantizable(w, 128).ok());
  EXPECT_TRUE(CheckQuantizable(w, 256).ok());
  for (int64_t g : {0, -32, 16, 48, 100}) {
    const absl::Status s = CheckQuantizable(w, g);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << g;
    EXPECT_NE(s.message().find("multiple of 32"), std::string::npos) << s;
  }
  w.cols = 96;  // 96 % 64 != 0
  EXPECT_TRUE(CheckQuantizable(w, 32).ok());
  EXPECT_TRUE(CheckQuantizable(w, 96).ok());
  EXPECT_EQ(CheckQuantizable(w, 64).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(CheckQuantizable(w, 64).message().find("not a multiple of the group"), std::string::npos);
  w.cols = 256;
  for (DType t : {DType::kI32, DType::kI64, DType::kU8, DType::kBool, DType::kQ8, DType::kQ4}) {
    w.dtype = t;
    const absl::Status s = CheckQuantizable(w, 32);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << DTypeName(t);
    EXPECT_NE(s.message().find("cannot be quantised"), std::string::npos) << s;
  }
  for (DType t : {DType::kF32, DType::kF16, DType::kF8E4M3}) {
    w.dtype = t;
    EXPECT_TRUE(CheckQuantizable(w, 32).ok()) << DTypeName(t);
  }
}

TEST(WeightQuant, Names) {
  EXPECT_STREQ(WeightQuantName(WeightQuant::kStored), "stored");
  EXPECT_STREQ(WeightQuantName(WeightQuant::kInt8), "int8");
  EXPECT_STREQ(WeightQuantName(WeightQuant::kInt4), "int4");
}

}  // namespace
}  // namespace deepshard
