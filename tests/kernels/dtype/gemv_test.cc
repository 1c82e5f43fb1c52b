// Conformance tests for the CPU kernels' WidenRowsF32 / WidenRowsBf16 / GemvRows
// for F32, BF16, F16 and FP8 e4m3 with DeepSeek-V3 block scales, against a plain
// double-precision reference, on every kernel level (kernels/cpu/isa.h) this
// machine runs. Shapes are chosen so that edge (partial) scale blocks and row
// sub-views that start inside a block are covered. The group-quantised dtypes
// (kQ8, kQ4) are checked against DequantizeRow (kernels/quant.h, tested in
// quant_test.cc), with shapes that leave rows over after the GEMV's row groups
// and cross its stretches of widened scales.
#include "kernels/cpu/cpu_kernels.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/quant.h"
#include "kernels/tensor.h"

namespace deepshard::cpu {
namespace {

// The level under test (set by each test's fixture) and its entry points.
const CpuKernels* g_k = nullptr;
void GemvRows(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  g_k->gemv_rows(x, m, ldx, w, y, ldy);
}
void WidenRowsF32(const WeightView& w, int64_t r0, int64_t n, float* dst) { g_k->widen_rows_f32(w, r0, n, dst); }
void WidenRowsBf16(const WeightView& w, int64_t r0, int64_t n, uint16_t* dst) {
  g_k->widen_rows_bf16(w, r0, n, dst);
}
void GemvCols(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  g_k->gemv_cols(x, m, ldx, w, y, ldy);
}

class Levels : public ::testing::TestWithParam<CpuIsa> {
 protected:
  void SetUp() override { g_k = CpuKernelsFor(GetParam()); }
};
std::string LevelName(const ::testing::TestParamInfo<CpuIsa>& info) {
  std::string n(CpuIsaName(info.param));
  for (char& c : n) c = c == '-' ? '_' : c;
  return n;
}
class WidenRowsF32Test : public Levels {};
class WidenRowsBf16Test : public Levels {};
class GemvRowsTest : public Levels {};
class GemvColsTest : public Levels {};
INSTANTIATE_TEST_SUITE_P(Levels, WidenRowsF32Test, ::testing::ValuesIn(AvailableCpuIsas()), LevelName);
INSTANTIATE_TEST_SUITE_P(Levels, WidenRowsBf16Test, ::testing::ValuesIn(AvailableCpuIsas()), LevelName);
INSTANTIATE_TEST_SUITE_P(Levels, GemvRowsTest, ::testing::ValuesIn(AvailableCpuIsas()), LevelName);
INSTANTIATE_TEST_SUITE_P(Levels, GemvColsTest, ::testing::ValuesIn(AvailableCpuIsas()), LevelName);

// A weight matrix in its stored dtype plus the f32 value of every element
// (exact: every stored dtype widens exactly, fp8 * f32 scale is exact in double,
// and a quantised q * d is exact in f32).
struct TestWeight {
  DType dtype;
  int64_t rows, cols, block;
  std::vector<uint8_t> bytes;
  std::vector<float> scales;  // FP8 only: [ceil(rows/block), ceil(cols/block)]
  std::vector<double> value;  // [rows, cols], dequantised
  int64_t group;                 // kQ8/kQ4 only
  std::vector<uint16_t> qscale;  // kQ8/kQ4 only: [rows, cols / group] f16

  WeightView View() const {
    WeightView w;
    w.dtype = dtype;
    w.data = bytes.data();
    w.rows = rows;
    w.cols = cols;
    w.block = block;
    w.scale_inv = dtype == DType::kF8E4M3 ? scales.data() : nullptr;
    if (dtype == DType::kQ8 || dtype == DType::kQ4) {
      w.qscale = qscale.data();
      w.group = group;
    }
    return w;
  }
};

TestWeight MakeWeight(DType dtype, int64_t rows, int64_t cols, uint32_t seed, int64_t block = 128) {
  TestWeight t{dtype, rows, cols, block, {}, {}, {}, 0, {}};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  t.bytes.resize(rows * cols * DTypeSize(dtype));
  t.value.resize(rows * cols);
  const int64_t sr = (rows + block - 1) / block, sc = (cols + block - 1) / block;
  if (dtype == DType::kF8E4M3) {
    t.scales.resize(sr * sc);
    // Distinct power-of-two-ish and non-trivial scales so a wrong block index shows.
    for (int64_t i = 0; i < sr * sc; ++i) t.scales[i] = std::ldexp(1.0f + 0.37f * i, -(int)(i % 5)) * 1e-2f;
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      switch (dtype) {
        case DType::kF32: {
          const float f = u(rng);
          std::memcpy(&t.bytes[i * 4], &f, 4);
          t.value[i] = f;
          break;
        }
        case DType::kBF16: {
          const uint16_t h = F32ToBf16(u(rng));
          std::memcpy(&t.bytes[i * 2], &h, 2);
          t.value[i] = Bf16ToF32(h);
          break;
        }
        case DType::kF16: {
          const uint16_t h = F32ToF16(u(rng));
          std::memcpy(&t.bytes[i * 2], &h, 2);
          t.value[i] = F16ToF32(h);
          break;
        }
        case DType::kF8E4M3: {
          uint8_t b;
          do {
            b = static_cast<uint8_t>(rng());
          } while ((b & 0x7f) == 0x7f);  // every finite code, subnormals included
          t.bytes[i] = b;
          t.value[i] = static_cast<double>(F8E4M3ToF32(b)) * t.scales[(r / block) * sc + c / block];
          break;
        }
        default:
          ADD_FAILURE() << "unsupported dtype";
      }
    }
  }
  return t;
}

// A kQ8/kQ4 weight quantised from random values whose magnitude changes from
// group to group and row to row (2^-4 .. 2^4), so a scale taken from the wrong
// group or row shows; values are DequantizeRow's.
TestWeight MakeQWeight(DType dtype, int64_t rows, int64_t cols, int64_t group, uint32_t seed) {
  TestWeight t{dtype, rows, cols, 128, {}, {}, {}, group, {}};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int64_t row_bytes = RowBytes(dtype, cols), groups = cols / group;
  t.bytes.resize(rows * row_bytes);
  t.qscale.resize(rows * groups);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) row[c] = std::ldexp(u(rng), static_cast<int>((r * 3 + c / group * 5) % 9) - 4);
    QuantizeRow(row.data(), cols, dtype, group, &t.bytes[r * row_bytes], &t.qscale[r * groups]);
  }
  t.value.resize(rows * cols);
  const WeightView w = t.View();
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(w, r, row.data());
    for (int64_t c = 0; c < cols; ++c) t.value[r * cols + c] = row[c];
  }
  return t;
}

std::string Name(DType t, int64_t rows, int64_t cols) {
  return std::string(DTypeName(t)) + " [" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
}

struct Shape {
  int64_t rows, cols;
};
const Shape kShapes[] = {{300, 200}, {129, 257}, {5, 7}, {128, 128}, {1, 1}, {256, 384}, {131, 16}};
const DType kDTypes[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3};
const DType kQDTypes[] = {DType::kQ8, DType::kQ4};

struct QShape {
  int64_t rows, cols, group;
};
// Rows: fewer than, exactly and not a multiple of the row groups (8 on AVX-512,
// 4 on AVX2); columns: one block, odd block counts, ~2048, and more groups than
// one stretch of widened scales (64) with a partial one after it.
const QShape kQShapes[] = {{37, 64, 32},   {37, 96, 32},    {1, 32, 32},     {8, 32, 32},     {13, 128, 64},
                           {37, 384, 128}, {21, 2080, 32},  {24, 2048, 64},  {17, 2048, 128}, {16, 8320, 32},
                           {3, 96, 96},    {40, 4096, 32}};
std::string QName(const QShape& s) { return std::to_string(s.group) + "-group"; }

TEST_P(WidenRowsF32Test, MatchesReferenceExactly) {
  uint32_t seed = 1;
  for (DType dt : kDTypes) {
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(Name(dt, s.rows, s.cols));
      const TestWeight t = MakeWeight(dt, s.rows, s.cols, seed++);
      const WeightView w = t.View();
      std::vector<float> out(s.rows * s.cols, NAN);
      WidenRowsF32(w, 0, s.rows, out.data());
      for (int64_t i = 0; i < s.rows * s.cols; ++i) {
        ASSERT_EQ(static_cast<double>(out[i]), static_cast<double>(static_cast<float>(t.value[i])))
            << "element (" << i / s.cols << ", " << i % s.cols << ")";
      }
      // A partial range [r0, r0 + n) of the full view.
      if (s.rows > 3) {
        const int64_t r0 = s.rows / 2 - 1, n = s.rows - r0 - 1;
        std::vector<float> part(n * s.cols);
        WidenRowsF32(w, r0, n, part.data());
        for (int64_t i = 0; i < n * s.cols; ++i) ASSERT_EQ(part[i], out[r0 * s.cols + i]) << i;
      }
    }
  }
}

TEST_P(WidenRowsF32Test, RowSubViewsKeepTheirScaleBlocks) {
  // Sub-views starting inside a scale block, spanning block edges, and nested.
  for (DType dt : kDTypes) {
    const TestWeight t = MakeWeight(dt, 300, 200, 77);
    const WeightView full = t.View();
    struct Sub { int64_t r, n; };
    for (Sub sub : {Sub{0, 300}, Sub{37, 100}, Sub{127, 2}, Sub{128, 1}, Sub{129, 171}, Sub{255, 45},
                    Sub{299, 1}, Sub{1, 254}}) {
      SCOPED_TRACE(std::string(DTypeName(dt)) + " rows " + std::to_string(sub.r) + "+" + std::to_string(sub.n));
      const WeightView v = full.Rows(sub.r, sub.n);
      EXPECT_EQ(v.rows, sub.n);
      std::vector<float> out(sub.n * 200);
      WidenRowsF32(v, 0, sub.n, out.data());
      for (int64_t i = 0; i < sub.n * 200; ++i) {
        ASSERT_EQ(out[i], static_cast<float>(t.value[sub.r * 200 + i])) << "element " << i;
      }
      // Nested sub-view: rows [3, 3 + k) of the sub-view.
      if (sub.n > 5) {
        const int64_t k = sub.n - 4;
        const WeightView vv = v.Rows(3, k);
        EXPECT_EQ(vv.row0, sub.r + 3);
        std::vector<float> o2(k * 200);
        WidenRowsF32(vv, 0, k, o2.data());
        for (int64_t i = 0; i < k * 200; ++i) {
          ASSERT_EQ(o2[i], static_cast<float>(t.value[(sub.r + 3) * 200 + i])) << "nested element " << i;
        }
      }
    }
  }
}

TEST_P(WidenRowsF32Test, SmallerBlockSize) {
  // The block edge is a parameter of the view; 64 exercises more edge blocks.
  const TestWeight t = MakeWeight(DType::kF8E4M3, 150, 100, 5, /*block=*/64);
  const WeightView v = t.View().Rows(60, 70);
  std::vector<float> out(70 * 100);
  WidenRowsF32(v, 0, 70, out.data());
  for (int64_t i = 0; i < 70 * 100; ++i) ASSERT_EQ(out[i], static_cast<float>(t.value[60 * 100 + i])) << i;
}

TEST_P(WidenRowsF32Test, QuantMatchesDequantizeRowExactly) {
  uint32_t seed = 500;
  for (DType dt : kQDTypes) {
    for (const QShape& s : kQShapes) {
      SCOPED_TRACE(Name(dt, s.rows, s.cols) + " " + QName(s));
      const TestWeight t = MakeQWeight(dt, s.rows, s.cols, s.group, seed++);
      std::vector<float> out(s.rows * s.cols, NAN);
      WidenRowsF32(t.View(), 0, s.rows, out.data());
      for (int64_t i = 0; i < s.rows * s.cols; ++i) {
        ASSERT_EQ(static_cast<double>(out[i]), t.value[i]) << "element (" << i / s.cols << ", " << i % s.cols << ")";
      }
      // A partial range of a row sub-view (row0 != 0): its scales are those of
      // the physical rows.
      if (s.rows > 4) {
        const int64_t r = 2, n = s.rows - 3;
        const WeightView v = t.View().Rows(r, n);
        std::vector<float> part((n - 1) * s.cols, NAN);
        WidenRowsF32(v, 1, n - 1, part.data());
        for (int64_t i = 0; i < (n - 1) * s.cols; ++i) {
          ASSERT_EQ(static_cast<double>(part[i]), t.value[(r + 1) * s.cols + i]) << "sub-view element " << i;
        }
      }
    }
  }
}

TEST_P(WidenRowsBf16Test, QuantMatchesRoundedDequantized) {
  uint32_t seed = 600;
  for (DType dt : kQDTypes) {
    for (const QShape& s : kQShapes) {
      SCOPED_TRACE(Name(dt, s.rows, s.cols) + " " + QName(s));
      const TestWeight t = MakeQWeight(dt, s.rows, s.cols, s.group, seed++);
      const int64_t r = s.rows > 4 ? 3 : 0, n = s.rows - r;
      std::vector<uint16_t> out(n * s.cols);
      WidenRowsBf16(t.View().Rows(r, n), 0, n, out.data());
      for (int64_t i = 0; i < n * s.cols; ++i) {
        ASSERT_EQ(out[i], F32ToBf16(static_cast<float>(t.value[r * s.cols + i]))) << "element " << i;
      }
    }
  }
}

TEST_P(WidenRowsBf16Test, MatchesRoundedReference) {
  uint32_t seed = 100;
  for (DType dt : kDTypes) {
    for (const Shape& s : {Shape{300, 200}, Shape{129, 257}, Shape{5, 7}}) {
      SCOPED_TRACE(Name(dt, s.rows, s.cols));
      const TestWeight t = MakeWeight(dt, s.rows, s.cols, seed++);
      const int64_t r = s.rows > 4 ? 3 : 0, n = s.rows - r;
      const WeightView v = t.View().Rows(r, n);
      std::vector<uint16_t> out(n * s.cols);
      WidenRowsBf16(v, 0, n, out.data());
      for (int64_t i = 0; i < n * s.cols; ++i) {
        ASSERT_EQ(out[i], F32ToBf16(static_cast<float>(t.value[r * s.cols + i]))) << "element " << i;
      }
    }
  }
}

// Values where round-to-nearest-even to bf16 is easy to get wrong: exact ties
// (to even, both ways), just above and below them, NaNs (quiet, signalling,
// negative: quieted, not rounded into infinity), infinities, the largest
// floats (they round to infinity), subnormals (kept, not flushed), zeros.
std::vector<float> Bf16EdgeValues(int64_t n) {
  const uint32_t bits[] = {0x3f808000, 0x3f818000, 0x3f808001, 0x3f807fff, 0xbf808000, 0xbf818000, 0x7fc00000,
                           0x7f800001, 0xffc12345, 0x7fbfffff, 0x7f800000, 0xff800000, 0x7f7fffff, 0xff7fffff,
                           0x7f7f8000, 0x00000001, 0x00008000, 0x00018000, 0x807fffff, 0x00000000, 0x80000000};
  std::vector<float> v(n);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = bits[(i * 5) % (sizeof(bits) / sizeof(bits[0]))];  // 5 is prime to 21: every value
    float f;
    std::memcpy(&f, &b, 4);
    v[i] = i % 3 == 2 ? u(rng) : f;
  }
  return v;
}

uint16_t Bits16(float f) { return F32ToBf16(f); }

TEST_P(WidenRowsBf16Test, F32EdgeValuesRoundAsF32ToBf16) {
  for (const int64_t cols : {int64_t{16}, int64_t{45}, int64_t{256}}) {
    const int64_t rows = 3;
    std::vector<float> w = Bf16EdgeValues(rows * cols);
    WeightView v;
    v.dtype = DType::kF32;
    v.data = w.data();
    v.rows = rows;
    v.cols = cols;
    std::vector<uint16_t> out(rows * cols);
    WidenRowsBf16(v, 0, rows, out.data());
    for (int64_t i = 0; i < rows * cols; ++i) ASSERT_EQ(out[i], Bits16(w[i])) << "cols " << cols << " element " << i;
  }
}

TEST_P(WidenRowsBf16Test, ActivationsRoundAsF32ToBf16) {
  for (const int64_t k : {int64_t{7}, int64_t{32}, int64_t{100}}) {
    const int64_t m = 4, ldx = k + 5;
    std::vector<float> x = Bf16EdgeValues(m * ldx);
    std::vector<uint16_t> y(m * k, 0xdead);
    g_k->f32_to_bf16_rows(x.data(), m, k, ldx, y.data());
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t c = 0; c < k; ++c) ASSERT_EQ(y[i * k + c], Bits16(x[i * ldx + c])) << "k " << k << " row " << i << " col " << c;
    }
  }
}

// Relative error of y against the double reference, normalised by sum |w| |x|
// (so cancellation does not inflate it).
// gemm: the product goes through gemm_rows (any m) instead of gemv_rows.
void CheckGemv(const TestWeight& t, int64_t r_begin, int64_t n_rows, int64_t m, uint32_t seed, bool gemm = false) {
  const int64_t K = t.cols;
  const int64_t ldx = K + 3, ldy = n_rows + 5;  // padded strides
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  // Padding columns of x hold NaN: reading past K would poison the result.
  std::vector<float> x(m * ldx, NAN);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c = 0; c < K; ++c) x[i * ldx + c] = u(rng);
  }
  const float kSentinel = 12345.0f;
  std::vector<float> y(m * ldy, kSentinel);
  WeightView w = t.View();
  if (r_begin != 0 || n_rows != t.rows) w = w.Rows(r_begin, n_rows);
  if (gemm) {
    ASSERT_TRUE(g_k->gemm_rows(x.data(), m, ldx, w, y.data(), ldy));
  } else {
    GemvRows(x.data(), m, ldx, w, y.data(), ldy);
  }
  // Recursive f32 summation error bound, with margin: about K unit roundoffs
  // of sum |w x| (a wrong element or scale block gives errors of order 1).
  const double tol = static_cast<double>(K + 8) * std::ldexp(1.0, -23);
  double worst = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t r = 0; r < n_rows; ++r) {
      double ref = 0, mag = 0;
      for (int64_t c = 0; c < K; ++c) {
        const double p = t.value[(r_begin + r) * K + c] * static_cast<double>(x[i * ldx + c]);
        ref += p;
        mag += std::fabs(p);
      }
      const double err = std::fabs(y[i * ldy + r] - ref) / (mag + 1e-30);
      worst = std::max(worst, err);
      ASSERT_LE(err, tol) << "m=" << i << " row " << r << ": got " << y[i * ldy + r] << " want " << ref;
    }
    // Padding between rows of y is untouched.
    for (int64_t r = n_rows; r < ldy; ++r) ASSERT_EQ(y[i * ldy + r], kSentinel) << "m=" << i << " pad " << r;
  }
  EXPECT_LE(worst, tol);
}

// The exact prefill GEMM: every block-edge case (rows not a multiple of the
// register block, m across the activation block and the L2 chunk, K with a
// scalar tail), row sub-views and padded strides, against the double
// reference; fp8 and quantised weights (and the scalar level) are refused.
TEST_P(GemvRowsTest, GemmRowsShapesAgainstReference) {
  const bool simd = GetParam() != CpuIsa::kScalar;
  uint32_t seed = 3000;
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (const Shape& s : {Shape{1, 16}, Shape{3, 45}, Shape{37, 100}, Shape{64, 2048}, Shape{9, 33}}) {
      const TestWeight t = MakeWeight(dt, s.rows, s.cols, seed++);
      for (int64_t m : {9, 13, 97, 200}) {
        SCOPED_TRACE(Name(dt, s.rows, s.cols) + " m=" + std::to_string(m));
        if (!simd) {
          std::vector<float> x(m * s.cols, 1.0f), y(m * s.rows, 0.0f);
          EXPECT_FALSE(g_k->gemm_rows(x.data(), m, s.cols, t.View(), y.data(), s.rows));
          continue;
        }
        CheckGemv(t, 0, s.rows, m, seed++, /*gemm=*/true);
        if (s.rows > 4) CheckGemv(t, 2, s.rows - 3, m, seed++, /*gemm=*/true);
      }
    }
  }
  const TestWeight f8 = MakeWeight(DType::kF8E4M3, 8, 128, seed++);
  std::vector<float> x(9 * 128, 1.0f), y(9 * 8, 0.0f);
  EXPECT_FALSE(g_k->gemm_rows(x.data(), 9, 128, f8.View(), y.data(), 8));
}

TEST_P(GemvRowsTest, AllDTypesShapesAndM) {
  uint32_t seed = 1000;
  for (DType dt : kDTypes) {
    for (const Shape& s : kShapes) {
      const TestWeight t = MakeWeight(dt, s.rows, s.cols, seed++);
      for (int64_t m = 1; m <= kGemvMaxM; ++m) {
        SCOPED_TRACE(Name(dt, s.rows, s.cols) + " M=" + std::to_string(m));
        CheckGemv(t, 0, s.rows, m, seed + m);
      }
    }
  }
}

TEST_P(GemvRowsTest, RowSubViews) {
  uint32_t seed = 2000;
  for (DType dt : kDTypes) {
    const TestWeight t = MakeWeight(dt, 300, 200, seed++);
    const TestWeight t2 = MakeWeight(dt, 129, 257, seed++);
    for (int64_t m : {1, 3, 8}) {
      for (auto [r, n] : {std::pair<int64_t, int64_t>{37, 100}, {127, 2}, {129, 171}, {255, 45}, {299, 1}}) {
        SCOPED_TRACE(std::string(DTypeName(dt)) + " [300,200] rows " + std::to_string(r) + "+" +
                     std::to_string(n) + " M=" + std::to_string(m));
        CheckGemv(t, r, n, m, seed + m);
      }
      for (auto [r, n] : {std::pair<int64_t, int64_t>{1, 128}, {127, 2}, {128, 1}}) {
        SCOPED_TRACE(std::string(DTypeName(dt)) + " [129,257] rows " + std::to_string(r) + "+" +
                     std::to_string(n) + " M=" + std::to_string(m));
        CheckGemv(t2, r, n, m, seed + m);
      }
    }
  }
}

TEST_P(GemvRowsTest, Fp8ScalesAppliedPerBlock) {
  // One non-zero scale block at a time: y must only see that block's columns.
  TestWeight t = MakeWeight(DType::kF8E4M3, 200, 300, 31);
  const int64_t sr = 2, sc = 3;
  for (int64_t b = 0; b < sr * sc; ++b) {
    TestWeight tb = t;
    for (int64_t i = 0; i < sr * sc; ++i) tb.scales[i] = i == b ? 2.0f : 0.0f;
    for (int64_t r = 0; r < tb.rows; ++r) {
      for (int64_t c = 0; c < tb.cols; ++c) {
        tb.value[r * tb.cols + c] = F8E4M3ToF32(tb.bytes[r * tb.cols + c]) *
                                    static_cast<double>(tb.scales[(r / 128) * sc + c / 128]);
      }
    }
    SCOPED_TRACE("scale block " + std::to_string(b));
    CheckGemv(tb, 0, 200, 2, 7);
    CheckGemv(tb, 100, 60, 1, 8);
  }
}

TEST_P(GemvRowsTest, QuantShapesAndM) {
  uint32_t seed = 3000;
  for (DType dt : kQDTypes) {
    for (const QShape& s : kQShapes) {
      const TestWeight t = MakeQWeight(dt, s.rows, s.cols, s.group, seed++);
      for (int64_t m = 1; m <= kGemvMaxM; ++m) {
        SCOPED_TRACE(Name(dt, s.rows, s.cols) + " " + QName(s) + " M=" + std::to_string(m));
        CheckGemv(t, 0, s.rows, m, seed + m);
      }
    }
  }
}

TEST_P(GemvRowsTest, QuantRowSubViews) {
  uint32_t seed = 4000;
  for (DType dt : kQDTypes) {
    for (int64_t group : {32, 64, 128}) {
      const TestWeight t = MakeQWeight(dt, 300, 256, group, seed++);
      for (int64_t m : {1, 2, 3, 8}) {
        for (auto [r, n] : {std::pair<int64_t, int64_t>{37, 100}, {127, 2}, {129, 171}, {255, 45}, {299, 1},
                            {1, 16}, {3, 37}}) {
          SCOPED_TRACE(std::string(DTypeName(dt)) + " group " + std::to_string(group) + " rows " +
                       std::to_string(r) + "+" + std::to_string(n) + " M=" + std::to_string(m));
          CheckGemv(t, r, n, m, seed + m);
        }
      }
    }
  }
}

TEST_P(GemvRowsTest, QuantScalesAppliedPerGroup) {
  // One non-zero scale column (group g of every row) at a time: y must only see
  // that group's columns, each row with its own scale.
  for (DType dt : kQDTypes) {
    const TestWeight t = MakeQWeight(dt, 37, 256, 32, 41);
    for (int64_t g = 0; g < 8; ++g) {
      TestWeight tg = t;
      for (int64_t r = 0; r < tg.rows; ++r) {
        for (int64_t j = 0; j < 8; ++j) {
          if (j != g) tg.qscale[r * 8 + j] = 0;
        }
      }
      std::vector<float> row(tg.cols);
      for (int64_t r = 0; r < tg.rows; ++r) {
        DequantizeRow(tg.View(), r, row.data());
        for (int64_t c = 0; c < tg.cols; ++c) tg.value[r * tg.cols + c] = row[c];
      }
      SCOPED_TRACE(std::string(DTypeName(dt)) + " group " + std::to_string(g));
      CheckGemv(tg, 0, 37, 1, 7);
      CheckGemv(tg, 0, 37, 2, 8);
      CheckGemv(tg, 5, 19, 1, 9);
    }
  }
}

TEST_P(GemvRowsTest, FastPathRefusesQuant) {
  // gemv_rows_fast handles bf16 weights only; for the quantised dtypes it must
  // answer false and leave y alone.
  for (DType dt : kQDTypes) {
    const TestWeight t = MakeQWeight(dt, 16, 64, 32, 5);
    std::vector<float> x(64, 1.0f), y(16, 7.0f);
    std::vector<uint16_t> xb(64);
    EXPECT_FALSE(g_k->gemv_rows_fast(x.data(), 1, 64, t.View(), y.data(), 16, xb.data())) << DTypeName(dt);
    for (float v : y) EXPECT_EQ(v, 7.0f);
  }
}

TEST_P(GemvRowsTest, ZeroRowsOrM) {
  const TestWeight t = MakeWeight(DType::kBF16, 4, 4, 3);
  float x[4] = {1, 2, 3, 4};
  float y[4] = {7, 7, 7, 7};
  GemvRows(x, 0, 4, t.View(), y, 4);
  GemvRows(x, 1, 4, t.View().Rows(2, 0), y, 4);
  for (float v : y) EXPECT_EQ(v, 7.0f);
}

// y[m, c] = x[m, rows] · w[rows, c] against the double reference, normalised
// as CheckGemv.
void CheckGemvCols(const TestWeight& t, int64_t r_begin, int64_t n_rows, int64_t m, uint32_t seed) {
  const int64_t N = t.cols;
  const int64_t ldx = n_rows + 3, ldy = N + 5;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> x(m * ldx, NAN);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t r = 0; r < n_rows; ++r) x[i * ldx + r] = u(rng);
  }
  const float kSentinel = 12345.0f;
  std::vector<float> y(m * ldy, kSentinel);
  GemvCols(x.data(), m, ldx, t.View().Rows(r_begin, n_rows), y.data(), ldy);
  const double tol = static_cast<double>(n_rows + 8) * std::ldexp(1.0, -23);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c = 0; c < N; ++c) {
      double ref = 0, mag = 0;
      for (int64_t r = 0; r < n_rows; ++r) {
        const double p = t.value[(r_begin + r) * N + c] * static_cast<double>(x[i * ldx + r]);
        ref += p;
        mag += std::fabs(p);
      }
      const double err = std::fabs(y[i * ldy + c] - ref) / (mag + 1e-30);
      ASSERT_LE(err, tol) << "m=" << i << " col " << c << ": got " << y[i * ldy + c] << " want " << ref;
    }
    for (int64_t c = N; c < ldy; ++c) ASSERT_EQ(y[i * ldy + c], kSentinel) << "m=" << i << " pad " << c;
  }
}

TEST_P(GemvColsTest, QuantMatchesReference) {
  uint32_t seed = 5000;
  // Column counts over one 512-column block of the kernel, not multiples of it,
  // and (with several threads) split at 64-column boundaries inside groups of 128.
  for (DType dt : kQDTypes) {
    for (const QShape& s : {QShape{128, 512, 32}, QShape{40, 1056, 32}, QShape{64, 640, 128}, QShape{9, 96, 96},
                            QShape{130, 32, 32}}) {
      const TestWeight t = MakeQWeight(dt, s.rows, s.cols, s.group, seed++);
      for (int64_t m : {1, 2, 8}) {
        SCOPED_TRACE(Name(dt, s.rows, s.cols) + " " + QName(s) + " M=" + std::to_string(m));
        CheckGemvCols(t, 0, s.rows, m, seed + m);
        CheckGemvCols(t, 3, s.rows - 5, m, seed + m);  // a row sub-view: row0 != 0
      }
    }
  }
}

TEST_P(GemvColsTest, StoredDTypesMatchReference) {
  uint32_t seed = 6000;
  for (DType dt : kDTypes) {
    const TestWeight t = MakeWeight(dt, 129, 600, seed++);
    for (int64_t m : {1, 3}) {
      SCOPED_TRACE(Name(dt, 129, 600) + " M=" + std::to_string(m));
      CheckGemvCols(t, 0, 129, m, seed + m);
      CheckGemvCols(t, 100, 28, m, seed + m);
    }
  }
}

}  // namespace
}  // namespace deepshard::cpu

namespace deepshard::cpu {
namespace {

// Runs `jobs` through gemv_batch at 1, 2, 3 and 5 threads (they move the slab
// boundaries; 1 takes the serial path) and expects got == want bit for bit.
void ExpectBatchBitIdentical(const std::vector<GemvJob>& jobs, std::vector<std::vector<float>>& got,
                             const std::vector<std::vector<float>>& want) {
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3, 5}) {
    omp_set_num_threads(threads);
    for (auto& g : got) std::fill(g.begin(), g.end(), -1.0f);
    g_k->gemv_batch(jobs.data(), static_cast<int64_t>(jobs.size()));
    for (size_t j = 0; j < want.size(); ++j) {
      for (size_t i = 0; i < want[j].size(); ++i) {
        ASSERT_EQ(std::memcmp(&got[j][i], &want[j][i], 4), 0) << threads << " threads, job " << j << " element " << i
                                                             << ": " << got[j][i] << " vs " << want[j][i];
      }
    }
  }
  omp_set_num_threads(saved);
}

// gemv_batch gives every row what gemv_rows (or gemv_rows_fast, given the
// bf16 activations) gives for that product alone, bit for bit, whatever the
// thread count: a batch mixes dtypes, M and row counts that are not multiples
// of the slab (so slabs straddle jobs).
TEST_P(GemvRowsTest, BatchMatchesOneProductAtATimeBitForBit) {
  struct Spec {
    DType dt;
    int64_t rows, cols, m;
    bool fast;
  };
  const Spec specs[] = {{DType::kBF16, 37, 96, 1, true},  {DType::kBF16, 64, 200, 1, false},
                        {DType::kF32, 13, 64, 3, false},  {DType::kF8E4M3, 40, 256, 1, false},
                        {DType::kBF16, 9, 128, 2, true},  {DType::kF16, 100, 33, 1, false},
                        {DType::kBF16, 611, 512, 1, true}};  // over the parallel threshold
  std::vector<TestWeight> ws;
  std::vector<std::vector<float>> xs, want, got;
  std::vector<std::vector<uint16_t>> xbs;
  std::vector<GemvJob> jobs;
  uint32_t seed = 900;
  for (const Spec& s : specs) {
    ws.push_back(MakeWeight(s.dt, s.rows, s.cols, seed++));
    std::mt19937 rng(seed++);
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    xs.emplace_back(s.m * s.cols);
    for (float& v : xs.back()) v = u(rng);
    xbs.emplace_back(s.m * s.cols);
    g_k->f32_to_bf16_rows(xs.back().data(), s.m, s.cols, s.cols, xbs.back().data());
  }
  for (size_t j = 0; j < ws.size(); ++j) {
    const Spec& s = specs[j];
    const WeightView w = ws[j].View();
    want.emplace_back(s.m * s.rows, 0.0f);
    std::vector<uint16_t> scratch(s.cols);
    if (!(s.fast && g_k->gemv_rows_fast(xs[j].data(), s.m, s.cols, w, want.back().data(), s.rows, scratch.data()))) {
      GemvRows(xs[j].data(), s.m, s.cols, w, want.back().data(), s.rows);
    }
    got.emplace_back(s.m * s.rows, -1.0f);
  }
  for (size_t j = 0; j < ws.size(); ++j) {
    const Spec& s = specs[j];
    jobs.push_back({xs[j].data(), s.m, s.cols, ws[j].View(), got[j].data(), s.rows, s.fast ? xbs[j].data() : nullptr});
  }
  ExpectBatchBitIdentical(jobs, got, want);
}

}  // namespace
}  // namespace deepshard::cpu

namespace deepshard::cpu {
namespace {

// ---- --math fast with quantised weights: int8 activations, integer dot products ----

// The activation quantiser as documented in cpu_kernels.h (QActBytes), written
// out independently: per 32 columns d = amax / 127, q = round-half-even(x * (1 / d))
// clamped to +-127, neg8sum = -8 * the sum of each 4 values.
std::vector<uint8_t> ReferenceQAct(const std::vector<float>& x) {
  const int64_t k = static_cast<int64_t>(x.size());
  std::vector<uint8_t> out(QActBytes(k));
  for (int64_t b = 0; b < k / 32; ++b) {
    float amax = 0.0f;
    bool finite = true;
    for (int j = 0; j < 32; ++j) {
      amax = std::max(amax, std::fabs(x[b * 32 + j]));
      finite = finite && std::isfinite(x[b * 32 + j]);
    }
    const float d = finite ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
    const float inv = finite && d != 0.0f ? 1.0f / d : 0.0f;
    std::memcpy(&out[2 * k + 4 * b], &d, 4);
    int8_t q[32];
    for (int j = 0; j < 32; ++j) {
      const float v = std::nearbyint(x[b * 32 + j] * inv);
      q[j] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
      out[b * 32 + j] = static_cast<uint8_t>(q[j]);
    }
    for (int l = 0; l < 8; ++l) {
      const int32_t s = -8 * (q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3]);
      std::memcpy(&out[k + 4 * (b * 8 + l)], &s, 4);
    }
  }
  return out;
}

std::vector<float> ActivationRow(int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(k);
  for (int64_t c = 0; c < k; ++c) x[c] = n(rng) * (c % 97 == 5 ? 40.0f : 1.0f);  // outlier channels
  if (k >= 64) {
    for (int j = 32; j < 64; ++j) x[j] = 0.0f;  // an all-zero block: d = 0
  }
  x[0] = 127.5f * (x[1] > 0 ? 1.0f : -1.0f);  // a value at the block maximum
  return x;
}

// y[r] of the integer dot products, in double, from the bytes (quant.h's
// packing) and the reference activation: sum_b d_w * d_x * sum_j q_w q_x, and
// the tolerance's scale: the magnitudes of the terms the kernels add in f32.
// Those are sums over 4 columns (an int32 lane of VPDPBUSD / VPMADDWD, exact),
// each scaled by d_w * d_x: within a block they may be far larger than the
// block's total, and their f32 rounding is what the kernels' results carry.
void ReferenceQDot(const TestWeight& t, int64_t r, const std::vector<uint8_t>& xq, double* y, double* mag) {
  const int64_t k = t.cols, row_bytes = RowBytes(t.dtype, k), groups = k / t.group;
  const int8_t* q = reinterpret_cast<const int8_t*>(xq.data());
  const uint8_t* w = &t.bytes[r * row_bytes];
  *y = 0.0;
  *mag = 0.0;
  for (int64_t b = 0; b < k / 32; ++b) {
    float dx;
    std::memcpy(&dx, &xq[2 * k + 4 * b], 4);
    const double scale = static_cast<double>(F16ToF32(t.qscale[r * groups + b * 32 / t.group])) * dx;
    for (int l = 0; l < 8; ++l) {
      int64_t s = 0;
      for (int j = 4 * l; j < 4 * l + 4; ++j) {
        const int64_t c = b * 32 + j;
        const int qw = t.dtype == DType::kQ8 ? static_cast<int8_t>(w[c])
                                             : (j < 16 ? (w[b * 16 + j] & 15) : (w[b * 16 + j - 16] >> 4)) - 8;
        s += static_cast<int64_t>(qw) * q[c];
      }
      *y += scale * s;
      *mag += std::fabs(scale * s);
    }
  }
}

TEST_P(GemvRowsTest, QuantizeActMatchesTheDocumentedFormat) {
  for (int64_t k : {32, 96, 2048, 1408}) {
    std::vector<float> x = ActivationRow(k, static_cast<uint32_t>(k));
    std::vector<uint8_t> got(QActBytes(k), 0xAB);
    g_k->quantize_act(x.data(), k, got.data());
    EXPECT_EQ(got, ReferenceQAct(x)) << "k = " << k;
  }
  // A NaN or infinity makes its block's scale NaN (and only that block's).
  std::vector<float> x = ActivationRow(96, 5);
  x[40] = std::numeric_limits<float>::infinity();
  std::vector<uint8_t> got(QActBytes(96));
  g_k->quantize_act(x.data(), 96, got.data());
  float d[3];
  std::memcpy(d, &got[2 * 96], sizeof d);
  EXPECT_FALSE(std::isnan(d[0]));
  EXPECT_TRUE(std::isnan(d[1]));
  EXPECT_FALSE(std::isnan(d[2]));
}

TEST_P(GemvRowsTest, QDotMatchesTheIntegerReference) {
  uint32_t seed = 7000;
  std::vector<QShape> shapes(std::begin(kQShapes), std::end(kQShapes));
  shapes.push_back({611, 512, 32});  // over the parallel threshold
  shapes.push_back({64, 1408, 32});  // V2-Lite's expert width
  for (DType dt : kQDTypes) {
    for (const QShape& s : shapes) {
      const TestWeight t = MakeQWeight(dt, s.rows, s.cols, s.group, seed++);
      for (int64_t m : {1, 2, 3, 8}) {
        SCOPED_TRACE(Name(dt, s.rows, s.cols) + " " + QName(s) + " M=" + std::to_string(m));
        // m activation rows, QActBytes apart; y rows padded.
        std::vector<std::vector<uint8_t>> rows;
        std::vector<uint8_t> xq;
        for (int64_t i = 0; i < m; ++i) {
          rows.push_back(ReferenceQAct(ActivationRow(s.cols, seed++)));
          xq.insert(xq.end(), rows.back().begin(), rows.back().end());
        }
        const int64_t ldy = s.rows + 3;
        std::vector<float> y(m * ldy, -1.0f);
        ASSERT_TRUE(g_k->gemv_rows_qdot(xq.data(), m, t.View(), y.data(), ldy));
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t r = 0; r < s.rows; ++r) {
            double want, mag;
            ReferenceQDot(t, r, rows[i], &want, &mag);
            // Only the order of the f32 block terms differs from the reference.
            ASSERT_NEAR(y[i * ldy + r], want, 2e-6 * mag + 1e-30) << "activation row " << i << ", row " << r;
          }
          for (int64_t r = s.rows; r < ldy; ++r) ASSERT_EQ(y[i * ldy + r], -1.0f) << "padding written";
        }
      }
    }
  }
}

TEST_P(GemvRowsTest, QDotRowSubViewsAndRefusals) {
  for (DType dt : kQDTypes) {
    const TestWeight t = MakeQWeight(dt, 300, 256, 64, 77);
    const std::vector<float> x = ActivationRow(256, 78);
    const std::vector<uint8_t> xq = ReferenceQAct(x);
    for (auto [r0, n] : {std::pair<int64_t, int64_t>{37, 100}, {129, 171}, {299, 1}, {3, 37}}) {
      WeightView w = t.View();
      w.row0 = r0;
      w.rows = n;
      std::vector<float> y(n);
      ASSERT_TRUE(g_k->gemv_rows_qdot(xq.data(), 1, w, y.data(), n));
      for (int64_t i = 0; i < n; ++i) {
        double want, mag;
        ReferenceQDot(t, r0 + i, xq, &want, &mag);
        ASSERT_NEAR(y[i], want, 2e-6 * mag + 1e-30) << DTypeName(dt) << " rows " << r0 << "+" << n << ", row " << i;
      }
    }
  }
  // Not a quantised weight: false, y untouched.
  const TestWeight b = MakeWeight(DType::kBF16, 8, 64, 3);
  std::vector<uint8_t> xq(QActBytes(64));
  std::vector<float> y(8, 7.0f);
  EXPECT_FALSE(g_k->gemv_rows_qdot(xq.data(), 1, b.View(), y.data(), 8));
  // Nor more rows than a GEMV takes.
  const TestWeight q = MakeQWeight(DType::kQ4, 8, 64, 32, 4);
  std::vector<uint8_t> xq9(9 * QActBytes(64));
  EXPECT_FALSE(g_k->gemv_rows_qdot(xq9.data(), 9, q.View(), y.data(), 8));
  EXPECT_FALSE(g_k->gemv_rows_qdot(xq9.data(), 0, q.View(), y.data(), 8));
  for (float v : y) EXPECT_EQ(v, 7.0f);
}

TEST_P(GemvRowsTest, QDotPropagatesANaNActivation) {
  const TestWeight t = MakeQWeight(DType::kQ4, 16, 128, 32, 11);
  std::vector<float> x = ActivationRow(128, 12);
  x[70] = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint8_t> xq(QActBytes(128));
  g_k->quantize_act(x.data(), 128, xq.data());
  std::vector<float> y(16);
  ASSERT_TRUE(g_k->gemv_rows_qdot(xq.data(), 1, t.View(), y.data(), 16));
  for (float v : y) EXPECT_TRUE(std::isnan(v));
}

// gemv_batch with quantised activations gives each row what gemv_rows_qdot
// gives, bit for bit, at any thread count, next to bf16 and exact jobs.
TEST_P(GemvRowsTest, BatchWithQuantisedActivationsMatchesQDotBitForBit) {
  struct Spec {
    DType dt;
    int64_t rows, cols, group, m;
  };
  const Spec specs[] = {{DType::kQ8, 37, 96, 32, 1},  {DType::kQ4, 64, 256, 64, 3}, {DType::kQ4, 611, 512, 32, 1},
                        {DType::kQ8, 9, 2048, 128, 2}, {DType::kBF16, 40, 64, 0, 1}, {DType::kQ4, 21, 96, 32, 8}};
  std::vector<TestWeight> ws;
  std::vector<std::vector<float>> xs, want, got;
  std::vector<std::vector<uint8_t>> xqs;
  uint32_t seed = 950;
  for (const Spec& s : specs) {
    ws.push_back(s.dt == DType::kBF16 ? MakeWeight(s.dt, s.rows, s.cols, seed++)
                                      : MakeQWeight(s.dt, s.rows, s.cols, s.group, seed++));
    xs.emplace_back();
    xqs.emplace_back();
    for (int64_t i = 0; i < s.m; ++i) {
      const std::vector<float> row = ActivationRow(s.cols, seed++);
      const std::vector<uint8_t> q = ReferenceQAct(row);
      xs.back().insert(xs.back().end(), row.begin(), row.end());
      xqs.back().insert(xqs.back().end(), q.begin(), q.end());
    }
    want.emplace_back(s.m * s.rows);
    if (s.dt == DType::kBF16) {
      GemvRows(xs.back().data(), s.m, s.cols, ws.back().View(), want.back().data(), s.rows);
    } else {
      ASSERT_TRUE(g_k->gemv_rows_qdot(xqs.back().data(), s.m, ws.back().View(), want.back().data(), s.rows));
    }
    got.emplace_back(s.m * s.rows);
  }
  std::vector<GemvJob> jobs;
  for (size_t j = 0; j < ws.size(); ++j) {
    jobs.push_back({xs[j].data(), specs[j].m, specs[j].cols, ws[j].View(), got[j].data(), specs[j].rows, nullptr,
                    specs[j].dt == DType::kBF16 ? nullptr : xqs[j].data()});
  }
  ExpectBatchBitIdentical(jobs, got, want);
}

}  // namespace
}  // namespace deepshard::cpu
