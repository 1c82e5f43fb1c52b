// MoE dispatch and combine across the ranks of one pipeline stage.
//
// Each token picks k routed experts; slot s = t * k + i is token t's i-th choice.
// Dispatch sends every slot's hidden row to the rank that owns its expert;
// the owner runs its experts on the rows it received (grouped by local expert);
// combine sends the results back to the slot they came from. The caller then
// applies router weights and adds the shared experts.
//
//   MoeExchange ex(row_comm, placement, hidden);
//   RETURN_IF_ERROR(ex.Dispatch(x, T, ids, k));           // collective, T may be 0
//   for (e : local experts) run expert e on
//       ex.received() rows [ex.local_expert_offsets()[e], [e+1]) -> ex.expert_output() same rows
//   RETURN_IF_ERROR(ex.Combine(slot_out));                 // collective; slot_out [T * k, hidden]
//
// Steps inside: exchange per-(rank, expert) counts, permute slots by destination
// rank and local expert, move the rows, group them by local expert; combine
// reverses all of it. Within one machine the rows go through shared memory (each
// row is written once, straight to its owner's grouped buffer); across machines
// they go through the Communicator's all-to-all-v (see Mode). Every rank must
// call Dispatch and Combine in the same order, including ranks with zero tokens.
// Buffers grow only, so steady-state calls do not allocate. One MoeExchange can
// serve every MoE layer of a stage (its buffers are scratch between calls).
// Host memory only: use it with the MPI Communicator (a device version needs
// permutation kernels).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "comm/expert_exchange.h"
#include "comm/shared_memory.h"

namespace deepshard {

// Which rank of the stage owns each routed expert.
struct ExpertPlacement {
  std::vector<int> owner;            // [n_experts] -> rank in the row communicator
  std::vector<int64_t> local_index;  // [n_experts] -> index among its owner's experts
  std::vector<int64_t> n_local;      // [ranks] -> number of experts each rank owns

  int64_t n_experts() const { return static_cast<int64_t>(owner.size()); }
  // Contiguous shards in rank order, E / R experts each; when R does not divide
  // E the first E % R ranks own one more (E = 10, R = 4: 3, 3, 2, 2 experts).
  static ExpertPlacement Contiguous(int64_t n_experts, int n_ranks);
  // From an explicit expert -> rank map (local indices in expert order). An owner
  // outside [0, n_ranks) gets local index -1 and MoeExchange reports it.
  static ExpertPlacement FromOwners(std::vector<int> owner, int n_ranks);
};

class MoeExchange final : public ExpertExchange {
 public:
  MoeExchange(Communicator& comm, ExpertPlacement placement, int64_t hidden);

  // Collective. x: [T, hidden]; ids: [T, k] expert ids in [0, n_experts).
  // Bad input on any rank (an id out of range, T < 0, null x or ids with T > 0)
  // makes every rank of the row return an error, and no payload moves: the count
  // exchange carries an error flag, so no rank is left waiting in the payload
  // exchange. A placement that does not fit the communicator fails before any
  // communication (the placement must be the same on every rank).
  absl::Status Dispatch(const float* x, int64_t T, const int32_t* ids, int64_t k) override;

  // Rows this rank received, grouped by local expert (within an expert: by source
  // rank, then by the source's slot order). Valid until the next Dispatch.
  const float* received() const override;
  int64_t n_received() const;
  // [n_local + 1] prefix offsets into received() per local expert.
  std::span<const int64_t> local_expert_offsets() const override;
  // [n_received, hidden]: the caller writes each received row's expert output here.
  float* expert_output() override;

  // Collective. out: [T * k, hidden], row s = the expert output for slot s.
  // Must follow a successful Dispatch (once per Dispatch). A null `out` with
  // slots to fill still takes part in the exchange, then returns an error.
  absl::Status Combine(float* out) override;

  const ExpertPlacement& placement() const;
  int64_t hidden() const;

  // How the rows move; must be the same on every rank of the row.
  //   kSharedMemory: when every rank of the row runs on one machine, each rank
  //     writes its rows straight into the owners' grouped buffers (POSIX shared
  //     memory, see comm/shared_memory.h) and combine reads the results straight
  //     from the owners' output buffers: one copy per row and direction, as a
  //     bare all-to-all-v makes, and no payload messages. The counts go through
  //     the segments too (every rank needs every rank's counts to know where to
  //     write): dispatch is two barriers, combine one. Falls back to the
  //     all-to-all-v paths (as kAuto would choose) when the ranks are on several
  //     machines or shared memory cannot be set up.
  //   kOneExchange: one all-to-all-v per direction, plus a local regroup copy
  //     (by local expert) on the receiving side and its inverse before combine.
  //   kPerExpert: one all-to-all-v per local expert index (max over ranks), which
  //     receives straight into the grouped layout: no regroup copies, more calls.
  //   kAuto (default): kSharedMemory where possible; otherwise kPerExpert when
  //     each rank owns at most one expert or the average message per (source,
  //     destination, expert) is at least per_expert_min_bytes, else kOneExchange.
  //     Decided from the global token count, which every rank learns from the
  //     count exchange, so the ranks agree.
  // The all-to-all-v paths need nothing but the Communicator interface.
  enum class Mode { kAuto, kOneExchange, kPerExpert, kSharedMemory };
  void set_mode(Mode mode, int64_t per_expert_min_bytes = kDefaultPerExpertMinBytes);
  static constexpr int64_t kDefaultPerExpertMinBytes = 64 << 10;
  // The path the last Dispatch took (never kAuto).
  Mode last_mode() const { return last_mode_; }

  // Bytes held by the grow-only buffers (for tests: steady state does not grow).
  int64_t buffer_bytes() const;

 private:
  // Grow-only, uninitialised float storage.
  struct Buffer {
    std::unique_ptr<float[]> data;
    int64_t capacity = 0;  // floats
    float* Reserve(int64_t n);
  };
  absl::Status ValidatePlacement() const;
  // kSharedMemory: every rank's counts into all_counts_, through the segments.
  absl::Status ShareCounts(int64_t n_slots, bool bad);
  int64_t ShmHeaderFloats() const;
  float* ShmRows(int rank) const;  // first row of rank's segment (after the header)
  // Counts addressed to this rank (all-to-all-v) into count_recv_.
  absl::Status ExchangeCounts(int64_t n_slots, bool bad);
  absl::Status CheckPeerErrors(const absl::Status& local, int first_bad) const;
  // Tries to (re)size the shared segments to `rows` rows per region; false when
  // shared memory is unavailable (then every rank falls back alike).
  absl::StatusOr<bool> EnsureShared(int64_t rows);
  void DispatchShared(const float* x, int64_t T, int64_t k, const int32_t* ids);
  absl::Status DispatchViaAllToAll(const float* x, int64_t T, int64_t k, const int32_t* ids,
                                   int64_t global_slots);
  absl::Status ExchangeRows(bool combine);

  Communicator& comm_;
  ExpertPlacement placement_;
  int64_t hidden_;
  int n_ranks_, me_;
  absl::Status placement_status_;
  Mode mode_ = Mode::kAuto;
  int64_t per_expert_min_bytes_ = kDefaultPerExpertMinBytes;
  Mode last_mode_ = Mode::kOneExchange;

  int64_t n_me_ = 0;                    // experts this rank owns
  int64_t max_local_ = 0;               // max over ranks of n_local
  std::vector<int64_t> pair_base_;      // [ranks + 1] first "pair" of each rank; pair =
                                        // pair_base_[owner] + local_index (one per expert)
  std::vector<int64_t> pair_of_expert_; // [n_experts]
  std::vector<int> rank_of_pair_;       // [n_experts]

  // State of the current Dispatch, used by Combine.
  bool dispatched_ = false;
  int64_t n_slots_ = 0;                 // T * k
  int64_t global_slots_ = 0;            // sum of T * k over the row's ranks
  float* received_ = nullptr;           // grouped rows (grouped_ or this rank's shared segment)
  float* expert_out_ = nullptr;         // expert outputs (grouped_out_ or shared segment)
  std::vector<int64_t> send_pair_rows_; // [n_experts] rows this rank sends per pair
  std::vector<int64_t> send_pair_off_;  // [n_experts] first row in send_buf_ (remote pairs)
  std::vector<int64_t> cursor_;         // [n_experts] packing cursor
  std::vector<int64_t> recv_rows_;      // [ranks * n_me_] rows from rank p for local expert l
  std::vector<int64_t> grouped_pos_;    // [ranks * n_me_] first grouped row of (p, l)
  std::vector<int64_t> recv_pos_;       // [ranks * n_me_] first row in recv_buf_ (kOneExchange)
  std::vector<int64_t> expert_offsets_; // [n_me_ + 1]
  std::vector<int64_t> slot_pos_;       // [T * k] >= 0: row in send_buf_; < 0: -(1 + grouped row)
  std::vector<int64_t> count_send_, count_recv_;            // count exchange payload
  std::vector<int64_t> cnt_sc_, cnt_sd_, cnt_rc_, cnt_rd_;  // count exchange layout
  std::vector<int64_t> sc_, sd_, rc_, rd_;                  // payload layout (elements)
  int64_t n_grouped_ = 0, n_recv_remote_ = 0;
  Buffer send_buf_;     // [remote slots, hidden] in (rank, local expert) order
  Buffer recv_buf_;     // [remote rows received, hidden] in (rank, local expert) order
  Buffer grouped_;      // [n_grouped_, hidden] by local expert
  Buffer grouped_out_;  // [n_grouped_, hidden] the caller's expert outputs

  // kSharedMemory. Each rank's segment: [counts header (a page) | cap rows
  // grouped | cap rows expert output].
  std::unique_ptr<SharedSegments> shm_;
  bool shm_tried_ = false, shm_usable_ = false;
  int64_t shm_cap_rows_ = 0;
  std::vector<int64_t> all_counts_;     // [ranks, n_experts + 2] every rank's counts
  std::vector<int64_t> pair_start_;     // [n_experts] first row of a pair in its owner's grouped rows
  std::vector<const float*> slot_src_;  // [T * k] where combine reads slot s's result
};

}  // namespace deepshard
