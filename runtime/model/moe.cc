#include "runtime/model/moe.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "runtime/model/moe_router.h"

namespace deepshard {

void MlpForward(const MlpWeights& w, Backend& be, const float* x, int64_t m, int64_t hidden,
                int64_t inter, Workspace& ws, float* out) {
  float* gate = Workspace::Get(ws.gate, m * inter);  // [m, inter]
  float* up = Workspace::Get(ws.up, m * inter);      // [m, inter]
  be.Linear(x, m, hidden, w.gate_proj, gate, inter);
  be.Linear(x, m, hidden, w.up_proj, up, inter);
  be.SiluMul(gate, up, m, inter, inter, gate, inter);
  be.Linear(gate, m, inter, w.down_proj, out, hidden);
}

namespace {

// Routes T tokens: router logits in f32 whatever the math mode (the output is
// discrete), then top-k ids and weights into ws.topk_ids / ws.topk_w ([T, k]).
void Route(const ModelConfig& c, const MoeWeights& w, Backend& be, const float* x, int64_t T, Workspace& ws,
           int32_t** ids, float** weights) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  float* logits = Workspace::Get(ws.router_logits, T * E + 2 * E + c.n_group);  // [T, E] + scratch
  be.LinearExact(x, T, H, w.gate, logits, E);
  *ids = Workspace::Get(ws.topk_ids, T * k + 1);
  *weights = Workspace::Get(ws.topk_w, T * k + 1);
  RouteTokens(c, logits, w.e_score_correction_bias, T, *ids, *weights, logits + T * E);
  if (ws.profile != nullptr) {
    std::vector<int64_t>& counts = ws.profile->expert_tokens;
    const size_t need = static_cast<size_t>((ws.profile_layer + 1) * E);
    if (counts.size() < need) counts.resize(need, 0);
    int64_t* layer = counts.data() + ws.profile_layer * E;
    for (int64_t s = 0; s < T * k; ++s) ++layer[(*ids)[s]];
  }
}

// out = SharedExperts(x) + routed, where `routed` [T, H] is the weighted sum of
// the routed experts. Shared experts see every token.
void AddSharedExperts(const ModelConfig& c, const MoeWeights& w, Backend& be, const float* x, int64_t T,
                      const float* routed, Workspace& ws, float* out) {
  const int64_t H = c.hidden_size;
  if (w.has_shared) {
    MlpForward(w.shared, be, x, T, H, c.moe_intermediate_size * c.n_shared_experts, ws, out);
    for (int64_t i = 0; i < T * H; ++i) out[i] += routed[i];
  } else {
    std::memcpy(out, routed, T * H * sizeof(float));
  }
}

}  // namespace

void MoeForward(const ModelConfig& c, const MoeWeights& w, Backend& be, const float* x, int64_t T,
                Workspace& ws, float* out) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  const int64_t inter = c.moe_intermediate_size;

  // 1. Route.
  int32_t* ids;     // [T, k]
  float* weights;   // [T, k]
  Route(c, w, be, x, T, ws, &ids, &weights);

  // 2. Group (token, slot) pairs by expert: counting sort.
  int32_t* count = Workspace::Get(ws.expert_count, E + 1);
  int32_t* offset = Workspace::Get(ws.expert_offset, E + 1);
  int32_t* rows = Workspace::Get(ws.expert_rows, T * k);  // slot index t*k+i, grouped by expert
  std::fill(count, count + E + 1, 0);
  for (int64_t s = 0; s < T * k; ++s) ++count[ids[s]];
  offset[0] = 0;
  for (int64_t e = 0; e < E; ++e) offset[e + 1] = offset[e] + count[e];
  std::fill(count, count + E, 0);
  for (int64_t s = 0; s < T * k; ++s) rows[offset[ids[s]] + count[ids[s]]++] = static_cast<int32_t>(s);

  // 3. Run each local expert on its tokens and accumulate with the router weights.
  float* acc = Workspace::Get(ws.moe_out, T * H);  // [T, H]
  std::fill(acc, acc + T * H, 0.0f);
  float* xg = Workspace::Get(ws.gathered, T * k * H);
  float* yg = Workspace::Get(ws.expert_out, T * k * H);
  for (size_t li = 0; li < w.expert_ids.size(); ++li) {
    const int64_t e = w.expert_ids[li];
    const int64_t n = count[e];
    if (n == 0) continue;
    const int32_t* r = rows + offset[e];
    for (int64_t i = 0; i < n; ++i) std::memcpy(xg + i * H, x + (r[i] / k) * H, H * sizeof(float));
    MlpForward(w.experts[li], be, xg, n, H, inter, ws, yg);
    for (int64_t i = 0; i < n; ++i) {
      float* dst = acc + (r[i] / k) * H;
      const float wt = weights[r[i]];
      const float* src = yg + i * H;
      for (int64_t j = 0; j < H; ++j) dst[j] += wt * src[j];
    }
  }

  // 4. Shared experts.
  AddSharedExperts(c, w, be, x, T, acc, ws, out);
}

absl::Status MoeForwardExchange(const ModelConfig& c, const MoeWeights& w, Backend& be, const float* x, int64_t T,
                                Workspace& ws, MoeExchange& ex, float* out) {
  const int64_t H = c.hidden_size, k = c.num_experts_per_tok;
  int32_t* ids;
  float* weights;
  Route(c, w, be, x, T, ws, &ids, &weights);

  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  RETURN_IF_ERROR(ex.Dispatch(x, T, ids, k));
  double comm_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto off = ex.local_expert_offsets();
  if (static_cast<size_t>(off.size()) != w.experts.size() + 1) {
    return absl::InternalError(absl::StrCat("expert placement gives this rank ", off.size() - 1,
                                            " experts but it loaded ", w.experts.size()));
  }
  for (size_t li = 0; li < w.experts.size(); ++li) {
    const int64_t n = off[li + 1] - off[li];
    if (n == 0) continue;
    MlpForward(w.experts[li], be, ex.received() + off[li] * H, n, H, c.moe_intermediate_size, ws,
               ex.expert_output() + off[li] * H);
  }
  float* slots = Workspace::Get(ws.expert_out, T * k * H + 1);  // [T * k, H]
  t0 = Clock::now();
  RETURN_IF_ERROR(ex.Combine(slots));
  comm_s += std::chrono::duration<double>(Clock::now() - t0).count();
  if (ws.profile != nullptr) ws.profile->dispatch_combine_s += comm_s;

  float* acc = Workspace::Get(ws.moe_out, T * H + 1);
  std::fill(acc, acc + T * H, 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < k; ++i) {
      const float wt = weights[t * k + i];
      const float* src = slots + (t * k + i) * H;
      float* dst = acc + t * H;
      for (int64_t j = 0; j < H; ++j) dst[j] += wt * src[j];
    }
  }
  AddSharedExperts(c, w, be, x, T, acc, ws, out);
  return absl::OkStatus();
}

}  // namespace deepshard
