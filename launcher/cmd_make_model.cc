// deepshard make-model: write a random-weight model in the Hugging Face layout.
#include <cstdio>

#include "absl/strings/str_join.h"
#include "launcher/commands.h"
#include "launcher/flags.h"
#include "runtime/model/random_model.h"

namespace deepshard {

namespace {
constexpr char kUsage[] =
    "usage: deepshard make-model --preset NAME --out DIR [--seed N] [--dtype f32|bf16|fp8]\n"
    "                            [--shards K] [--no-yarn] [--layers N] [--vocab N]\n";
}

int RunMakeModel(const std::vector<std::string>& args) {
  auto flags = Flags::Parse(args, {"preset", "out", "seed", "dtype", "shards", "layers", "vocab"},
                            {"no-yarn", "help"});
  auto fail = [](const absl::Status& s, int code) {
    std::fprintf(stderr, "deepshard make-model: error: %s\n", std::string(s.message()).c_str());
    if (code == 2) std::fputs(kUsage, stderr);
    return code;
  };
  if (!flags.ok()) return fail(flags.status(), 2);
  if (flags->Bool("help")) {
    std::printf("%spresets: %s\n", kUsage, absl::StrJoin(RandomModelPresets(), ", ").c_str());
    return 0;
  }
  RandomModelOptions o;
  auto preset = flags->String("preset");
  auto out = flags->String("out");
  auto seed = flags->Int("seed", 1);
  auto shards = flags->Int("shards", 1);
  auto layers = flags->Int("layers", 0);
  auto vocab = flags->Int("vocab", 0);
  for (const absl::Status& s : {preset.status(), out.status(), seed.status(), shards.status(), layers.status(),
                                vocab.status()}) {
    if (!s.ok()) return fail(s, 2);
  }
  const std::string dtype = flags->String("dtype", "f32");
  if (dtype == "f32") {
    o.dtype = DType::kF32;
  } else if (dtype == "bf16") {
    o.dtype = DType::kBF16;
  } else if (dtype == "fp8") {
    o.dtype = DType::kF8E4M3;
  } else {
    return fail(absl::InvalidArgumentError("--dtype must be f32, bf16 or fp8, got \"" + dtype + "\""), 2);
  }
  if (*shards < 1 || *shards > 10000) return fail(absl::InvalidArgumentError("--shards must be in [1, 10000]"), 2);
  if (*seed < 0) return fail(absl::InvalidArgumentError("--seed must be >= 0"), 2);
  if (*layers < 0) return fail(absl::InvalidArgumentError("--layers must be >= 0"), 2);
  if (*vocab < 0) return fail(absl::InvalidArgumentError("--vocab must be >= 0"), 2);
  o.preset = *preset;
  o.seed = static_cast<uint64_t>(*seed);
  o.shards = static_cast<int>(*shards);
  o.yarn = !flags->Bool("no-yarn");
  o.num_layers = *layers;
  o.vocab_size = *vocab;
  if (auto s = WriteRandomModel(o, *out); !s.ok()) return fail(s, s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1);
  std::fprintf(stderr, "deepshard make-model: wrote %s (preset %s, seed %lu, %s)\n", out->c_str(), o.preset.c_str(),
               static_cast<unsigned long>(o.seed), dtype.c_str());
  return 0;
}

}  // namespace deepshard
