// The compute backend interface: every op the model needs, on raw pointers.
//
// The model (runtime/model) calls only these ops, so a CUDA backend can sit
// beside the CPU one. Ops take plain pointers with explicit row strides and
// never allocate per call once warmed up at a given shape (scratch buffers grow
// monotonically and are reused).
//
// Activations are float32. Weights stay in their stored dtype (WeightView).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

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

// Parameters of causal scaled-dot-product attention over a KV sequence.
//
// Query token t (0 <= t < n_q) sits at absolute position q_pos0 + t and attends
// to KV tokens 0 .. q_pos0 + t (inclusive). Query head h reads KV head
// h / (n_heads / n_kv_heads). Strides are in floats. The same op serves MHA,
// naive MLA (expanded K/V) and absorbed MLA (one latent KV head whose value is
// a prefix of the key row).
struct AttentionParams {
  const float* q = nullptr;
  int64_t q_token_stride = 0, q_head_stride = 0;
  int64_t n_q = 0, n_heads = 0, head_dim_qk = 0;

  const float* k = nullptr;
  int64_t k_token_stride = 0, k_head_stride = 0;
  const float* v = nullptr;
  int64_t v_token_stride = 0, v_head_stride = 0;
  int64_t n_kv = 0, n_kv_heads = 0, head_dim_v = 0;
  // Paged KV (optional): with a block table, KV token j is read at
  //   k + kv_block_table[j / kv_block_size] * kv_block_stride + (j % kv_block_size) * k_token_stride
  // (and the same for v). Without one (nullptr), at k + j * k_token_stride.
  const int32_t* kv_block_table = nullptr;
  int64_t kv_block_size = 0, kv_block_stride = 0;

  int64_t q_pos0 = 0;
  float scale = 1.0f;

  float* out = nullptr;
  int64_t out_token_stride = 0, out_head_stride = 0;
};

// Rotary embedding layout of the rotated dims.
//  kInterleaved: pairs (x[2i], x[2i+1]), as stored in DeepSeek MLA checkpoints.
//  kHalf:        pairs (x[i], x[i + d/2]), LLaMA-style rotate_half.
enum class RopeLayout { kInterleaved, kHalf };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // y[m, w.rows] = x[m, w.cols] · wᵀ. Row strides ldx, ldy (in floats).
  virtual void Linear(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                      int64_t ldy) = 0;
  // Linear in kExact math whatever the backend's mode: for small products whose
  // precision decides discrete choices (the MoE router).
  virtual void LinearExact(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                           int64_t ldy) = 0;
  // y[m, w.cols] = x[m, w.rows] · w  (the weight used untransposed; MLA absorption).
  virtual void LinearT(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                       int64_t ldy) = 0;

  // y = x / sqrt(mean(x²) + eps) * gamma, per row of width d, in f32.
  virtual void RmsNorm(const float* x, int64_t m, int64_t d, int64_t ldx, const VectorView& gamma,
                       float eps, float* y, int64_t ldy) = 0;
  // y[i, :] = table[ids[i], :] widened to f32.
  virtual void Embedding(const WeightView& table, const int32_t* ids, int64_t m, float* y) = 0;
  // Rotates `dim` values at x + t*token_stride + h*head_stride for every token t
  // and head h, by the angles of position positions[t]; cos/sin are tables
  // [max_position, dim/2].
  virtual void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride,
                    int64_t head_stride, int64_t dim, const int32_t* positions,
                    const float* cos_table, const float* sin_table, RopeLayout layout) = 0;
  // out[i, j] = silu(gate[i, j]) * up[i, j] for an [m, n] block (strides in floats).
  virtual void SiluMul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld_in,
                       float* out, int64_t ld_out) = 0;
  virtual void Attention(const AttentionParams& p) = 0;

  virtual MathMode math_mode() const = 0;
  // Sizes internal scratch for attention over up to `max_kv` keys, so that a
  // sequence growing token by token never reallocates.
  virtual void ReserveAttention(int64_t max_kv) = 0;
};

// The oneDNN/AVX-512 CPU backend. `threads` <= 0 uses OpenMP's default.
std::unique_ptr<Backend> MakeCpuBackend(MathMode mode, int threads = 0);

}  // namespace deepshard
