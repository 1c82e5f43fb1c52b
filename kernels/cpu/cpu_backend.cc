// The CPU backend: oneDNN GEMMs for prefill, hand-written GEMV for decode, and
// plain (compiler-vectorised) loops for the element-wise ops and attention.
// Its memory is host memory, so Upload is free (weights are read from the
// memory-mapped checkpoint in place) and copies are memcpy.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "base/checked_math.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/onednn_matmul.h"
#include "kernels/cpu/router.h"

namespace deepshard {
namespace {

// Rows of a low-precision weight widened per oneDNN call on the prefill path.
constexpr int64_t kTileRows = 256;
// Work (multiply-adds or bytes) below which a loop stays on one thread.
constexpr int64_t kParallelMinWork = 1 << 18;
constexpr int64_t kAlign = 64;

// A grow-only scratch buffer: resized only when a larger shape arrives, so the
// decode loop (fixed shapes) never allocates.
template <typename T>
T* Scratch(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

template <typename T>
inline float KvLoad(const T* p, int64_t c) {
  if constexpr (sizeof(T) == 4) {
    return p[c];
  } else {
    return Bf16ToF32(p[c]);
  }
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(MathMode mode, int threads) : mode_(mode) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  std::string_view name() const override { return "cpu"; }
  MathMode math_mode() const override { return mode_; }

  // ---- Memory ----
  MemoryKind memory_kind() const override { return MemoryKind::kHost; }
  absl::StatusOr<Buffer> Allocate(int64_t bytes, std::string_view what) override {
    if (bytes < 0) return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": negative size ", bytes));
    if (absl::Status st = CheckFitsInMemory(bytes, absl::StrCat("allocating ", std::string(what))); !st.ok()) return st;
    const int64_t rounded = (std::max<int64_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
    void* p = std::aligned_alloc(kAlign, static_cast<size_t>(rounded));
    if (p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("out of host memory allocating ", std::string(what), " (", bytes, " bytes)"));
    }
    return Buffer(this, p, bytes, MemoryKind::kHost);
  }
  absl::StatusOr<WeightView> Upload(const WeightView& w) override { return w; }
  absl::StatusOr<VectorView> Upload(const VectorView& v) override { return v; }
  void CopyFromHost(void* dst, const void* src, int64_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, int64_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void Copy(void* dst, const void* src, int64_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  absl::Status Synchronize() override {
    absl::Status s = std::move(error_);
    error_ = absl::OkStatus();
    return s;
  }
  void ReserveAttention(int64_t max_kv) override { Scratch(scores_, omp_get_max_threads() * max_kv); }

  // ---- GEMMs ----
  void Linear(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) override {
    LinearIn(mode_, x, m, ldx, w, y, ldy);
  }
  void LinearExact(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) override {
    LinearIn(MathMode::kExact, x, m, ldx, w, y, ldy);
  }

  void LinearT(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) override {
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

  void LinearHeads(const HeadsLinearParams& p) override {
    if (p.m == 0 || p.n_heads == 0) return;
    auto one = [&p, this](int64_t h) {
      const WeightView wh = p.w.Rows(h * p.head_row_stride + p.row_offset, p.rows_per_head);
      const float* xh = p.x + h * p.x_head_stride;
      float* yh = p.y + h * p.y_head_stride;
      if (p.m <= cpu::kGemvMaxM) {
        if (p.transposed) {
          cpu::GemvCols(xh, p.m, p.ldx, wh, yh, p.ldy);
        } else {
          cpu::GemvRows(xh, p.m, p.ldx, wh, yh, p.ldy);
        }
      } else if (p.transposed) {
        LinearT(xh, p.m, p.ldx, wh, yh, p.ldy);
      } else {
        Linear(xh, p.m, p.ldx, wh, yh, p.ldy);
      }
    };
    // Decode-sized products are small per head (128 x 512 for V2/V3): one
    // parallel pass over the heads instead of a single-threaded product each.
    // Each head is computed by the same code either way, so results do not
    // depend on the thread count.
    const int64_t work = p.n_heads * p.rows_per_head * p.w.cols * p.m;
    if (p.m <= cpu::kGemvMaxM && work >= kParallelMinWork) {
#pragma omp parallel for schedule(static)
      for (int64_t h = 0; h < p.n_heads; ++h) one(h);
    } else {
      for (int64_t h = 0; h < p.n_heads; ++h) one(h);
    }
  }

  void GroupedMlp(const GroupedMlpParams& p) override {
    const int64_t I = p.inter;
    for (size_t e = 0; e < p.experts.size(); ++e) {
      const int64_t r0 = p.offsets[e], n = p.offsets[e + 1] - r0;
      if (n <= 0) continue;
      const MlpWeights& w = p.experts[e];
      float* gate = Scratch(mlp_gate_, n * I);  // [n, inter]
      float* up = Scratch(mlp_up_, n * I);
      Linear(p.x + r0 * p.ldx, n, p.ldx, w.gate_proj, gate, I);
      Linear(p.x + r0 * p.ldx, n, p.ldx, w.up_proj, up, I);
      SiluMul(gate, up, n, I, I, gate, I);
      Linear(gate, n, I, w.down_proj, p.out + r0 * p.ldo, p.ldo);
    }
  }

  // ---- Element-wise ----
  void RmsNorm(const float* x, int64_t m, int64_t d, int64_t ldx, const VectorView& gamma, float eps, float* y,
               int64_t ldy) override {
    float* g = Scratch(gamma_, d);
    ConvertToF32(gamma.dtype, gamma.data, g, d);
#pragma omp parallel for schedule(static) if (m * d >= kParallelMinWork)
    for (int64_t i = 0; i < m; ++i) NormRow(x + i * ldx, d, g, eps, y + i * ldy);
  }

  void AddRmsNorm(float* x, const float* h, int64_t m, int64_t d, const VectorView& gamma, float eps,
                  float* xn) override {
    float* g = Scratch(gamma_, d);
    ConvertToF32(gamma.dtype, gamma.data, g, d);
#pragma omp parallel for schedule(static) if (m * d >= kParallelMinWork)
    for (int64_t i = 0; i < m; ++i) {
      float* xi = x + i * d;
      const float* hi = h + i * d;
      for (int64_t c = 0; c < d; ++c) xi[c] += hi[c];
      NormRow(xi, d, g, eps, xn + i * d);
    }
  }

  void Add(float* y, const float* x, int64_t n) override {
#pragma omp parallel for schedule(static) if (n >= 4 * kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void Embedding(const WeightView& table, const int32_t* ids, int64_t m, float* y) override {
    for (int64_t i = 0; i < m; ++i) {
      if (ids[i] < 0 || ids[i] >= table.rows) {
        Fail(absl::OutOfRangeError(absl::StrCat("Embedding: token id ", ids[i], " outside [0, ", table.rows, ")")));
        return;
      }
      cpu::WidenRowsF32(table, ids[i], 1, y + i * table.cols);
    }
  }

  void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride, int64_t head_stride, int64_t dim,
            const int32_t* positions, const float* cos_table, const float* sin_table, RopeLayout layout) override {
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

  // ---- Data movement ----
  void CopyRows(const RowCopy& c) override {
    const bool big = c.n_outer * c.n_inner * c.cols >= kParallelMinWork;
#pragma omp parallel for collapse(2) schedule(static) if (big)
    for (int64_t o = 0; o < c.n_outer; ++o) {
      for (int64_t i = 0; i < c.n_inner; ++i) {
        std::memcpy(c.dst + o * c.dst_outer + i * c.dst_inner, c.src + o * c.src_outer + i * c.src_inner,
                    c.cols * sizeof(float));
      }
    }
  }

  void GatherRows(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, const int32_t* idx, int64_t n,
                  int64_t cols, int32_t idx_div) override {
#pragma omp parallel for schedule(static) if (n * cols >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(dst + i * ld_dst, src + static_cast<int64_t>(idx[i] / idx_div) * ld_src, cols * sizeof(float));
    }
  }

  void ScatterRows(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, const int32_t* idx, int64_t n,
                   int64_t cols) override {
#pragma omp parallel for schedule(static) if (n * cols >= kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(dst + static_cast<int64_t>(idx[i]) * ld_dst, src + i * ld_src, cols * sizeof(float));
    }
  }

  void WeightedSumRows(float* out, const float* rows, const float* weights, int64_t n, int64_t k,
                       int64_t cols) override {
#pragma omp parallel for schedule(static) if (n * k * cols >= kParallelMinWork)
    for (int64_t t = 0; t < n; ++t) {
      float* dst = out + t * cols;
      for (int64_t c = 0; c < cols; ++c) dst[c] = 0.0f;
      for (int64_t i = 0; i < k; ++i) {
        const float wt = weights[t * k + i];
        const float* src = rows + (t * k + i) * cols;
        for (int64_t c = 0; c < cols; ++c) dst[c] += wt * src[c];
      }
    }
  }

  // ---- KV cache ----
  void KvWrite(const KvLayer& kv, const int32_t* slots, int64_t n, const float* src, int64_t ld_src) override {
    const int64_t W = kv.width;
    if (kv.dtype == DType::kF32) {
      float* base = static_cast<float*>(kv.data);
      for (int64_t i = 0; i < n; ++i) std::memcpy(base + slots[i] * W, src + i * ld_src, W * sizeof(float));
    } else if (kv.dtype == DType::kBF16) {
      uint16_t* base = static_cast<uint16_t*>(kv.data);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t* row = base + static_cast<int64_t>(slots[i]) * W;
        const float* s = src + i * ld_src;
        for (int64_t c = 0; c < W; ++c) row[c] = F32ToBf16(s[c]);
      }
    } else {
      Fail(absl::InvalidArgumentError(absl::StrCat("KvWrite: unsupported cache dtype ", DTypeName(kv.dtype))));
    }
  }

  void KvGather(const KvLayer& kv, const int32_t* slots, int64_t n, float* dst, int64_t ld_dst) override {
    const int64_t W = kv.width;
    if (kv.dtype == DType::kF32) {
      const float* base = static_cast<const float*>(kv.data);
      for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * ld_dst, base + slots[i] * W, W * sizeof(float));
    } else if (kv.dtype == DType::kBF16) {
      const uint16_t* base = static_cast<const uint16_t*>(kv.data);
      for (int64_t i = 0; i < n; ++i) {
        ConvertToF32(DType::kBF16, base + static_cast<int64_t>(slots[i]) * W, dst + i * ld_dst, W);
      }
    } else {
      Fail(absl::InvalidArgumentError(absl::StrCat("KvGather: unsupported cache dtype ", DTypeName(kv.dtype))));
    }
  }

  void Attention(const AttentionParams& p) override {
    if (p.n_seqs == 0) return;
    if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0 || (p.block_tables != nullptr && p.block_size <= 0)) {
      Fail(absl::InvalidArgumentError(absl::StrCat("Attention: bad head or block layout (heads ", p.n_heads,
                                                   ", kv heads ", p.n_kv_heads, ", block size ", p.block_size, ")")));
      return;
    }
    if (p.kv_dtype == DType::kF32) {
      AttentionImpl<float>(p);
    } else if (p.kv_dtype == DType::kBF16) {
      AttentionImpl<uint16_t>(p);
    } else {
      Fail(absl::InvalidArgumentError(absl::StrCat("Attention: unsupported KV dtype ", DTypeName(p.kv_dtype))));
    }
  }

  // ---- MoE routing ----
  void RouteTopK(const RouterParams& p, const float* logits, const float* bias, int64_t T, int32_t* ids,
                 float* weights) override {
    cpu::RouteTopK(p, logits, bias, T, ids, weights, route_taken_, route_scratch_);
  }

  void GroupByExpert(const int32_t* ids, int64_t n, int64_t n_experts, int32_t* offsets, int32_t* order) override {
    int32_t* count = Scratch(group_count_, n_experts);
    std::fill(count, count + n_experts, 0);
    for (int64_t s = 0; s < n; ++s) {
      if (ids[s] < 0 || ids[s] >= n_experts) {
        Fail(absl::OutOfRangeError(absl::StrCat("GroupByExpert: expert id ", ids[s], " outside [0, ", n_experts, ")")));
        return;
      }
      ++count[ids[s]];
    }
    offsets[0] = 0;
    for (int64_t e = 0; e < n_experts; ++e) offsets[e + 1] = offsets[e] + count[e];
    std::fill(count, count + n_experts, 0);
    for (int64_t s = 0; s < n; ++s) order[offsets[ids[s]] + count[ids[s]]++] = static_cast<int32_t>(s);
  }

 protected:
  void Free(void* data, int64_t bytes) override { std::free(data); }

 private:
  void Fail(absl::Status s) {
    if (error_.ok()) error_ = std::move(s);
  }

  static void NormRow(const float* xi, int64_t d, const float* g, float eps, float* yi) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < d; ++c) ss += xi[c] * xi[c];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t c = 0; c < d; ++c) yi[c] = g[c] * (xi[c] * r);
  }

  void LinearIn(MathMode mode, const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
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

  template <typename KvT>
  void AttentionImpl(const AttentionParams& p) {
    // One job per (query token, head) over every sequence of the call.
    int64_t n_q = 0, max_kv = p.max_kv;
    for (int64_t s = 0; s < p.n_seqs; ++s) {
      n_q += p.seqs[s].n_q;
      max_kv = std::max<int64_t>(max_kv, p.seqs[s].pos0 + p.seqs[s].n_q);
    }
    int32_t* job_seq = Scratch(job_seq_, n_q);  // query i -> its sequence
    int32_t* job_t = Scratch(job_t_, n_q);      // query i -> its index in the sequence
    for (int64_t s = 0, i = 0; s < p.n_seqs; ++s) {
      for (int32_t t = 0; t < p.seqs[s].n_q; ++t, ++i) job_seq[i] = static_cast<int32_t>(s), job_t[i] = t;
    }
    const int64_t group = p.n_heads / p.n_kv_heads;
    const int nthreads = omp_get_max_threads();
    float* scores_all = Scratch(scores_, nthreads * max_kv);
    const int64_t work = n_q * p.n_heads;
    const KvT* kbase = static_cast<const KvT*>(p.k);
    const KvT* vbase = static_cast<const KvT*>(p.v);
#pragma omp parallel for schedule(dynamic, 1) if (work * max_kv * (p.head_dim_qk + p.head_dim_v) >= (1 << 18))
    for (int64_t job = 0; job < work; ++job) {
      const int64_t qi = job / p.n_heads, h = job % p.n_heads, kh = h / group;
      const AttentionSeq& sq = p.seqs[job_seq[qi]];
      const int64_t t = job_t[qi];
      const int32_t* table = p.block_tables != nullptr ? p.block_tables + sq.kv_begin : nullptr;
      auto kv_row = [&](int64_t j) -> int64_t {
        if (table == nullptr) return sq.kv_begin + j;
        return static_cast<int64_t>(table[j / p.block_size]) * p.block_size + j % p.block_size;
      };
      float* s = scores_all + omp_get_thread_num() * max_kv;
      const float* q = p.q + (sq.q_begin + t) * p.q_token_stride + h * p.q_head_stride;
      const int64_t n_keys = sq.pos0 + t + 1;  // causal
      float mx = -INFINITY;
      for (int64_t j = 0; j < n_keys; ++j) {
        const KvT* k = kbase + kv_row(j) * p.k_token_stride + kh * p.k_head_stride;
        float d = 0.0f;
#pragma omp simd reduction(+ : d)
        for (int64_t c = 0; c < p.head_dim_qk; ++c) d += q[c] * KvLoad(k, c);
        s[j] = d * p.scale;
        mx = std::max(mx, s[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < n_keys; ++j) {
        s[j] = std::exp(s[j] - mx);
        sum += s[j];
      }
      const float inv = 1.0f / sum;
      float* o = p.out + (sq.q_begin + t) * p.out_token_stride + h * p.out_head_stride;
      for (int64_t c = 0; c < p.head_dim_v; ++c) o[c] = 0.0f;
      for (int64_t j = 0; j < n_keys; ++j) {
        const KvT* v = vbase + kv_row(j) * p.v_token_stride + kh * p.v_head_stride;
        const float w = s[j] * inv;
#pragma omp simd
        for (int64_t c = 0; c < p.head_dim_v; ++c) o[c] += w * KvLoad(v, c);
      }
    }
  }

  MathMode mode_;
  absl::Status error_;
  cpu::OneDnnMatmul mm_;
  std::vector<uint16_t> xbf16_, tile_bf16_;
  std::vector<float> tile_f32_, tile_t_, gamma_, scores_, ydense_, mlp_gate_, mlp_up_, route_scratch_;
  std::vector<int32_t> job_seq_, job_t_, group_count_;
  std::vector<char> route_taken_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(MathMode mode, int threads) {
  return std::make_unique<CpuBackend>(mode, threads);
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device, MathMode mode, int threads) {
  if (device == "cpu") return MakeCpuBackend(mode, threads);
  return absl::InvalidArgumentError(
      absl::StrCat("--device ", std::string(device), " is not available in this build (devices: cpu)"));
}

}  // namespace deepshard
