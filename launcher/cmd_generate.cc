// deepshard generate: load a model and continue a prompt of token ids.
#include <chrono>
#include <cstdio>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "runtime/generate.h"

namespace deepshard {

namespace {
constexpr char kUsage[] =
    "usage: deepshard generate --model DIR --prompt-ids 0,5,17 [--max-new-tokens N]\n"
    "         [--temperature T] [--top-k K] [--top-p P] [--seed S] [--ignore-eos]\n"
    "         [--math exact|fast] [--mla auto|naive|absorbed] [--threads N] [--max-context N]\n";

int Fail(const absl::Status& s, int code) {
  std::fprintf(stderr, "deepshard generate: error: %s\n", std::string(s.message()).c_str());
  if (code == 2) std::fputs(kUsage, stderr);
  return code;
}
}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  auto flags = Flags::Parse(args,
                            {"model", "prompt-ids", "max-new-tokens", "temperature", "top-k", "top-p", "seed",
                             "math", "mla", "threads", "max-context"},
                            {"ignore-eos", "help"});
  if (!flags.ok()) return Fail(flags.status(), 2);
  if (flags->Bool("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  auto model_dir = flags->String("model");
  auto prompt = flags->IntList("prompt-ids");
  auto max_new = flags->Int("max-new-tokens", 16);
  auto temperature = flags->Double("temperature", 0.0);
  auto top_k = flags->Int("top-k", 0);
  auto top_p = flags->Double("top-p", 1.0);
  auto seed = flags->Int("seed", 0);
  auto threads = flags->Int("threads", 0);
  auto max_context = flags->Int("max-context", 0);
  for (const absl::Status& s : {model_dir.status(), prompt.status(), max_new.status(), temperature.status(),
                                top_k.status(), top_p.status(), seed.status(), threads.status(),
                                max_context.status()}) {
    if (!s.ok()) return Fail(s, 2);
  }
  RuntimeConfig rt;
  const std::string math = flags->String("math", "exact");
  if (math == "exact") {
    rt.math = MathMode::kExact;
  } else if (math == "fast") {
    rt.math = MathMode::kFast;
  } else {
    return Fail(absl::InvalidArgumentError("--math must be exact or fast, got \"" + math + "\""), 2);
  }
  const std::string mla = flags->String("mla", "auto");
  if (mla == "auto") {
    rt.mla_mode = MlaMode::kAuto;
  } else if (mla == "naive") {
    rt.mla_mode = MlaMode::kNaive;
  } else if (mla == "absorbed") {
    rt.mla_mode = MlaMode::kAbsorbed;
  } else {
    return Fail(absl::InvalidArgumentError("--mla must be auto, naive or absorbed, got \"" + mla + "\""), 2);
  }
  if (*threads < 0) return Fail(absl::InvalidArgumentError("--threads must be >= 0"), 2);
  if (*max_new < 0) return Fail(absl::InvalidArgumentError("--max-new-tokens must be >= 0"), 2);
  if (*max_context < 0) return Fail(absl::InvalidArgumentError("--max-context must be >= 0"), 2);
  rt.threads = static_cast<int>(*threads);
  rt.max_context = *max_context;

  GenerateOptions opts;
  opts.max_new_tokens = *max_new;
  opts.sampling.temperature = static_cast<float>(*temperature);
  opts.sampling.top_k = *top_k;
  opts.sampling.top_p = static_cast<float>(*top_p);
  opts.sampling.seed = static_cast<uint64_t>(*seed);
  opts.stop_at_eos = !flags->Bool("ignore-eos");
  if (auto s = opts.sampling.Validate(); !s.ok()) return Fail(s, 2);

  auto t0 = std::chrono::steady_clock::now();
  auto model = DeepseekModel::Load(*model_dir, rt);
  if (!model.ok()) return Fail(model.status(), 1);
  auto t1 = std::chrono::steady_clock::now();
  bool first = true;
  opts.on_token = [&](int32_t tok) {
    std::printf(first ? "%d" : ",%d", tok);
    std::fflush(stdout);
    first = false;
  };
  auto out = Generate(**model, *prompt, opts);
  auto t2 = std::chrono::steady_clock::now();
  if (!first) std::printf("\n");
  std::fflush(stdout);  // the ids line ends before any message on stderr
  if (!out.ok()) return Fail(out.status(), out.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1);
  const double load_s = std::chrono::duration<double>(t1 - t0).count();
  const double gen_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr, "deepshard generate: %zu prompt + %zu new tokens in %.3f s (load %.3f s)\n", prompt->size(),
               out->size(), gen_s, load_s);
  return 0;
}

}  // namespace deepshard
