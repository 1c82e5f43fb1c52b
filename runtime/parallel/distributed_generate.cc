#include "runtime/parallel/distributed_generate.h"

#include <algorithm>
#include <memory>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {
namespace {

// Tags of the point-to-point streams; one per micro-batch.
constexpr int kHiddenTag = 100;
constexpr int kTokenTag = 10000;

struct Seq {
  int prompt = 0;                // index into prompts
  std::unique_ptr<KvCache> cache;
  int32_t next = -1;             // token to feed at the next step
  bool finished = false;
};

}  // namespace

absl::StatusOr<DistributedResult> DistributedGenerate(DeepseekModel& model, const ParallelConfig& pc,
                                                      Communicator& world, Communicator& stage,
                                                      const ExpertPlacement& placement,
                                                      const std::vector<std::vector<int32_t>>& prompts,
                                                      const GenerateOptions& opts, bool want_logits) {
  RETURN_IF_ERROR(opts.sampling.Validate());
  const ModelConfig& c = model.config();
  const int64_t H = c.hidden_size, V = c.vocab_size, steps = opts.max_new_tokens;
  const int n_prompts = static_cast<int>(prompts.size());
  const bool first = pc.stage == 0, last = pc.stage == pc.pp - 1;
  if (steps < 0) return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  for (int i = 0; i < n_prompts; ++i) {
    if (prompts[i].empty()) return absl::InvalidArgumentError(absl::StrCat("prompt ", i, " is empty"));
    if (static_cast<int64_t>(prompts[i].size()) > model.max_context() - steps) {
      return absl::OutOfRangeError(absl::StrCat("prompt ", i, " (", prompts[i].size(), " tokens) plus ", steps,
                                                " new tokens exceeds the context limit of ", model.max_context()));
    }
  }

  // This column's sequences, split round-robin into M micro-batches.
  const int M = pc.pp;
  std::vector<std::vector<Seq>> micro(M);
  int j = 0;
  for (int i = pc.ep_rank; i < n_prompts; i += pc.ep, ++j) {
    Seq s;
    s.prompt = i;
    s.cache = model.NewCache(static_cast<int64_t>(prompts[i].size()) + steps);
    micro[j % M].push_back(std::move(s));
  }
  std::unique_ptr<MoeExchange> exchange;
  if (pc.ep > 1) exchange = std::make_unique<MoeExchange>(stage, placement, H);

  std::vector<int32_t> out_tokens(static_cast<size_t>(n_prompts) * steps, -1);
  std::vector<float> out_logits(want_logits ? static_cast<size_t>(n_prompts) * steps * V : 0, 0.0f);
  // Samplers only where sampling happens: the last stage, this column's prompts.
  std::vector<std::unique_ptr<Sampler>> samplers(n_prompts);
  if (last) {
    for (const auto& mb : micro) {
      for (const Seq& s : mb) {
        SamplingParams sp = opts.sampling;
        sp.seed += static_cast<uint64_t>(s.prompt);
        samplers[s.prompt] = std::make_unique<Sampler>(V, sp);
      }
    }
  }
  std::vector<float> x, logits;
  std::vector<SequenceChunk> chunks;
  std::vector<int32_t> msg;
  // The last stage sends tokens without blocking, one buffer per micro-batch: a
  // blocking send could wait on stage 0, which may itself be blocked sending the
  // next micro-batch's hidden states to stage 1 (a cycle once messages exceed
  // MPI's eager limit).
  std::vector<std::vector<int32_t>> token_msg(M);
  std::vector<std::vector<int64_t>> token_reqs(M);
  std::vector<int> active;  // indices into micro[m] of this item's sequences

  for (int64_t step = 0; step < steps; ++step) {
    for (int m = 0; m < M; ++m) {
      std::vector<Seq>& seqs = micro[m];
      // Stages other than the last learn the sampled tokens (and which
      // sequences finished) from the last stage of their column.
      if (step > 0 && !last) {
        msg.assign(seqs.size() + 1, -1);
        RETURN_IF_ERROR(world.Recv(msg.data(), static_cast<int64_t>(seqs.size()) + 1, CommDType::kI32,
                                   pc.RankOf(pc.pp - 1, pc.ep_rank), kTokenTag + m));
        for (size_t q = 0; q < seqs.size(); ++q) {
          seqs[q].next = msg[q];
          seqs[q].finished = msg[q] < 0;
        }
      }
      chunks.clear();
      active.clear();
      int64_t T = 0;
      for (size_t q = 0; q < seqs.size(); ++q) {
        Seq& s = seqs[q];
        if (s.finished) continue;
        const auto& p = prompts[s.prompt];
        SequenceChunk ch;
        ch.cache = s.cache.get();
        ch.start_pos = s.cache->length();
        if (step == 0) {
          ch.tokens = p.data();
          ch.n_tokens = static_cast<int64_t>(p.size());
        } else {
          ch.tokens = &s.next;
          ch.n_tokens = 1;
        }
        chunks.push_back(ch);
        active.push_back(static_cast<int>(q));
        T += ch.n_tokens;
      }
      x.resize(std::max<int64_t>(1, T * H));
      if (first) {
        if (T > 0) RETURN_IF_ERROR(model.Embed(chunks, x.data()));
      } else {
        RETURN_IF_ERROR(world.Recv(x.data(), T * H, CommDType::kF32, pc.RankOf(pc.stage - 1, pc.ep_rank),
                                   kHiddenTag + m));
      }
      RETURN_IF_ERROR(model.RunLayers(chunks, x.data(), exchange.get()));
      if (!last) {
        RETURN_IF_ERROR(world.Send(x.data(), T * H, CommDType::kF32, pc.RankOf(pc.stage + 1, pc.ep_rank),
                                   kHiddenTag + m));
        continue;
      }
      // Last stage: sample, record, tell the column's other stages.
      logits.resize(std::max<size_t>(1, chunks.size()) * V);
      if (!chunks.empty()) RETURN_IF_ERROR(model.Head(chunks, x.data(), false, logits.data()));
      for (size_t a = 0; a < active.size(); ++a) {
        Seq& s = seqs[active[a]];
        const float* lg = logits.data() + a * V;
        const int32_t tok = samplers[s.prompt]->Sample(lg);
        out_tokens[static_cast<size_t>(s.prompt) * steps + step] = tok;
        if (want_logits) std::copy(lg, lg + V, out_logits.begin() + (static_cast<size_t>(s.prompt) * steps + step) * V);
        s.next = tok;
        if (opts.stop_at_eos && tok == c.eos_token_id) s.finished = true;
      }
      if (step + 1 < steps && pc.pp > 1) {
        for (int64_t req : token_reqs[m]) RETURN_IF_ERROR(world.Wait(req));  // the buffer is free again
        token_reqs[m].clear();
        std::vector<int32_t>& out = token_msg[m];
        out.assign(seqs.size() + 1, -1);
        for (size_t q = 0; q < seqs.size(); ++q) out[q] = seqs[q].finished ? -1 : seqs[q].next;
        for (int s = 0; s + 1 < pc.pp; ++s) {
          ASSIGN_OR_RETURN(int64_t req, world.ISend(out.data(), static_cast<int64_t>(seqs.size()) + 1,
                                                    CommDType::kI32, pc.RankOf(s, pc.ep_rank), kTokenTag + m));
          token_reqs[m].push_back(req);
        }
      }
    }
  }

  for (auto& reqs : token_reqs) {
    for (int64_t req : reqs) RETURN_IF_ERROR(world.Wait(req));
  }
  // Every rank learns every result (the last stage of each column had them).
  RETURN_IF_ERROR(world.AllReduce(out_tokens.data(), static_cast<int64_t>(out_tokens.size()), CommDType::kI32,
                                  ReduceOp::kMax));
  if (want_logits) {
    RETURN_IF_ERROR(world.AllReduce(out_logits.data(), static_cast<int64_t>(out_logits.size()), CommDType::kF32,
                                    ReduceOp::kSum));
  }
  DistributedResult r;
  r.tokens.resize(n_prompts);
  if (want_logits) r.step_logits.resize(n_prompts);
  for (int i = 0; i < n_prompts; ++i) {
    for (int64_t s = 0; s < steps; ++s) {
      const int32_t tok = out_tokens[static_cast<size_t>(i) * steps + s];
      if (tok < 0) break;
      r.tokens[i].push_back(tok);
      if (want_logits) {
        auto b = out_logits.begin() + (static_cast<size_t>(i) * steps + s) * V;
        r.step_logits[i].insert(r.step_logits[i].end(), b, b + V);
      }
    }
  }
  return r;
}

}  // namespace deepshard
