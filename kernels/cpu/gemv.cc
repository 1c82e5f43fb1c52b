#include "kernels/cpu/gemv.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/simd.h"
#include "base/status_macros.h"

namespace deepshard::cpu {
namespace {

// Products smaller than this many multiply-adds run on one thread: a parallel
// region costs microseconds, and far more when the machine is oversubscribed
// and a sleeping team member must be woken.
constexpr int64_t kParallelMinWork = 1 << 18;

// Scalar widening of one element (tails and non-AVX-512 builds).
inline float LoadOne(DType t, const uint8_t* p) {
  float f;
  ConvertToF32(t, p, &f, 1);
  return f;
}

// Dot products of one weight row segment [c0, c1) with M activation rows.
template <DType T, int M>
inline void DotSegment(const uint8_t* wrow, const float* x, int64_t ldx, int64_t c0, int64_t c1,
                       float* out) {
  constexpr int64_t es = T == DType::kF32 ? 4 : (T == DType::kF8E4M3 ? 1 : 2);
  int64_t c = c0;
#if defined(DS_HAVE_SIMD)
  // U independent accumulators per row hide the FMA latency: with one, a
  // single row streams at most one vector per FMA latency (~12 GB/s of bf16).
  constexpr int U = M <= 2 ? 4 : (M <= 4 ? 2 : 1);
  VecF acc[M][U];
  for (int i = 0; i < M; ++i)
    for (int u = 0; u < U; ++u) acc[i][u] = VZero();
  for (; c + U * kLanes <= c1; c += U * kLanes) {
    for (int u = 0; u < U; ++u) {
      VecF w = VLoad<T>(wrow + (c + u * kLanes) * es);
      for (int i = 0; i < M; ++i) acc[i][u] = VFma(w, VLoadF32(x + i * ldx + c + u * kLanes), acc[i][u]);
    }
  }
  for (; c + kLanes <= c1; c += kLanes) {
    VecF w = VLoad<T>(wrow + c * es);
    for (int i = 0; i < M; ++i) acc[i][0] = VFma(w, VLoadF32(x + i * ldx + c), acc[i][0]);
  }
  for (int i = 0; i < M; ++i) {
    for (int u = 1; u < U; ++u) acc[i][0] = VAdd(acc[i][0], acc[i][u]);
    out[i] = VSum(acc[i][0]);
  }
#else
  for (int i = 0; i < M; ++i) out[i] = 0.0f;
#endif
  for (; c < c1; ++c) {
    float w = LoadOne(T, wrow + c * es);
    for (int i = 0; i < M; ++i) out[i] += w * x[i * ldx + c];
  }
}

template <DType T, int M>
void GemvImpl(const float* x, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  const int64_t K = w.cols;
#pragma omp parallel for schedule(static) if (w.rows * K * M >= kParallelMinWork)
  for (int64_t r = 0; r < w.rows; ++r) {
    const uint8_t* wrow = w.RowPtr(r);
    float acc[M];
    if constexpr (T == DType::kF8E4M3) {
      // Sum each 128-column block separately, then apply its scale.
      for (int i = 0; i < M; ++i) acc[i] = 0.0f;
      const float* srow = w.scale_inv + ((w.row0 + r) / w.block) * w.scale_cols();
      for (int64_t kb = 0; kb * w.block < K; ++kb) {
        float part[M];
        DotSegment<T, M>(wrow, x, ldx, kb * w.block, std::min(K, (kb + 1) * w.block), part);
        for (int i = 0; i < M; ++i) acc[i] += part[i] * srow[kb];
      }
    } else {
      DotSegment<T, M>(wrow, x, ldx, 0, K, acc);
    }
    for (int i = 0; i < M; ++i) y[i * ldy + r] = acc[i];
  }
}

#if defined(DS_HAVE_SIMD)
// M = 1 (batch-1 decode): four weight rows at a time share each activation load
// and give the core four independent streams and eight accumulator chains.
template <DType T>
void Gemv1Rows4(const float* x, const WeightView& w, float* y) {
  constexpr int64_t es = T == DType::kF32 ? 4 : (T == DType::kF8E4M3 ? 1 : 2);
  const int64_t K = w.cols, quads = w.rows / 4;
#pragma omp parallel for schedule(static) if (w.rows * K >= kParallelMinWork)
  for (int64_t q = 0; q < quads; ++q) {
    const uint8_t* p[4] = {w.RowPtr(4 * q), w.RowPtr(4 * q + 1), w.RowPtr(4 * q + 2), w.RowPtr(4 * q + 3)};
    VecF a[4] = {VZero(), VZero(), VZero(), VZero()}, b[4] = {VZero(), VZero(), VZero(), VZero()};
    int64_t c = 0;
    for (; c + 2 * kLanes <= K; c += 2 * kLanes) {
      const VecF x0 = VLoadF32(x + c), x1 = VLoadF32(x + c + kLanes);
      for (int i = 0; i < 4; ++i) {
        a[i] = VFma(VLoad<T>(p[i] + c * es), x0, a[i]);
        b[i] = VFma(VLoad<T>(p[i] + (c + kLanes) * es), x1, b[i]);
      }
    }
    for (int i = 0; i < 4; ++i) {
      float s = VSum(VAdd(a[i], b[i]));
      for (int64_t t = c; t < K; ++t) s += LoadOne(T, p[i] + t * es) * x[t];
      y[4 * q + i] = s;
    }
  }
  for (int64_t r = quads * 4; r < w.rows; ++r) DotSegment<T, 1>(w.RowPtr(r), x, 0, 0, K, y + r);
}
#endif

template <DType T>
void GemvDispatchM(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                   int64_t ldy) {
  switch (m) {
    case 1:
#if defined(DS_HAVE_SIMD)
      if constexpr (T != DType::kF8E4M3) return Gemv1Rows4<T>(x, w, y);
#endif
      return GemvImpl<T, 1>(x, ldx, w, y, ldy);
    case 2: return GemvImpl<T, 2>(x, ldx, w, y, ldy);
    case 3: return GemvImpl<T, 3>(x, ldx, w, y, ldy);
    case 4: return GemvImpl<T, 4>(x, ldx, w, y, ldy);
    case 5: return GemvImpl<T, 5>(x, ldx, w, y, ldy);
    case 6: return GemvImpl<T, 6>(x, ldx, w, y, ldy);
    case 7: return GemvImpl<T, 7>(x, ldx, w, y, ldy);
    case 8: return GemvImpl<T, 8>(x, ldx, w, y, ldy);
    default: DS_CHECK(false && "GemvRows: m out of range");
  }
}

}  // namespace

void GemvRows(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  if (m == 0 || w.rows == 0) return;
  switch (w.dtype) {
    case DType::kF32: return GemvDispatchM<DType::kF32>(x, m, ldx, w, y, ldy);
    case DType::kBF16: return GemvDispatchM<DType::kBF16>(x, m, ldx, w, y, ldy);
    case DType::kF16: return GemvDispatchM<DType::kF16>(x, m, ldx, w, y, ldy);
    case DType::kF8E4M3:
      DS_CHECK(w.scale_inv != nullptr);
      return GemvDispatchM<DType::kF8E4M3>(x, m, ldx, w, y, ldy);
    default: DS_CHECK(false && "GemvRows: unsupported weight dtype");
  }
}

void GemvCols(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  DS_CHECK(m <= kGemvMaxM);
  const int64_t K = w.rows, N = w.cols;
  const int64_t es = DTypeSize(w.dtype);
  constexpr int64_t kColBlock = 64;
  const int64_t n_blocks = (N + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (K * N * m >= kParallelMinWork)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t c0 = b * kColBlock, c1 = std::min(N, c0 + kColBlock);
    float acc[kGemvMaxM][kColBlock];
    float wrow[kColBlock];
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < c1 - c0; ++c) acc[i][c] = 0.0f;
    for (int64_t r = 0; r < K; ++r) {
      if (w.dtype == DType::kF8E4M3) {
        // Split the chunk at FP8 block edges: one scale per segment.
        const float* srow = w.scale_inv + ((w.row0 + r) / w.block) * w.scale_cols();
        for (int64_t c = c0; c < c1;) {
          const int64_t seg_end = std::min(c1, (c / w.block + 1) * w.block);
          WidenAnyF32(w.dtype, w.RowPtr(r) + c * es, wrow + (c - c0), seg_end - c, srow[c / w.block]);
          c = seg_end;
        }
      } else {
        WidenAnyF32(w.dtype, w.RowPtr(r) + c0 * es, wrow, c1 - c0, 1.0f);
      }
      for (int64_t i = 0; i < m; ++i) {
        const float xv = x[i * ldx + r];
        for (int64_t c = 0; c < c1 - c0; ++c) acc[i][c] += xv * wrow[c];
      }
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = c0; c < c1; ++c) y[i * ldy + c] = acc[i][c - c0];
  }
}

void WidenRowsF32(const WeightView& w, int64_t r0, int64_t n, float* dst) {
  const int64_t K = w.cols, es = DTypeSize(w.dtype);
#pragma omp parallel for schedule(static) if (n * K >= kParallelMinWork)
  for (int64_t r = r0; r < r0 + n; ++r) {
    float* out = dst + (r - r0) * K;
    const uint8_t* src = w.RowPtr(r);
    if (w.dtype == DType::kF8E4M3) {
      const float* srow = w.scale_inv + ((w.row0 + r) / w.block) * w.scale_cols();
      for (int64_t c0 = 0; c0 < K; c0 += w.block) {
        WidenAnyF32(w.dtype, src + c0 * es, out + c0, std::min(w.block, K - c0), srow[c0 / w.block]);
      }
    } else {
      WidenAnyF32(w.dtype, src, out, K, 1.0f);
    }
  }
}

void WidenRowsBf16(const WeightView& w, int64_t r0, int64_t n, uint16_t* dst) {
  const int64_t K = w.cols;
  if (w.dtype == DType::kBF16) {
    for (int64_t r = r0; r < r0 + n; ++r) std::memcpy(dst + (r - r0) * K, w.RowPtr(r), K * 2);
    return;
  }
#pragma omp parallel
  {
    std::vector<float> row(K);  // per-thread, only on the tiled (prefill) path
#pragma omp for schedule(static)
    for (int64_t r = r0; r < r0 + n; ++r) {
      ConvertToF32(w.dtype, w.RowPtr(r), row.data(), K);
      const float* srow = w.dtype == DType::kF8E4M3
                              ? w.scale_inv + ((w.row0 + r) / w.block) * w.scale_cols()
                              : nullptr;
      uint16_t* out = dst + (r - r0) * K;
      for (int64_t c = 0; c < K; ++c) out[c] = F32ToBf16(srow ? row[c] * srow[c / w.block] : row[c]);
    }
  }
}

}  // namespace deepshard::cpu
