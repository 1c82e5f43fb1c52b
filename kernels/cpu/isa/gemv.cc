// Decode products against weights in their stored dtype, compiled once per ISA
// level (see kernels/cpu/isa/simd.h for the rules of these files).
//
// Why hand-written: with M = 1..8 rows a GEMM is a stream over the weights, and
// the cost is the bytes read. oneDNN 2.6 reorders a transposed ("ba") weight
// into its blocked layout on every call, which reads the weights twice; and it
// has no FP8 at all. These kernels read each weight row once, widen it to f32
// in registers (bf16, f16, fp8 e4m3 with block scales) and accumulate in f32
// for all M rows at once, so decode runs at memory bandwidth and matches a
// float32 reference up to summation order. Group-quantised weights (kQ8, kQ4,
// kernels/quant.h) are read the same way: their integers widen exactly to f32
// and each group's sum takes its scale once, so a product still matches the
// float32 reference of the dequantised weight up to summation order (here the
// activations are never quantised; --math fast's integer dot products, which
// quantise them, are in qdot.cc).
#include <omp.h>

#include <type_traits>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/isa/kernels.h"
#include "kernels/cpu/isa/simd.h"

namespace deepshard::cpu::DS_ISA_NS {
namespace {

// Products smaller than this many multiply-adds run on one thread: a parallel
// region costs microseconds, and far more when the machine is oversubscribed
// and a sleeping team member must be woken.
constexpr int64_t kParallelMinWork = 1 << 18;

inline float LoadOne(DType t, const uint8_t* p) {
  float f;
  ConvertToF32(t, p, &f, 1);
  return f;
}

// Dot products of one weight row segment [c0, c1) with M activation rows.
template <DType T, int M>
inline void DotSegment(const uint8_t* wrow, const float* x, int64_t ldx, int64_t c0, int64_t c1, float* out) {
  constexpr int64_t es = T == DType::kF32 ? 4 : (T == DType::kF8E4M3 ? 1 : 2);
  int64_t c = c0;
#if defined(DS_HAVE_SIMD)
  // U independent accumulators per row hide the FMA latency: with one, a
  // single row streams at most one vector per FMA latency.
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
    const float w = LoadOne(T, wrow + c * es);
    for (int i = 0; i < M; ++i) out[i] += w * x[i * ldx + c];
  }
}

// Rows [r0, r1) of y for M activation rows, one weight row at a time.
template <DType T, int M>
void RowsGeneric(const float* x, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t K = w.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wrow = RowPtr(w, r);
    float acc[M];
    if constexpr (T == DType::kF8E4M3) {
      // Sum each scale block separately, then apply its scale.
      for (int i = 0; i < M; ++i) acc[i] = 0.0f;
      const float* srow = ScaleRow(w, r);
      for (int64_t kb = 0; kb * w.block < K; ++kb) {
        float part[M];
        DotSegment<T, M>(wrow, x, ldx, kb * w.block, Min(K, (kb + 1) * w.block), part);
        for (int i = 0; i < M; ++i) acc[i] += part[i] * srow[kb];
      }
    } else {
      DotSegment<T, M>(wrow, x, ldx, 0, K, acc);
    }
    for (int i = 0; i < M; ++i) y[i * ldy + r] = acc[i];
  }
}

// RowsGeneric for kQ8/kQ4 weights: each row dequantised (exactly) a chunk at
// a time into an L1-resident buffer, then the f32 dot products of DotSegment;
// with M >= 2 the dequantisation is shared by the M rows.
template <DType T, int M>
void RowsQ(const float* x, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  constexpr int64_t kChunk = 512;  // a multiple of 32, as DequantF32 needs
  alignas(64) float buf[kChunk];
  const int64_t K = w.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* q = RowPtr(w, r);
    const uint16_t* s = QScaleRow(w, r);
    float acc[M];
    for (int i = 0; i < M; ++i) acc[i] = 0.0f;
    for (int64_t c0 = 0; c0 < K; c0 += kChunk) {
      const int64_t n = Min(kChunk, K - c0);
      DequantF32<T>(q, s, w.group, c0, n, buf);
      float part[M];
      DotSegment<DType::kF32, M>(reinterpret_cast<const uint8_t*>(buf), x + c0, ldx, 0, n, part);
      for (int i = 0; i < M; ++i) acc[i] += part[i];
    }
    for (int i = 0; i < M; ++i) y[i * ldy + r] = acc[i];
  }
}

template <DType T, int M>
void RowsM(const float* x, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (T == DType::kQ8 || T == DType::kQ4) {
    RowsQ<T, M>(x, ldx, w, y, ldy, r0, r1);
  } else {
    RowsGeneric<T, M>(x, ldx, w, y, ldy, r0, r1);
  }
}

#if defined(DS_HAVE_SIMD)
// M = 1 (batch-1 decode), rows [r0, r1): kRowGroup weight rows at a time share
// each activation load and keep that many streams in flight per core, each
// prefetched kPrefetch bytes ahead (measured on a 2-core Sapphire Rapids:
// 8 rows + 512 B reads ~12% faster than 4 rows without prefetch; one core
// cannot saturate memory alone, so the number of reads in flight is what
// counts). FP8 sums each scale block in vector registers and folds it in with
// one FMA per block; the horizontal sums happen once per row.
#if defined(__AVX512F__)
constexpr int kRowGroup = 8;  // 16 accumulators + 2 activations of 32 registers
#else
constexpr int kRowGroup = 4;  // AVX2 has 16 registers
#endif
constexpr int kVecs = 2;  // vectors per row per step
constexpr int kPrefetch = 512;

template <DType T>
void Rows1xG(const float* x, const WeightView& w, float* y, int64_t r0, int64_t r1) {
  constexpr int64_t es = T == DType::kF32 ? 4 : (T == DType::kF8E4M3 ? 1 : 2);
  constexpr int G = kRowGroup;
  const int64_t K = w.cols;
  const bool fp8 = T == DType::kF8E4M3;
  constexpr int64_t step = kVecs * kLanes;
  // FP8 scale blocks must hold whole steps for the blocked sum.
  const int64_t seg = fp8 ? w.block : K;
  if (fp8 && w.block % step != 0) return RowsGeneric<T, 1>(x, 0, w, y, 0, r0, r1);
  int64_t r = r0;
  for (; r + G <= r1; r += G) {
    const uint8_t* p[G];
    VecF tot[G];
    for (int i = 0; i < G; ++i) p[i] = RowPtr(w, r + i), tot[i] = VZero();
    int64_t c = 0;
    for (int64_t kb = 0; c + step <= K; ++kb) {
      VecF a[G][kVecs];
      for (int i = 0; i < G; ++i)
        for (int v = 0; v < kVecs; ++v) a[i][v] = VZero();
      const int64_t end = Min(K, (kb + 1) * seg);
      for (; c + step <= end; c += step) {
        VecF xv[kVecs];
        for (int v = 0; v < kVecs; ++v) xv[v] = VLoadF32(x + c + v * kLanes);
        for (int i = 0; i < G; ++i) {
          _mm_prefetch(reinterpret_cast<const char*>(p[i] + c * es) + kPrefetch, _MM_HINT_T0);
          for (int v = 0; v < kVecs; ++v) a[i][v] = VFma(VLoad<T>(p[i] + (c + v * kLanes) * es), xv[v], a[i][v]);
        }
      }
      for (int i = 0; i < G; ++i) {
        for (int v = 1; v < kVecs; ++v) a[i][0] = VAdd(a[i][0], a[i][v]);
        if constexpr (fp8) {
          tot[i] = VFma(a[i][0], VSet(ScaleRow(w, r + i)[kb]), tot[i]);
        } else {
          tot[i] = a[i][0];
        }
      }
      if (c < end) break;  // a partial vector left in this block: scalar tail below
    }
    for (int i = 0; i < G; ++i) {
      float s = VSum(tot[i]);
      for (int64_t t = c; t < K; ++t) s += LoadOne(T, p[i] + t * es) * x[t] * (fp8 ? ScaleRow(w, r + i)[t / w.block] : 1.0f);
      y[r + i] = s;
    }
  }
  if (r < r1) RowsGeneric<T, 1>(x, 0, w, y, 0, r, r1);
}

// Rows1xG for kQ8/kQ4 weights: the same row groups and prefetch (one per
// 64-byte line of each row). Each group's integers (exact in f32) are summed
// against x in one vector register per row and folded in with one FMA by the
// group's scale; the f16 scales of a stretch of groups are widened up front,
// so that FMA takes its scale straight from memory.
//
// Unlike bf16, int4 is bound by instructions as much as by bytes: per 32
// columns (16 bytes) and row it takes the unpack (4 uops), two multiply-adds
// and, at group 32, the scale's FMA, nearly all on AVX-512's ports 0 and 5:
// ~4 cycles measured, ~15 GB/s of int4 per core even from L2. Hence one
// accumulator per row, started by a multiply (a second one would cost an add
// per group), and no other work in the loop.
template <DType T>
void Rows1xGQ(const float* x, const WeightView& w, float* y, int64_t r0, int64_t r1) {
  constexpr int G = kRowGroup;
  constexpr int kV = 32 / kLanes;  // vectors per 32-column block
  constexpr bool q4 = T == DType::kQ4;
  constexpr int64_t kLineCols = q4 ? 128 : 64;  // columns per 64-byte line
  constexpr int64_t kScaleChunk = 64;           // groups whose scales are widened at once
  const int64_t K = w.cols, group = w.group, groups = K / group;
  // Rows are addressed as one pointer plus i * the row stride: eight row
  // pointers do not fit the 16 general registers with the loop's own, and
  // GCC spills them to vector registers, with moves on the same two ports
  // (~10% slower measured).
  const int64_t rs = RowBytesOf(w.dtype, K);
  int64_t r = r0;
  for (; r + G <= r1; r += G) {
    const uint8_t* p0 = RowPtr(w, r);
    const uint16_t* s[G];
    VecF tot[G];
    for (int i = 0; i < G; ++i) s[i] = QScaleRow(w, r + i), tot[i] = VZero();
    VecF a[G];
    // One 32-column block of every row into a; the group's first block starts
    // a with a multiply (no zeroing).
    auto block = [&](int64_t c, auto first) {
      const uint8_t* pc = p0 + (q4 ? c / 2 : c);
      VecF xv[kV];
#pragma GCC unroll 4
      for (int v = 0; v < kV; ++v) xv[v] = VLoadF32(x + c + v * kLanes);
      const bool line = (c & (kLineCols - 1)) == 0;
#pragma GCC unroll 8
      for (int i = 0; i < G; ++i) {
        const uint8_t* pi = pc + i * rs;
        if (line) _mm_prefetch(reinterpret_cast<const char*>(pi) + kPrefetch, _MM_HINT_T0);
        VecF wv[kV];
        QUnpack32<T>(pi, wv);
        if constexpr (decltype(first)::value) {
          a[i] = VMul(wv[0], xv[0]);
        } else {
          a[i] = VFma(wv[0], xv[0], a[i]);
        }
#pragma GCC unroll 4
        for (int v = 1; v < kV; ++v) a[i] = VFma(wv[v], xv[v], a[i]);
      }
    };
    for (int64_t g0 = 0; g0 < groups; g0 += kScaleChunk) {
      const int64_t gn = Min(kScaleChunk, groups - g0);
      alignas(64) float d[G][kScaleChunk];
      for (int i = 0; i < G; ++i) HalvesToF32(s[i] + g0, gn, d[i]);
      for (int64_t g = 0; g < gn; ++g) {
        const int64_t c0 = (g0 + g) * group;
        block(c0, std::true_type{});
        for (int64_t c = c0 + 32; c < c0 + group; c += 32) block(c, std::false_type{});
#pragma GCC unroll 8
        for (int i = 0; i < G; ++i) tot[i] = VFma(a[i], VSet(d[i][g]), tot[i]);
      }
    }
    for (int i = 0; i < G; ++i) y[r + i] = VSum(tot[i]);
  }
  if (r < r1) RowsQ<T, 1>(x, 0, w, y, 0, r, r1);
}
#endif

#if defined(__AVX512BF16__)
// --math fast, M = 1, bf16 weights: the activation rounded to bf16 once, then
// one VDPBF16PS per 32 weights (a pair product summed in f32) instead of
// widening each weight to f32 and two FMAs: fewer instructions per byte, which
// lets a core keep more reads in flight. Same row groups and prefetch.
void Rows1xGBf16Dot(const uint16_t* xb, const float* x, const WeightView& w, float* y, int64_t r0, int64_t r1) {
  constexpr int G = kRowGroup;
  const int64_t K = w.cols;
  int64_t r = r0;
  for (; r + G <= r1; r += G) {
    const uint16_t* p[G];
    __m512 a[G];
    for (int i = 0; i < G; ++i) p[i] = reinterpret_cast<const uint16_t*>(RowPtr(w, r + i)), a[i] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= K; c += 32) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + c);
      for (int i = 0; i < G; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(p[i] + c) + kPrefetch, _MM_HINT_T0);
        a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)_mm512_loadu_si512(p[i] + c), xv);
      }
    }
    for (int i = 0; i < G; ++i) {
      float s = _mm512_reduce_add_ps(a[i]);
      for (int64_t t = c; t < K; ++t) s += Bf16Bits(p[i][t]) * Bf16Bits(xb[t]);
      y[r + i] = s;
    }
  }
  if (r < r1) RowsGeneric<DType::kBF16, 1>(x, 0, w, y, 0, r, r1);
}
#endif

template <DType T>
void RowsRange(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t r0,
               int64_t r1) {
  switch (m) {
    case 1:
#if defined(DS_HAVE_SIMD)
      if constexpr (T == DType::kQ8 || T == DType::kQ4) {
        return Rows1xGQ<T>(x, w, y, r0, r1);
      } else {
        return Rows1xG<T>(x, w, y, r0, r1);
      }
#else
      return RowsM<T, 1>(x, ldx, w, y, ldy, r0, r1);
#endif
    case 2: return RowsM<T, 2>(x, ldx, w, y, ldy, r0, r1);
    case 3: return RowsM<T, 3>(x, ldx, w, y, ldy, r0, r1);
    case 4: return RowsM<T, 4>(x, ldx, w, y, ldy, r0, r1);
    case 5: return RowsM<T, 5>(x, ldx, w, y, ldy, r0, r1);
    case 6: return RowsM<T, 6>(x, ldx, w, y, ldy, r0, r1);
    case 7: return RowsM<T, 7>(x, ldx, w, y, ldy, r0, r1);
    default: return RowsM<T, 8>(x, ldx, w, y, ldy, r0, r1);
  }
}

}  // namespace

// Serial y rows [r0, r1) in the weight's dtype.
void GemvRowsSerial(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t r0,
                    int64_t r1) {
  switch (w.dtype) {
    case DType::kF32: return RowsRange<DType::kF32>(x, m, ldx, w, y, ldy, r0, r1);
    case DType::kBF16: return RowsRange<DType::kBF16>(x, m, ldx, w, y, ldy, r0, r1);
    case DType::kF16: return RowsRange<DType::kF16>(x, m, ldx, w, y, ldy, r0, r1);
    case DType::kF8E4M3: return RowsRange<DType::kF8E4M3>(x, m, ldx, w, y, ldy, r0, r1);
    case DType::kQ8: return RowsRange<DType::kQ8>(x, m, ldx, w, y, ldy, r0, r1);
    case DType::kQ4: return RowsRange<DType::kQ4>(x, m, ldx, w, y, ldy, r0, r1);
    default: return;  // the backend refuses other dtypes before calling
  }
}

// y[m, c0:c1] = x[m, K] · w[K, c0:c1] on one thread, reading each weight row
// segment once, contiguously (the W_UK absorption: K = 128, N = 512 per head).
void GemvColsSerial(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t c0,
                    int64_t c1) {
  constexpr int64_t kBlock = 512;
  const int64_t K = w.rows, es = ElemSize(w.dtype);
  alignas(64) float acc[kGemvMaxM][kBlock];
  alignas(64) float wrow[kBlock + 64];  // + 64: a quantised segment widened from and to 32-column blocks
  for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
    const int64_t n = Min(kBlock, c1 - b0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < n; ++c) acc[i][c] = 0.0f;
    // The quantised dtypes dequantise whole 32-column blocks (each in one
    // group): [lo, hi) covers [b0, b0 + n), and the segment starts at b0 - lo.
    const int64_t lo = b0 / 32 * 32, hi = Min(w.cols, (b0 + n + 31) / 32 * 32);
    const float* wseg = IsQuant(w.dtype) ? wrow + (b0 - lo) : wrow;
    for (int64_t r = 0; r < K; ++r) {
      const uint8_t* src = RowPtr(w, r) + b0 * es;
      if (IsQuant(w.dtype)) {
        DequantAnyF32(w.dtype, RowPtr(w, r), QScaleRow(w, r), w.group, lo, hi - lo, wrow);
      } else if (w.dtype == DType::kF8E4M3) {
        const float* srow = ScaleRow(w, r);
        for (int64_t c = b0; c < b0 + n;) {  // one scale per block segment
          const int64_t seg_end = Min(b0 + n, (c / w.block + 1) * w.block);
          WidenAnyF32(w.dtype, src + (c - b0), wrow + (c - b0), seg_end - c, srow[c / w.block]);
          c = seg_end;
        }
      } else if (w.dtype == DType::kF32) {
        for (int64_t c = 0; c < n; ++c) wrow[c] = reinterpret_cast<const float*>(src)[c];
      } else {
        WidenAnyF32(w.dtype, src, wrow, n, 1.0f);
      }
      for (int64_t i = 0; i < m; ++i) {
        const float xv = x[i * ldx + r];
        float* a = acc[i];
        int64_t c = 0;
#if defined(DS_HAVE_SIMD)
        const VecF xb = VSet(xv);
        for (; c + kLanes <= n; c += kLanes) VStoreF32(a + c, VFma(VLoadF32(wseg + c), xb, VLoadF32(a + c)));
#endif
        for (; c < n; ++c) a[c] += xv * wseg[c];
      }
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < n; ++c) y[i * ldy + b0 + c] = acc[i][c];
  }
}

void GemvRows(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  if (m == 0 || w.rows == 0) return;
  // One contiguous slab of rows per thread, so each core streams its own
  // region of the weight (the region Upload placed for it).
  ForEachSlab(w.rows, kGemvSlabRows, w.rows * w.cols * m < kParallelMinWork,
              [&](int64_t r0, int64_t r1) { GemvRowsSerial(x, m, ldx, w, y, ldy, r0, r1); });
}

bool GemvRowsFast(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy,
                  uint16_t* xb) {
#if defined(__AVX512BF16__)
  if (m != 1 || w.dtype != DType::kBF16 || w.rows == 0) return false;
  F32ToBf16Rows(x, 1, w.cols, w.cols, xb);
  ForEachSlab(w.rows, kGemvSlabRows, w.rows * w.cols < kParallelMinWork,
              [&](int64_t r0, int64_t r1) { Rows1xGBf16Dot(xb, x, w, y, r0, r1); });
  return true;
#else
  return false;
#endif
}

#if defined(DS_HAVE_SIMD)
// The exact-math GEMM for prefill-sized products (M > kGemvMaxM) of bf16,
// f16 and f32 weights, reading the weight in its stored layout and dtype.
// Why not oneDNN here: given a transposed ("ba") weight it packs that weight
// into its blocked layout on every call, and the f32 path needs the bf16
// weight widened into an f32 tile first: for an MoE expert (M ~ 48 rows) the
// packing and widening cost as much as the multiplication.
//
// Register block: NB weight rows x MB activation rows, one f32 vector
// accumulator per pair over the k lanes (24 of 32 registers on AVX-512),
// reduced once at the end: per k step NB weight loads (widened in registers)
// and MB activation loads feed NB*MB FMAs. Each thread owns a slab of weight
// rows; activations go through in chunks of kGemmChunk rows so a chunk stays
// in L2 while the slab's row blocks pass over it, and a row block (NB rows)
// stays in L1 across the chunk's MB blocks.
#if defined(__AVX512F__)
constexpr int kGemmNB = 4, kGemmMB = 6;
#else
constexpr int kGemmNB = 2, kGemmMB = 4;
#endif
constexpr int64_t kGemmChunk = 96;

template <DType T, int NB, int MB>
void GemmBlock(const float* x, int64_t ldx, const uint8_t* const* w, int64_t K, float* y, int64_t ldy) {
  constexpr int64_t es = T == DType::kF32 ? 4 : 2;
  // The unroll pragmas keep the accumulators in registers: GCC does not
  // unroll these loops at -O2 by itself, and indexed arrays then live in memory.
  VecF acc[MB][NB];
#pragma GCC unroll 8
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) acc[i][n] = VZero();
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    VecF wv[NB];
#pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) wv[n] = VLoad<T>(w[n] + k * es);
#pragma GCC unroll 8
    for (int i = 0; i < MB; ++i) {
      const VecF xv = VLoadF32(x + i * ldx + k);
#pragma GCC unroll 8
      for (int n = 0; n < NB; ++n) acc[i][n] = VFma(wv[n], xv, acc[i][n]);
    }
  }
  for (int i = 0; i < MB; ++i) {
    for (int n = 0; n < NB; ++n) {
      float sum = VSum(acc[i][n]);
      for (int64_t t = k; t < K; ++t) sum += LoadOne(T, w[n] + t * es) * x[i * ldx + t];
      y[i * ldy + n] = sum;
    }
  }
}

// Rows of y for weight rows [r0, r1) of w, all m activation rows.
template <DType T>
void GemmSlab(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t r0,
              int64_t r1) {
  constexpr int NB = kGemmNB, MB = kGemmMB;
  const int64_t K = w.cols;
  for (int64_t c0 = 0; c0 < m; c0 += kGemmChunk) {
    const int64_t c1 = Min(m, c0 + kGemmChunk);
    int64_t r = r0;
    for (; r + NB <= r1; r += NB) {
      const uint8_t* wr[NB];
      for (int n = 0; n < NB; ++n) wr[n] = RowPtr(w, r + n);
      int64_t i = c0;
      for (; i + MB <= c1; i += MB) GemmBlock<T, NB, MB>(x + i * ldx, ldx, wr, K, y + i * ldy + r, ldy);
      for (; i < c1; ++i) GemmBlock<T, NB, 1>(x + i * ldx, ldx, wr, K, y + i * ldy + r, ldy);
    }
    for (; r < r1; ++r) {
      const uint8_t* wr[1] = {RowPtr(w, r)};
      int64_t i = c0;
      for (; i + MB <= c1; i += MB) GemmBlock<T, 1, MB>(x + i * ldx, ldx, wr, K, y + i * ldy + r, ldy);
      for (; i < c1; ++i) GemmBlock<T, 1, 1>(x + i * ldx, ldx, wr, K, y + i * ldy + r, ldy);
    }
  }
}
#endif

bool GemmRows(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
#if defined(DS_HAVE_SIMD)
  if (w.dtype != DType::kBF16 && w.dtype != DType::kF16 && w.dtype != DType::kF32) return false;
  if (m == 0 || w.rows == 0) return true;
  auto slab = [&](int64_t r0, int64_t r1) {
    switch (w.dtype) {
      case DType::kBF16: return GemmSlab<DType::kBF16>(x, m, ldx, w, y, ldy, r0, r1);
      case DType::kF16: return GemmSlab<DType::kF16>(x, m, ldx, w, y, ldy, r0, r1);
      default: return GemmSlab<DType::kF32>(x, m, ldx, w, y, ldy, r0, r1);
    }
  };
  ForEachSlab(w.rows, kGemmNB, w.rows * w.cols * m < kParallelMinWork, slab);
  return true;
#else
  return false;
#endif
}

void GemvBatch(const GemvJob* jobs, int64_t n_jobs) {
  int64_t work = 0;
  for (int64_t j = 0; j < n_jobs; ++j) work += jobs[j].w.rows * jobs[j].w.cols * jobs[j].m;
  // Each thread takes its slab of every job: the rows GemvRows would give it,
  // so the row groups (and the results) are the same, and the rows a thread
  // reads are those Upload placed on its NUMA node (kernels/cpu/numa.h).
  // Rather than one region per product, one region for them all.
  auto run = [&](int t, int nt) {
    for (int64_t j = 0; j < n_jobs; ++j) {
      const GemvJob& b = jobs[j];
      int64_t r0, r1;
      Part(b.w.rows, t, nt, kGemvSlabRows, &r0, &r1);
      if (r0 >= r1) continue;
#if defined(__AVX512BF16__)
      if (b.xb != nullptr && b.m == 1 && b.w.dtype == DType::kBF16) {
        Rows1xGBf16Dot(b.xb, b.x, b.w, b.y, r0, r1);
        continue;
      }
#endif
      if (b.xq != nullptr && IsQuant(b.w.dtype) && b.w.cols % 32 == 0) {
        QDotRowsSerial(b.xq, b.m, b.w, b.y, b.ldy, r0, r1);
        continue;
      }
      GemvRowsSerial(b.x, b.m, b.ldx, b.w, b.y, b.ldy, r0, r1);
    }
  };
  if (work < kParallelMinWork || omp_get_max_threads() == 1) return run(0, 1);
#pragma omp parallel
  run(omp_get_thread_num(), omp_get_num_threads());
}

void GemvCols(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) {
  if (m == 0 || w.cols == 0) return;
  ForEachSlab(w.cols, 64, w.rows * w.cols * m < kParallelMinWork,
              [&](int64_t c0, int64_t c1) { GemvColsSerial(x, m, ldx, w, y, ldy, c0, c1); });
}

void GemvHeads(const HeadsLinearParams& p) {
  if (p.m == 0 || p.n_heads == 0) return;
  auto one = [&p](int64_t h) {
    WeightView wh = p.w;  // p.w.Rows(...) without calling the inline member
    wh.row0 = p.w.row0 + h * p.head_row_stride + p.row_offset;
    wh.rows = p.rows_per_head;
    const float* xh = p.x + h * p.x_head_stride;
    float* yh = p.y + h * p.y_head_stride;
    if (p.transposed) {
      GemvColsSerial(xh, p.m, p.ldx, wh, yh, p.ldy, 0, wh.cols);
    } else {
      GemvRowsSerial(xh, p.m, p.ldx, wh, yh, p.ldy, 0, wh.rows);
    }
  };
  // Each head is computed by the same serial code whatever the thread count,
  // so results do not depend on it.
  const int64_t work = p.n_heads * p.rows_per_head * p.w.cols * p.m;
#pragma omp parallel for schedule(static) if (work >= kParallelMinWork)
  for (int64_t h = 0; h < p.n_heads; ++h) one(h);
}

void WidenRowsF32(const WeightView& w, int64_t r0, int64_t n, float* dst) {
  const int64_t K = w.cols, es = ElemSize(w.dtype);
#pragma omp parallel for schedule(static) if (n * K >= kParallelMinWork)
  for (int64_t r = r0; r < r0 + n; ++r) {
    float* out = dst + (r - r0) * K;
    const uint8_t* src = RowPtr(w, r);
    if (IsQuant(w.dtype)) {
      DequantAnyF32(w.dtype, src, QScaleRow(w, r), w.group, 0, K, out);
    } else if (w.dtype == DType::kF8E4M3) {
      const float* srow = ScaleRow(w, r);
      for (int64_t c0 = 0; c0 < K; c0 += w.block) {
        WidenAnyF32(w.dtype, src + c0 * es, out + c0, Min(w.block, K - c0), srow[c0 / w.block]);
      }
    } else {
      WidenAnyF32(w.dtype, src, out, K, 1.0f);
    }
  }
}

void WidenRowsBf16(const WeightView& w, int64_t r0, int64_t n, uint16_t* dst) {
  const int64_t K = w.cols, es = ElemSize(w.dtype);
  if (w.dtype == DType::kBF16) {
    for (int64_t r = r0; r < r0 + n; ++r) __builtin_memcpy(dst + (r - r0) * K, RowPtr(w, r), K * 2);
    return;
  }
#pragma omp parallel for schedule(static) if (n * K >= kParallelMinWork)
  for (int64_t r = r0; r < r0 + n; ++r) {
    const uint8_t* src = RowPtr(w, r);
    const float* srow = w.dtype == DType::kF8E4M3 ? ScaleRow(w, r) : nullptr;
    uint16_t* out = dst + (r - r0) * K;
    constexpr int64_t kChunk = 128;
    alignas(64) float row[kChunk];
    for (int64_t c0 = 0; c0 < K; c0 += kChunk) {  // a multiple of 32: whole quantised blocks
      const int64_t len = Min(kChunk, K - c0);
      if (IsQuant(w.dtype)) {
        DequantAnyF32(w.dtype, src, QScaleRow(w, r), w.group, c0, len, row);
      } else {
        WidenAnyF32(w.dtype, src + c0 * es, row, len, 1.0f);
      }
      int64_t c = 0;
#if defined(DS_HAVE_SIMD)
      // FP8: with the block a multiple of the lanes (DeepSeek's 128), each
      // vector lies in one scale block (c0 and c are multiples of the lanes).
      const bool vec = srow == nullptr || w.block % kLanes == 0;
      if (vec) {
        for (; c + kLanes <= len; c += kLanes) {
          VecF v = VLoadF32(row + c);
          if (srow != nullptr) v = VMul(v, VSet(srow[(c0 + c) / w.block]));
          VStoreBf16(out + c0 + c, v);
        }
      }
#endif
      for (; c < len; ++c) out[c0 + c] = ToBf16(srow ? row[c] * srow[(c0 + c) / w.block] : row[c]);
    }
  }
}

void F32ToBf16Rows(const float* x, int64_t m, int64_t k, int64_t ldx, uint16_t* y) {
#pragma omp parallel for schedule(static) if (m * k >= kParallelMinWork)
  for (int64_t i = 0; i < m; ++i) {
    int64_t c = 0;
#if defined(DS_HAVE_SIMD)
    for (; c + kLanes <= k; c += kLanes) VStoreBf16(y + i * k + c, VLoadF32(x + i * ldx + c));
#endif
    for (; c < k; ++c) y[i * k + c] = ToBf16(x[i * ldx + c]);
  }
}

float ReadSum(const void* p, int64_t bytes, int streams, int prefetch) {
  const char* base = static_cast<const char*>(p);
  streams = static_cast<int>(Max(1, Min(8, streams)));
  float total = 0.0f;
#pragma omp parallel reduction(+ : total)
  {
    int64_t b0, b1;
    Part(bytes, omp_get_thread_num(), omp_get_num_threads(), 64 << 10, &b0, &b1);
    const int64_t per = (b1 - b0) / streams / 256 * 256;
#if defined(DS_HAVE_SIMD)
    VecF acc[8] = {VZero(), VZero(), VZero(), VZero(), VZero(), VZero(), VZero(), VZero()};
    for (int64_t off = 0; off < per; off += 4 * kLanes * 4) {
      for (int s = 0; s < streams; ++s) {
        const float* q = reinterpret_cast<const float*>(base + b0 + s * per + off);
        if (prefetch > 0) _mm_prefetch(reinterpret_cast<const char*>(q) + prefetch, _MM_HINT_T0);
        const VecF v = VAdd(VAdd(VLoadF32(q), VLoadF32(q + kLanes)), VAdd(VLoadF32(q + 2 * kLanes), VLoadF32(q + 3 * kLanes)));
        acc[s] = VAdd(acc[s], v);
      }
    }
    for (int s = 0; s < streams; ++s) total += VSum(acc[s]);
#else
    for (int s = 0; s < streams; ++s) {
      const float* q = reinterpret_cast<const float*>(base + b0 + s * per);
      float a = 0.0f;
      for (int64_t i = 0; i < per / 4; ++i) a += q[i];
      total += a;
    }
#endif
  }
  return total;
}

}  // namespace deepshard::cpu::DS_ISA_NS
