// deepshard generate: continue prompts on one rank, or across pp × ep MPI ranks
// when started by mpirun/srun. Either way it is a client of the serving engine
// (serve/offline.h): every prompt is submitted, the job runs until idle, and
// rank 0 prints the results in prompt order.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "boost/json.hpp"
#include "comm/mpi_communicator.h"
#include "comm/parallel_config.h"
#include "launcher/commands.h"
#include "launcher/flags.h"
#include "base/status_macros.h"
#include "launcher/mpi_bootstrap.h"
#include "launcher/rank_setup.h"
#include "runtime/parallel/placement.h"
#include "serve/job.h"
#include "serve/offline.h"
#include "text/chat/chat_template.h"
#include "text/tokenizer/streaming_detokenizer.h"
#include "text/tokenizer/tokenizer.h"
#include "runtime/weights/safetensors.h"

namespace deepshard {

namespace {
constexpr char kUsage[] =
    "usage: deepshard generate --model DIR (--prompt \"text\" | --chat \"message\" [--system \"...\"]\n"
    "                                      | --prompt-ids 0,5,17[;3,4,...]) [--max-new-tokens N]\n"
    "         [--temperature T] [--top-k K] [--top-p P] [--seed S] [--ignore-eos]\n"
    "         [--print-ids]   print token ids even for text prompts\n";

void PrintUsage(FILE* f) {
  std::fputs(kUsage, f);
  std::fputs(kModelRunUsage, f);
}

// What to generate for every prompt (prompt i is sampled with seed + i).
struct GenerateFlags {
  int64_t max_new_tokens = 16;
  SamplingParams sampling;
  bool stop_at_eos = true;
};

struct Options {
  std::string model_dir;
  std::vector<std::vector<int32_t>> prompts;
  std::string text, chat, system;  // --prompt, --chat, --system
  bool text_output = false;        // print decoded text (text prompts without --print-ids)
  GenerateFlags gen;
  RuntimeConfig rt;
  PlacementOptions place;
  serve::JobOptions job;
  double startup_timeout = kDefaultStartupTimeout;  // --startup-timeout
};

absl::StatusOr<Options> ParseOptions(const std::vector<std::string>& args, bool* help) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args,
                                             WithModelRunFlags({"model", "prompt-ids", "max-new-tokens",
                                                                "temperature", "top-k", "top-p", "seed", "prompt",
                                                                "chat", "system"}),
                                             WithModelRunBoolFlags({"ignore-eos", "help", "print-ids"})));
  *help = flags.Bool("help");
  Options o;
  if (*help) return o;
  ASSIGN_OR_RETURN(o.model_dir, flags.String("model"));
  const int n_inputs = flags.Has("prompt-ids") + flags.Has("prompt") + flags.Has("chat");
  if (n_inputs != 1) {
    return absl::InvalidArgumentError(n_inputs == 0 ? "--prompt, --chat or --prompt-ids is required"
                                                    : "give only one of --prompt, --chat and --prompt-ids");
  }
  if (flags.Has("system") && !flags.Has("chat")) return absl::InvalidArgumentError("--system needs --chat");
  o.text = flags.String("prompt", "");
  o.chat = flags.String("chat", "");
  o.system = flags.String("system", "");
  o.text_output = !flags.Has("prompt-ids") && !flags.Bool("print-ids");
  if (flags.Has("prompt-ids")) {
    ASSIGN_OR_RETURN(std::string prompts, flags.String("prompt-ids"));
    for (absl::string_view one : absl::StrSplit(prompts, ';')) {
      Flags single;
      ASSIGN_OR_RETURN(single, Flags::Parse({"--prompt-ids", std::string(one)}, {"prompt-ids"}, {}));
      ASSIGN_OR_RETURN(auto ids, single.IntList("prompt-ids"));
      o.prompts.push_back(std::move(ids));
    }
  }
  ASSIGN_OR_RETURN(o.gen.max_new_tokens, flags.Int("max-new-tokens", 16));
  ASSIGN_OR_RETURN(double temperature, flags.Double("temperature", 0.0));
  ASSIGN_OR_RETURN(o.gen.sampling.top_k, flags.Int("top-k", 0));
  ASSIGN_OR_RETURN(double top_p, flags.Double("top-p", 1.0));
  ASSIGN_OR_RETURN(int64_t seed, flags.Int("seed", 0));
  o.gen.sampling.temperature = static_cast<float>(temperature);
  o.gen.sampling.top_p = static_cast<float>(top_p);
  o.gen.sampling.seed = static_cast<uint64_t>(seed);
  o.gen.stop_at_eos = !flags.Bool("ignore-eos");
  RETURN_IF_ERROR(o.gen.sampling.Validate());
  if (o.gen.max_new_tokens < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  RETURN_IF_ERROR(ParseModelRunFlags(flags, &o.rt, &o.place, &o.job, &o.startup_timeout));
  o.job.command = "generate";
  o.job.failure_linger = 0;
  o.job.announce = false;  // no clients to tell: a failure ends the job at once
  return o;
}

// Turns --prompt / --chat into token ids with the model's tokenizer (nullptr
// tokenizer when the prompt is already ids).
absl::StatusOr<std::unique_ptr<Tokenizer>> ResolvePrompts(Options& o) {
  if (o.text.empty() && o.chat.empty() && !o.text_output) return std::unique_ptr<Tokenizer>();
  if (!o.prompts.empty() && !o.text_output) return std::unique_ptr<Tokenizer>();
  auto tok = Tokenizer::FromDirectory(o.model_dir);
  if (!tok.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--prompt and --chat need the model's tokenizer, and it could not be loaded (", tok.status().message(),
        "); use --prompt-ids, or write the model with make-model --tokenizer DIR"));
  }
  if (!o.chat.empty()) {
    if ((*tok)->chat_template().empty()) {
      return absl::FailedPreconditionError(o.model_dir + "/tokenizer_config.json has no chat_template; use --prompt");
    }
    boost::json::array messages;
    if (!o.system.empty()) messages.push_back(boost::json::object{{"role", "system"}, {"content", o.system}});
    messages.push_back(boost::json::object{{"role", "user"}, {"content", o.chat}});
    ASSIGN_OR_RETURN(std::string rendered, ApplyChatTemplate((*tok)->chat_template(), messages,
                                                             /*add_generation_prompt=*/true, (*tok)->bos_token(),
                                                             (*tok)->eos_token()));
    // The template writes BOS itself, as apply_chat_template(tokenize=True) does.
    o.prompts = {(*tok)->Encode(rendered, /*add_special_tokens=*/false)};
  } else if (!o.text.empty() || o.prompts.empty()) {
    o.prompts = {(*tok)->Encode(o.text, /*add_special_tokens=*/true)};
  }
  if (o.prompts.empty() || o.prompts[0].empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");
  return tok;
}

void Log(const std::string& m) { serve::Log("generate", m); }

// Checks that every rank can make alike (the same prompts everywhere): one
// message, from the caller's rank 0.
std::string CheckPrompts(const Options& o, const DeepseekModel& model) {
  const int64_t V = model.config().vocab_size;
  for (size_t i = 0; i < o.prompts.size(); ++i) {
    for (int32_t t : o.prompts[i]) {
      if (t < 0 || t >= V) {
        return absl::StrCat("--prompt-ids: prompt ", i, " has token id ", t, ", outside the vocabulary [0, ", V, ")");
      }
    }
    if (static_cast<int64_t>(o.prompts[i].size()) > model.max_context() - o.gen.max_new_tokens) {
      return absl::StrCat("prompt ", i, " (", o.prompts[i].size(), " tokens) plus --max-new-tokens ",
                          o.gen.max_new_tokens, " exceeds the context limit of ", model.max_context());
    }
  }
  return "";
}

// Rank 0: every prompt through the engine; prints one line per prompt, in
// order, each as soon as it and those before it are done (a single prompt
// streams token by token). Returns the exit code.
int GenerateOnRoot(const Options& o, serve::Job& job, const Tokenizer* tok) {
  const auto t0 = std::chrono::steady_clock::now();
  const size_t n = o.prompts.size();
  std::vector<serve::GenerationRequest> requests(n);
  for (size_t i = 0; i < n; ++i) {
    requests[i].prompt = o.prompts[i];
    requests[i].max_tokens = o.gen.max_new_tokens;
    requests[i].sampling = o.gen.sampling;
    requests[i].sampling.seed += i;  // prompt i uses seed + i
    requests[i].ignore_eos = !o.gen.stop_at_eos;
  }
  // The first error writing stdout (errno): a full disk or a failing device
  // must end in an error, not in "success" with the tokens lost.
  int output_errno = 0;
  auto flush_output = [&output_errno] {
    if (std::fflush(stdout) != 0 && output_errno == 0) output_errno = errno != 0 ? errno : EIO;
  };
  const bool text = o.text_output && tok != nullptr;
  std::unique_ptr<StreamingDetokenizer> stream;
  if (text && n == 1) stream = std::make_unique<StreamingDetokenizer>(*tok, /*skip_special_tokens=*/true);
  size_t streamed = 0;
  std::function<void(size_t, int32_t)> on_token;
  if (n == 1) {
    on_token = [&](size_t, int32_t t) {
      if (stream) {
        std::fputs(stream->Add(t).c_str(), stdout);
      } else {
        std::printf(streamed == 0 ? "%d" : ",%d", t);
      }
      ++streamed;
      flush_output();
    };
  }
  absl::StatusOr<std::vector<serve::OfflineResult>> results;
  if (o.gen.max_new_tokens == 0) {
    results = std::vector<serve::OfflineResult>(n);  // nothing to generate: empty lines
  } else {
    results = serve::RunOffline(job.engine(), std::move(requests), on_token);
  }
  if (stream) std::fputs(stream->Flush().c_str(), stdout);
  if (n == 1 && results.ok()) std::printf("\n");
  flush_output();  // the output ends before any message on stderr
  if (!results.ok()) {
    Log(absl::StrCat("error: ", results.status().message()));
    return results.status().code() == absl::StatusCode::kInvalidArgument ||
                   results.status().code() == absl::StatusCode::kOutOfRange
               ? 2
               : 1;
  }
  size_t n_new = 0, n_prompt = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& t = (*results)[i].tokens;
    n_new += t.size();
    n_prompt += o.prompts[i].size();
    if (n == 1) continue;  // streamed
    if (text) {
      std::printf("%s\n", tok->Decode(t, /*skip_special_tokens=*/true).c_str());
    } else {
      std::printf("%s\n", absl::StrJoin(t, ",").c_str());
    }
  }
  flush_output();
  if (output_errno == 0 && std::ferror(stdout)) output_errno = EIO;
  if (output_errno != 0) {
    Log(absl::StrCat("error: cannot write the output: ", std::strerror(output_errno)));
    return 1;
  }
  const ParallelConfig& pc = job.parallel();
  const serve::EngineSnapshot snap =
      o.gen.max_new_tokens > 0 ? job.engine().Snapshot() : serve::EngineSnapshot{};
  std::fprintf(stderr,
               "deepshard generate: %zu prompts (%zu tokens), %zu new tokens in %.3f s on %d %s (pp %d x ep %d), "
               "%ld KV blocks of %ld tokens per DP slot, %ld preemptions, prefix cache %ld of %ld tokens%s; %s; %s\n",
               n, n_prompt, n_new, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               pc.world, pc.world == 1 ? "rank" : "ranks", pc.pp, pc.ep, static_cast<long>(job.n_blocks()),
               static_cast<long>(job.options().block_size), static_cast<long>(snap.preemptions),
               static_cast<long>(snap.prefix_cache_hits), static_cast<long>(snap.prefix_cache_queries),
               job.options().prefix_caching ? "" : " (off)", job.model().backend().Describe().c_str(),
               job.model().weights_summary().c_str());
  return 0;
}

// Runs the job on this rank's share; returns the exit code.
int Generate(Options& o, RankShare& share, const Tokenizer* tok) {
  // Queue every prompt: offline, a full queue is not a reason to refuse one.
  o.job.max_waiting = std::max<int64_t>(o.job.max_waiting, static_cast<int64_t>(o.prompts.size()) + 1);
  int code = 0;
  auto job = serve::Job::Start(JobResources(share, "generate"), o.job, &code);
  EndStartupWatch(share);  // the job's own heartbeats watch the ranks from here
  if (!job) return code;
  if (!job->is_root()) return job->RunWorker(nullptr);
  code = GenerateOnRoot(o, *job, tok);
  job->Shutdown();
  return code;
}

// One rank, no MPI.
int RunSingle(Options o) {
  auto tok = ResolvePrompts(o);
  if (!tok.ok()) {
    Log(absl::StrCat("error: ", tok.status().message()));
    return tok.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  auto share = SetUpSingleRank(o.model_dir, o.rt);
  if (!share.ok()) {
    Log(absl::StrCat("error: ", share.status().message()));
    return 1;
  }
  if (std::string e = CheckPrompts(o, *share->model); !e.empty()) {
    Log(absl::StrCat("error: ", e));
    return 2;
  }
  return Generate(o, *share, tok->get());
}

// pp × ep ranks under mpirun. Checks that every rank can agree on are made
// collectively: rank 0 prints one message and every rank returns non-zero.
int RunDistributed(Options o) {
  MpiSession mpi(nullptr, nullptr, "generate", o.startup_timeout);
  // Every rank tokenizes the same text the same way (checked before the weights load).
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok;
  int code = 0;
  auto share = SetUpRankShare("generate", o.model_dir, o.place, o.rt, mpi, &code, [&] {
    tok = ResolvePrompts(o);
    return tok.ok() ? std::string() : std::string(tok.status().message());
  });
  if (!share) return code;
  // Bad prompts are the same on every rank: one message, a clean exit.
  if (std::string e = CheckPrompts(o, *share->model); !e.empty()) {
    if (mpi.rank() == 0) Log(absl::StrCat("error: ", e));
    return 2;
  }
  return Generate(o, *share, tok->get());
}

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  bool help = false;
  auto o = ParseOptions(args, &help);
  if (!o.ok()) {
    if (IsRootProcess()) {
      Log(absl::StrCat("error: ", o.status().message()));
      PrintUsage(stderr);
    }
    return 2;
  }
  if (help) {
    PrintUsage(stdout);
    return 0;
  }
  if (!LaunchedUnderMpi()) {
    if (o->place.pp * o->place.ep > 1) {
      std::fprintf(stderr,
                   "deepshard generate: error: --pp %d --ep %d needs %d ranks: launch with "
                   "mpirun -np %d deepshard generate ...\n",
                   o->place.pp, o->place.ep, o->place.pp * o->place.ep, o->place.pp * o->place.ep);
      return 2;
    }
    return RunSingle(*o);
  }
  return RunDistributed(*o);
}

}  // namespace deepshard
