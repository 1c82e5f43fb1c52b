#include "serve/stage_runner.h"

#include <cmath>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard::serve {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

StageRunner::StageRunner(DeepseekModel& model, const ParallelConfig& pc, Communicator* world,
                         Communicator* stage, const ExpertPlacement* placement, PagedKvCache& pool)
    : model_(model), pc_(pc), link_(world, pc), pool_(pool) {
  if (pc.ep > 1) exchange_ = std::make_unique<MoeExchange>(*stage, *placement, model.config().hidden_size);
  model_.set_profile(&profile_);
}

absl::Status StageRunner::Validate(const WirePlan& plan) const {
  if (static_cast<int>(plan.columns.size()) != pc_.ep || static_cast<int>(plan.copies.size()) != pc_.ep) {
    return absl::InvalidArgumentError(absl::StrCat("plan ", plan.id, " has ", plan.columns.size(),
                                                   " columns, the grid has ep = ", pc_.ep));
  }
  const int64_t bs = pool_.block_size(), nb = pool_.n_blocks(), V = model_.config().vocab_size;
  for (const PlanChunk& ch : plan.columns[pc_.ep_rank]) {
    // start_pos is checked before the sum so a huge one cannot overflow past the check.
    const bool in_range = ch.start_pos >= 0 && ch.start_pos < model_.max_context() && ch.n_tokens() >= 1;
    const int64_t end = in_range ? ch.start_pos + ch.n_tokens() : -1;
    if (!in_range || end > model_.max_context()) {
      return absl::InvalidArgumentError(absl::StrCat("plan ", plan.id, ": sequence ", ch.seq_id, " chunk [",
                                                     ch.start_pos, ", ", end, ") is outside [0, ",
                                                     model_.max_context(), ")"));
    }
    if (static_cast<int64_t>(ch.blocks.size()) != (end + bs - 1) / bs) {
      return absl::InvalidArgumentError(absl::StrCat("plan ", plan.id, ": sequence ", ch.seq_id, " has ",
                                                     ch.blocks.size(), " blocks for ", end, " tokens"));
    }
    for (int32_t b : ch.blocks) {
      if (b < 0 || b >= nb) {
        return absl::InvalidArgumentError(
            absl::StrCat("plan ", plan.id, ": sequence ", ch.seq_id, " block ", b, " outside [0, ", nb, ")"));
      }
    }
    for (int32_t t : ch.tokens) {
      if (t < 0 || t >= V) {
        return absl::InvalidArgumentError(
            absl::StrCat("plan ", plan.id, ": sequence ", ch.seq_id, " token ", t, " outside [0, ", V, ")"));
      }
    }
    if (ch.samples) {
      absl::Status st = ch.sampling.Validate(V);
      if (!st.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("plan ", plan.id, ": sequence ", ch.seq_id, ": ", st.message()));
      }
    }
    if (!ch.allowed.empty() && static_cast<int64_t>(ch.allowed.size()) != (V + 63) / 64) {
      return absl::InvalidArgumentError(absl::StrCat("plan ", plan.id, ": sequence ", ch.seq_id, " has an allowed-token "
                                                     "mask of ", ch.allowed.size(), " words for a vocabulary of ", V));
    }
    if (ch.logprobs > 20 || ch.logprobs < -1 || (ch.next_token < -1 || ch.next_token >= V)) {
      return absl::InvalidArgumentError(absl::StrCat("plan ", plan.id, ": sequence ", ch.seq_id,
                                                     " asks for logprobs ", ch.logprobs, " (next token ",
                                                     ch.next_token, ")"));
    }
  }
  for (const BlockCopy& c : plan.copies[pc_.ep_rank]) {
    if (c.src < 0 || c.src >= nb || c.dst < 0 || c.dst >= nb) {
      return absl::InvalidArgumentError(absl::StrCat("plan ", plan.id, ": block copy outside [0, ", nb, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ChunkResult>> StageRunner::Run(const WirePlan& plan) {
  const auto t_start = Clock::now();
  const double model_before = profile_.attention_s + profile_.experts_s;
  double transfer = 0;
  RETURN_IF_ERROR(Validate(plan));
  for (int64_t id : plan.released) {
    views_.erase(id);
    samplers_.erase(id);
  }
  const std::vector<PlanChunk>& mine = plan.columns[pc_.ep_rank];
  pool_.ApplyCopies(plan.copies[pc_.ep_rank]);

  // Point each sequence's view at the blocks the plan gives it.
  chunks_.clear();
  int64_t T = 0;
  for (const PlanChunk& ch : mine) {
    std::unique_ptr<KvCache>& view = views_[ch.seq_id];
    if (!view) view = pool_.NewSequence();
    BlockTable& table = view->block_table();
    table.blocks = ch.blocks;
    table.n_tokens = ch.start_pos + ch.n_tokens();
    view->set_length(ch.start_pos);
    chunks_.push_back({view.get(), ch.start_pos, ch.tokens.data(), ch.n_tokens()});
    T += ch.n_tokens();
  }

  const int64_t H = model_.config().hidden_size, V = model_.config().vocab_size;
  // Host staging for the residual stream at stage boundaries (grow-only).
  if ((link_.receives() || link_.sends()) && static_cast<int64_t>(x_.size()) < T * H) x_.resize(T * H);
  if (pc_.is_first_stage()) {
    RETURN_IF_ERROR(model_.Embed(chunks_));
  } else {
    const auto t0 = Clock::now();
    RETURN_IF_ERROR(link_.Receive(x_.data(), T, H));
    transfer += Since(t0);
    RETURN_IF_ERROR(model_.WriteHidden(x_.data(), T));
  }
  RETURN_IF_ERROR(model_.RunLayers(chunks_, exchange_.get()));

  std::vector<ChunkResult> results;
  if (!last_stage()) {
    RETURN_IF_ERROR(model_.ReadHidden(x_.data(), T));
    const auto t0 = Clock::now();
    RETURN_IF_ERROR(link_.Send(x_.data(), T, H));
    transfer += Since(t0);
  } else if (!chunks_.empty()) {
    // Logits only for the chunks that sample (a mid-prompt chunk needs none):
    // the last token row of each.
    std::vector<int32_t>& rows = sampling_rows_;
    std::vector<size_t>& which = sampling_index_;
    rows.clear();
    which.clear();
    int64_t offset = 0;
    for (size_t i = 0; i < mine.size(); ++i) {
      offset += mine[i].n_tokens();
      if (!mine[i].samples) continue;
      rows.push_back(static_cast<int32_t>(offset - 1));
      which.push_back(i);
    }
    if (static_cast<int64_t>(logits_.size()) < std::max<int64_t>(1, static_cast<int64_t>(which.size()) * V)) {
      logits_.resize(std::max<int64_t>(1, static_cast<int64_t>(which.size()) * V));
    }
    RETURN_IF_ERROR(model_.Head(rows, logits_.data()));
    // Non-finite logits (NaN/Inf from the weights or an overflow in the
    // forward pass) would sample garbage: fail the step naming the sequence.
    for (size_t j = 0; j < which.size(); ++j) {
      const float* row = logits_.data() + j * V;
      bool bad = false;
      for (int64_t v = 0; v < V; ++v) bad |= !std::isfinite(row[v]);
      if (bad) {
        const PlanChunk& ch = mine[which[j]];
        int64_t v = 0;
        while (std::isfinite(row[v])) ++v;
        return absl::InternalError(absl::StrCat("step ", steps_, ": non-finite logits (", row[v], " for token ", v,
                                                ") for sequence ", ch.seq_id, " at position ",
                                                ch.start_pos + ch.n_tokens() - 1,
                                                "; the weights or the forward pass produced NaN/Inf"));
      }
    }
    results.reserve(mine.size());
    for (const PlanChunk& ch : mine) results.push_back({ch.seq_id, ch.n_tokens(), -1, false, {}, {}, {}});
    const int32_t eos = static_cast<int32_t>(model_.config().eos_token_id);
    for (size_t j = 0; j < which.size(); ++j) {
      const PlanChunk& ch = mine[which[j]];
      const float* logits = logits_.data() + j * V;
      std::unique_ptr<Sampler>& s = samplers_[ch.seq_id];
      if (!s) {
        s = std::make_unique<Sampler>(V, ch.sampling, ch.ignore_eos ? -1 : eos);
        s->SetPrompt(ch.prompt);
      }
      const int32_t tok = s->Sample(logits, ch.allowed.empty() ? nullptr : ch.allowed.data());
      ChunkResult& r = results[which[j]];
      r.token = tok;
      r.eos = s->IsStop(tok);
      if (ch.return_logits) r.logits.assign(logits, logits + V);
      if (ch.logprobs >= 0) r.logprob = LogSoftmaxAt(logits, V, tok, ch.logprobs);
    }
    RETURN_IF_ERROR(PromptLogprobs(mine, results));
  }
  transfer_s_ += transfer;
  const double model_s = profile_.attention_s + profile_.experts_s - model_before;
  other_s_ += std::max(0.0, Since(t_start) - transfer - model_s);
  ++steps_;
  Publish();
  return results;
}

absl::Status StageRunner::PromptLogprobs(const std::vector<PlanChunk>& mine, std::vector<ChunkResult>& results) {
  // Echo: every prompt row's logits, in groups so that the host buffer stays
  // at most kGroup x vocab floats however long the chunk.
  constexpr int64_t kGroup = 32;
  const int64_t V = model_.config().vocab_size;
  int64_t offset = 0;
  for (size_t i = 0; i < mine.size(); offset += mine[i].n_tokens(), ++i) {
    const PlanChunk& ch = mine[i];
    const int64_t n = ch.n_prompt_logprobs();
    if (n == 0) continue;
    if (static_cast<int64_t>(logits_.size()) < std::min(n, kGroup) * V) logits_.resize(std::min(n, kGroup) * V);
    results[i].prompt_logprobs.reserve(n);
    for (int64_t g = 0; g < n; g += kGroup) {
      const int64_t m = std::min(kGroup, n - g);
      sampling_rows_.clear();
      for (int64_t r = 0; r < m; ++r) sampling_rows_.push_back(static_cast<int32_t>(offset + g + r));
      RETURN_IF_ERROR(model_.Head(sampling_rows_, logits_.data()));
      for (int64_t r = 0; r < m; ++r) {
        const int64_t row = g + r;  // predicts position start_pos + row + 1
        const int32_t next = row + 1 < ch.n_tokens() ? ch.tokens[row + 1] : ch.next_token;
        if (next < 0) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", ch.seq_id, ": the plan does not give the "
                                                         "prompt token after position ", ch.start_pos + row));
        }
        results[i].prompt_logprobs.push_back(LogSoftmaxAt(logits_.data() + r * V, V, next, std::max(0, ch.logprobs)));
      }
    }
  }
  return absl::OkStatus();
}

RankStats StageRunner::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return snapshot_;
}

void StageRunner::Publish() {
  RankStats s;
  s.attention_s = profile_.attention_s;
  s.experts_s = std::max(0.0, profile_.experts_s - profile_.dispatch_combine_s);
  s.dispatch_combine_s = profile_.dispatch_combine_s;
  s.transfer_s = transfer_s_;
  s.other_s = other_s_;
  s.steps = steps_;
  const int64_t E = model_.config().n_routed_experts;
  s.n_experts = E;
  if (E > 0) {
    const int64_t begin = model_.weights().spec.layer_begin;
    const int64_t layers = static_cast<int64_t>(profile_.expert_tokens.size()) / E;
    s.expert_layer_begin = std::min(begin, layers);
    s.expert_tokens.assign(profile_.expert_tokens.begin() + s.expert_layer_begin * E, profile_.expert_tokens.end());
  }
  std::lock_guard<std::mutex> lock(mu_);
  snapshot_ = std::move(s);
}

}  // namespace deepshard::serve
