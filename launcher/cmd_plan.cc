// deepshard plan: print the placement plan for a pp × ep grid, from a model
// directory or a bare config.json (so real models can be planned for without
// their weights).
#include <cstdio>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/rank_setup.h"
#include "runtime/parallel/placement.h"

namespace deepshard {

namespace {
constexpr char kUsage[] =
    "usage: deepshard plan --model DIR|CONFIG.json --pp P --ep E [--nodes N]\n"
    "                      [--layer-split 14,13] [--expert-map 0,0,1,1,...]\n"
    "                      [--weights stored|int8|int4 [--weights-group 32] [--quantize-fp8]]\n";
}

int RunPlan(const std::vector<std::string>& args) {
  auto fail = [](const absl::Status& s, int code) {
    std::fprintf(stderr, "deepshard plan: error: %s\n", std::string(s.message()).c_str());
    if (code == 2) std::fputs(kUsage, stderr);
    return code;
  };
  auto flags = Flags::Parse(args, {"model", "pp", "ep", "nodes", "layer-split", "expert-map", "weights", "weights-group"},
                            {"help", "quantize-fp8"});
  if (!flags.ok()) return fail(flags.status(), 2);
  if (flags->Bool("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  auto model = flags->String("model");
  auto pp = flags->Int("pp", 1);
  auto ep = flags->Int("ep", 1);
  auto nodes = flags->Int("nodes", 1);
  for (const absl::Status& s : {model.status(), pp.status(), ep.status(), nodes.status()}) {
    if (!s.ok()) return fail(s, 2);
  }
  for (auto [name, v] : {std::pair{"--pp", *pp}, std::pair{"--ep", *ep}, std::pair{"--nodes", *nodes}}) {
    if (v < 1 || v > 4096) {
      return fail(absl::InvalidArgumentError(std::string(name) + " must be in [1, 4096], got " + std::to_string(v)), 2);
    }
  }
  PlacementOptions o;
  o.pp = static_cast<int>(*pp), o.ep = static_cast<int>(*ep), o.nodes = static_cast<int>(*nodes);
  RuntimeConfig rt;
  if (absl::Status s = ParseWeightFlags(*flags, &rt); !s.ok()) return fail(s, 2);
  o.weights = rt.weights, o.quant_group = rt.quant_group, o.quantize_fp8 = rt.quantize_fp8;
  if (flags->Has("layer-split")) {
    auto split = ParseLayerSplit(flags->String("layer-split", ""));
    if (!split.ok()) return fail(split.status(), 2);
    o.layer_split = *split;
  }
  if (flags->Has("expert-map")) {
    auto map = ParseExpertMap(flags->String("expert-map", ""));
    if (!map.ok()) return fail(map.status(), 2);
    o.expert_owner = *map;
  }
  auto config = LoadModelConfig(*model);
  if (!config.ok()) return fail(config.status(), 1);
  auto plan = MakePlacementPlan(*config, o);
  if (!plan.ok()) return fail(plan.status(), 2);
  std::fputs(FormatPlacementPlan(*config, *plan).c_str(), stdout);
  return 0;
}

}  // namespace deepshard
