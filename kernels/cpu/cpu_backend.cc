// The CPU backend: oneDNN GEMMs for prefill; everything else through the
// kernel table of one instruction-set level (kernels/cpu/cpu_kernels.h), chosen
// when the backend is made. Its memory is host memory, so Upload is free
// (weights are read from the memory-mapped checkpoint in place) and copies are
// memcpy.
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <utility>
#include <vector>

#include "base/checked_math.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/numa.h"
#include "kernels/cpu/onednn_matmul.h"
#include "kernels/cpu/router.h"
#include "kernels/quant.h"

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

class CpuBackend final : public Backend {
 public:
  CpuBackend(MathMode mode, int threads, cpu::CpuIsa isa) : mode_(mode), k_(*cpu::CpuKernelsFor(isa)) {
    if (threads > 0) omp_set_num_threads(threads);
    Init();
  }
  // Threads planned and pinned (kernels/cpu/numa.h) before any weight is
  // uploaded: Upload's first touch then lands each slab on its reader's node.
  CpuBackend(MathMode mode, const HostThreads& host, cpu::CpuIsa isa)
      : mode_(mode), k_(*cpu::CpuKernelsFor(isa)) {
    placement_ = cpu::PlaceCpuThreads(host).summary;
    Init();
  }
  void Init() {
    const char* weights = std::getenv("DEEPSHARD_CPU_WEIGHTS");
    copy_weights_ = weights == nullptr || std::string_view(weights) != "map";
  }
  ~CpuBackend() override {
    for (const auto& [p, len] : copies_) munmap(p, len);
  }
  std::string_view name() const override { return "cpu"; }
  std::string KernelLevel() const override { return std::string(cpu::CpuIsaName(k_.isa)); }
  std::string Describe() const override {
    size_t copied = 0;
    for (const auto& c : copies_) copied += c.second;
    return absl::StrCat("cpu: ", cpu::DescribeCpuKernels(k_.isa), ", ",
                        placement_.empty() ? absl::StrCat(omp_get_max_threads(), " threads") : placement_, ", ",
                        mode_ == MathMode::kFast ? "fast" : "exact", " math, ",
                        copy_weights_ ? absl::StrCat(GbText(copied), " of weights on huge pages")
                                      : std::string("weights read from the mapping"),
                        quantized_bytes_ > 0 ? absl::StrCat(" (", GbText(quantized_bytes_), " quantised)") : "");
  }
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
  // Large weights are copied out of the checkpoint's page-cache mapping (4 KiB
  // pages) into anonymous memory on transparent huge pages, each slab of rows
  // first touched by the thread whose GEMV slab it is (so on a multi-socket
  // machine it lands on that thread's node): the batch-1 GEMV reads ~10%
  // faster from huge pages (docs/benchmarks.md). DEEPSHARD_CPU_WEIGHTS=map
  // reads the mapping in place instead (no copy, no extra resident memory).
  absl::StatusOr<WeightView> Upload(const WeightView& w) override {
    if (!copy_weights_ || w.bytes() < kCopyMinBytes || (w.dtype == DType::kF8E4M3 && w.row0 != 0)) return w;
    const int64_t row_bytes = RowBytes(w.dtype, w.cols);
    if (absl::Status st = CheckFitsInMemory(w.bytes(), "a weight copy"); !st.ok()) return w;
    const size_t len = static_cast<size_t>((w.bytes() + kHugePage - 1) / kHugePage * kHugePage);
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return w;  // keep reading the mapping
#if defined(MADV_HUGEPAGE)
    madvise(p, len, MADV_HUGEPAGE);
#endif
    const uint8_t* src = w.RowPtr(0);
    uint8_t* dst = static_cast<uint8_t*>(p);
    ForEachGemvSlab(w.rows, /*parallel=*/true, [&](int64_t r0, int64_t r1) {
      std::memcpy(dst + r0 * row_bytes, src + r0 * row_bytes, (r1 - r0) * row_bytes);
    });
    copies_.push_back({p, len});
    WeightView out = w;
    out.data = p;
    out.row0 = 0;  // the copy starts at the view's first row (FP8 views here start at 0)
    return out;
  }
  absl::StatusOr<VectorView> Upload(const VectorView& v) override { return v; }
  // Quantised copies live on huge pages like the other copies, each GEMV slab
  // of rows quantised (and so first touched) by the thread that reads it.
  absl::StatusOr<WeightView> UploadQuantized(const WeightView& w, DType target, int64_t group) override {
    RETURN_IF_ERROR(CheckQuantizable(w, group));
    if (target != DType::kQ8 && target != DType::kQ4) {
      return absl::InvalidArgumentError(absl::StrCat("UploadQuantized: ", DTypeName(target), " is not a quantised format"));
    }
    const int64_t row_bytes = RowBytes(target, w.cols), groups = w.cols / group;
    const int64_t data_bytes = (w.rows * row_bytes + kAlign - 1) / kAlign * kAlign;
    const int64_t total = data_bytes + w.rows * groups * 2;
    RETURN_IF_ERROR(CheckFitsInMemory(total, "a quantised weight"));
    // Small weights on 4 KiB pages: a 2 MiB page each would waste most of it.
    const int64_t page = total >= kCopyMinBytes ? kHugePage : 4096;
    const size_t len = static_cast<size_t>((total + page - 1) / page * page);
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("out of host memory for a quantised weight (", total, " bytes)"));
    }
#if defined(MADV_HUGEPAGE)
    if (total >= kCopyMinBytes) madvise(p, len, MADV_HUGEPAGE);
#endif
    uint8_t* q = static_cast<uint8_t*>(p);
    uint16_t* scales = reinterpret_cast<uint16_t*>(q + data_bytes);
    ForEachGemvSlab(w.rows, /*parallel=*/w.rows * w.cols >= (1 << 16), [&](int64_t r0, int64_t r1) {
      QuantizeRows(w, r0, r1, target, group, q + r0 * row_bytes, scales + r0 * groups);
    });
    copies_.push_back({p, len});
    quantized_bytes_ += static_cast<size_t>(total);
    WeightView out;
    out.dtype = target;
    out.data = q;
    out.rows = w.rows;
    out.cols = w.cols;
    out.qscale = scales;
    out.group = group;
    return out;
  }
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
  // Attention's scratch does not grow with the context (key tiles).
  void ReserveAttention(int64_t max_kv) override {}

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
      k_.gemv_cols(x, m, ldx, w, y, ldy);
      return;
    }
    const float* wf;
    if (w.dtype == DType::kF32) {
      wf = reinterpret_cast<const float*>(w.RowPtr(0));
    } else {
      float* buf = Scratch(tile_t_, w.rows * w.cols);
      k_.widen_rows_f32(w, 0, w.rows, buf);
      wf = buf;
    }
    // x[m, rows] · w[rows, cols]: w is B[k = rows, n = cols] untransposed.
    mm_.F32(x, m, w.rows, ldx, wf, w.cols, w.cols, false, y, ldy);
  }

  void LinearHeads(const HeadsLinearParams& p) override {
    if (p.m == 0 || p.n_heads == 0) return;
    if (p.m <= cpu::kGemvMaxM) {
      k_.gemv_heads(p);  // decode: every head in one parallel pass
      return;
    }
    for (int64_t h = 0; h < p.n_heads; ++h) {
      const WeightView wh = p.w.Rows(h * p.head_row_stride + p.row_offset, p.rows_per_head);
      const float* xh = p.x + h * p.x_head_stride;
      float* yh = p.y + h * p.y_head_stride;
      if (p.transposed) {
        LinearT(xh, p.m, p.ldx, wh, yh, p.ldy);
      } else {
        Linear(xh, p.m, p.ldx, wh, yh, p.ldy);
      }
    }
  }

  void GroupedMlp(const GroupedMlpParams& p) override {
    const int64_t I = p.inter;
    bool decode = true;
    for (size_t e = 0; e < p.experts.size(); ++e) decode = decode && p.offsets[e + 1] - p.offsets[e] <= cpu::kGemvMaxM;
    if (decode) return GroupedMlpDecode(p);
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

  // Decode-sized groups: every expert's gate and up products in one parallel
  // region, one SiLU over all their rows, every down product in a second
  // region (gemv_batch), instead of three regions per expert. The same row
  // results as three Linear calls per expert.
  void GroupedMlpDecode(const GroupedMlpParams& p) {
    const int64_t I = p.inter, H = p.hidden, n_e = static_cast<int64_t>(p.experts.size());
    const int64_t first = p.offsets[0], rows = p.offsets[n_e] - first;
    if (rows <= 0) return;
    float* gate = Scratch(mlp_gate_, rows * I);  // [rows, inter], row r - first
    float* up = Scratch(mlp_up_, rows * I);
    const bool fast = mode_ == MathMode::kFast;
    // Fast math: activations rounded to bf16 for bf16 experts' bf16 dot
    // products (single-row experts), or quantised to int8 for quantised
    // experts' integer ones (GemvJob).
    const bool qdot = fast && IsQuantized(p.experts[0].gate_proj.dtype) && H % 32 == 0 && I % 32 == 0;
    uint16_t* xb = nullptr;
    uint8_t* xq = nullptr;
    const int64_t qh = cpu::QActBytes(H), qi = cpu::QActBytes(I);
    if (qdot) {
      xq = Scratch(xq_, rows * std::max(qh, qi));
      for (int64_t r = 0; r < rows; ++r) k_.quantize_act(p.x + (first + r) * p.ldx, H, xq + r * qh);
    } else if (fast) {
      xb = Scratch(xbf16_, rows * std::max(H, I));
      k_.f32_to_bf16_rows(p.x + first * p.ldx, rows, H, p.ldx, xb);
    }
    std::vector<cpu::GemvJob>& jobs = gemv_jobs_;
    jobs.clear();
    for (int64_t e = 0; e < n_e; ++e) {
      const int64_t r0 = p.offsets[e] - first, n = p.offsets[e + 1] - p.offsets[e];
      if (n <= 0) continue;
      const MlpWeights& w = p.experts[e];
      const float* x = p.x + (first + r0) * p.ldx;
      const uint16_t* xe = xb != nullptr && n == 1 ? xb + r0 * H : nullptr;
      const uint8_t* qe = xq != nullptr ? xq + r0 * qh : nullptr;
      jobs.push_back({x, n, p.ldx, w.gate_proj, gate + r0 * I, I, xe, qe});
      jobs.push_back({x, n, p.ldx, w.up_proj, up + r0 * I, I, xe, qe});
    }
    k_.gemv_batch(jobs.data(), static_cast<int64_t>(jobs.size()));
    k_.silu_mul(gate, up, rows, I, I, gate, I);
    if (qdot) {
      for (int64_t r = 0; r < rows; ++r) k_.quantize_act(gate + r * I, I, xq + r * qi);
    } else if (fast) {
      k_.f32_to_bf16_rows(gate, rows, I, I, xb);
    }
    jobs.clear();
    for (int64_t e = 0; e < n_e; ++e) {
      const int64_t r0 = p.offsets[e] - first, n = p.offsets[e + 1] - p.offsets[e];
      if (n <= 0) continue;
      jobs.push_back({gate + r0 * I, n, I, p.experts[e].down_proj, p.out + (first + r0) * p.ldo, p.ldo,
                      xb != nullptr && n == 1 ? xb + r0 * I : nullptr,
                      xq != nullptr ? xq + r0 * qi : nullptr});
    }
    k_.gemv_batch(jobs.data(), static_cast<int64_t>(jobs.size()));
  }

  // ---- Element-wise ----
  void RmsNorm(const float* x, int64_t m, int64_t d, int64_t ldx, const VectorView& gamma, float eps, float* y,
               int64_t ldy) override {
    k_.rms_norm(x, m, d, ldx, Gamma(gamma, d), eps, y, ldy);
  }

  void AddRmsNorm(float* x, const float* h, int64_t m, int64_t d, const VectorView& gamma, float eps,
                  float* xn) override {
    k_.add_rms_norm(x, h, m, d, Gamma(gamma, d), eps, xn);
  }

  void Add(float* y, const float* x, int64_t n) override { k_.add(y, x, n); }

  void Embedding(const WeightView& table, const int32_t* ids, int64_t m, float* y) override {
    for (int64_t i = 0; i < m; ++i) {
      if (ids[i] < 0 || ids[i] >= table.rows) {
        Fail(absl::OutOfRangeError(absl::StrCat("Embedding: token id ", ids[i], " outside [0, ", table.rows, ")")));
        return;
      }
      k_.widen_rows_f32(table, ids[i], 1, y + i * table.cols);
    }
  }

  void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride, int64_t head_stride, int64_t dim,
            const int32_t* positions, const float* cos_table, const float* sin_table, RopeLayout layout) override {
    k_.rope(x, n_tokens, n_heads, token_stride, head_stride, dim, positions, cos_table, sin_table, layout);
  }

  void SiluMul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld_in, float* out,
               int64_t ld_out) override {
    k_.silu_mul(gate, up, m, n, ld_in, out, ld_out);
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
    k_.weighted_sum_rows(out, rows, weights, n, k, cols);
  }

  // ---- KV cache ----
  void KvWrite(const KvLayer& kv, const int32_t* slots, int64_t n, const float* src, int64_t ld_src) override {
    const int64_t W = kv.width;
    if (kv.dtype == DType::kF32) {
      float* base = static_cast<float*>(kv.data);
      for (int64_t i = 0; i < n; ++i) std::memcpy(base + slots[i] * W, src + i * ld_src, W * sizeof(float));
    } else if (kv.dtype == DType::kBF16) {
      k_.kv_write_bf16(static_cast<uint16_t*>(kv.data), W, slots, n, src, ld_src);
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
      k_.kv_gather_bf16(static_cast<const uint16_t*>(kv.data), W, slots, n, dst, ld_dst);
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
    if (p.kv_dtype != DType::kF32 && p.kv_dtype != DType::kBF16) {
      Fail(absl::InvalidArgumentError(absl::StrCat("Attention: unsupported KV dtype ", DTypeName(p.kv_dtype))));
      return;
    }
    float* scratch = Scratch(attn_scratch_, k_.attention_scratch(p, omp_get_max_threads()));
    k_.attention(p, scratch);
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

  // f(r0, r1) on each thread's slab of `rows` weight rows: the GEMV's
  // partition (kGemvSlabRows), so a copy made here is first touched by the
  // thread that will stream it. On this thread alone unless `parallel`.
  template <typename F>
  static void ForEachGemvSlab(int64_t rows, bool parallel, F&& f) {
#pragma omp parallel if (parallel)
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t g = cpu::kGemvSlabRows, units = (rows + g - 1) / g;
      const int64_t r0 = std::min(rows, units * t / nt * g), r1 = std::min(rows, units * (t + 1) / nt * g);
      if (r1 > r0) f(r0, r1);
    }
  }

  // "1.23 GB", or "45.6 MB" below 0.1 GB.
  static std::string GbText(size_t bytes) {
    char buf[32];
    if (bytes < 100'000'000) {
      std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(bytes) / 1e6);
    } else {
      std::snprintf(buf, sizeof buf, "%.2f GB", static_cast<double>(bytes) / 1e9);
    }
    return buf;
  }

  // The norm weights widened to f32 (gamma may be stored in bf16).
  const float* Gamma(const VectorView& gamma, int64_t d) {
    float* g = Scratch(gamma_, d);
    ConvertToF32(gamma.dtype, gamma.data, g, d);
    return g;
  }

  void LinearIn(MathMode mode, const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
    if (m == 0 || w.rows == 0) return;
    const int64_t K = w.cols;
    if (m <= cpu::kGemvMaxM) {
      if (mode == MathMode::kFast && IsQuantized(w.dtype) && K % 32 == 0) {
        // Integer dot products on the activations quantised to int8 (cpu_kernels.h).
        const int64_t qk = cpu::QActBytes(K);
        uint8_t* xq = Scratch(xq_, m * qk);
        for (int64_t i = 0; i < m; ++i) k_.quantize_act(x + i * ldx, K, xq + i * qk);
        if (k_.gemv_rows_qdot(xq, m, w, y, ldy)) return;
      }
      if (mode == MathMode::kFast && k_.gemv_rows_fast(x, m, ldx, w, y, ldy, Scratch(xbf16_, K))) return;
      k_.gemv_rows(x, m, ldx, w, y, ldy);
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
      k_.f32_to_bf16_rows(x, m, K, ldx, xb);
      const int64_t tile_rows = w.dtype == DType::kBF16 ? w.rows : kTileRows;
      float* yd = Scratch(ydense_, m * std::min(tile_rows, w.rows));
      uint16_t* tile = w.dtype == DType::kBF16 ? nullptr : Scratch(tile_bf16_, kTileRows * K);
      for (int64_t n0 = 0; n0 < w.rows; n0 += tile_rows) {
        const int64_t nt = std::min(tile_rows, w.rows - n0);
        const uint16_t* wt = reinterpret_cast<const uint16_t*>(w.RowPtr(n0));
        if (tile != nullptr) {
          k_.widen_rows_bf16(w, n0, nt, tile);
          wt = tile;
        }
        mm_.Bf16(xb, m, K, K, wt, nt, K, true, yd, nt);
        for (int64_t i = 0; i < m; ++i) std::memcpy(y + i * ldy + n0, yd + i * nt, nt * sizeof(float));
      }
      return;
    }
    // Exact products of bf16/f16 weights: our GEMM reads them as stored
    // (cpu_kernels.h); fp8, quantised, and levels without SIMD widen tiles
    // for oneDNN.
    if (k_.gemm_rows(x, m, ldx, w, y, ldy)) return;
    float* tile = Scratch(tile_f32_, kTileRows * K);
    for (int64_t n0 = 0; n0 < w.rows; n0 += kTileRows) {
      const int64_t nt = std::min(kTileRows, w.rows - n0);
      k_.widen_rows_f32(w, n0, nt, tile);
      mm_.F32(x, m, K, ldx, tile, nt, K, true, y + n0, ldy);
    }
  }

  static constexpr int64_t kCopyMinBytes = 2 << 20;  // smaller weights stay mapped
  static constexpr int64_t kHugePage = 2 << 20;

  MathMode mode_;
  const cpu::CpuKernels& k_;
  bool copy_weights_ = true;
  std::vector<std::pair<void*, size_t>> copies_;  // anonymous weight copies, unmapped with the backend
  size_t quantized_bytes_ = 0;                      // of which quantised (values and scales)
  absl::Status error_;
  cpu::OneDnnMatmul mm_;
  std::string placement_;  // the thread plan's summary (empty: made with a bare thread count)
  std::vector<uint16_t> xbf16_, tile_bf16_;
  std::vector<uint8_t> xq_;  // quantised activations (cpu::QActBytes per row)
  std::vector<float> tile_f32_, tile_t_, gamma_, attn_scratch_, ydense_, mlp_gate_, mlp_up_, route_scratch_;
  std::vector<int32_t> group_count_;
  std::vector<cpu::GemvJob> gemv_jobs_;
  std::vector<char> route_taken_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(MathMode mode, int threads) {
  return std::make_unique<CpuBackend>(mode, threads, cpu::ActiveCpuKernels().isa);
}

std::unique_ptr<Backend> MakeCpuBackend(MathMode mode, int threads, cpu::CpuIsa isa) {
  DS_CHECK(cpu::CpuSupports(isa) && "MakeCpuBackend: this CPU cannot run the requested kernels");
  return std::make_unique<CpuBackend>(mode, threads, isa);
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device, MathMode mode, int threads) {
  if (device == "cpu") {
    ASSIGN_OR_RETURN(cpu::CpuIsa isa, cpu::SelectCpuIsa());
    return MakeCpuBackend(mode, threads, isa);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device ", std::string(device), " is not available in this build (devices: cpu)"));
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device, MathMode mode,
                                                     const HostThreads& host) {
  if (device == "cpu") {
    ASSIGN_OR_RETURN(cpu::CpuIsa isa, cpu::SelectCpuIsa());
    return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(mode, host, isa));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device ", std::string(device), " is not available in this build (devices: cpu)"));
}

}  // namespace deepshard
