// Conformance tests of every CPU backend op against plain double-precision
// references. Each reports a normalised error: max |ours - ref| / max |ref|.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemv.h"

namespace deepshard {
namespace {

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

class LinearTest : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearTest, MatchesReference) {
  const LinearCase p = GetParam();
  auto be = MakeCpuBackend(p.mode);
  TestWeight w = MakeWeight(p.dtype, p.n, p.k, 7);
  const int64_t ldx = p.k + 3, ldy = p.n + 5;  // padded strides
  std::vector<float> x = Random(p.m * ldx, 3);
  std::vector<float> y(p.m * ldy, -1.0f);
  be->Linear(x.data(), p.m, ldx, w.view, y.data(), ldy);
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
  // element, random signs): a few 1e-3 over K terms.
  const bool lowp_acts = p.mode == MathMode::kFast && p.dtype != DType::kF32 && p.m > cpu::kGemvMaxM;
  EXPECT_LT(err, lowp_acts ? 1e-2 : 2e-6) << "dtype " << DTypeName(p.dtype) << " m=" << p.m;
}

INSTANTIATE_TEST_SUITE_P(
    AllPaths, LinearTest,
    ::testing::Values(LinearCase{DType::kF32, 1, 37, 70, MathMode::kExact},
                      LinearCase{DType::kF32, 8, 300, 200, MathMode::kExact},
                      LinearCase{DType::kF32, 33, 300, 200, MathMode::kExact},
                      LinearCase{DType::kBF16, 1, 300, 257, MathMode::kExact},
                      LinearCase{DType::kBF16, 5, 300, 257, MathMode::kFast},
                      LinearCase{DType::kBF16, 40, 300, 257, MathMode::kExact},
                      LinearCase{DType::kBF16, 40, 300, 257, MathMode::kFast},
                      LinearCase{DType::kF16, 3, 129, 130, MathMode::kExact},
                      LinearCase{DType::kF16, 20, 129, 130, MathMode::kExact},
                      LinearCase{DType::kF8E4M3, 1, 300, 200, MathMode::kExact},
                      LinearCase{DType::kF8E4M3, 7, 129, 257, MathMode::kExact},
                      LinearCase{DType::kF8E4M3, 24, 300, 200, MathMode::kExact},
                      LinearCase{DType::kF8E4M3, 24, 300, 200, MathMode::kFast}));

TEST(LinearT, MatchesReferenceForRowSlices) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    for (int64_t m : {1, 3, 12}) {
      auto be = MakeCpuBackend(MathMode::kExact);
      TestWeight w = MakeWeight(dt, 300, 140, 11);
      const WeightView slice = w.view.Rows(100, 50);  // rows 100..149: crosses an FP8 block edge
      std::vector<float> x = Random(m * 50, 5);
      std::vector<float> y(m * 140);
      be->LinearT(x.data(), m, 50, slice, y.data(), 140);
      std::vector<double> ref(m * 140, 0.0);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t r = 0; r < 50; ++r)
          for (int64_t c = 0; c < 140; ++c) ref[i * 140 + c] += double(x[i * 50 + r]) * w.values[(100 + r) * 140 + c];
      EXPECT_LT(NormErr(y, ref), 2e-6) << DTypeName(dt) << " m=" << m;
    }
  }
}

TEST(RmsNorm, MatchesReference) {
  auto be = MakeCpuBackend(MathMode::kExact);
  const int64_t m = 5, d = 96;
  std::vector<float> x = Random(m * d, 1, 3.0f), g = Random(d, 2);
  VectorView gamma{DType::kF32, g.data(), d};
  std::vector<float> y(m * d);
  be->RmsNorm(x.data(), m, d, d, gamma, 1e-6f, y.data(), d);
  std::vector<double> ref(m * d);
  for (int64_t i = 0; i < m; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += double(x[i * d + c]) * x[i * d + c];
    const double r = 1.0 / std::sqrt(ss / d + 1e-6);
    for (int64_t c = 0; c < d; ++c) ref[i * d + c] = g[c] * x[i * d + c] * r;
  }
  EXPECT_LT(NormErr(y, ref), 1e-6);
}

TEST(Rope, InterleavedAndHalfLayouts) {
  auto be = MakeCpuBackend(MathMode::kExact);
  const int64_t T = 3, heads = 2, dim = 8, half = dim / 2, maxpos = 10;
  std::vector<float> cs(maxpos * half), sn(maxpos * half);
  for (int64_t p = 0; p < maxpos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      cs[p * half + i] = std::cos(0.3 * p * (i + 1));
      sn[p * half + i] = std::sin(0.3 * p * (i + 1));
    }
  const int32_t pos[T] = {0, 4, 9};
  for (RopeLayout layout : {RopeLayout::kInterleaved, RopeLayout::kHalf}) {
    std::vector<float> x = Random(T * heads * dim, 4), orig = x;
    be->Rope(x.data(), T, heads, heads * dim, dim, dim, pos, cs.data(), sn.data(), layout);
    std::vector<double> ref(x.size());
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
    EXPECT_LT(NormErr(x, ref), 1e-6);
  }
}

TEST(SiluMul, MatchesReference) {
  auto be = MakeCpuBackend(MathMode::kExact);
  std::vector<float> g = Random(40, 1, 6.0f), u = Random(40, 2), y(40);
  be->SiluMul(g.data(), u.data(), 4, 10, 10, y.data(), 10);
  std::vector<double> ref(40);
  for (int i = 0; i < 40; ++i) ref[i] = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
  EXPECT_LT(NormErr(y, ref), 1e-6);
}

TEST(Embedding, WidensRows) {
  auto be = MakeCpuBackend(MathMode::kExact);
  TestWeight w = MakeWeight(DType::kBF16, 20, 16, 3);
  const int32_t ids[3] = {19, 0, 7};
  std::vector<float> y(3 * 16);
  be->Embedding(w.view, ids, 3, y.data());
  for (int i = 0; i < 3; ++i)
    for (int c = 0; c < 16; ++c) EXPECT_EQ(y[i * 16 + c], w.values[ids[i] * 16 + c]);
}

// Causal attention with GQA, padded strides, and a query chunk that starts
// part-way into the KV sequence (q_pos0 > 0).
TEST(Attention, CausalGqaMatchesReference) {
  auto be = MakeCpuBackend(MathMode::kExact);
  const int64_t nq = 4, nh = 6, nkvh = 2, dqk = 24, dv = 16, nkv = 11, q0 = nkv - nq;
  const int64_t qts = nh * dqk + 2, kts = nkvh * dqk + 1, vts = nkvh * dv + 3, ots = nh * dv + 4;
  std::vector<float> q = Random(nq * qts, 1), k = Random(nkv * kts, 2), v = Random(nkv * vts, 3);
  std::vector<float> out(nq * ots, 0.0f);
  AttentionParams p;
  p.q = q.data(), p.q_token_stride = qts, p.q_head_stride = dqk, p.n_q = nq, p.n_heads = nh, p.head_dim_qk = dqk;
  p.k = k.data(), p.k_token_stride = kts, p.k_head_stride = dqk;
  p.v = v.data(), p.v_token_stride = vts, p.v_head_stride = dv;
  p.n_kv = nkv, p.n_kv_heads = nkvh, p.head_dim_v = dv, p.q_pos0 = q0, p.scale = 0.37f;
  p.out = out.data(), p.out_token_stride = ots, p.out_head_stride = dv;
  be->Attention(p);
  std::vector<float> got;
  std::vector<double> ref;
  for (int64_t t = 0; t < nq; ++t)
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t kh = h / (nh / nkvh), nk = q0 + t + 1;
      std::vector<double> s(nk);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < nk; ++j) {
        double d = 0;
        for (int64_t c = 0; c < dqk; ++c) d += double(q[t * qts + h * dqk + c]) * k[j * kts + kh * dqk + c];
        s[j] = d * 0.37;
        mx = std::max(mx, s[j]);
      }
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int64_t c = 0; c < dv; ++c) {
        double o = 0;
        for (int64_t j = 0; j < nk; ++j) o += s[j] / sum * v[j * vts + kh * dv + c];
        ref.push_back(o);
        got.push_back(out[t * ots + h * dv + c]);
      }
    }
  EXPECT_LT(NormErr(got, ref), 1e-6);
}

// The same attention with K and V rows scattered over blocks of a pool, found
// through a block table, gives exactly the contiguous result.
TEST(Attention, BlockTableMatchesContiguous) {
  auto be = MakeCpuBackend(MathMode::kExact);
  const int64_t nq = 3, nh = 4, nkvh = 2, dqk = 20, dv = 12, nkv = 13, q0 = nkv - nq, bs = 4;
  const int64_t kvw = nkvh * (dqk + dv);  // one row: [k heads | v heads]
  std::vector<float> q = Random(nq * nh * dqk, 4), kv = Random(nkv * kvw, 5);
  const std::vector<int32_t> table = {5, 1, 3, 0};  // 13 tokens in 4 blocks of 4
  std::vector<float> pool(6 * bs * kvw, 1e30f);     // untouched slots would poison the result
  for (int64_t j = 0; j < nkv; ++j)
    std::copy_n(kv.data() + j * kvw, kvw, pool.data() + (table[j / bs] * bs + j % bs) * kvw);
  auto run = [&](const float* base, const int32_t* tbl) {
    std::vector<float> out(nq * nh * dv);
    AttentionParams p;
    p.q = q.data(), p.q_token_stride = nh * dqk, p.q_head_stride = dqk;
    p.n_q = nq, p.n_heads = nh, p.head_dim_qk = dqk;
    p.k = base, p.k_token_stride = kvw, p.k_head_stride = dqk;
    p.v = base + nkvh * dqk, p.v_token_stride = kvw, p.v_head_stride = dv;
    p.n_kv = nkv, p.n_kv_heads = nkvh, p.head_dim_v = dv, p.q_pos0 = q0, p.scale = 0.3f;
    p.kv_block_table = tbl, p.kv_block_size = bs, p.kv_block_stride = bs * kvw;
    p.out = out.data(), p.out_token_stride = nh * dv, p.out_head_stride = dv;
    be->Attention(p);
    return out;
  };
  EXPECT_EQ(run(pool.data(), table.data()), run(kv.data(), nullptr));
}

}  // namespace
}  // namespace deepshard
