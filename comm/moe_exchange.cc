#include "comm/moe_exchange.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {
namespace {

// Copies n floats. NOTES: glibc 2.36's memcpy uses `rep movsb` at these sizes,
// and on the AMD EPYC development machines that runs ~20x slower (2 GB/s instead
// of 40 GB/s, measured) when destination and source differ by 16 bytes modulo
// 64, which is exactly a page-aligned shared segment against a malloc'd buffer.
// Plain vector loads and stores do not care about the relative alignment.
// comm/ does not use the CPU kernels' SIMD header (kernels/cpu/simd.h) for this:
// a copy needs only an unaligned vector type (GCC/Clang vector extensions, the
// same type _mm256_loadu_ps dereferences), which the compiler turns into the
// widest moves -march allows (AVX-512, AVX or SSE) on any x86 target.
#if defined(__AVX512F__)
constexpr int64_t kCopyBytes = 64;
#elif defined(__AVX__)
constexpr int64_t kCopyBytes = 32;
#else
constexpr int64_t kCopyBytes = 16;
#endif
typedef float CopyVec __attribute__((vector_size(kCopyBytes), aligned(1), may_alias));
constexpr int64_t kCopyLanes = kCopyBytes / sizeof(float);

inline CopyVec LoadVec(const float* p) { return *reinterpret_cast<const CopyVec*>(p); }
inline void StoreVec(float* p, CopyVec v) { *reinterpret_cast<CopyVec*>(p) = v; }

inline void CopyRow(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 4 * kCopyLanes <= n; i += 4 * kCopyLanes) {
    const CopyVec a = LoadVec(src + i), b = LoadVec(src + i + kCopyLanes);
    const CopyVec c = LoadVec(src + i + 2 * kCopyLanes), d = LoadVec(src + i + 3 * kCopyLanes);
    StoreVec(dst + i, a);
    StoreVec(dst + i + kCopyLanes, b);
    StoreVec(dst + i + 2 * kCopyLanes, c);
    StoreVec(dst + i + 3 * kCopyLanes, d);
  }
  for (; i + kCopyLanes <= n; i += kCopyLanes) StoreVec(dst + i, LoadVec(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}

}  // namespace

// ---------------------------------------------------------------------------
// ExpertPlacement

ExpertPlacement ExpertPlacement::Contiguous(int64_t n_experts, int n_ranks) {
  ExpertPlacement p;
  n_experts = std::max<int64_t>(n_experts, 0);
  n_ranks = std::max(n_ranks, 1);
  p.owner.resize(n_experts);
  p.local_index.resize(n_experts);
  p.n_local.assign(n_ranks, 0);
  const int64_t base = n_experts / n_ranks, extra = n_experts % n_ranks;
  int64_t e = 0;
  for (int r = 0; r < n_ranks; ++r) {
    p.n_local[r] = base + (r < extra ? 1 : 0);
    for (int64_t l = 0; l < p.n_local[r]; ++l, ++e) {
      p.owner[e] = r;
      p.local_index[e] = l;
    }
  }
  return p;
}

ExpertPlacement ExpertPlacement::FromOwners(std::vector<int> owner, int n_ranks) {
  ExpertPlacement p;
  p.n_local.assign(std::max(n_ranks, 0), 0);
  p.local_index.assign(owner.size(), -1);  // -1: owner out of range (MoeExchange reports it)
  for (size_t e = 0; e < owner.size(); ++e) {
    if (owner[e] >= 0 && owner[e] < n_ranks) p.local_index[e] = p.n_local[owner[e]]++;
  }
  p.owner = std::move(owner);
  return p;
}

// ---------------------------------------------------------------------------
// MoeExchange

float* MoeExchange::Buffer::Reserve(int64_t n) {
  if (n > capacity) {
    // Grow by at least half so that slowly varying loads settle quickly.
    const int64_t cap = std::max(n, capacity + capacity / 2);
    data.reset(new float[cap]);  // uninitialised on purpose
    capacity = cap;
  }
  return data.get();
}

MoeExchange::MoeExchange(Communicator& comm, ExpertPlacement placement, int64_t hidden)
    : comm_(comm), placement_(std::move(placement)), hidden_(hidden) {
  n_ranks_ = comm_.size();
  me_ = comm_.rank();
  placement_status_ = ValidatePlacement();
  if (!placement_status_.ok()) return;
  const int64_t E = placement_.n_experts();
  pair_base_.assign(n_ranks_ + 1, 0);
  for (int r = 0; r < n_ranks_; ++r) {
    pair_base_[r + 1] = pair_base_[r] + placement_.n_local[r];
    max_local_ = std::max(max_local_, placement_.n_local[r]);
  }
  n_me_ = placement_.n_local[me_];
  pair_of_expert_.resize(E);
  rank_of_pair_.resize(E);
  for (int64_t e = 0; e < E; ++e) {
    pair_of_expert_[e] = pair_base_[placement_.owner[e]] + placement_.local_index[e];
    rank_of_pair_[pair_of_expert_[e]] = placement_.owner[e];
  }
  send_pair_rows_.resize(E);
  send_pair_off_.resize(E);
  cursor_.resize(E);
  recv_rows_.resize(n_ranks_ * n_me_);
  grouped_pos_.resize(n_ranks_ * n_me_);
  recv_pos_.resize(n_ranks_ * n_me_);
  expert_offsets_.assign(n_me_ + 1, 0);
  // Count exchange: to rank p go its n_local[p] pair counts, then this rank's slot
  // total and an error flag; from every rank come n_me_ + 2 values.
  cnt_sc_.resize(n_ranks_), cnt_sd_.resize(n_ranks_), cnt_rc_.resize(n_ranks_), cnt_rd_.resize(n_ranks_);
  for (int p = 0; p < n_ranks_; ++p) {
    cnt_sc_[p] = placement_.n_local[p] + 2;
    cnt_sd_[p] = pair_base_[p] + 2 * p;
    cnt_rc_[p] = n_me_ + 2;
    cnt_rd_[p] = p * (n_me_ + 2);
  }
  count_send_.resize(E + 2 * n_ranks_);
  count_recv_.resize(n_ranks_ * (n_me_ + 2));
  sc_.resize(n_ranks_), sd_.resize(n_ranks_), rc_.resize(n_ranks_), rd_.resize(n_ranks_);
}

absl::Status MoeExchange::ValidatePlacement() const {
  const std::string where = absl::StrCat("MoeExchange on rank ", me_, "/", n_ranks_, ": ");
  if (hidden_ <= 0) return absl::InvalidArgumentError(absl::StrCat(where, "hidden must be > 0, got ", hidden_));
  const ExpertPlacement& p = placement_;
  if (static_cast<int64_t>(p.n_local.size()) != n_ranks_) {
    return absl::InvalidArgumentError(absl::StrCat(where, "placement is for ", p.n_local.size(),
                                                   " ranks, the communicator has ", n_ranks_));
  }
  const int64_t E = p.n_experts();
  if (static_cast<int64_t>(p.local_index.size()) != E) {
    return absl::InvalidArgumentError(absl::StrCat(where, "placement has ", E, " owners but ",
                                                   p.local_index.size(), " local indices"));
  }
  std::vector<int64_t> seen(n_ranks_, 0);
  int64_t total = 0;
  for (int r = 0; r < n_ranks_; ++r) {
    if (p.n_local[r] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, "n_local[", r, "] is negative"));
    }
    total += p.n_local[r];
  }
  if (total != E) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "placement's n_local adds up to ", total, ", not n_experts = ", E));
  }
  std::vector<char> used(E, 0);
  std::vector<int64_t> base(n_ranks_ + 1, 0);
  for (int r = 0; r < n_ranks_; ++r) base[r + 1] = base[r] + p.n_local[r];
  for (int64_t e = 0; e < E; ++e) {
    const int o = p.owner[e];
    if (o < 0 || o >= n_ranks_) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "expert ", e, " has owner ", o, ", not in [0, ", n_ranks_, ")"));
    }
    const int64_t l = p.local_index[e];
    if (l < 0 || l >= p.n_local[o] || used[base[o] + l]) {
      return absl::InvalidArgumentError(absl::StrCat(where, "expert ", e, " has local index ", l,
                                                     " on rank ", o, " (owns ", p.n_local[o],
                                                     "; indices must be distinct)"));
    }
    used[base[o] + l] = 1;
  }
  return absl::OkStatus();
}

void MoeExchange::set_mode(Mode mode, int64_t per_expert_min_bytes) {
  mode_ = mode;
  per_expert_min_bytes_ = per_expert_min_bytes;
}

const float* MoeExchange::received() const { return received_; }
int64_t MoeExchange::n_received() const { return n_grouped_; }
std::span<const int64_t> MoeExchange::local_expert_offsets() const { return expert_offsets_; }
float* MoeExchange::expert_output() { return expert_out_; }
const ExpertPlacement& MoeExchange::placement() const { return placement_; }
int64_t MoeExchange::hidden() const { return hidden_; }

int64_t MoeExchange::buffer_bytes() const {
  int64_t bytes = 4 * (send_buf_.capacity + recv_buf_.capacity + grouped_.capacity + grouped_out_.capacity);
  bytes += 8 * static_cast<int64_t>(slot_pos_.capacity() + slot_src_.capacity());
  if (shm_ != nullptr) bytes += shm_->bytes();
  return bytes;
}

absl::Status MoeExchange::ExchangeCounts(int64_t n_slots, bool bad) {
  // To rank p: its n_local[p] pair counts, this rank's slot total (so that every
  // rank knows the global load) and the error flag.
  for (int p = 0; p < n_ranks_; ++p) {
    int64_t* out = count_send_.data() + cnt_sd_[p];
    const int64_t n = placement_.n_local[p];
    std::copy_n(send_pair_rows_.data() + pair_base_[p], n, out);
    out[n] = n_slots;
    out[n + 1] = bad ? 1 : 0;
  }
  return comm_.AllToAllV(count_send_.data(), cnt_sc_, cnt_sd_, count_recv_.data(), cnt_rc_, cnt_rd_,
                         CommDType::kI64);
}

int64_t MoeExchange::ShmHeaderFloats() const {
  // Room for one rank's counts, rounded up to a page so that rows stay page-aligned.
  const int64_t bytes = (placement_.n_experts() + 2) * static_cast<int64_t>(sizeof(int64_t));
  return (bytes + 4095) / 4096 * 4096 / static_cast<int64_t>(sizeof(float));
}

float* MoeExchange::ShmRows(int rank) const {
  return reinterpret_cast<float*>(shm_->segment(rank)) + ShmHeaderFloats();
}

absl::Status MoeExchange::ShareCounts(int64_t n_slots, bool bad) {
  // Each rank publishes [pair counts, slot total, error flag] in its segment's
  // header; after the barrier every rank reads all of them. (No rank can still be
  // reading the previous step's counts: it passed the previous Combine's barrier.)
  const int64_t E = placement_.n_experts();
  int64_t* mine = reinterpret_cast<int64_t*>(shm_->segment(me_));
  std::copy_n(send_pair_rows_.data(), E, mine);
  mine[E] = n_slots;
  mine[E + 1] = bad ? 1 : 0;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  RETURN_IF_ERROR(comm_.Barrier());
  std::atomic_thread_fence(std::memory_order_seq_cst);
  all_counts_.resize(n_ranks_ * (E + 2));
  for (int p = 0; p < n_ranks_; ++p) {
    std::copy_n(reinterpret_cast<const int64_t*>(shm_->segment(p)), E + 2, all_counts_.data() + p * (E + 2));
  }
  return absl::OkStatus();
}

absl::Status MoeExchange::CheckPeerErrors(const absl::Status& local, int first_bad) const {
  if (!local.ok()) return local;
  if (first_bad < 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("MoeExchange::Dispatch on rank ", me_, "/", n_ranks_,
                                                 ": rank ", first_bad,
                                                 " had invalid dispatch input; nothing was exchanged"));
}

absl::StatusOr<bool> MoeExchange::EnsureShared(int64_t rows) {
  if (shm_tried_ && !shm_usable_) return false;
  if (shm_ != nullptr && rows <= shm_cap_rows_) return true;
  // Every rank computed the same `rows` (or this is the first call), so all
  // ranks come here together.
  // Headroom: routing load varies from step to step.
  const int64_t cap = std::max<int64_t>({rows + rows / 8, shm_cap_rows_ + shm_cap_rows_ / 2, 16});
  shm_.reset();  // every rank has finished reading the old segments (they are in this Dispatch)
  shm_cap_rows_ = 0;
  absl::StatusOr<std::unique_ptr<SharedSegments>> made =
      SharedSegments::Create(comm_, (ShmHeaderFloats() + 2 * cap * hidden_) * static_cast<int64_t>(sizeof(float)));
  shm_tried_ = true;
  if (!made.ok()) {
    if (made.status().code() != absl::StatusCode::kUnavailable) return made.status();
    shm_usable_ = false;  // same answer on every rank: all fall back
    return false;
  }
  shm_ = std::move(made).value();
  shm_cap_rows_ = cap;
  shm_usable_ = true;
  return true;
}

absl::Status MoeExchange::Dispatch(const float* x, int64_t T, const int32_t* ids, int64_t k) {
  dispatched_ = false;
  const std::string where = absl::StrCat("MoeExchange::Dispatch on rank ", me_, "/", n_ranks_, ": ");
  // The placement is the same on every rank, so a bad one fails everywhere alike.
  if (!placement_status_.ok()) return placement_status_;
  // 1. Check the input locally. A bad input still takes part in the count exchange
  //    (with zero rows and the error flag set), so every rank learns of it.
  absl::Status local;
  if (T < 0 || (T > 0 && (k < 1 || x == nullptr || ids == nullptr))) {
    local = absl::InvalidArgumentError(absl::StrCat(where, "bad input: T = ", T, ", k = ", k,
                                                    x == nullptr ? ", x = null" : "",
                                                    ids == nullptr ? ", ids = null" : ""));
  }
  const int64_t E = placement_.n_experts();
  const int64_t S = local.ok() ? T * k : 0;
  std::fill(send_pair_rows_.begin(), send_pair_rows_.end(), 0);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t e = ids[s];
    if (e < 0 || e >= E) {
      local = absl::InvalidArgumentError(absl::StrCat(where, "ids[", s / k, ", ", s % k, "] = ", e,
                                                      " is not an expert id in [0, ", E, ")"));
      std::fill(send_pair_rows_.begin(), send_pair_rows_.end(), 0);
      break;
    }
    ++send_pair_rows_[pair_of_expert_[e]];
  }
  const int64_t n_slots = local.ok() ? S : 0;
  if (static_cast<int64_t>(slot_pos_.size()) < n_slots) slot_pos_.resize(n_slots);

  // 2. Counts. Shared memory needs every rank's counts (to know where to write);
  //    the all-to-all-v paths only the counts addressed to this rank.
  const bool try_shared =
      (mode_ == Mode::kAuto || mode_ == Mode::kSharedMemory) && !(shm_tried_ && !shm_usable_);
  int64_t global_slots = 0;
  int first_bad = -1;
  if (try_shared && shm_ == nullptr) {
    // First call: set the segments up (small; they grow with the load).
    ASSIGN_OR_RETURN(const bool usable, EnsureShared(0));
    (void)usable;
  }
  if (try_shared && shm_usable_) {
    RETURN_IF_ERROR(ShareCounts(n_slots, !local.ok()));
    for (int p = 0; p < n_ranks_; ++p) {
      const int64_t* c = all_counts_.data() + p * (E + 2);
      global_slots += c[E];
      if (c[E + 1] != 0 && first_bad < 0) first_bad = p;
    }
    if (first_bad >= 0) {
      // Every rank sees the flag and returns here. The barrier keeps a fast rank's
      // next Dispatch from overwriting its counts while a slow one still reads them.
      RETURN_IF_ERROR(comm_.Barrier());
      return CheckPeerErrors(local, first_bad);
    }
    // Owner-side layout of every pair: its rows start at pair_start_ in the
    // owner's grouped rows; within a pair, by source rank.
    int64_t max_rows = 0;
    pair_start_.resize(E);
    for (int q = 0; q < n_ranks_; ++q) {
      int64_t at = 0;
      for (int64_t pair = pair_base_[q]; pair < pair_base_[q + 1]; ++pair) {
        pair_start_[pair] = at;
        int64_t before_me = 0;
        for (int p = 0; p < n_ranks_; ++p) {
          const int64_t c = all_counts_[p * (E + 2) + pair];
          if (p < me_) before_me += c;
          at += c;
        }
        cursor_[pair] = pair_start_[pair] + before_me;
      }
      max_rows = std::max(max_rows, at);
      if (q == me_) n_grouped_ = at;
    }
    ASSIGN_OR_RETURN(const bool shared, EnsureShared(max_rows));
    if (shared) {
      for (int64_t l = 0; l <= n_me_; ++l) {
        expert_offsets_[l] = l < n_me_ ? pair_start_[pair_base_[me_] + l] : n_grouped_;
      }
      DispatchShared(x, T, k, ids);
      n_slots_ = n_slots;
      global_slots_ = global_slots;
      last_mode_ = Mode::kSharedMemory;
      // Rows written before anyone reads them.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      RETURN_IF_ERROR(comm_.Barrier());
      std::atomic_thread_fence(std::memory_order_seq_cst);
      dispatched_ = true;
      return absl::OkStatus();
    }
    // No shared memory: take the counts addressed to this rank from the gathered ones.
    for (int p = 0; p < n_ranks_; ++p) {
      const int64_t* c = all_counts_.data() + p * (E + 2);
      int64_t* in = count_recv_.data() + cnt_rd_[p];
      std::copy_n(c + pair_base_[me_], n_me_, in);
      in[n_me_] = c[E];
      in[n_me_ + 1] = c[E + 1];
    }
  } else {
    RETURN_IF_ERROR(ExchangeCounts(n_slots, !local.ok()));
    for (int p = 0; p < n_ranks_; ++p) {
      const int64_t* in = count_recv_.data() + cnt_rd_[p];
      global_slots += in[n_me_];
      if (in[n_me_ + 1] != 0 && first_bad < 0) first_bad = p;
    }
    RETURN_IF_ERROR(CheckPeerErrors(local, first_bad));
  }
  RETURN_IF_ERROR(DispatchViaAllToAll(x, T, k, ids, global_slots));
  n_slots_ = n_slots;
  global_slots_ = global_slots;
  dispatched_ = true;
  return absl::OkStatus();
}

// One copy per slot, straight into the owner's grouped rows (own rows included).
void MoeExchange::DispatchShared(const float* x, int64_t T, int64_t k, const int32_t* ids) {
  const int64_t H = hidden_;
  const int64_t region = shm_cap_rows_ * H;  // floats per region (grouped, then outputs)
  if (static_cast<int64_t>(slot_src_.size()) < T * k) slot_src_.resize(T * k);
  for (int64_t t = 0, s = 0; t < T; ++t) {
    const float* row = x + t * H;
    for (int64_t i = 0; i < k; ++i, ++s) {
      const int64_t pair = pair_of_expert_[ids[s]];
      const int64_t at = cursor_[pair]++;
      float* seg = ShmRows(rank_of_pair_[pair]);
      CopyRow(seg + at * H, row, H);
      slot_src_[s] = seg + region + at * H;
    }
  }
  float* mine = ShmRows(me_);
  received_ = mine;
  expert_out_ = mine + region;
}

absl::Status MoeExchange::DispatchViaAllToAll(const float* x, int64_t T, int64_t k, const int32_t* ids,
                                              int64_t global_slots) {
  // 3. Layouts. Grouped (what the experts read): by local expert, then source rank.
  const int64_t H = hidden_;
  const int64_t E = placement_.n_experts();
  for (int p = 0; p < n_ranks_; ++p) {
    for (int64_t l = 0; l < n_me_; ++l) recv_rows_[p * n_me_ + l] = count_recv_[cnt_rd_[p] + l];
  }
  expert_offsets_[0] = 0;
  for (int64_t l = 0; l < n_me_; ++l) {
    int64_t at = expert_offsets_[l];
    for (int p = 0; p < n_ranks_; ++p) {
      grouped_pos_[p * n_me_ + l] = at;
      at += recv_rows_[p * n_me_ + l];
    }
    expert_offsets_[l + 1] = at;
  }
  n_grouped_ = expert_offsets_[n_me_];
  // Send buffer: rows for other ranks by (rank, local expert). Rows for this
  // rank's own experts skip the exchange and go straight into the grouped layout.
  int64_t off = 0;
  for (int64_t pair = 0; pair < E; ++pair) {
    if (rank_of_pair_[pair] == me_) {
      send_pair_off_[pair] = -1;
      cursor_[pair] = grouped_pos_[me_ * n_me_ + (pair - pair_base_[me_])];
    } else {
      send_pair_off_[pair] = off;
      cursor_[pair] = off;
      off += send_pair_rows_[pair];
    }
  }
  const int64_t n_send = off;
  // Received remote rows in (source rank, local expert) order (kOneExchange only).
  off = 0;
  for (int p = 0; p < n_ranks_; ++p) {
    for (int64_t l = 0; l < n_me_; ++l) {
      recv_pos_[p * n_me_ + l] = off;
      if (p != me_) off += recv_rows_[p * n_me_ + l];
    }
  }
  n_recv_remote_ = off;
  bool per_expert = max_local_ <= 1;
  if (!per_expert && mode_ != Mode::kOneExchange) {
    per_expert = mode_ == Mode::kPerExpert ||
                 global_slots * H * 4 >= per_expert_min_bytes_ * n_ranks_ * n_ranks_ * max_local_;
  }
  last_mode_ = per_expert ? Mode::kPerExpert : Mode::kOneExchange;

  // 4. Permute: copy each slot's token row to its place; remember where it went.
  float* send = send_buf_.Reserve(n_send * H);
  float* grouped = grouped_.Reserve(n_grouped_ * H);
  grouped_out_.Reserve(n_grouped_ * H);
  if (!per_expert) recv_buf_.Reserve(n_recv_remote_ * H);
  received_ = grouped_.data.get();
  expert_out_ = grouped_out_.data.get();
  const int64_t n_slots = T * k;  // valid input here (errors returned before)
  for (int64_t t = 0, s = 0; s < n_slots; ++t) {
    const float* row = x + t * H;
    for (int64_t i = 0; i < k; ++i, ++s) {
      const int64_t pair = pair_of_expert_[ids[s]];
      const int64_t at = cursor_[pair]++;
      if (send_pair_off_[pair] < 0) {
        CopyRow(grouped + at * H, row, H);
        slot_pos_[s] = -1 - at;
      } else {
        CopyRow(send + at * H, row, H);
        slot_pos_[s] = at;
      }
    }
  }

  // 5. Move the rows (skipped when no rank has any: every rank knows global_slots).
  if (n_ranks_ > 1 && global_slots > 0) return ExchangeRows(/*combine=*/false);
  return absl::OkStatus();
}

// Dispatch: send_buf_ -> grouped_ (through recv_buf_ with kOneExchange).
// Combine: grouped_out_ -> send_buf_ (through recv_buf_ with kOneExchange).
absl::Status MoeExchange::ExchangeRows(bool combine) {
  const int64_t H = hidden_;
  float* send = send_buf_.data.get();
  float* grouped = combine ? grouped_out_.data.get() : grouped_.data.get();
  if (last_mode_ == Mode::kPerExpert) {
    // One exchange per local expert index l: rank p's rows for its expert l land
    // in the receiver's grouped block of expert l, at that source's place.
    for (int64_t l = 0; l < max_local_; ++l) {
      for (int p = 0; p < n_ranks_; ++p) {
        const bool to_p = p != me_ && l < placement_.n_local[p];
        const int64_t pair = pair_base_[p] + l;
        sc_[p] = to_p ? send_pair_rows_[pair] * H : 0;
        sd_[p] = to_p ? send_pair_off_[pair] * H : 0;
        const bool from_p = p != me_ && l < n_me_;
        rc_[p] = from_p ? recv_rows_[p * n_me_ + l] * H : 0;
        rd_[p] = from_p ? grouped_pos_[p * n_me_ + l] * H : 0;
      }
      absl::Status st = combine ? comm_.AllToAllV(grouped, rc_, rd_, send, sc_, sd_, CommDType::kF32)
                                : comm_.AllToAllV(send, sc_, sd_, grouped, rc_, rd_, CommDType::kF32);
      if (!st.ok()) {
        return absl::Status(st.code(), absl::StrCat(combine ? "MoeExchange::Combine" : "MoeExchange::Dispatch",
                                                    " (expert index ", l, "): ", st.message()));
      }
    }
    return absl::OkStatus();
  }
  // kOneExchange: one all-to-all-v of the (rank, expert)-ordered rows, plus the
  // regroup between that order and the grouped one.
  float* recv = recv_buf_.data.get();
  for (int p = 0; p < n_ranks_; ++p) {
    const bool other = p != me_;
    sc_[p] = 0, sd_[p] = 0, rc_[p] = 0, rd_[p] = 0;
    if (other && placement_.n_local[p] > 0) {
      for (int64_t pair = pair_base_[p]; pair < pair_base_[p + 1]; ++pair) sc_[p] += send_pair_rows_[pair] * H;
      sd_[p] = send_pair_off_[pair_base_[p]] * H;
    }
    if (other && n_me_ > 0) {
      for (int64_t l = 0; l < n_me_; ++l) rc_[p] += recv_rows_[p * n_me_ + l] * H;
      rd_[p] = recv_pos_[p * n_me_] * H;
    }
  }
  auto regroup = [&](bool to_grouped) {
    for (int p = 0; p < n_ranks_; ++p) {
      if (p == me_) continue;
      for (int64_t l = 0; l < n_me_; ++l) {
        const int64_t i = p * n_me_ + l;
        float* g = grouped + grouped_pos_[i] * H;
        float* r = recv + recv_pos_[i] * H;
        const int64_t n = recv_rows_[i] * H;
        if (to_grouped) CopyRow(g, r, n);
        else CopyRow(r, g, n);
      }
    }
  };
  if (!combine) {
    absl::Status st = comm_.AllToAllV(send, sc_, sd_, recv, rc_, rd_, CommDType::kF32);
    if (!st.ok()) return absl::Status(st.code(), absl::StrCat("MoeExchange::Dispatch: ", st.message()));
    regroup(/*to_grouped=*/true);
  } else {
    regroup(/*to_grouped=*/false);
    absl::Status st = comm_.AllToAllV(recv, rc_, rd_, send, sc_, sd_, CommDType::kF32);
    if (!st.ok()) return absl::Status(st.code(), absl::StrCat("MoeExchange::Combine: ", st.message()));
  }
  return absl::OkStatus();
}

absl::Status MoeExchange::Combine(float* out) {
  if (!dispatched_) {
    return absl::FailedPreconditionError(absl::StrCat("MoeExchange::Combine on rank ", me_, "/", n_ranks_,
                                                      ": no successful Dispatch to combine"));
  }
  dispatched_ = false;
  // A null `out` still takes part in the exchange (so that no peer is left
  // waiting) and then fails.
  const absl::Status out_status =
      n_slots_ > 0 && out == nullptr
          ? absl::InvalidArgumentError(absl::StrCat("MoeExchange::Combine on rank ", me_, "/", n_ranks_,
                                                    ": out is null for ", n_slots_, " slots"))
          : absl::OkStatus();
  const int64_t H = hidden_;
  if (last_mode_ == Mode::kSharedMemory) {
    // Expert outputs written before anyone reads them; then one copy per slot,
    // straight from the owner's output rows.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    RETURN_IF_ERROR(comm_.Barrier());
    std::atomic_thread_fence(std::memory_order_seq_cst);
    RETURN_IF_ERROR(out_status);
    for (int64_t s = 0; s < n_slots_; ++s) CopyRow(out + s * H, slot_src_[s], H);
    return absl::OkStatus();
  }
  // Same skip rule as Dispatch (global_slots_ is the same on every rank).
  if (n_ranks_ > 1 && global_slots_ > 0) RETURN_IF_ERROR(ExchangeRows(/*combine=*/true));
  RETURN_IF_ERROR(out_status);
  // Un-permute: slot s's result is in send_buf_ (remote) or grouped_out_ (own).
  const float* back = send_buf_.data.get();
  const float* own = grouped_out_.data.get();
  for (int64_t s = 0; s < n_slots_; ++s) {
    const int64_t pos = slot_pos_[s];
    const float* src = pos >= 0 ? back + pos * H : own + (-1 - pos) * H;
    CopyRow(out + s * H, src, H);
  }
  return absl::OkStatus();
}

}  // namespace deepshard
