// The compute backend: the memory the model runs in and every op it runs.
//
// The model (runtime/model) owns no arithmetic and no activation memory of its
// own: it allocates Buffers from a Backend, uploads its weights through it, and
// calls only the ops below, so a CUDA backend can sit beside the CPU one.
// tests/runtime/model/backend_seam_test.cc proves it with a backend whose
// memory the model cannot touch.
//
// Conventions:
//  - Pointers given to an op point into this backend's memory (Allocate,
//    Upload), unless the parameter says "host". Strides are in elements.
//  - Activations are float32. Weights stay in their stored dtype (WeightView).
//    The KV cache is f32 or bf16 (KvLayer::dtype).
//  - Ops never allocate per call once warmed up at a shape.
//  - Ops return nothing. A backend may queue them (a GPU stream); the first op
//    that fails (a bad index, a launch error, out of memory) records its error,
//    and Synchronize() returns and clears it. Host code that reads results
//    (CopyToHost) synchronises first.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/buffer.h"
#include "kernels/tensor.h"

namespace deepshard {

// How GEMMs treat low-precision weights.
//  kExact: weights are widened to f32 tile by tile and multiplied in f32; the
//          result matches a float32 reference up to summation order.
//  kFast:  bf16 (and dequantised fp8/f16) weights are multiplied with bf16
//          activations on AMX/AVX-512-BF16 through oneDNN, accumulating in f32.
//          On CPUs without a bf16 matmul (AVX2 only) it behaves as kExact.
//          Decode-sized products (M <= 8) always take the exact GEMV path.
enum class MathMode { kExact, kFast };

// One layer of a KV cache: rows of `width` elements of `dtype` (f32 or bf16);
// row r starts at data + r * width. For a paged cache r = block * block_size +
// slot (the pool is [n_blocks][block_size][width] per layer).
struct KvLayer {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t width = 0;
};

// One sequence of an attention call. Its queries are rows [q_begin, q_begin +
// n_q) of q (and of out); query t sits at position pos0 + t and attends to keys
// 0 .. pos0 + t (causal). Key j lives in KV row
//   paged (block_tables != null): block_tables[kv_begin + j / block_size] * block_size + j % block_size
//   contiguous:                   kv_begin + j
struct AttentionSeq {
  int32_t q_begin = 0, n_q = 0, pos0 = 0, kv_begin = 0;
};

// Causal scaled-dot-product attention over every sequence of a step in one
// call. Query head h reads KV head h / (n_heads / n_kv_heads). K and V rows are
// `kv_dtype` (f32 or bf16) at k + row * k_token_stride + kv_head * k_head_stride
// (the same for v). One op serves MHA, naive MLA (expanded K/V, contiguous) and
// absorbed MLA (one 576-wide latent KV head whose value is a prefix of the key).
struct AttentionParams {
  const float* q = nullptr;
  int64_t q_token_stride = 0, q_head_stride = 0;
  int64_t n_heads = 0, head_dim_qk = 0;

  const void* k = nullptr;
  const void* v = nullptr;
  DType kv_dtype = DType::kF32;
  int64_t k_token_stride = 0, k_head_stride = 0;
  int64_t v_token_stride = 0, v_head_stride = 0;
  int64_t n_kv_heads = 0, head_dim_v = 0;

  const AttentionSeq* seqs = nullptr;  // [n_seqs]
  int64_t n_seqs = 0;
  const int32_t* block_tables = nullptr;  // concatenated per-sequence tables, or null
  int64_t block_size = 0;
  int64_t max_kv = 0;  // the longest sequence's key count (for scratch sizing)

  float scale = 1.0f;
  float* out = nullptr;
  int64_t out_token_stride = 0, out_head_stride = 0;
};

// Rotary embedding layout of the rotated dims.
//  kInterleaved: pairs (x[2i], x[2i+1]), as stored in DeepSeek MLA checkpoints.
//  kHalf:        pairs (x[i], x[i + d/2]), LLaMA-style rotate_half.
enum class RopeLayout { kInterleaved, kHalf };

// A strided block copy of floats: for every (o, i) in [n_outer) x [n_inner),
//   dst[o * dst_outer + i * dst_inner + c] = src[o * src_outer + i * src_inner + c],  c < cols.
// A zero source stride broadcasts (the shared k_pe of MLA into every head).
struct RowCopy {
  float* dst = nullptr;
  const float* src = nullptr;
  int64_t n_outer = 1, n_inner = 1, cols = 0;
  int64_t dst_outer = 0, dst_inner = 0, src_outer = 0, src_inner = 0;
};

// The same linear map applied per head with that head's slice of one weight:
// for h < n_heads, W_h = w.Rows(h * head_row_stride + row_offset, rows_per_head);
//   transposed = false: y_h = x_h · W_hᵀ  (x_h is w.cols wide; MLA's out_lat · W_UVᵀ)
//   transposed = true:  y_h = x_h · W_h   (x_h is rows_per_head wide; MLA's q_nope · W_UK)
// x_h = x + t * ldx + h * x_head_stride, y_h = y + t * ldy + h * y_head_stride.
struct HeadsLinearParams {
  const float* x = nullptr;
  int64_t m = 0, ldx = 0, x_head_stride = 0;
  WeightView w;
  int64_t n_heads = 0, head_row_stride = 0, row_offset = 0, rows_per_head = 0;
  bool transposed = false;
  float* y = nullptr;
  int64_t ldy = 0, y_head_stride = 0;
};

// Top-k expert selection, as DeepSeek's gates define it (runtime/model/moe_router.h
// builds these from a config):
//   scores = softmax(logits) or sigmoid(logits)
//   choice = scores + bias (noaux_tc only; the bias only affects selection)
//   with n_groups > 1: keep the topk_groups groups with the best group score
//     (their max, or the sum of their top-2 choices), mask the others
//   ids = top_k of choice (ties: lowest id); weights = scores[ids],
//   divided by their sum (+1e-20) if normalize, then times scale.
struct RouterParams {
  int64_t n_experts = 0, top_k = 0;
  int64_t n_groups = 1, topk_groups = 1;
  bool sigmoid = false;
  bool group_top2_sum = false;  // noaux_tc group score; else the group's max
  bool normalize = false;
  float scale = 1.0f;
};

// Several SwiGLU experts over rows grouped by expert: rows [offsets[e],
// offsets[e + 1]) of x go through experts[e] into the same rows of out.
// offsets (host memory, experts.size() + 1 entries) are known on the host
// before the call: after routing (one expert group per local expert) or after
// the dispatch count exchange.
struct GroupedMlpParams {
  const float* x = nullptr;
  int64_t ldx = 0;
  std::span<const MlpWeights> experts;
  std::span<const int64_t> offsets;
  int64_t hidden = 0, inter = 0;
  float* out = nullptr;
  int64_t ldo = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  // One line for start-up logs: the device, and for the CPU the kernel level
  // chosen at run time (kernels/cpu/isa.h), threads and math mode.
  virtual std::string Describe() const { return std::string(name()); }
  // The kernel level this backend runs (the CPU's "avx2", "avx512-bf16", ...),
  // for /metrics; empty where the notion does not apply.
  virtual std::string KernelLevel() const { return ""; }
  virtual MathMode math_mode() const = 0;

  // ---- Memory ----------------------------------------------------------------
  virtual MemoryKind memory_kind() const = 0;
  // ResourceExhausted naming `what` when the memory is not there.
  virtual absl::StatusOr<Buffer> Allocate(int64_t bytes, std::string_view what) = 0;
  // A view the ops can read, valid for the backend's life: the CPU backend
  // copies large weights onto huge pages, first touched by the threads that
  // read them (DEEPSHARD_CPU_WEIGHTS=map reads the memory-mapped checkpoint in
  // place instead); a GPU backend copies to device memory it keeps.
  virtual absl::StatusOr<WeightView> Upload(const WeightView& w) = 0;
  virtual absl::StatusOr<VectorView> Upload(const VectorView& v) = 0;
  // A copy of `w` quantised to `target` (DType::kQ8 or kQ4) with `group`
  // columns per scale (kernels/quant.h; w passes CheckQuantizable), valid for
  // the backend's life. Backends without these formats answer Unimplemented.
  virtual absl::StatusOr<WeightView> UploadQuantized(const WeightView& w, DType target, int64_t group) {
    return absl::UnimplementedError(absl::StrCat("the ", std::string(name()), " backend has no quantised weights"));
  }
  // Host -> backend memory (ordered before later ops).
  virtual void CopyFromHost(void* dst, const void* host_src, int64_t bytes) = 0;
  // Backend -> host memory; returns once the bytes are on the host.
  virtual void CopyToHost(void* host_dst, const void* src, int64_t bytes) = 0;
  // Within backend memory (the regions must not overlap).
  virtual void Copy(void* dst, const void* src, int64_t bytes) = 0;
  // Waits for queued ops; returns the first error any op recorded since the
  // last call (and clears it).
  virtual absl::Status Synchronize() = 0;
  // Sizes attention scratch for sequences of up to `max_kv` keys.
  virtual void ReserveAttention(int64_t max_kv) = 0;

  // ---- GEMMs -----------------------------------------------------------------
  // y[m, w.rows] = x[m, w.cols] · wᵀ. Row strides ldx, ldy.
  virtual void Linear(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) = 0;
  // Linear in kExact math whatever the backend's mode: for small products whose
  // precision decides discrete choices (the MoE router).
  virtual void LinearExact(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) = 0;
  // y[m, w.cols] = x[m, w.rows] · w  (the weight used untransposed).
  virtual void LinearT(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) = 0;
  // Every head of a per-head product in one call (MLA's absorption: q_nope · W_UK
  // and out_lat · W_UVᵀ).
  virtual void LinearHeads(const HeadsLinearParams& p) = 0;
  // Every local expert of an MoE layer (or one dense MLP) in one call.
  virtual void GroupedMlp(const GroupedMlpParams& p) = 0;

  // ---- Element-wise ----------------------------------------------------------
  // y = x / sqrt(mean(x²) + eps) * gamma, per row of width d, in f32.
  virtual void RmsNorm(const float* x, int64_t m, int64_t d, int64_t ldx, const VectorView& gamma, float eps,
                       float* y, int64_t ldy) = 0;
  // The residual step: x += h, then xn = RmsNorm(x) ([m, d], dense rows).
  virtual void AddRmsNorm(float* x, const float* h, int64_t m, int64_t d, const VectorView& gamma, float eps,
                          float* xn) = 0;
  // y[i] += x[i], i < n.
  virtual void Add(float* y, const float* x, int64_t n) = 0;
  // y[i, :] = table[ids[i], :] widened to f32. An id outside the table is an error.
  virtual void Embedding(const WeightView& table, const int32_t* ids, int64_t m, float* y) = 0;
  // Rotates `dim` values at x + t*token_stride + h*head_stride for every token t
  // and head h, by the angles of position positions[t]; cos/sin are tables
  // [max_position, dim/2].
  virtual void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride, int64_t head_stride,
                    int64_t dim, const int32_t* positions, const float* cos_table, const float* sin_table,
                    RopeLayout layout) = 0;
  // out[i, j] = silu(gate[i, j]) * up[i, j] for an [m, n] block.
  virtual void SiluMul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld_in, float* out,
                       int64_t ld_out) = 0;

  // ---- Data movement ---------------------------------------------------------
  virtual void CopyRows(const RowCopy& c) = 0;
  // dst[i, :] = src[idx[i] / idx_div, :] for i < n (cols wide).
  virtual void GatherRows(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, const int32_t* idx,
                          int64_t n, int64_t cols, int32_t idx_div) = 0;
  // dst[idx[i], :] = src[i, :] for i < n (idx a permutation of the rows written).
  virtual void ScatterRows(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, const int32_t* idx,
                           int64_t n, int64_t cols) = 0;
  // out[t, :] = Σ_{i<k} weights[t*k + i] · rows[t*k + i, :] for t < n (dense rows).
  virtual void WeightedSumRows(float* out, const float* rows, const float* weights, int64_t n, int64_t k,
                               int64_t cols) = 0;

  // ---- KV cache --------------------------------------------------------------
  // Row slots[i] of the layer = src[i, :] (converted to the cache dtype), i < n.
  virtual void KvWrite(const KvLayer& kv, const int32_t* slots, int64_t n, const float* src, int64_t ld_src) = 0;
  // dst[i, :] = row slots[i] of the layer, widened to f32, i < n.
  virtual void KvGather(const KvLayer& kv, const int32_t* slots, int64_t n, float* dst, int64_t ld_dst) = 0;
  virtual void Attention(const AttentionParams& p) = 0;

  // ---- MoE routing -----------------------------------------------------------
  // ids/weights [T, top_k] from router logits [T, n_experts]; bias: f32
  // [n_experts] or null.
  virtual void RouteTopK(const RouterParams& p, const float* logits, const float* bias, int64_t T, int32_t* ids,
                         float* weights) = 0;
  // Counting sort of n expert ids: offsets[e] .. offsets[e + 1] (n_experts + 1
  // entries) are the positions in `order` of the slots (indices into ids) that
  // chose expert e, in slot order.
  virtual void GroupByExpert(const int32_t* ids, int64_t n, int64_t n_experts, int32_t* offsets,
                             int32_t* order) = 0;

 protected:
  friend class Buffer;
  virtual void Free(void* data, int64_t bytes) = 0;
};

// The CPU backend. `threads` <= 0 uses OpenMP's default. Its kernels are those
// of the best instruction-set level this CPU runs (or DEEPSHARD_CPU_KERNELS's).
std::unique_ptr<Backend> MakeCpuBackend(MathMode mode, int threads = 0);
// The CPU backend on one kernel level (which this CPU must support): tests run
// every level the machine has.
namespace cpu {
enum class CpuIsa;
}
std::unique_ptr<Backend> MakeCpuBackend(MathMode mode, int threads, cpu::CpuIsa isa);

// Where a host backend's threads run (--numa, kernels/cpu/numa.h).
enum class NumaMode {
  kAuto,        // pin one thread per core, node by node, when this rank spans several NUMA nodes
  kDistribute,  // always pin one thread per core
  kOff,         // never pin (the OS schedules the threads)
};
// "auto", "distribute", "off"; InvalidArgument naming --numa and the choices.
absl::StatusOr<NumaMode> ParseNumaMode(std::string_view name);
std::string_view NumaModeName(NumaMode mode);

// The CPU backend's threads: how many, where, and this process's place among
// the ranks on its node (whose cores an unbound rank shares with them).
struct HostThreads {
  int threads = 0;  // 0: one per core of this rank's share (OMP_NUM_THREADS, when set)
  NumaMode numa = NumaMode::kAuto;
  int local_rank = 0, local_size = 1;
};

// The devices this build can run on: "cpu" (and "cuda" when built with it).
// Unknown names are InvalidArgument naming the device and the choices.
// `threads` alone: that many threads (0: OpenMP's default), never pinned.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device, MathMode mode, int threads = 0);
// With a placement: the CPU backend plans and pins its threads (numa.h).
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device, MathMode mode,
                                                     const HostThreads& host);

}  // namespace deepshard
