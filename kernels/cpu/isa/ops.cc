// Element-wise ops and KV-cache row conversion, compiled once per ISA level
// (rules in kernels/cpu/isa/simd.h). Plain loops: the compiler vectorises them
// for the level's flags.
#include <math.h>
#include <omp.h>

#include "kernels/cpu/isa/kernels.h"
#include "kernels/cpu/isa/simd.h"

namespace deepshard::cpu::DS_ISA_NS {
namespace {

// Work (multiply-adds or elements) below which a loop stays on one thread.
constexpr int64_t kParallelMinWork = 1 << 18;

inline void NormRow(const float* xi, int64_t d, const float* g, float eps, float* yi) {
  float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
  for (int64_t c = 0; c < d; ++c) ss += xi[c] * xi[c];
  const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) yi[c] = g[c] * (xi[c] * r);
}

}  // namespace

void RmsNorm(const float* x, int64_t m, int64_t d, int64_t ldx, const float* g, float eps, float* y, int64_t ldy) {
#pragma omp parallel for schedule(static) if (m * d >= kParallelMinWork)
  for (int64_t i = 0; i < m; ++i) NormRow(x + i * ldx, d, g, eps, y + i * ldy);
}

void AddRmsNorm(float* x, const float* h, int64_t m, int64_t d, const float* g, float eps, float* xn) {
#pragma omp parallel for schedule(static) if (m * d >= kParallelMinWork)
  for (int64_t i = 0; i < m; ++i) {
    float* xi = x + i * d;
    const float* hi = h + i * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) xi[c] += hi[c];
    NormRow(xi, d, g, eps, xn + i * d);
  }
}

void Add(float* y, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= 4 * kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride, int64_t head_stride, int64_t dim,
          const int32_t* positions, const float* cos_table, const float* sin_table, RopeLayout layout) {
  const int64_t half = dim / 2;
  const bool inter = layout == RopeLayout::kInterleaved;
  // Pair i is (a, b) = (2i, 2i + 1) interleaved or (i, i + half) halves.
  const int64_t a_step = inter ? 2 : 1, b_off = inter ? 1 : half;
#pragma omp parallel for collapse(2) schedule(static) if (n_tokens * n_heads * dim >= kParallelMinWork)
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t h = 0; h < n_heads; ++h) {
      const float* cs = cos_table + static_cast<int64_t>(positions[t]) * half;
      const float* sn = sin_table + static_cast<int64_t>(positions[t]) * half;
      float* v = x + t * token_stride + h * head_stride;
      for (int64_t i = 0; i < half; ++i) {
        float* a = v + i * a_step;
        float* b = a + b_off;
        const float x0 = *a, x1 = *b;
        *a = x0 * cs[i] - x1 * sn[i];
        *b = x1 * cs[i] + x0 * sn[i];
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld_in, float* out, int64_t ld_out) {
#pragma omp parallel for schedule(static) if (m * n > 65536)
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const float g = gate[i * ld_in + j];
      out[i * ld_out + j] = g / (1.0f + expf(-g)) * up[i * ld_in + j];
    }
  }
}

void WeightedSumRows(float* out, const float* rows, const float* weights, int64_t n, int64_t k, int64_t cols) {
#pragma omp parallel for schedule(static) if (n * k * cols >= kParallelMinWork)
  for (int64_t t = 0; t < n; ++t) {
    float* dst = out + t * cols;
    for (int64_t c = 0; c < cols; ++c) dst[c] = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      const float wt = weights[t * k + i];
      const float* src = rows + (t * k + i) * cols;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) dst[c] += wt * src[c];
    }
  }
}

void KvWriteBf16(uint16_t* base, int64_t width, const int32_t* slots, int64_t n, const float* src, int64_t ld_src) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t* row = base + static_cast<int64_t>(slots[i]) * width;
    const float* s = src + i * ld_src;
    for (int64_t c = 0; c < width; ++c) row[c] = ToBf16(s[c]);
  }
}

void KvGatherBf16(const uint16_t* base, int64_t width, const int32_t* slots, int64_t n, float* dst, int64_t ld_dst) {
  for (int64_t i = 0; i < n; ++i) {
    WidenF32<DType::kBF16>(reinterpret_cast<const uint8_t*>(base + static_cast<int64_t>(slots[i]) * width),
                           dst + i * ld_dst, width, 1.0f);
  }
}

}  // namespace deepshard::cpu::DS_ISA_NS
