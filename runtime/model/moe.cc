#include "runtime/model/moe.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {

absl::Status MlpForward(const MlpWeights& w, Backend& be, const float* x, int64_t m, int64_t hidden, int64_t inter,
                        float* out) {
  if (m == 0) return absl::OkStatus();
  const int64_t offsets[2] = {0, m};
  GroupedMlpParams p;
  p.x = x, p.ldx = hidden, p.experts = {&w, 1}, p.offsets = offsets, p.hidden = hidden, p.inter = inter;
  p.out = out, p.ldo = hidden;
  be.GroupedMlp(p);
  return absl::OkStatus();
}

namespace {

// Routes T tokens: router logits in f32 whatever the math mode (the output is
// discrete), then top-k ids and weights ([T, k]) in backend memory.
absl::Status Route(const ModelConfig& c, const RouterParams& router, const MoeWeights& w, const float* bias,
                   Backend& be, const float* x, int64_t T, Workspace& ws, int32_t** ids, float** weights) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  ASSIGN_OR_RETURN(float* logits, ws.router_logits.Get<float>(be, std::max<int64_t>(1, T * E), "router logits"));
  ASSIGN_OR_RETURN(*ids, ws.topk_ids.Get<int32_t>(be, T * k + 1, "routed expert ids"));
  ASSIGN_OR_RETURN(*weights, ws.topk_w.Get<float>(be, T * k + 1, "routing weights"));
  if (T > 0) {
    be.LinearExact(x, T, H, w.gate, logits, E);
    be.RouteTopK(router, logits, bias, T, *ids, *weights);
  }
  if (ws.profile != nullptr && T > 0) {
    RETURN_IF_ERROR(be.Synchronize());
    ws.host_ids.resize(static_cast<size_t>(T * k));
    be.CopyToHost(ws.host_ids.data(), *ids, T * k * sizeof(int32_t));
    std::vector<int64_t>& counts = ws.profile->expert_tokens;
    const size_t need = static_cast<size_t>((ws.profile_layer + 1) * E);
    if (counts.size() < need) counts.resize(need, 0);
    int64_t* layer = counts.data() + ws.profile_layer * E;
    for (int32_t e : ws.host_ids) ++layer[e];
  }
  return absl::OkStatus();
}

// out = SharedExperts(x) + routed, where `routed` [T, H] is the weighted sum of
// the routed experts. Shared experts see every token.
absl::Status AddSharedExperts(const ModelConfig& c, const MoeWeights& w, Backend& be, const float* x, int64_t T,
                              const float* routed, float* out) {
  const int64_t H = c.hidden_size;
  if (T == 0) return absl::OkStatus();
  if (w.has_shared) {
    RETURN_IF_ERROR(MlpForward(w.shared, be, x, T, H, c.moe_intermediate_size * c.n_shared_experts, out));
    be.Add(out, routed, T * H);
  } else {
    be.Copy(out, routed, T * H * sizeof(float));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status MoeForward(const ModelConfig& c, const RouterParams& router, const MoeWeights& w, const float* bias,
                        Backend& be, const float* x, int64_t T, Workspace& ws, float* out) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  if (static_cast<int64_t>(w.experts.size()) != E) {
    return absl::FailedPreconditionError(absl::StrCat("this rank holds ", w.experts.size(), " of ", E,
                                                      " routed experts: an MoE layer without an exchange needs all"));
  }
  if (T == 0) return absl::OkStatus();

  // 1. Route.
  int32_t* ids;     // [T, k]
  float* weights;   // [T, k]
  RETURN_IF_ERROR(Route(c, router, w, bias, be, x, T, ws, &ids, &weights));

  // 2. Group the (token, choice) slots by expert; the host learns the counts.
  const int64_t n = T * k;
  ASSIGN_OR_RETURN(int32_t* offsets, ws.expert_offsets.Get<int32_t>(be, E + 1, "expert offsets"));
  ASSIGN_OR_RETURN(int32_t* order, ws.expert_order.Get<int32_t>(be, n, "slots by expert"));
  be.GroupByExpert(ids, n, E, offsets, order);
  RETURN_IF_ERROR(be.Synchronize());
  ws.host_offsets.resize(E + 1);
  ws.host_offsets64.resize(E + 1);
  be.CopyToHost(ws.host_offsets.data(), offsets, (E + 1) * sizeof(int32_t));
  std::copy(ws.host_offsets.begin(), ws.host_offsets.end(), ws.host_offsets64.begin());

  // 3. Every expert on its rows, then each row back to its slot.
  ASSIGN_OR_RETURN(float* xg, ws.gathered.Get<float>(be, n * H, "rows by expert"));
  ASSIGN_OR_RETURN(float* yg, ws.expert_out.Get<float>(be, n * H, "expert outputs"));
  ASSIGN_OR_RETURN(float* slots, ws.slots.Get<float>(be, n * H, "expert outputs by slot"));
  be.GatherRows(xg, H, x, H, order, n, H, static_cast<int32_t>(k));
  GroupedMlpParams g;
  g.x = xg, g.ldx = H, g.experts = w.experts, g.offsets = ws.host_offsets64;
  g.hidden = H, g.inter = c.moe_intermediate_size, g.out = yg, g.ldo = H;
  be.GroupedMlp(g);
  be.ScatterRows(slots, H, yg, H, order, n, H);

  // 4. Weighted sum over each token's choices, then the shared experts.
  ASSIGN_OR_RETURN(float* acc, ws.moe_out.Get<float>(be, T * H, "routed output"));
  be.WeightedSumRows(acc, slots, weights, T, k, H);
  return AddSharedExperts(c, w, be, x, T, acc, out);
}

absl::Status MoeForwardExchange(const ModelConfig& c, const RouterParams& router, const MoeWeights& w,
                                const float* bias, Backend& be, const float* x, int64_t T, Workspace& ws,
                                ExpertExchange& ex, float* out) {
  const int64_t H = c.hidden_size, k = c.num_experts_per_tok;
  int32_t* ids;
  float* weights;
  RETURN_IF_ERROR(Route(c, router, w, bias, be, x, T, ws, &ids, &weights));
  RETURN_IF_ERROR(be.Synchronize());  // the exchange reads ids and x

  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  RETURN_IF_ERROR(ex.Dispatch(x, T, ids, k));
  double comm_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto off = ex.local_expert_offsets();
  if (static_cast<size_t>(off.size()) != w.experts.size() + 1) {
    return absl::InternalError(absl::StrCat("expert placement gives this rank ", off.size() - 1,
                                            " experts but it loaded ", w.experts.size()));
  }
  GroupedMlpParams g;
  g.x = ex.received(), g.ldx = H, g.experts = w.experts, g.offsets = off;
  g.hidden = H, g.inter = c.moe_intermediate_size, g.out = ex.expert_output(), g.ldo = H;
  be.GroupedMlp(g);
  RETURN_IF_ERROR(be.Synchronize());  // the combine reads the expert outputs
  ASSIGN_OR_RETURN(float* slots, ws.slots.Get<float>(be, T * k * H + 1, "expert outputs by slot"));  // [T * k, H]
  t0 = Clock::now();
  RETURN_IF_ERROR(ex.Combine(slots));
  comm_s += std::chrono::duration<double>(Clock::now() - t0).count();
  if (ws.profile != nullptr) ws.profile->dispatch_combine_s += comm_s;

  ASSIGN_OR_RETURN(float* acc, ws.moe_out.Get<float>(be, T * H + 1, "routed output"));
  if (T > 0) be.WeightedSumRows(acc, slots, weights, T, k, H);
  return AddSharedExperts(c, w, be, x, T, acc, out);
}

}  // namespace deepshard
