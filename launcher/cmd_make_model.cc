// deepshard make-model: write a random-weight model in the Hugging Face layout.
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_join.h"
#include "launcher/commands.h"
#include "launcher/flags.h"
#include "runtime/model/random_model.h"
#include "text/tokenizer/tokenizer.h"

namespace deepshard {

namespace {
constexpr char kUsage[] =
    "usage: deepshard make-model --preset NAME --out DIR [--seed N] [--dtype f32|bf16|fp8]\n"
    "                            [--shards K] [--no-yarn] [--layers N] [--vocab N]\n"
    "                            [--tokenizer DIR]   copy DIR's tokenizer.json + tokenizer_config.json\n"
    "                                                (vocab, BOS and EOS follow the tokenizer)\n";
}

int RunMakeModel(const std::vector<std::string>& args) {
  auto flags = Flags::Parse(args, {"preset", "out", "seed", "dtype", "shards", "layers", "vocab", "tokenizer"},
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
  const std::string tokenizer_dir = flags->String("tokenizer", "");
  std::unique_ptr<Tokenizer> tok;
  if (!tokenizer_dir.empty()) {
    auto t = Tokenizer::FromDirectory(tokenizer_dir);
    if (!t.ok()) return fail(t.status(), 1);
    tok = std::move(t).value();
    if (o.vocab_size == 0) o.vocab_size = tok->vocab_size();
    if (o.vocab_size < tok->vocab_size()) {
      return fail(absl::InvalidArgumentError("--vocab " + std::to_string(o.vocab_size) + " is smaller than the tokenizer's " +
                                             std::to_string(tok->vocab_size()) + " ids"),
                  2);
    }
    if (tok->bos_id()) o.bos_token_id = *tok->bos_id();
    if (tok->eos_id()) o.eos_token_id = *tok->eos_id();
  }
  if (auto s = WriteRandomModel(o, *out); !s.ok()) return fail(s, s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1);
  if (tok) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      std::error_code ec;
      const std::string src = tokenizer_dir + "/" + f;
      if (!std::filesystem::exists(src, ec)) continue;
      std::filesystem::copy_file(src, *out + "/" + f, std::filesystem::copy_options::overwrite_existing, ec);
      if (ec) return fail(absl::PermissionDeniedError(src + ": cannot copy: " + ec.message()), 1);
    }
  }
  std::fprintf(stderr, "deepshard make-model: wrote %s (preset %s, seed %lu, %s)\n", out->c_str(), o.preset.c_str(),
               static_cast<unsigned long>(o.seed), dtype.c_str());
  return 0;
}

}  // namespace deepshard
