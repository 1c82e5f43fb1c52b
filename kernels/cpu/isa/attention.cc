// Causal attention over a (paged) KV cache, compiled once per ISA level (rules
// in kernels/cpu/isa/simd.h).
//
// A job is up to kMaxRows query rows that read the same keys: several query
// heads of one KV head (absorbed MLA decode has 16-128 heads on one latent KV
// head; GQA has a few), or several consecutive queries of one head (prefill).
// Keys are taken in tiles of kTile rows: each row is read from memory once per
// job for all of the job's query rows (scores), then again from L1/L2 for the
// outputs, with the softmax kept online (a running max and sum per query row,
// rescaling the partial output when the max grows), so scratch does not grow
// with the context.
#include <math.h>
#include <omp.h>

#include "kernels/cpu/isa/kernels.h"
#include "kernels/cpu/isa/simd.h"

namespace deepshard::cpu::DS_ISA_NS {
namespace {

constexpr int64_t kTile = 64;
constexpr int64_t kMaxRows = 16;

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename KvT>
inline float LoadKv1(const KvT* p) {
  if constexpr (sizeof(KvT) == 4) {
    return p[0];
  } else {
    return Bf16Bits(p[0]);
  }
}
#if defined(DS_HAVE_SIMD)
template <typename KvT>
inline VecF LoadKv(const KvT* p) {
  if constexpr (sizeof(KvT) == 4) {
    return VLoadF32(p);
  } else {
    return VLoad<DType::kBF16>(reinterpret_cast<const uint8_t*>(p));
  }
}
#endif

// How a call is cut into jobs: each job is one block of `qb` queries of one
// sequence, one KV head and one block of `hb` of that head's query heads.
struct Plan {
  int64_t qb = 1, hb = 1, n_hb = 1;
};

Plan MakePlan(const AttentionParams& p, int64_t n_q, int threads) {
  Plan pl;
  const int64_t group = p.n_heads / p.n_kv_heads;
  if (group == 1) {
    pl.qb = kMaxRows;  // prefill: consecutive queries share their keys
    return pl;
  }
  pl.n_hb = (group + kMaxRows - 1) / kMaxRows;
  // Too few jobs to keep every thread busy (batch-1 decode on a latent head):
  // cut the heads finer; each block reads the keys once.
  const int64_t jobs = n_q * p.n_kv_heads * pl.n_hb;
  if (jobs < threads) pl.n_hb = Min(group, (threads + n_q * p.n_kv_heads - 1) / (n_q * p.n_kv_heads));
  pl.hb = (group + pl.n_hb - 1) / pl.n_hb;
  pl.n_hb = (group + pl.hb - 1) / pl.hb;
  return pl;
}

// Per-thread scratch floats: scores [kMaxRows][kTile], outputs
// [kMaxRows][dv rounded], running max and sum [kMaxRows] each.
int64_t PerThread(const AttentionParams& p) { return kMaxRows * (kTile + RoundUp(p.head_dim_v, 16) + 2); }

template <typename KvT>
void RunJob(const AttentionParams& p, const AttentionSeq& sq, int64_t t0, int64_t nq, int64_t kh, int64_t h0,
            int64_t nh, float* ws) {
  const int64_t D = p.head_dim_qk, DV = p.head_dim_v, DVp = RoundUp(DV, 16);
  const int64_t R = nq * nh;  // rows: query-major, then head
  float* s = ws;                        // [R][kTile]
  float* o = s + kMaxRows * kTile;      // [R][DVp]
  float* mx = o + kMaxRows * DVp;       // [R]
  float* sum = mx + kMaxRows;           // [R]
  const float* q[kMaxRows];
  int64_t n_keys[kMaxRows];
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = t0 + r / nh, h = h0 + r % nh;
    q[r] = p.q + (sq.q_begin + t) * p.q_token_stride + h * p.q_head_stride;
    n_keys[r] = sq.pos0 + t + 1;  // causal
    mx[r] = -INFINITY;
    sum[r] = 0.0f;
    for (int64_t c = 0; c < DVp; ++c) o[r * DVp + c] = 0.0f;
  }
  const int64_t total_keys = n_keys[R - 1];  // the last query sees the most
  const int32_t* table = p.block_tables != nullptr ? p.block_tables + sq.kv_begin : nullptr;
  const KvT* kbase = static_cast<const KvT*>(p.k) + kh * p.k_head_stride;
  const KvT* vbase = static_cast<const KvT*>(p.v) + kh * p.v_head_stride;
  const KvT* krow[kTile];
  const KvT* vrow[kTile];

  for (int64_t j0 = 0; j0 < total_keys; j0 += kTile) {
    const int64_t nt = Min(kTile, total_keys - j0);
    for (int64_t j = 0; j < nt; ++j) {
      const int64_t key = j0 + j;
      const int64_t row = table == nullptr ? sq.kv_begin + key
                                           : static_cast<int64_t>(table[key / p.block_size]) * p.block_size +
                                                 key % p.block_size;
      krow[j] = kbase + row * p.k_token_stride;
      vrow[j] = vbase + row * p.v_token_stride;
    }
    // Scores: each key row is read once for every query row of the job.
    for (int64_t j = 0; j < nt; ++j) {
      const KvT* k = krow[j];
      for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t rn = Min(4, R - r0);
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int64_t c = 0;
#if defined(DS_HAVE_SIMD)
        VecF acc[4] = {VZero(), VZero(), VZero(), VZero()};
        for (; c + kLanes <= D; c += kLanes) {
          const VecF kv = LoadKv(k + c);
          for (int64_t rr = 0; rr < rn; ++rr) acc[rr] = VFma(kv, VLoadF32(q[r0 + rr] + c), acc[rr]);
        }
        for (int64_t rr = 0; rr < rn; ++rr) d[rr] = VSum(acc[rr]);
#endif
        for (; c < D; ++c) {
          const float kv = LoadKv1(k + c);
          for (int64_t rr = 0; rr < rn; ++rr) d[rr] += kv * q[r0 + rr][c];
        }
        for (int64_t rr = 0; rr < rn; ++rr) s[(r0 + rr) * kTile + j] = d[rr] * p.scale;
      }
    }
    // Online softmax per row over this tile's keys (masked past its last key).
    for (int64_t r = 0; r < R; ++r) {
      const int64_t valid = Min(nt, n_keys[r] - j0);
      float* sr = s + r * kTile;
      if (valid <= 0) continue;
      float m = mx[r];
      for (int64_t j = 0; j < valid; ++j) m = MaxF(m, sr[j]);
      const float alpha = expf(mx[r] - m);  // 0 on the first tile (mx = -inf)
      float add = 0.0f;
      for (int64_t j = 0; j < valid; ++j) {
        sr[j] = expf(sr[j] - m);
        add += sr[j];
      }
      for (int64_t j = valid; j < nt; ++j) sr[j] = 0.0f;
      sum[r] = sum[r] * alpha + add;
      mx[r] = m;
      float* orow = o + r * DVp;
      for (int64_t c = 0; c < DV; ++c) orow[c] *= alpha;
    }
    // Outputs: o[r] += Σ_j p[r][j] v_j, one column chunk at a time so the
    // chunk of the tile's value rows stays in L1 across the query rows.
    int64_t c = 0;
#if defined(DS_HAVE_SIMD)
    for (; c + 2 * kLanes <= DV; c += 2 * kLanes) {
      for (int64_t r = 0; r < R; ++r) {
        const int64_t valid = Min(nt, n_keys[r] - j0);
        if (valid <= 0) continue;
        const float* pr = s + r * kTile;
        float* orow = o + r * DVp + c;
        VecF a0 = VLoadF32(orow), a1 = VLoadF32(orow + kLanes);
        for (int64_t j = 0; j < valid; ++j) {
          const VecF pj = VSet(pr[j]);
          a0 = VFma(pj, LoadKv(vrow[j] + c), a0);
          a1 = VFma(pj, LoadKv(vrow[j] + c + kLanes), a1);
        }
        VStoreF32(orow, a0);
        VStoreF32(orow + kLanes, a1);
      }
    }
#endif
    for (; c < DV; ++c) {
      for (int64_t r = 0; r < R; ++r) {
        const int64_t valid = Min(nt, n_keys[r] - j0);
        const float* pr = s + r * kTile;
        float a = o[r * DVp + c];
        for (int64_t j = 0; j < valid; ++j) a += pr[j] * LoadKv1(vrow[j] + c);
        o[r * DVp + c] = a;
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = t0 + r / nh, h = h0 + r % nh;
    float* out = p.out + (sq.q_begin + t) * p.out_token_stride + h * p.out_head_stride;
    const float inv = 1.0f / sum[r];
    for (int64_t c = 0; c < DV; ++c) out[c] = o[r * DVp + c] * inv;
  }
}

template <typename KvT>
void AttentionT(const AttentionParams& p, float* scratch) {
  int64_t n_q = 0;
  for (int64_t i = 0; i < p.n_seqs; ++i) n_q += p.seqs[i].n_q;
  const int threads = omp_get_max_threads();
  const Plan pl = MakePlan(p, n_q, threads);
  // Query blocks: (sequence, first query) pairs, after the per-thread areas.
  int32_t* qblocks = reinterpret_cast<int32_t*>(scratch + threads * PerThread(p));
  int64_t n_qb = 0;
  for (int64_t i = 0; i < p.n_seqs; ++i) {
    for (int32_t t = 0; t < p.seqs[i].n_q; t += static_cast<int32_t>(pl.qb)) {
      qblocks[2 * n_qb] = static_cast<int32_t>(i);
      qblocks[2 * n_qb + 1] = t;
      ++n_qb;
    }
  }
  const int64_t group = p.n_heads / p.n_kv_heads;
  const int64_t jobs = n_qb * p.n_kv_heads * pl.n_hb;
  int64_t max_keys = 0;
  for (int64_t i = 0; i < p.n_seqs; ++i) max_keys = Max(max_keys, p.seqs[i].pos0 + p.seqs[i].n_q);
  const int64_t work = n_q * p.n_heads * max_keys * (p.head_dim_qk + p.head_dim_v);
#pragma omp parallel for schedule(dynamic, 1) if (work >= (1 << 18) && jobs > 1)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t qbi = job / (p.n_kv_heads * pl.n_hb), rest = job % (p.n_kv_heads * pl.n_hb);
    const int64_t kh = rest / pl.n_hb, hbi = rest % pl.n_hb;
    const AttentionSeq& sq = p.seqs[qblocks[2 * qbi]];
    const int64_t t0 = qblocks[2 * qbi + 1];
    const int64_t nq = Min(pl.qb, sq.n_q - t0);
    const int64_t h0 = kh * group + hbi * pl.hb, nh = Min(pl.hb, (kh + 1) * group - h0);
    if (nh <= 0) continue;
    RunJob<KvT>(p, sq, t0, nq, kh, h0, nh, scratch + omp_get_thread_num() * PerThread(p));
  }
}

}  // namespace

int64_t AttentionScratch(const AttentionParams& p, int threads) {
  int64_t n_q = 0;
  for (int64_t i = 0; i < p.n_seqs; ++i) n_q += p.seqs[i].n_q;
  return threads * PerThread(p) + 2 * n_q;  // + the query-block list (int32 pairs, one float each)
}

void Attention(const AttentionParams& p, float* scratch) {
  if (p.kv_dtype == DType::kF32) {
    AttentionT<float>(p, scratch);
  } else {
    AttentionT<uint16_t>(p, scratch);
  }
}

}  // namespace deepshard::cpu::DS_ISA_NS
