// The CPU backend: oneDNN GEMMs for prefill, hand-written GEMV for decode, and
// plain (compiler-vectorised) loops for the element-wise ops and attention.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/onednn_matmul.h"
#include "base/status_macros.h"

namespace deepshard {
namespace {

// Rows of a low-precision weight widened per oneDNN call on the prefill path.
constexpr int64_t kTileRows = 256;

// A grow-only scratch buffer: resized only when a larger shape arrives, so the
// decode loop (fixed shapes) never allocates.
template <typename T>
T* Scratch(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(MathMode mode, int threads) : mode_(mode) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  std::string_view name() const override { return "cpu"; }
  MathMode math_mode() const override { return mode_; }

  void Linear(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
              int64_t ldy) override {
    LinearIn(mode_, x, m, ldx, w, y, ldy);
  }
  void LinearExact(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                   int64_t ldy) override {
    LinearIn(MathMode::kExact, x, m, ldx, w, y, ldy);
  }

  void LinearIn(MathMode mode, const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                int64_t ldy) {
    if (m == 0 || w.rows == 0) return;
    const int64_t K = w.cols;
    if (m <= cpu::kGemvMaxM) {
      cpu::GemvRows(x, m, ldx, w, y, ldy);
      return;
    }
    if (w.dtype == DType::kF32) {
      mm_.F32(x, m, K, ldx, reinterpret_cast<const float*>(w.RowPtr(0)), w.rows, K, true, y, ldy);
      return;
    }
    if (mode == MathMode::kFast && mm_.bf16_supported()) {
      // oneDNN 2.6 has no bf16 matmul with a strided f32 destination, so each
      // product lands in a dense scratch block and is copied out.
      uint16_t* xb = Scratch(xbf16_, m * K);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t c = 0; c < K; ++c) xb[i * K + c] = F32ToBf16(x[i * ldx + c]);
      const int64_t tile_rows = w.dtype == DType::kBF16 ? w.rows : kTileRows;
      float* yd = Scratch(ydense_, m * std::min(tile_rows, w.rows));
      uint16_t* tile = w.dtype == DType::kBF16 ? nullptr : Scratch(tile_bf16_, kTileRows * K);
      for (int64_t n0 = 0; n0 < w.rows; n0 += tile_rows) {
        const int64_t nt = std::min(tile_rows, w.rows - n0);
        const uint16_t* wt = reinterpret_cast<const uint16_t*>(w.RowPtr(n0));
        if (tile != nullptr) {
          cpu::WidenRowsBf16(w, n0, nt, tile);
          wt = tile;
        }
        mm_.Bf16(xb, m, K, K, wt, nt, K, true, yd, nt);
        for (int64_t i = 0; i < m; ++i) std::memcpy(y + i * ldy + n0, yd + i * nt, nt * sizeof(float));
      }
      return;
    }
    float* tile = Scratch(tile_f32_, kTileRows * K);
    for (int64_t n0 = 0; n0 < w.rows; n0 += kTileRows) {
      const int64_t nt = std::min(kTileRows, w.rows - n0);
      cpu::WidenRowsF32(w, n0, nt, tile);
      mm_.F32(x, m, K, ldx, tile, nt, K, true, y + n0, ldy);
    }
  }

  void LinearT(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
               int64_t ldy) override {
    if (m == 0 || w.rows == 0) return;
    if (m <= cpu::kGemvMaxM) {
      cpu::GemvCols(x, m, ldx, w, y, ldy);
      return;
    }
    const float* wf;
    if (w.dtype == DType::kF32) {
      wf = reinterpret_cast<const float*>(w.RowPtr(0));
    } else {
      float* buf = Scratch(tile_t_, w.rows * w.cols);
      cpu::WidenRowsF32(w, 0, w.rows, buf);
      wf = buf;
    }
    // x[m, rows] · w[rows, cols]: w is B[k = rows, n = cols] untransposed.
    mm_.F32(x, m, w.rows, ldx, wf, w.cols, w.cols, false, y, ldy);
  }

  void RmsNorm(const float* x, int64_t m, int64_t d, int64_t ldx, const VectorView& gamma,
               float eps, float* y, int64_t ldy) override {
    float* g = Scratch(gamma_, d);
    ConvertToF32(gamma.dtype, gamma.data, g, d);
#pragma omp parallel for schedule(static) if (m * d >= (1 << 18))
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * ldx;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < d; ++c) ss += xi[c] * xi[c];
      const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
      float* yi = y + i * ldy;
      for (int64_t c = 0; c < d; ++c) yi[c] = g[c] * (xi[c] * r);
    }
  }

  void Embedding(const WeightView& table, const int32_t* ids, int64_t m, float* y) override {
    for (int64_t i = 0; i < m; ++i) {
      DS_CHECK(ids[i] >= 0 && ids[i] < table.rows);
      cpu::WidenRowsF32(table, ids[i], 1, y + i * table.cols);
    }
  }

  void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride, int64_t head_stride,
            int64_t dim, const int32_t* positions, const float* cos_table, const float* sin_table,
            RopeLayout layout) override {
    const int64_t half = dim / 2;
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* cs = cos_table + static_cast<int64_t>(positions[t]) * half;
      const float* sn = sin_table + static_cast<int64_t>(positions[t]) * half;
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + t * token_stride + h * head_stride;
        for (int64_t i = 0; i < half; ++i) {
          float* a = layout == RopeLayout::kInterleaved ? v + 2 * i : v + i;
          float* b = layout == RopeLayout::kInterleaved ? v + 2 * i + 1 : v + i + half;
          const float x0 = *a, x1 = *b;
          *a = x0 * cs[i] - x1 * sn[i];
          *b = x1 * cs[i] + x0 * sn[i];
        }
      }
    }
  }

  void SiluMul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld_in, float* out,
               int64_t ld_out) override {
#pragma omp parallel for schedule(static) if (m * n > 65536)
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const float g = gate[i * ld_in + j];
        out[i * ld_out + j] = g / (1.0f + std::exp(-g)) * up[i * ld_in + j];
      }
    }
  }

  void ReserveAttention(int64_t max_kv) override { Scratch(scores_, omp_get_max_threads() * max_kv); }

  void Attention(const AttentionParams& p) override {
    DS_CHECK(p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0);
    DS_CHECK(p.q_pos0 + p.n_q <= p.n_kv);
    DS_CHECK(p.kv_block_table == nullptr || p.kv_block_size > 0);
    // Offset (in floats, before the token stride) of KV token j's row.
    auto kv_row = [&p](int64_t j, int64_t token_stride) {
      if (p.kv_block_table == nullptr) return j * token_stride;
      return p.kv_block_table[j / p.kv_block_size] * p.kv_block_stride + (j % p.kv_block_size) * token_stride;
    };
    const int64_t group = p.n_heads / p.n_kv_heads;
    const int nthreads = omp_get_max_threads();
    float* scores_all = Scratch(scores_, nthreads * p.n_kv);
    const int64_t work = p.n_q * p.n_heads;
#pragma omp parallel for schedule(dynamic, 1) if (work * p.n_kv * (p.head_dim_qk + p.head_dim_v) >= (1 << 18))
    for (int64_t job = 0; job < work; ++job) {
      const int64_t t = job / p.n_heads, h = job % p.n_heads, kh = h / group;
      float* s = scores_all + omp_get_thread_num() * p.n_kv;
      const float* q = p.q + t * p.q_token_stride + h * p.q_head_stride;
      const int64_t n_keys = p.q_pos0 + t + 1;  // causal
      float mx = -INFINITY;
      for (int64_t j = 0; j < n_keys; ++j) {
        const float* k = p.k + kv_row(j, p.k_token_stride) + kh * p.k_head_stride;
        float d = 0.0f;
#pragma omp simd reduction(+ : d)
        for (int64_t c = 0; c < p.head_dim_qk; ++c) d += q[c] * k[c];
        s[j] = d * p.scale;
        mx = std::max(mx, s[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < n_keys; ++j) {
        s[j] = std::exp(s[j] - mx);
        sum += s[j];
      }
      const float inv = 1.0f / sum;
      float* o = p.out + t * p.out_token_stride + h * p.out_head_stride;
      for (int64_t c = 0; c < p.head_dim_v; ++c) o[c] = 0.0f;
      for (int64_t j = 0; j < n_keys; ++j) {
        const float* v = p.v + kv_row(j, p.v_token_stride) + kh * p.v_head_stride;
        const float w = s[j] * inv;
        for (int64_t c = 0; c < p.head_dim_v; ++c) o[c] += w * v[c];
      }
    }
  }

 private:
  MathMode mode_;
  cpu::OneDnnMatmul mm_;
  std::vector<uint16_t> xbf16_, tile_bf16_;
  std::vector<float> tile_f32_, tile_t_, gamma_, scores_, ydense_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(MathMode mode, int threads) {
  return std::make_unique<CpuBackend>(mode, threads);
}

}  // namespace deepshard
