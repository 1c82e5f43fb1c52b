#include "serve/step_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "serve/wire.h"

namespace deepshard::serve {
namespace {

constexpr uint32_t kPlanVersion = 2, kResultsVersion = 2, kStatsVersion = 1;

// A count read from the wire, bounded by the bytes left (each element takes
// at least `min_bytes`), so a lying count cannot make us allocate.
absl::StatusOr<uint64_t> Count(WireReader& r, size_t min_bytes, std::string_view what) {
  ASSIGN_OR_RETURN(uint64_t n, r.U64(what));
  if (n > r.remaining() / min_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": count ", n, " exceeds the ", r.remaining(),
                                                   " bytes left"));
  }
  return n;
}

absl::Status CheckVersion(WireReader& r, uint32_t want, std::string_view what) {
  ASSIGN_OR_RETURN(uint32_t v, r.U32(absl::StrCat(std::string(what), " version")));
  if (v != want) return absl::InvalidArgumentError(absl::StrCat(std::string(what), " version ", v, ", expected ", want));
  return absl::OkStatus();
}

void PutSampling(WireWriter& w, const SamplingParams& s) {
  w.PutF32(s.temperature);
  w.PutI64(s.top_k);
  w.PutF32(s.top_p);
  w.PutF32(s.min_p);
  w.PutU64(s.seed);
  w.PutF32(s.presence_penalty);
  w.PutF32(s.frequency_penalty);
  w.PutF32(s.repetition_penalty);
  w.PutI64(s.min_tokens);
  w.PutI32Vector(s.stop_token_ids);
  w.PutU64(s.logit_bias.size());
  for (const auto& [t, b] : s.logit_bias) {
    w.PutI32(t);
    w.PutF32(b);
  }
}

absl::Status GetSampling(WireReader& r, SamplingParams& s) {
  ASSIGN_OR_RETURN(s.temperature, r.F32("chunk temperature"));
  ASSIGN_OR_RETURN(s.top_k, r.I64("chunk top_k"));
  ASSIGN_OR_RETURN(s.top_p, r.F32("chunk top_p"));
  ASSIGN_OR_RETURN(s.min_p, r.F32("chunk min_p"));
  ASSIGN_OR_RETURN(s.seed, r.U64("chunk seed"));
  ASSIGN_OR_RETURN(s.presence_penalty, r.F32("chunk presence_penalty"));
  ASSIGN_OR_RETURN(s.frequency_penalty, r.F32("chunk frequency_penalty"));
  ASSIGN_OR_RETURN(s.repetition_penalty, r.F32("chunk repetition_penalty"));
  ASSIGN_OR_RETURN(s.min_tokens, r.I64("chunk min_tokens"));
  ASSIGN_OR_RETURN(s.stop_token_ids, r.I32Vector("chunk stop_token_ids"));
  ASSIGN_OR_RETURN(uint64_t n_bias, Count(r, 8, "chunk logit_bias"));
  s.logit_bias.resize(n_bias);
  for (auto& [t, b] : s.logit_bias) {
    ASSIGN_OR_RETURN(t, r.I32("logit_bias token"));
    ASSIGN_OR_RETURN(b, r.F32("logit_bias value"));
  }
  return absl::OkStatus();
}

void PutLogprob(WireWriter& w, const TokenLogprob& l) {
  w.PutI32(l.token);
  w.PutF32(l.logprob);
  w.PutU64(l.top.size());
  for (const auto& [t, v] : l.top) {
    w.PutI32(t);
    w.PutF32(v);
  }
}

absl::Status GetLogprob(WireReader& r, TokenLogprob& l) {
  ASSIGN_OR_RETURN(l.token, r.I32("logprob token"));
  ASSIGN_OR_RETURN(l.logprob, r.F32("logprob value"));
  ASSIGN_OR_RETURN(uint64_t n, Count(r, 8, "top logprobs"));
  l.top.resize(n);
  for (auto& [t, v] : l.top) {
    ASSIGN_OR_RETURN(t, r.I32("top logprob token"));
    ASSIGN_OR_RETURN(v, r.F32("top logprob value"));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t PlanChunk::n_prompt_logprobs() const {
  if (!prompt_logprobs) return 0;
  // Rows start_pos .. start_pos + n - 1 predict positions + 1, counted while < prompt_len.
  return std::clamp<int64_t>(prompt_len - 1 - start_pos, 0, n_tokens());
}

std::string EncodePlan(const WirePlan& p) {
  WireWriter w;
  w.PutU32(kPlanVersion);
  w.PutI64(p.id);
  w.PutU64(p.columns.size());
  for (const auto& column : p.columns) {
    w.PutU64(column.size());
    for (const PlanChunk& c : column) {
      w.PutI64(c.seq_id);
      w.PutI64(c.start_pos);
      w.PutU8(static_cast<uint8_t>((c.samples ? 1 : 0) | (c.ignore_eos ? 2 : 0) | (c.return_logits ? 4 : 0) |
                                   (c.prompt_logprobs ? 8 : 0)));
      w.PutI32(c.logprobs);
      w.PutI64(c.prompt_len);
      w.PutI32(c.next_token);
      PutSampling(w, c.sampling);
      w.PutI32Vector(c.prompt);
      w.PutU64(c.allowed.size());
      for (uint64_t word : c.allowed) w.PutU64(word);
      w.PutI32Vector(c.tokens);
      w.PutI32Vector(c.blocks);
    }
  }
  w.PutU64(p.copies.size());
  for (const auto& column : p.copies) {
    w.PutU64(column.size());
    for (const BlockCopy& c : column) {
      w.PutI32(c.src);
      w.PutI32(c.dst);
    }
  }
  w.PutU64(p.released.size());
  for (int64_t id : p.released) w.PutI64(id);
  return w.Take();
}

absl::StatusOr<WirePlan> DecodePlan(std::string_view bytes) {
  WireReader r(bytes);
  WirePlan p;
  RETURN_IF_ERROR(CheckVersion(r, kPlanVersion, "plan"));
  ASSIGN_OR_RETURN(p.id, r.I64("plan id"));
  ASSIGN_OR_RETURN(uint64_t n_columns, Count(r, 8, "plan columns"));
  p.columns.resize(n_columns);
  for (auto& column : p.columns) {
    ASSIGN_OR_RETURN(uint64_t n, Count(r, 120, "plan chunks"));
    column.resize(n);
    for (PlanChunk& c : column) {
      ASSIGN_OR_RETURN(c.seq_id, r.I64("chunk seq_id"));
      ASSIGN_OR_RETURN(c.start_pos, r.I64("chunk start_pos"));
      ASSIGN_OR_RETURN(uint8_t flags, r.U8("chunk flags"));
      c.samples = flags & 1;
      c.ignore_eos = flags & 2;
      c.return_logits = flags & 4;
      c.prompt_logprobs = flags & 8;
      ASSIGN_OR_RETURN(c.logprobs, r.I32("chunk logprobs"));
      ASSIGN_OR_RETURN(c.prompt_len, r.I64("chunk prompt_len"));
      ASSIGN_OR_RETURN(c.next_token, r.I32("chunk next_token"));
      RETURN_IF_ERROR(GetSampling(r, c.sampling));
      ASSIGN_OR_RETURN(c.prompt, r.I32Vector("chunk prompt"));
      ASSIGN_OR_RETURN(uint64_t n_words, Count(r, 8, "chunk allowed"));
      c.allowed.resize(n_words);
      for (uint64_t& word : c.allowed) {
        ASSIGN_OR_RETURN(word, r.U64("chunk allowed word"));
      }
      ASSIGN_OR_RETURN(c.tokens, r.I32Vector("chunk tokens"));
      ASSIGN_OR_RETURN(c.blocks, r.I32Vector("chunk blocks"));
    }
  }
  ASSIGN_OR_RETURN(uint64_t n_copy_columns, Count(r, 8, "plan copy columns"));
  p.copies.resize(n_copy_columns);
  for (auto& column : p.copies) {
    ASSIGN_OR_RETURN(uint64_t n, Count(r, 8, "plan copies"));
    column.resize(n);
    for (BlockCopy& c : column) {
      ASSIGN_OR_RETURN(c.src, r.I32("copy src"));
      ASSIGN_OR_RETURN(c.dst, r.I32("copy dst"));
    }
  }
  ASSIGN_OR_RETURN(uint64_t n_released, Count(r, 8, "plan released"));
  p.released.resize(n_released);
  for (int64_t& id : p.released) {
    ASSIGN_OR_RETURN(id, r.I64("released id"));
  }
  RETURN_IF_ERROR(r.Finish());
  return p;
}

std::string EncodeResults(const ColumnResults& c) {
  WireWriter w;
  w.PutU32(kResultsVersion);
  w.PutI64(c.plan_id);
  w.PutI32(c.column);
  w.PutU64(c.results.size());
  for (const ChunkResult& r : c.results) {
    w.PutI64(r.seq_id);
    w.PutI64(r.n_tokens);
    w.PutI32(r.token);
    w.PutU8(static_cast<uint8_t>((r.eos ? 1 : 0) | (r.logits.empty() ? 0 : 2) | (r.logprob ? 4 : 0)));
    if (!r.logits.empty()) {
      w.PutU64(r.logits.size());
      for (float f : r.logits) w.PutF32(f);
    }
    if (r.logprob) PutLogprob(w, *r.logprob);
    w.PutU64(r.prompt_logprobs.size());
    for (const TokenLogprob& l : r.prompt_logprobs) PutLogprob(w, l);
  }
  return w.Take();
}

absl::StatusOr<ColumnResults> DecodeResults(std::string_view bytes) {
  WireReader r(bytes);
  ColumnResults c;
  RETURN_IF_ERROR(CheckVersion(r, kResultsVersion, "results"));
  ASSIGN_OR_RETURN(c.plan_id, r.I64("results plan id"));
  ASSIGN_OR_RETURN(c.column, r.I32("results column"));
  ASSIGN_OR_RETURN(uint64_t n, Count(r, 29, "results"));
  c.results.resize(n);
  for (ChunkResult& x : c.results) {
    ASSIGN_OR_RETURN(x.seq_id, r.I64("result seq_id"));
    ASSIGN_OR_RETURN(x.n_tokens, r.I64("result n_tokens"));
    ASSIGN_OR_RETURN(x.token, r.I32("result token"));
    ASSIGN_OR_RETURN(uint8_t flags, r.U8("result flags"));
    x.eos = (flags & 1) != 0;
    if (flags & 2) {
      ASSIGN_OR_RETURN(uint64_t n_logits, Count(r, 4, "result logits"));
      x.logits.resize(n_logits);
      for (float& f : x.logits) {
        ASSIGN_OR_RETURN(f, r.F32("result logit"));
      }
    }
    if (flags & 4) {
      x.logprob.emplace();
      RETURN_IF_ERROR(GetLogprob(r, *x.logprob));
    }
    ASSIGN_OR_RETURN(uint64_t n_prompt, Count(r, 16, "result prompt logprobs"));
    x.prompt_logprobs.resize(n_prompt);
    for (TokenLogprob& l : x.prompt_logprobs) RETURN_IF_ERROR(GetLogprob(r, l));
  }
  RETURN_IF_ERROR(r.Finish());
  return c;
}

std::string EncodeStats(const RankStats& s) {
  WireWriter w;
  w.PutU32(kStatsVersion);
  w.PutF64(s.attention_s);
  w.PutF64(s.experts_s);
  w.PutF64(s.dispatch_combine_s);
  w.PutF64(s.transfer_s);
  w.PutF64(s.other_s);
  w.PutI64(s.steps);
  w.PutI64(s.expert_layer_begin);
  w.PutI64(s.n_experts);
  w.PutU64(s.expert_tokens.size());
  for (int64_t v : s.expert_tokens) w.PutI64(v);
  return w.Take();
}

absl::StatusOr<RankStats> DecodeStats(std::string_view bytes) {
  WireReader r(bytes);
  RankStats s;
  RETURN_IF_ERROR(CheckVersion(r, kStatsVersion, "stats"));
  ASSIGN_OR_RETURN(s.attention_s, r.F64("attention_s"));
  ASSIGN_OR_RETURN(s.experts_s, r.F64("experts_s"));
  ASSIGN_OR_RETURN(s.dispatch_combine_s, r.F64("dispatch_combine_s"));
  ASSIGN_OR_RETURN(s.transfer_s, r.F64("transfer_s"));
  ASSIGN_OR_RETURN(s.other_s, r.F64("other_s"));
  ASSIGN_OR_RETURN(s.steps, r.I64("steps"));
  ASSIGN_OR_RETURN(s.expert_layer_begin, r.I64("expert_layer_begin"));
  ASSIGN_OR_RETURN(s.n_experts, r.I64("n_experts"));
  ASSIGN_OR_RETURN(uint64_t n, Count(r, 8, "expert_tokens"));
  s.expert_tokens.resize(n);
  for (int64_t& v : s.expert_tokens) {
    ASSIGN_OR_RETURN(v, r.I64("expert_tokens"));
  }
  RETURN_IF_ERROR(r.Finish());
  return s;
}

}  // namespace deepshard::serve
