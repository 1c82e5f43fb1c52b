// deepshard generate: load a model and continue prompts of token ids, on one
// rank, or across pp × ep MPI ranks when started by mpirun/srun.
#include <chrono>
#include <algorithm>
#include <cstdio>
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
#include "runtime/generate.h"
#include "runtime/parallel/distributed_generate.h"
#include "runtime/parallel/placement.h"
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
    "         [--math exact|fast] [--mla auto|naive|absorbed] [--threads N] [--max-context N]\n"
    "         [--pp P --ep E [--layer-split 2,2] [--expert-map 0,0,1,1,...]]   (under mpirun -np P*E)\n"
    "         [--print-ids]   print token ids even for text prompts\n";

struct Options {
  std::string model_dir;
  std::vector<std::vector<int32_t>> prompts;
  std::string text, chat, system;  // --prompt, --chat, --system
  bool text_output = false;        // print decoded text (text prompts without --print-ids)
  GenerateOptions gen;
  RuntimeConfig rt;
  PlacementOptions place;
};

absl::StatusOr<Options> ParseOptions(const std::vector<std::string>& args, bool* help) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args,
                                             WithModelRunFlags({"model", "prompt-ids", "max-new-tokens",
                                                                "temperature", "top-k", "top-p", "seed", "prompt",
                                                                "chat", "system"}),
                                             {"ignore-eos", "help", "print-ids"}));
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
  RETURN_IF_ERROR(ParseModelRunFlags(flags, &o.rt, &o.place));
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

void PrintTokens(const std::vector<int32_t>& t) {
  std::printf("%s\n", absl::StrJoin(t, ",").c_str());
  std::fflush(stdout);
}

// One rank, no MPI: prompts one after another, streaming each token.
int RunSingle(Options o) {
  auto tok = ResolvePrompts(o);
  if (!tok.ok()) {
    std::fprintf(stderr, "deepshard generate: error: %s\n", std::string(tok.status().message()).c_str());
    return tok.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  auto t0 = std::chrono::steady_clock::now();
  auto model = DeepseekModel::Load(o.model_dir, o.rt);
  if (!model.ok()) {
    std::fprintf(stderr, "deepshard generate: error: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  auto t1 = std::chrono::steady_clock::now();
  // Check every prompt before generating anything.
  const int64_t V = (*model)->config().vocab_size;
  for (size_t i = 0; i < o.prompts.size(); ++i) {
    for (int32_t t : o.prompts[i]) {
      if (t < 0 || t >= V) {
        std::fprintf(stderr, "deepshard generate: error: --prompt-ids: prompt %zu has token id %d, outside the "
                     "vocabulary [0, %ld)\n", i, t, V);
        return 2;
      }
    }
  }
  size_t n_new = 0, n_prompt = 0;
  for (size_t i = 0; i < o.prompts.size(); ++i) {
    GenerateOptions g = o.gen;
    g.sampling.seed += i;  // prompt i uses seed + i, as on many ranks
    bool first = true;
    std::unique_ptr<StreamingDetokenizer> stream;
    if (o.text_output && *tok) stream = std::make_unique<StreamingDetokenizer>(**tok, /*skip_special_tokens=*/true);
    g.on_token = [&](int32_t t) {
      if (stream) {
        std::fputs(stream->Add(t).c_str(), stdout);
      } else {
        std::printf(first ? "%d" : ",%d", t);
      }
      std::fflush(stdout);
      first = false;
    };
    auto out = Generate(**model, o.prompts[i], g);
    if (stream) std::fputs(stream->Flush().c_str(), stdout);
    std::printf("\n");
    std::fflush(stdout);  // the ids line ends before any message on stderr
    if (!out.ok()) {
      std::fprintf(stderr, "deepshard generate: error: %s\n", std::string(out.status().message()).c_str());
      if (out.status().code() == absl::StatusCode::kInvalidArgument) std::fputs(kUsage, stderr);
      return out.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
    }
    n_new += out->size();
    n_prompt += o.prompts[i].size();
  }
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  std::fprintf(stderr, "deepshard generate: %zu prompt + %zu new tokens in %.3f s (load %.3f s)\n", n_prompt, n_new,
               gen_s, std::chrono::duration<double>(t1 - t0).count());
  return 0;
}

// pp × ep ranks under mpirun. Checks that every rank can agree on are made
// collectively: rank 0 prints one message and every rank returns non-zero.
int RunDistributed(Options o) {
  MpiSession mpi(nullptr, nullptr);
  const int rank = mpi.rank();
  auto say = [rank](const std::string& m) {
    if (rank == 0) std::fprintf(stderr, "deepshard generate: error: %s\n", m.c_str());
  };
  // Every rank tokenizes the same text the same way (checked before the weights load).
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok;
  int code = 0;
  auto share = SetUpRankShare("generate", o.model_dir, o.place, o.rt, mpi, &code, [&] {
    tok = ResolvePrompts(o);
    return tok.ok() ? std::string() : std::string(tok.status().message());
  });
  if (!share) return code;
  const ModelConfig* config = &share->config;
  auto& model = share->model;
  auto* pc = &share->pc;
  auto* plan = &share->placement;
  // Bad prompts are the same on every rank: one message, a clean exit.
  std::string prompt_error;
  for (size_t i = 0; i < o.prompts.size() && prompt_error.empty(); ++i) {
    for (int32_t t : o.prompts[i]) {
      if (t < 0 || t >= config->vocab_size) {
        prompt_error = absl::StrCat("--prompt-ids: prompt ", i, " has token id ", t, ", outside the vocabulary [0, ",
                                    config->vocab_size, ")");
        break;
      }
    }
    if (prompt_error.empty() &&
        static_cast<int64_t>(o.prompts[i].size()) > model->max_context() - o.gen.max_new_tokens) {
      prompt_error = absl::StrCat("prompt ", i, " (", o.prompts[i].size(), " tokens) plus --max-new-tokens ",
                                  o.gen.max_new_tokens, " exceeds the context limit of ", model->max_context());
    }
  }
  if (!prompt_error.empty()) {
    say(prompt_error);
    return 2;
  }
  auto t0 = std::chrono::steady_clock::now();
  auto result = DistributedGenerate(*model, *pc, *share->world, *share->stage, plan->experts, o.prompts, o.gen);
  if (!result.ok()) {
    // A failure mid-run cannot be agreed on (peers may be inside a collective):
    // end the whole job now rather than leave ranks hanging.
    mpi.Abort(absl::StrCat("generate failed: ", result.status().message()));
  }
  if (rank == 0) {
    for (const auto& t : result->tokens) {
      if (o.text_output && *tok) {
        std::printf("%s\n", (*tok)->Decode(t, /*skip_special_tokens=*/true).c_str());
      } else {
        PrintTokens(t);
      }
    }
    size_t n = 0;
    for (const auto& t : result->tokens) n += t.size();
    std::fprintf(stderr, "deepshard generate: %zu prompts, %zu new tokens in %.3f s on %d ranks (pp %d x ep %d)\n",
                 o.prompts.size(), n, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                 mpi.size(), pc->pp, pc->ep);
  }
  return 0;
}

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  bool help = false;
  auto o = ParseOptions(args, &help);
  const bool root = !LaunchedUnderMpi() || std::getenv("OMPI_COMM_WORLD_RANK") == nullptr ||
                    std::string(std::getenv("OMPI_COMM_WORLD_RANK")) == "0";
  if (!o.ok()) {
    if (root) {
      std::fprintf(stderr, "deepshard generate: error: %s\n", std::string(o.status().message()).c_str());
      std::fputs(kUsage, stderr);
    }
    return 2;
  }
  if (help) {
    std::fputs(kUsage, stdout);
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
