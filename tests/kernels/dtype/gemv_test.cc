// Conformance tests for the CPU kernels' WidenRowsF32 / WidenRowsBf16 / GemvRows
// for F32, BF16, F16 and FP8 e4m3 with DeepSeek-V3 block scales, against a plain
// double-precision reference, on every kernel level (kernels/cpu/isa.h) this
// machine runs. Shapes are chosen so that edge (partial) scale blocks and row
// sub-views that start inside a block are covered.
#include "kernels/cpu/cpu_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/dtype.h"
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
INSTANTIATE_TEST_SUITE_P(Levels, WidenRowsF32Test, ::testing::ValuesIn(AvailableCpuIsas()), LevelName);
INSTANTIATE_TEST_SUITE_P(Levels, WidenRowsBf16Test, ::testing::ValuesIn(AvailableCpuIsas()), LevelName);
INSTANTIATE_TEST_SUITE_P(Levels, GemvRowsTest, ::testing::ValuesIn(AvailableCpuIsas()), LevelName);

// A weight matrix in its stored dtype plus the f32 value of every element
// (exact: every stored dtype widens exactly, and fp8 * f32 scale is exact in double).
struct TestWeight {
  DType dtype;
  int64_t rows, cols, block;
  std::vector<uint8_t> bytes;
  std::vector<float> scales;  // FP8 only: [ceil(rows/block), ceil(cols/block)]
  std::vector<double> value;  // [rows, cols], dequantised

  WeightView View() const {
    WeightView w;
    w.dtype = dtype;
    w.data = bytes.data();
    w.rows = rows;
    w.cols = cols;
    w.block = block;
    w.scale_inv = dtype == DType::kF8E4M3 ? scales.data() : nullptr;
    return w;
  }
};

TestWeight MakeWeight(DType dtype, int64_t rows, int64_t cols, uint32_t seed, int64_t block = 128) {
  TestWeight t{dtype, rows, cols, block, {}, {}, {}};
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

std::string Name(DType t, int64_t rows, int64_t cols) {
  return std::string(DTypeName(t)) + " [" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
}

struct Shape {
  int64_t rows, cols;
};
const Shape kShapes[] = {{300, 200}, {129, 257}, {5, 7}, {128, 128}, {1, 1}, {256, 384}, {131, 16}};
const DType kDTypes[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3};

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

// Relative error of y against the double reference, normalised by sum |w| |x|
// (so cancellation does not inflate it).
void CheckGemv(const TestWeight& t, int64_t r_begin, int64_t n_rows, int64_t m, uint32_t seed) {
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
  GemvRows(x.data(), m, ldx, w, y.data(), ldy);
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

TEST_P(GemvRowsTest, ZeroRowsOrM) {
  const TestWeight t = MakeWeight(DType::kBF16, 4, 4, 3);
  float x[4] = {1, 2, 3, 4};
  float y[4] = {7, 7, 7, 7};
  GemvRows(x, 0, 4, t.View(), y, 4);
  GemvRows(x, 1, 4, t.View().Rows(2, 0), y, 4);
  for (float v : y) EXPECT_EQ(v, 7.0f);
}

}  // namespace
}  // namespace deepshard::cpu
