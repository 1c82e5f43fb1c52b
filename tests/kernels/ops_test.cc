// Conformance tests of every backend op against plain double-precision
// references, run over every backend the build has (backend_factories.h).
// Inputs go into backend memory and results come back through the backend's
// copies, so a device backend runs the same suite. Each reports a normalised
// error: max |ours - ref| / max |ref|.
#include <cmath>
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/quant.h"
#include "tests/kernels/backend_factories.h"

namespace deepshard {
namespace {

using testing_util::AllBackendFactories;
using testing_util::BackendFactory;
using testing_util::DeviceVec;

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double NormErr(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::fabs(got[i] - ref[i]));
    den = std::max(den, std::fabs(ref[i]));
  }
  return num / std::max(den, 1e-30);
}

// A weight stored in `dtype` (FP8 with 128-blocks) plus its exact f32 values.
struct TestWeight {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
  std::vector<float> values;  // dequantised, what the op must multiply by
  WeightView view;
};

TestWeight MakeWeight(DType dt, int64_t rows, int64_t cols, uint32_t seed) {
  TestWeight t;
  std::vector<float> v = Random(rows * cols, seed);
  t.values.resize(rows * cols);
  t.bytes.resize(rows * cols * DTypeSize(dt));
  const int64_t B = 128, sc = (cols + B - 1) / B;
  if (dt == DType::kF8E4M3) t.scales = Random(((rows + B - 1) / B) * sc, seed + 1, 0.5f);
  for (auto& s : t.scales) s = std::fabs(s) + 0.01f;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      switch (dt) {
        case DType::kF32: std::memcpy(&t.bytes[i * 4], &v[i], 4); t.values[i] = v[i]; break;
        case DType::kBF16: {
          uint16_t h = F32ToBf16(v[i]);
          std::memcpy(&t.bytes[i * 2], &h, 2);
          t.values[i] = Bf16ToF32(h);
          break;
        }
        case DType::kF16: {
          uint16_t h = F32ToF16(v[i]);
          std::memcpy(&t.bytes[i * 2], &h, 2);
          t.values[i] = F16ToF32(h);
          break;
        }
        case DType::kF8E4M3: {
          uint8_t q = F32ToF8E4M3(v[i] * 400.0f);
          t.bytes[i] = q;
          t.values[i] = F8E4M3ToF32(q) * t.scales[(r / B) * sc + c / B];
          break;
        }
        default: break;
      }
    }
  }
  t.view.dtype = dt;
  t.view.data = t.bytes.data();
  t.view.rows = rows;
  t.view.cols = cols;
  t.view.scale_inv = t.scales.empty() ? nullptr : t.scales.data();
  return t;
}

struct LinearCase {
  DType dtype;
  int64_t m, n, k;
  MathMode mode;
};

class LinearTest : public ::testing::TestWithParam<std::tuple<BackendFactory, LinearCase>> {};

TEST_P(LinearTest, MatchesReference) {
  const LinearCase p = std::get<1>(GetParam());
  auto be = std::get<0>(GetParam()).make(p.mode);
  TestWeight w = MakeWeight(p.dtype, p.n, p.k, 7);
  const WeightView wv = be->Upload(w.view).value();
  const int64_t ldx = p.k + 3, ldy = p.n + 5;  // padded strides
  std::vector<float> x = Random(p.m * ldx, 3);
  DeviceVec<float> dx(*be, x), dy(*be, p.m * ldy, -1.0f);
  be->Linear(dx.get(), p.m, ldx, wv, dy.get(), ldy);
  const std::vector<float> y = dy.Read();
  std::vector<float> got(p.m * p.n);
  std::vector<double> ref(p.m * p.n);
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < p.n; ++j) {
      double s = 0;
      for (int64_t c = 0; c < p.k; ++c) s += static_cast<double>(x[i * ldx + c]) * w.values[j * p.k + c];
      ref[i * p.n + j] = s;
      got[i * p.n + j] = y[i * ldy + j];
    }
  }
  const double err = NormErr(got, ref);
  // Exact mode multiplies the exact weights in f32: error is f32 summation
  // order only. Fast mode rounds activations to bf16 (2^-9 relative per
  // element, random signs): a few 1e-3 over K terms. It does so in GEMMs, and
  // in batch-1 GEMV of bf16 weights where the CPU has bf16 dot products; other
  // decode-sized products stay exact.
  const bool lowp_acts = p.mode == MathMode::kFast && p.dtype != DType::kF32 &&
                         (p.m > cpu::kGemvMaxM || (p.m == 1 && p.dtype == DType::kBF16));
  EXPECT_LT(err, lowp_acts ? 1e-2 : 2e-6) << "dtype " << DTypeName(p.dtype) << " m=" << p.m;
}

INSTANTIATE_TEST_SUITE_P(
    AllPaths, LinearTest,
    ::testing::Combine(::testing::ValuesIn(AllBackendFactories()),
                       ::testing::Values(LinearCase{DType::kF32, 1, 37, 70, MathMode::kExact},
                                         LinearCase{DType::kF32, 8, 300, 200, MathMode::kExact},
                                         LinearCase{DType::kF32, 33, 300, 200, MathMode::kExact},
                                         LinearCase{DType::kBF16, 1, 300, 257, MathMode::kExact},
                                         LinearCase{DType::kBF16, 5, 300, 257, MathMode::kFast},
                                         LinearCase{DType::kBF16, 1, 300, 257, MathMode::kFast},
                                         LinearCase{DType::kBF16, 1, 1000, 1024, MathMode::kFast},
                                         LinearCase{DType::kBF16, 40, 300, 257, MathMode::kExact},
                                         LinearCase{DType::kBF16, 40, 300, 257, MathMode::kFast},
                                         LinearCase{DType::kF16, 3, 129, 130, MathMode::kExact},
                                         LinearCase{DType::kF16, 20, 129, 130, MathMode::kExact},
                                         LinearCase{DType::kF8E4M3, 1, 300, 200, MathMode::kExact},
                                         LinearCase{DType::kF8E4M3, 7, 129, 257, MathMode::kExact},
                                         LinearCase{DType::kF8E4M3, 24, 300, 200, MathMode::kExact},
                                         LinearCase{DType::kF8E4M3, 24, 300, 200, MathMode::kFast})),
    [](const auto& info) {
      const LinearCase& c = std::get<1>(info.param);
      return std::get<0>(info.param).name + "_" + DTypeName(c.dtype) + "_m" + std::to_string(c.m) +
             (c.mode == MathMode::kFast ? "_fast" : "_exact") + "_" + std::to_string(info.index);
    });

// Every other op, once per backend.
class OpsTest : public ::testing::TestWithParam<BackendFactory> {
 protected:
  void SetUp() override { be = GetParam().make(MathMode::kExact); }
  std::unique_ptr<Backend> be;
};

INSTANTIATE_TEST_SUITE_P(Backends, OpsTest, ::testing::ValuesIn(AllBackendFactories()), testing_util::BackendName);

TEST_P(OpsTest, MemoryRoundTripAndKind) {
  std::vector<float> x = Random(1000, 9);
  DeviceVec<float> d(*be, x);
  EXPECT_EQ(d.Read(), x);
  DeviceVec<float> e(*be, 1000, 0.0f);
  be->Copy(e.get(), d.get(), 1000 * sizeof(float));
  EXPECT_EQ(e.Read(), x);
  auto b = be->Allocate(64, "a test buffer");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->kind(), be->memory_kind());
  EXPECT_EQ(b->bytes(), 64);
  auto huge = be->Allocate(int64_t{1} << 62, "an absurd buffer");
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(std::string(huge.status().message()).find("an absurd buffer"), std::string::npos) << huge.status();
}

TEST_P(OpsTest, LinearTMatchesReferenceForRowSlices) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    for (int64_t m : {1, 3, 12}) {
      TestWeight w = MakeWeight(dt, 300, 140, 11);
      const WeightView slice = be->Upload(w.view).value().Rows(100, 50);  // rows 100..149: crosses an FP8 block edge
      std::vector<float> x = Random(m * 50, 5);
      DeviceVec<float> dx(*be, x), dy(*be, m * 140);
      be->LinearT(dx.get(), m, 50, slice, dy.get(), 140);
      std::vector<double> ref(m * 140, 0.0);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t r = 0; r < 50; ++r)
          for (int64_t c = 0; c < 140; ++c) ref[i * 140 + c] += double(x[i * 50 + r]) * w.values[(100 + r) * 140 + c];
      EXPECT_LT(NormErr(dy.Read(), ref), 2e-6) << DTypeName(dt) << " m=" << m;
    }
  }
}

// MLA's absorption shapes: per head h, rows [h * stride + offset, + rows) of one
// weight, used transposed (q_nope · W_UK) or not (out · W_UVᵀ).
TEST_P(OpsTest, LinearHeadsMatchesPerHeadReference) {
  const int64_t nh = 5, nope = 12, vd = 10, lora = 48, stride = nope + vd;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    for (int64_t m : {1, 4, 11}) {
      for (bool transposed : {true, false}) {
        TestWeight w = MakeWeight(dt, nh * stride, lora, 21);
        const WeightView wv = be->Upload(w.view).value();
        const int64_t in = transposed ? nope : lora, outw = transposed ? lora : vd;
        const int64_t ldx = nh * in + 3, ldy = nh * outw + 2;
        std::vector<float> x = Random(m * ldx, 6);
        DeviceVec<float> dx(*be, x), dy(*be, m * ldy);
        HeadsLinearParams p;
        p.x = dx.get(), p.m = m, p.ldx = ldx, p.x_head_stride = in;
        p.w = wv, p.n_heads = nh, p.head_row_stride = stride, p.row_offset = transposed ? 0 : nope;
        p.rows_per_head = transposed ? nope : vd, p.transposed = transposed;
        p.y = dy.get(), p.ldy = ldy, p.y_head_stride = outw;
        be->LinearHeads(p);
        const std::vector<float> y = dy.Read();
        std::vector<float> got;
        std::vector<double> ref;
        for (int64_t i = 0; i < m; ++i)
          for (int64_t h = 0; h < nh; ++h)
            for (int64_t o = 0; o < outw; ++o) {
              double s = 0;
              for (int64_t c = 0; c < in; ++c) {
                const int64_t row = transposed ? h * stride + c : h * stride + nope + o;
                const int64_t col = transposed ? o : c;
                s += double(x[i * ldx + h * in + c]) * w.values[row * lora + col];
              }
              ref.push_back(s);
              got.push_back(y[i * ldy + h * outw + o]);
            }
        EXPECT_LT(NormErr(got, ref), 2e-6) << DTypeName(dt) << " m=" << m << " transposed=" << transposed;
      }
    }
  }
}

TEST_P(OpsTest, GroupedMlpMatchesPerExpertReference) {
  const int64_t H = 24, I = 16;
  std::vector<TestWeight> owned;
  std::vector<MlpWeights> experts;
  for (int e = 0; e < 3; ++e) {
    owned.push_back(MakeWeight(DType::kBF16, I, H, 100 + 3 * e));
    owned.push_back(MakeWeight(DType::kBF16, I, H, 101 + 3 * e));
    owned.push_back(MakeWeight(DType::kBF16, H, I, 102 + 3 * e));
  }
  for (int e = 0; e < 3; ++e) {
    experts.push_back({be->Upload(owned[3 * e].view).value(), be->Upload(owned[3 * e + 1].view).value(),
                       be->Upload(owned[3 * e + 2].view).value()});
  }
  const std::vector<int64_t> offsets = {0, 9, 9, 13};  // expert 1 has no rows
  std::vector<float> x = Random(13 * H, 8);
  DeviceVec<float> dx(*be, x), dy(*be, 13 * H, 7.0f);
  GroupedMlpParams p;
  p.x = dx.get(), p.ldx = H, p.experts = experts, p.offsets = offsets, p.hidden = H, p.inter = I;
  p.out = dy.get(), p.ldo = H;
  be->GroupedMlp(p);
  std::vector<double> ref(13 * H);
  for (int e = 0; e < 3; ++e) {
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      std::vector<double> act(I);
      for (int64_t j = 0; j < I; ++j) {
        double g = 0, u = 0;
        for (int64_t c = 0; c < H; ++c) {
          g += double(x[r * H + c]) * owned[3 * e].values[j * H + c];
          u += double(x[r * H + c]) * owned[3 * e + 1].values[j * H + c];
        }
        act[j] = g / (1.0 + std::exp(-g)) * u;
      }
      for (int64_t c = 0; c < H; ++c) {
        double s = 0;
        for (int64_t j = 0; j < I; ++j) s += act[j] * owned[3 * e + 2].values[c * I + j];
        ref[r * H + c] = s;
      }
    }
  }
  EXPECT_LT(NormErr(dy.Read(), ref), 1e-5);
}

// --math fast with int8/int4 weights: a decode-sized product (up to
// kGemvMaxM activation rows) quantises each activation row to int8 per 32
// columns (cpu_kernels.h, QActBytes) and takes integer dot products, as
// llama.cpp does. The reference multiplies the dequantised weight by the
// dequantised activations in double, so only the order of the f32 sums
// differs; a backend that kept f32 activations would be ~1e-2 away.
std::vector<double> QuantDequantAct(const float* x, int64_t k) {
  std::vector<double> out(k);
  for (int64_t b = 0; b < k / 32; ++b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127.0f, inv = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) {
      const float q = std::clamp(std::nearbyint(x[b * 32 + j] * inv), -127.0f, 127.0f);
      out[b * 32 + j] = static_cast<double>(q) * d;
    }
  }
  return out;
}

// The weight as UploadQuantized stores it, dequantised on the host.
std::vector<float> Dequantised(const TestWeight& w, DType dt, int64_t group) {
  const int64_t rows = w.view.rows, cols = w.view.cols, rb = RowBytes(dt, cols);
  std::vector<uint8_t> q(rows * rb);
  std::vector<uint16_t> s(rows * cols / group);
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(&w.values[r * cols], cols, dt, group, &q[r * rb], &s[r * cols / group]);
  }
  WeightView v;
  v.dtype = dt, v.data = q.data(), v.rows = rows, v.cols = cols, v.qscale = s.data(), v.group = group;
  std::vector<float> out(rows * cols);
  for (int64_t r = 0; r < rows; ++r) DequantizeRow(v, r, &out[r * cols]);
  return out;
}

TEST_P(OpsTest, FastQuantisedDecodeTakesInt8Activations) {
  auto fast = GetParam().make(MathMode::kFast);
  const int64_t n = 300, k = 256;
  const TestWeight w = MakeWeight(DType::kBF16, n, k, 21);
  for (DType dt : {DType::kQ8, DType::kQ4}) {
    const WeightView wq = fast->UploadQuantized(w.view, dt, 32).value();
    const std::vector<float> wd = Dequantised(w, dt, 32);
    for (int64_t m : {1, 2, 8}) {
      std::vector<float> x = Random(m * k, 22);
      x[5] = 9.0f;  // an outlier in the first block
      DeviceVec<float> dx(*fast, x), dy(*fast, m * n, -1.0f);
      fast->Linear(dx.get(), m, k, wq, dy.get(), n);
      std::vector<double> ref(m * n);
      for (int64_t i = 0; i < m; ++i) {
        const std::vector<double> xa = QuantDequantAct(&x[i * k], k);
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t c = 0; c < k; ++c) s += xa[c] * wd[j * k + c];
          ref[i * n + j] = s;
        }
      }
      EXPECT_LT(NormErr(dy.Read(), ref), 1e-5) << DTypeName(dt) << " m=" << m;
    }
  }
}

TEST_P(OpsTest, FastQuantisedGroupedMlpDecode) {
  // Every expert's rows take the integer dot products (gate and up on the
  // quantised input, down on the quantised SiLU product). The reference
  // emulates the quantisation in double, so a quantisation step flipped by f32
  // rounding may move a value by one step (~1e-3 here).
  auto fast = GetParam().make(MathMode::kFast);
  const int64_t H = 64, I = 96;
  std::vector<TestWeight> owned;
  std::vector<std::vector<float>> deq;
  std::vector<MlpWeights> experts;
  for (int e = 0; e < 3; ++e) {
    for (int t = 0; t < 3; ++t) owned.push_back(MakeWeight(DType::kBF16, t == 2 ? H : I, t == 2 ? I : H, 200 + 3 * e + t));
  }
  const DType dts[3] = {DType::kQ4, DType::kQ4, DType::kQ8};
  for (int e = 0; e < 3; ++e) {
    MlpWeights mw;
    WeightView* views[3] = {&mw.gate_proj, &mw.up_proj, &mw.down_proj};
    for (int t = 0; t < 3; ++t) {
      *views[t] = fast->UploadQuantized(owned[3 * e + t].view, dts[t], 32).value();
      deq.push_back(Dequantised(owned[3 * e + t], dts[t], 32));
    }
    experts.push_back(mw);
  }
  const std::vector<int64_t> offsets = {0, 1, 3, 4};  // experts 0 and 2: one row; expert 1: two
  std::vector<float> x = Random(4 * H, 23, 2.0f);
  DeviceVec<float> dx(*fast, x), dy(*fast, 4 * H, 7.0f);
  GroupedMlpParams p;
  p.x = dx.get(), p.ldx = H, p.experts = experts, p.offsets = offsets, p.hidden = H, p.inter = I;
  p.out = dy.get(), p.ldo = H;
  fast->GroupedMlp(p);
  std::vector<double> ref(4 * H);
  for (int e = 0; e < 3; ++e) {
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      const std::vector<double> xa = QuantDequantAct(&x[r * H], H);
      std::vector<float> act(I);
      for (int64_t j = 0; j < I; ++j) {
        double g = 0, u = 0;
        for (int64_t c = 0; c < H; ++c) g += xa[c] * deq[3 * e][j * H + c], u += xa[c] * deq[3 * e + 1][j * H + c];
        act[j] = static_cast<float>(g / (1.0 + std::exp(-g)) * u);
      }
      const std::vector<double> aa = QuantDequantAct(act.data(), I);
      for (int64_t c = 0; c < H; ++c) {
        double s = 0;
        for (int64_t j = 0; j < I; ++j) s += aa[j] * deq[3 * e + 2][c * I + j];
        ref[r * H + c] = s;
      }
    }
  }
  EXPECT_LT(NormErr(dy.Read(), ref), 5e-3);
}

TEST_P(OpsTest, RmsNormAndFusedResidual) {
  const int64_t m = 5, d = 96;
  std::vector<float> x = Random(m * d, 1, 3.0f), h = Random(m * d, 7), g = Random(d, 2);
  DeviceVec<float> dg(*be, g);
  const VectorView gamma = be->Upload(VectorView{DType::kF32, dg.get(), d}).value();
  auto reference = [&](const std::vector<float>& in) {
    std::vector<double> ref(m * d);
    for (int64_t i = 0; i < m; ++i) {
      double ss = 0;
      for (int64_t c = 0; c < d; ++c) ss += double(in[i * d + c]) * in[i * d + c];
      const double r = 1.0 / std::sqrt(ss / d + 1e-6);
      for (int64_t c = 0; c < d; ++c) ref[i * d + c] = g[c] * in[i * d + c] * r;
    }
    return ref;
  };
  DeviceVec<float> dx(*be, x), dy(*be, m * d), dh(*be, h);
  be->RmsNorm(dx.get(), m, d, d, gamma, 1e-6f, dy.get(), d);
  EXPECT_LT(NormErr(dy.Read(), reference(x)), 1e-6);
  // x += h; y = RmsNorm(x): both outputs.
  be->AddRmsNorm(dx.get(), dh.get(), m, d, gamma, 1e-6f, dy.get());
  std::vector<float> sum(m * d);
  for (int64_t i = 0; i < m * d; ++i) sum[i] = x[i] + h[i];
  EXPECT_EQ(dx.Read(), sum);
  EXPECT_LT(NormErr(dy.Read(), reference(sum)), 1e-6);
  be->Add(dx.get(), dh.get(), m * d);
  std::vector<double> twice(m * d);
  for (int64_t i = 0; i < m * d; ++i) twice[i] = double(sum[i]) + h[i];
  EXPECT_LT(NormErr(dx.Read(), twice), 1e-7);
}

TEST_P(OpsTest, RopeInterleavedAndHalfLayouts) {
  const int64_t T = 3, heads = 2, dim = 8, half = dim / 2, maxpos = 10;
  std::vector<float> cs(maxpos * half), sn(maxpos * half);
  for (int64_t p = 0; p < maxpos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      cs[p * half + i] = std::cos(0.3 * p * (i + 1));
      sn[p * half + i] = std::sin(0.3 * p * (i + 1));
    }
  const std::vector<int32_t> pos = {0, 4, 9};
  DeviceVec<float> dcs(*be, cs), dsn(*be, sn);
  DeviceVec<int32_t> dpos(*be, pos);
  for (RopeLayout layout : {RopeLayout::kInterleaved, RopeLayout::kHalf}) {
    std::vector<float> orig = Random(T * heads * dim, 4);
    DeviceVec<float> dx(*be, orig);
    be->Rope(dx.get(), T, heads, heads * dim, dim, dim, dpos.get(), dcs.get(), dsn.get(), layout);
    std::vector<double> ref(orig.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const int64_t a = layout == RopeLayout::kInterleaved ? 2 * i : i;
          const int64_t b = layout == RopeLayout::kInterleaved ? 2 * i + 1 : i + half;
          const float* v = orig.data() + (t * heads + h) * dim;
          const double c = cs[pos[t] * half + i], s = sn[pos[t] * half + i];
          ref[(t * heads + h) * dim + a] = v[a] * c - v[b] * s;
          ref[(t * heads + h) * dim + b] = v[b] * c + v[a] * s;
        }
    EXPECT_LT(NormErr(dx.Read(), ref), 1e-6);
  }
}

TEST_P(OpsTest, SiluMul) {
  std::vector<float> g = Random(40, 1, 6.0f), u = Random(40, 2);
  DeviceVec<float> dg(*be, g), du(*be, u), dy(*be, 40);
  be->SiluMul(dg.get(), du.get(), 4, 10, 10, dy.get(), 10);
  std::vector<double> ref(40);
  for (int i = 0; i < 40; ++i) ref[i] = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
  EXPECT_LT(NormErr(dy.Read(), ref), 1e-6);
}

TEST_P(OpsTest, EmbeddingWidensRowsAndRefusesBadIds) {
  TestWeight w = MakeWeight(DType::kBF16, 20, 16, 3);
  const WeightView table = be->Upload(w.view).value();
  const std::vector<int32_t> ids = {19, 0, 7};
  DeviceVec<int32_t> did(*be, ids);
  DeviceVec<float> dy(*be, 3 * 16);
  be->Embedding(table, did.get(), 3, dy.get());
  const std::vector<float> y = dy.Read();
  for (int i = 0; i < 3; ++i)
    for (int c = 0; c < 16; ++c) EXPECT_EQ(y[i * 16 + c], w.values[ids[i] * 16 + c]);
  DeviceVec<int32_t> bad(*be, std::vector<int32_t>{3, 20});
  be->Embedding(table, bad.get(), 2, dy.get());
  const absl::Status st = be->Synchronize();
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange) << st;
  EXPECT_NE(std::string(st.message()).find("20"), std::string::npos) << st;
  EXPECT_TRUE(be->Synchronize().ok()) << "the error is reported once";
}

TEST_P(OpsTest, RowMovement) {
  // CopyRows with a broadcast source (MLA's shared k_pe into every head).
  std::vector<float> src = Random(4 * 10, 1);
  DeviceVec<float> dsrc(*be, src), ddst(*be, 4 * 3 * 6, -1.0f);
  be->CopyRows({ddst.get(), dsrc.get() + 2, 4, 3, 5, 3 * 6, 6, 10, 0});
  std::vector<float> dst = ddst.Read();
  for (int o = 0; o < 4; ++o)
    for (int i = 0; i < 3; ++i)
      for (int c = 0; c < 6; ++c) EXPECT_EQ(dst[(o * 3 + i) * 6 + c], c < 5 ? src[o * 10 + 2 + c] : -1.0f);
  // GatherRows with a divisor (slot -> token), ScatterRows (the inverse permutation).
  const std::vector<int32_t> idx = {5, 0, 3, 1, 4, 2};
  std::vector<float> x = Random(6 * 8, 2);
  DeviceVec<float> dx(*be, x), dg(*be, 6 * 8), ds(*be, 6 * 8);
  DeviceVec<int32_t> didx(*be, idx);
  be->GatherRows(dg.get(), 8, dx.get(), 8, didx.get(), 6, 8, 2);
  const std::vector<float> g = dg.Read();
  for (int i = 0; i < 6; ++i)
    for (int c = 0; c < 8; ++c) EXPECT_EQ(g[i * 8 + c], x[(idx[i] / 2) * 8 + c]);
  be->ScatterRows(ds.get(), 8, dx.get(), 8, didx.get(), 6, 8);
  const std::vector<float> sc = ds.Read();
  for (int i = 0; i < 6; ++i)
    for (int c = 0; c < 8; ++c) EXPECT_EQ(sc[idx[i] * 8 + c], x[i * 8 + c]);
  // WeightedSumRows: k = 3 choices per token.
  std::vector<float> rows = Random(4 * 3 * 8, 3), wts = Random(4 * 3, 4);
  DeviceVec<float> drows(*be, rows), dw(*be, wts), dout(*be, 4 * 8);
  be->WeightedSumRows(dout.get(), drows.get(), dw.get(), 4, 3, 8);
  std::vector<double> ref(4 * 8, 0.0);
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 3; ++i)
      for (int c = 0; c < 8; ++c) ref[t * 8 + c] += double(wts[t * 3 + i]) * rows[(t * 3 + i) * 8 + c];
  EXPECT_LT(NormErr(dout.Read(), ref), 1e-6);
}

TEST_P(OpsTest, KvWriteAndGatherInF32AndBf16) {
  const int64_t W = 40, rows = 12;
  std::vector<float> x = Random(3 * W, 5, 4.0f);
  const std::vector<int32_t> slots = {7, 2, 11};
  for (DType dt : {DType::kF32, DType::kBF16}) {
    auto pool = be->Allocate(rows * W * DTypeSize(dt), "a KV layer").value();
    const KvLayer kv{pool.data(), dt, W};
    DeviceVec<float> dx(*be, x), back(*be, 3 * W);
    DeviceVec<int32_t> ds(*be, slots);
    be->KvWrite(kv, ds.get(), 3, dx.get(), W);
    be->KvGather(kv, ds.get(), 3, back.get(), W);
    const std::vector<float> got = back.Read();
    for (int64_t i = 0; i < 3 * W; ++i) {
      const float want = dt == DType::kF32 ? x[i] : Bf16ToF32(F32ToBf16(x[i]));
      EXPECT_EQ(got[i], want) << DTypeName(dt) << " element " << i;
    }
  }
}

// Reference attention for one sequence (query t at pos0 + t sees keys 0..pos0 + t).
void ReferenceAttention(const std::vector<float>& q, int64_t qts, const std::vector<float>& k, int64_t kts,
                        const std::vector<float>& v, int64_t vts, int64_t nq, int64_t nh, int64_t nkvh, int64_t dqk,
                        int64_t dv, int64_t pos0, double scale, std::vector<double>& ref) {
  for (int64_t t = 0; t < nq; ++t)
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t kh = h / (nh / nkvh), nk = pos0 + t + 1;
      std::vector<double> s(nk);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < nk; ++j) {
        double d = 0;
        for (int64_t c = 0; c < dqk; ++c) d += double(q[t * qts + h * dqk + c]) * k[j * kts + kh * dqk + c];
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
      }
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int64_t c = 0; c < dv; ++c) {
        double o = 0;
        for (int64_t j = 0; j < nk; ++j) o += s[j] / sum * v[j * vts + kh * dv + c];
        ref.push_back(o);
      }
    }
}

// Causal attention with GQA and padded strides over two sequences in one
// call: one a chunk that starts part-way into its keys, one a single decode.
TEST_P(OpsTest, AttentionTwoSequencesCausalGqa) {
  const int64_t nh = 6, nkvh = 2, dqk = 24, dv = 16;
  const int64_t qts = nh * dqk + 2, kts = nkvh * dqk + 1, vts = nkvh * dv + 3, ots = nh * dv + 4;
  // Sequence 0: 4 queries at positions 7..10 over 11 keys; sequence 1: 1 query at position 5 over 6 keys.
  const int64_t nq0 = 4, nkv0 = 11, nq1 = 1, nkv1 = 6;
  std::vector<float> q = Random((nq0 + nq1) * qts, 1), k = Random((nkv0 + nkv1) * kts, 2);
  std::vector<float> v = Random((nkv0 + nkv1) * vts, 3);
  const std::vector<AttentionSeq> seqs = {{0, 4, 7, 0}, {4, 1, 5, 11}};  // contiguous KV rows
  DeviceVec<float> dq(*be, q), dk(*be, k), dv_(*be, v), dout(*be, (nq0 + nq1) * ots);
  DeviceVec<AttentionSeq> dseqs(*be, seqs);
  AttentionParams p;
  p.q = dq.get(), p.q_token_stride = qts, p.q_head_stride = dqk, p.n_heads = nh, p.head_dim_qk = dqk;
  p.k = dk.get(), p.k_token_stride = kts, p.k_head_stride = dqk;
  p.v = dv_.get(), p.v_token_stride = vts, p.v_head_stride = dv;
  p.n_kv_heads = nkvh, p.head_dim_v = dv;
  p.seqs = dseqs.get(), p.n_seqs = 2, p.max_kv = nkv0, p.scale = 0.37f;
  p.out = dout.get(), p.out_token_stride = ots, p.out_head_stride = dv;
  be->Attention(p);
  const std::vector<float> out = dout.Read();
  std::vector<double> ref;
  ReferenceAttention(q, qts, k, kts, v, vts, nq0, nh, nkvh, dqk, dv, 7, 0.37, ref);
  std::vector<float> q1(q.begin() + nq0 * qts, q.end()), k1(k.begin() + nkv0 * kts, k.end());
  std::vector<float> v1(v.begin() + nkv0 * vts, v.end());
  ReferenceAttention(q1, qts, k1, kts, v1, vts, nq1, nh, nkvh, dqk, dv, 5, 0.37, ref);
  std::vector<float> got;
  for (int64_t t = 0; t < nq0 + nq1; ++t)
    for (int64_t h = 0; h < nh; ++h)
      for (int64_t c = 0; c < dv; ++c) got.push_back(out[t * ots + h * dv + c]);
  EXPECT_LT(NormErr(got, ref), 1e-6);
}

// The same attention with K and V rows scattered over blocks of a pool, found
// through a block table, gives exactly the contiguous result; a bf16 pool
// gives the reference on the bf16-rounded rows.
TEST_P(OpsTest, AttentionThroughBlockTablesF32AndBf16) {
  const int64_t nq = 3, nh = 4, nkvh = 2, dqk = 20, dv = 12, nkv = 13, q0 = nkv - nq, bs = 4;
  const int64_t kvw = nkvh * (dqk + dv);  // one row: [k heads | v heads]
  std::vector<float> q = Random(nq * nh * dqk, 4), kv = Random(nkv * kvw, 5);
  const std::vector<int32_t> table = {5, 1, 3, 0};  // 13 tokens in 4 blocks of 4
  DeviceVec<float> dq(*be, q);
  auto run = [&](DType dt, bool paged) {
    const int64_t pool_rows = paged ? 6 * bs : nkv;
    auto pool = be->Allocate(pool_rows * kvw * DTypeSize(dt), "a KV pool").value();
    std::vector<int32_t> slots(nkv);
    for (int64_t j = 0; j < nkv; ++j) slots[j] = static_cast<int32_t>(paged ? table[j / bs] * bs + j % bs : j);
    DeviceVec<int32_t> dslots(*be, slots), dtable(*be, table);
    DeviceVec<float> dkv(*be, kv);
    be->KvWrite({pool.data(), dt, kvw}, dslots.get(), nkv, dkv.get(), kvw);
    const std::vector<AttentionSeq> seqs = {{0, static_cast<int32_t>(nq), static_cast<int32_t>(q0), 0}};
    DeviceVec<AttentionSeq> dseqs(*be, seqs);
    DeviceVec<float> out(*be, nq * nh * dv);
    AttentionParams p;
    p.q = dq.get(), p.q_token_stride = nh * dqk, p.q_head_stride = dqk, p.n_heads = nh, p.head_dim_qk = dqk;
    p.k = pool.data(), p.k_token_stride = kvw, p.k_head_stride = dqk;
    p.v = static_cast<uint8_t*>(pool.data()) + nkvh * dqk * DTypeSize(dt), p.v_token_stride = kvw;
    p.v_head_stride = dv, p.kv_dtype = dt, p.n_kv_heads = nkvh, p.head_dim_v = dv;
    p.seqs = dseqs.get(), p.n_seqs = 1, p.max_kv = nkv, p.scale = 0.3f;
    if (paged) p.block_tables = dtable.get(), p.block_size = bs;
    p.out = out.get(), p.out_token_stride = nh * dv, p.out_head_stride = dv;
    be->Attention(p);
    return out.Read();
  };
  EXPECT_EQ(run(DType::kF32, true), run(DType::kF32, false));
  std::vector<float> rounded(kv.size());
  for (size_t i = 0; i < kv.size(); ++i) rounded[i] = Bf16ToF32(F32ToBf16(kv[i]));
  std::vector<double> ref;
  ReferenceAttention(q, nh * dqk, rounded, kvw, std::vector<float>(rounded.begin() + nkvh * dqk, rounded.end()), kvw,
                     nq, nh, nkvh, dqk, dv, q0, 0.3, ref);
  EXPECT_LT(NormErr(run(DType::kBF16, true), ref), 1e-6);
}

// Shapes the tiled kernel cuts differently: absorbed MLA (many query heads on
// one KV head whose value is a prefix of the key row; more heads than one job
// holds) and MHA prefill (queries in blocks), with contexts of several key
// tiles whose scores grow along the context (the online softmax must rescale),
// in bf16 and f32.
TEST_P(OpsTest, AttentionManyHeadsOneLatentHeadAndLongPrefill) {
  struct Case {
    int64_t nh, nkvh, dqk, dv;
    std::vector<AttentionSeq> seqs;  // q_begin, n_q, pos0, kv_begin (in tokens of that sequence's KV)
    DType dt;
  };
  const std::vector<Case> cases = {
      // 20 heads on 1 latent head (v = the first 64 of 72 key values): a decode
      // at position 149 and a chunk of 5 queries at 96..100.
      {20, 1, 72, 64, {{0, 1, 149, 0}, {1, 5, 96, 150}}, DType::kBF16},
      // MHA: a 40-query prefill from position 0 (blocks of 16 queries, causal
      // inside a block) and a 130-key decode.
      {3, 3, 32, 32, {{0, 40, 0, 0}, {40, 1, 129, 40}}, DType::kF32},
  };
  for (const Case& cs : cases) {
    SCOPED_TRACE(DTypeName(cs.dt));
    const bool latent = cs.nkvh == 1 && cs.nh > 1;
    const int64_t kvw = latent ? cs.dqk : cs.nkvh * (cs.dqk + cs.dv);  // one cached row
    int64_t n_q = 0, n_rows = 0;
    for (const AttentionSeq& sq : cs.seqs) n_q += sq.n_q, n_rows += sq.pos0 + sq.n_q;
    std::vector<float> q = Random(n_q * cs.nh * cs.dqk, 21), kv = Random(n_rows * kvw, 22);
    // Later keys score higher: the running max grows tile after tile.
    int64_t row = 0;
    for (const AttentionSeq& sq : cs.seqs)
      for (int64_t j = 0; j < sq.pos0 + sq.n_q; ++j, ++row)
        for (int64_t c = 0; c < kvw; ++c) kv[row * kvw + c] *= 1.0f + static_cast<float>(j) / 40.0f;
    std::vector<float> rounded = kv;
    if (cs.dt == DType::kBF16)
      for (auto& x : rounded) x = Bf16ToF32(F32ToBf16(x));
    // Contiguous rows (paged addressing is AttentionThroughBlockTablesF32AndBf16's).
    std::vector<AttentionSeq> seqs = cs.seqs;
    int64_t kv0 = 0;
    for (AttentionSeq& sq : seqs) sq.kv_begin = static_cast<int32_t>(kv0), kv0 += sq.pos0 + sq.n_q;
    DeviceVec<float> dkv(*be, kv), dq(*be, q), out(*be, n_q * cs.nh * cs.dv);
    auto contiguous = be->Allocate(n_rows * kvw * DTypeSize(cs.dt), "KV rows").value();
    std::vector<int32_t> ident(n_rows);
    for (int64_t j = 0; j < n_rows; ++j) ident[j] = static_cast<int32_t>(j);
    DeviceVec<int32_t> dident(*be, ident);
    be->KvWrite({contiguous.data(), cs.dt, kvw}, dident.get(), n_rows, dkv.get(), kvw);
    DeviceVec<AttentionSeq> dseqs(*be, seqs);
    AttentionParams p;
    p.q = dq.get(), p.q_token_stride = cs.nh * cs.dqk, p.q_head_stride = cs.dqk, p.n_heads = cs.nh;
    p.head_dim_qk = cs.dqk;
    p.k = contiguous.data(), p.k_token_stride = kvw, p.k_head_stride = latent ? 0 : cs.dqk;
    p.v = latent ? contiguous.data()
                 : static_cast<uint8_t*>(contiguous.data()) + cs.nkvh * cs.dqk * DTypeSize(cs.dt);
    p.v_token_stride = kvw, p.v_head_stride = latent ? 0 : cs.dv;
    p.kv_dtype = cs.dt, p.n_kv_heads = cs.nkvh, p.head_dim_v = cs.dv;
    p.seqs = dseqs.get(), p.n_seqs = static_cast<int64_t>(seqs.size()), p.max_kv = 150, p.scale = 0.3f;
    p.out = out.get(), p.out_token_stride = cs.nh * cs.dv, p.out_head_stride = cs.dv;
    be->Attention(p);
    const std::vector<float> got = out.Read();
    std::vector<double> ref;
    int64_t q0 = 0, r0 = 0;
    for (const AttentionSeq& sq : cs.seqs) {
      const int64_t nk = sq.pos0 + sq.n_q;
      std::vector<float> qs(q.begin() + q0 * cs.nh * cs.dqk, q.begin() + (q0 + sq.n_q) * cs.nh * cs.dqk);
      std::vector<float> ks(rounded.begin() + r0 * kvw, rounded.begin() + (r0 + nk) * kvw);
      std::vector<float> vs = latent ? ks : std::vector<float>(ks.begin() + cs.nkvh * cs.dqk, ks.end());
      ReferenceAttention(qs, cs.nh * cs.dqk, ks, kvw, vs, kvw, sq.n_q, cs.nh, cs.nkvh, cs.dqk, cs.dv, sq.pos0, 0.3, ref);
      q0 += sq.n_q, r0 += nk;
    }
    EXPECT_LT(NormErr(got, ref), 2e-6);
  }
}

// Top-k routing against a plain reference of DeepSeek's gates: softmax greedy
// (V2-Lite), and sigmoid with noaux_tc group selection and a bias (V3).
TEST_P(OpsTest, RouteTopKMatchesReference) {
  const int64_t E = 16, k = 4, T = 7;
  std::vector<float> logits = Random(T * E, 12, 3.0f), bias = Random(E, 13, 0.5f);
  DeviceVec<float> dl(*be, logits), db(*be, bias);
  DeviceVec<int32_t> ids(*be, T * k);
  DeviceVec<float> w(*be, T * k);
  for (bool v3 : {false, true}) {
    RouterParams p;
    p.n_experts = E, p.top_k = k;
    p.sigmoid = v3, p.normalize = v3, p.scale = v3 ? 2.5f : 1.0f;
    p.n_groups = v3 ? 4 : 1, p.topk_groups = v3 ? 2 : 1, p.group_top2_sum = v3;
    be->RouteTopK(p, dl.get(), v3 ? db.get() : nullptr, T, ids.get(), w.get());
    const std::vector<int32_t> got_ids = ids.Read();
    const std::vector<float> got_w = w.Read();
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> score(E), choice(E);
      double z = 0;
      for (int64_t e = 0; e < E; ++e) z += std::exp(double(logits[t * E + e]));
      for (int64_t e = 0; e < E; ++e) {
        const double l = logits[t * E + e];
        score[e] = v3 ? 1.0 / (1.0 + std::exp(-l)) : std::exp(l) / z;
        choice[e] = score[e] + (v3 ? bias[e] : 0.0);
      }
      if (v3) {  // keep the 2 groups (of 4) with the best top-2 sums
        std::vector<std::pair<double, int>> g;
        for (int gi = 0; gi < 4; ++gi) {
          std::vector<double> c(choice.begin() + gi * 4, choice.begin() + gi * 4 + 4);
          std::sort(c.rbegin(), c.rend());
          g.push_back({-(c[0] + c[1]), gi});
        }
        std::sort(g.begin(), g.end());
        for (int r = 2; r < 4; ++r)
          for (int i = 0; i < 4; ++i) choice[g[r].second * 4 + i] = -1e300;
      }
      std::vector<int> order(E);
      for (int e = 0; e < E; ++e) order[e] = e;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return choice[a] > choice[b]; });
      double sum = 0;
      for (int i = 0; i < k; ++i) sum += score[order[i]];
      for (int i = 0; i < k; ++i) {
        EXPECT_EQ(got_ids[t * k + i], order[i]) << "token " << t << " choice " << i << (v3 ? " (v3)" : " (v2)");
        const double want = (v3 ? score[order[i]] / sum : score[order[i]]) * p.scale;
        EXPECT_NEAR(got_w[t * k + i], want, 1e-6 * std::max(1.0, std::fabs(want)));
      }
    }
  }
}

TEST_P(OpsTest, GroupByExpertIsAStableCountingSort) {
  const std::vector<int32_t> ids = {3, 0, 3, 1, 0, 3, 2, 0};
  DeviceVec<int32_t> dids(*be, ids), off(*be, 5), order(*be, 8);
  be->GroupByExpert(dids.get(), 8, 4, off.get(), order.get());
  EXPECT_EQ(off.Read(), (std::vector<int32_t>{0, 3, 4, 5, 8}));
  EXPECT_EQ(order.Read(), (std::vector<int32_t>{1, 4, 7, 3, 6, 0, 2, 5}));
  DeviceVec<int32_t> bad(*be, std::vector<int32_t>{0, 4});
  be->GroupByExpert(bad.get(), 2, 4, off.get(), order.get());
  EXPECT_EQ(be->Synchronize().code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace deepshard
