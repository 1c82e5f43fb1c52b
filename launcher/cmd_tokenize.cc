// deepshard tokenize: text to ids (--text) or ids to text (--ids) with a model's tokenizer.
#include <cstdio>

#include "absl/strings/str_join.h"
#include "launcher/commands.h"
#include "launcher/flags.h"
#include "text/tokenizer/tokenizer.h"

namespace deepshard {

namespace {
constexpr char kUsage[] =
    "usage: deepshard tokenize --model DIR (--text \"...\" | --ids 1,2,3)\n"
    "         [--no-special]     encode without BOS/EOS (add_special_tokens=False)\n"
    "         [--skip-special]   decode without special tokens\n";
}

int RunTokenize(const std::vector<std::string>& args) {
  auto fail = [](const absl::Status& s, int code) {
    std::fprintf(stderr, "deepshard tokenize: error: %s\n", std::string(s.message()).c_str());
    if (code == 2) std::fputs(kUsage, stderr);
    return code;
  };
  auto flags = Flags::Parse(args, {"model", "text", "ids"}, {"no-special", "skip-special", "help"});
  if (!flags.ok()) return fail(flags.status(), 2);
  if (flags->Bool("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  auto model = flags->String("model");
  if (!model.ok()) return fail(model.status(), 2);
  if (flags->Has("text") == flags->Has("ids")) {
    return fail(absl::InvalidArgumentError("give exactly one of --text and --ids"), 2);
  }
  auto tok = Tokenizer::FromDirectory(*model);
  if (!tok.ok()) return fail(tok.status(), 1);
  if (flags->Has("text")) {
    const auto ids = (*tok)->Encode(flags->String("text", ""), !flags->Bool("no-special"));
    std::printf("%s\n", absl::StrJoin(ids, ",").c_str());
    return 0;
  }
  auto ids = flags->IntList("ids");
  if (!ids.ok()) return fail(ids.status(), 2);
  for (int32_t id : *ids) {
    if (id < 0 || id >= (*tok)->vocab_size()) {
      return fail(absl::InvalidArgumentError("--ids: " + std::to_string(id) + " is outside the vocabulary [0, " +
                                             std::to_string((*tok)->vocab_size()) + ")"),
                  2);
    }
  }
  std::printf("%s\n", (*tok)->Decode(*ids, flags->Bool("skip-special")).c_str());
  return 0;
}

}  // namespace deepshard
