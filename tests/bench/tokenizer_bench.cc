// Tokenizer encode throughput (one thread), checked against reference ids in the same run.
//
// Inputs come from a JSON file written by tools/bench_tokenizer.py:
//   {"sets": [{"name": "corpus", "inputs": [{"text": "..."} | {"hex": "..."}],
//              "ids": [[...], ...],            // reference ids (add_special_tokens=false)
//              "ref_seconds": {"encode": 0.12, "encode_batch": 0.08}}, ...]}
// Each set is encoded `--reps` times (after one warm-up pass, which also fills the BPE
// cache, as the reference's warm-up does); the best time counts. Output follows the
// nccl-tests layout: '#' header lines, fixed-width columns, #wrong, OK/FAILED footer.
//
// Usage: deepshard_bench_tokenizer --tokenizer DIR --inputs FILE [--reps N] [--json OUT]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <boost/json.hpp>

#include "text/tokenizer/tokenizer.h"

namespace {

std::string HexToBytes(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

struct Set {
  std::string name;
  std::vector<std::string> inputs;
  std::vector<std::vector<int32_t>> ref_ids;
  double ref_encode_s = 0, ref_batch_s = 0;
  size_t bytes = 0;
};

int Usage() {
  std::fprintf(stderr, "usage: deepshard_bench_tokenizer --tokenizer DIR --inputs FILE [--reps N] [--json OUT]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, inputs_path, json_out;
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--tokenizer") {
      dir = next();
    } else if (a == "--inputs") {
      inputs_path = next();
    } else if (a == "--reps") {
      reps = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--json") {
      json_out = next();
    } else {
      return Usage();
    }
  }
  if (dir.empty() || inputs_path.empty()) return Usage();

  auto t0 = std::chrono::steady_clock::now();
  auto tok = deepshard::Tokenizer::FromDirectory(dir);
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!tok.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(tok.status().message()).c_str());
    return 1;
  }

  std::ifstream in(inputs_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  boost::system::error_code ec;
  boost::json::value root = boost::json::parse(ss.str(), ec);
  if (ec || !root.is_object()) {
    std::fprintf(stderr, "error: %s: invalid JSON\n", inputs_path.c_str());
    return 1;
  }
  std::vector<Set> sets;
  for (const auto& sv : root.at("sets").as_array()) {
    const auto& so = sv.as_object();
    Set s;
    s.name = std::string(so.at("name").as_string());
    for (const auto& e : so.at("inputs").as_array()) {
      const auto& eo = e.as_object();
      if (const auto* t = eo.if_contains("text")) {
        s.inputs.emplace_back(t->as_string());
      } else {
        s.inputs.push_back(HexToBytes(eo.at("hex").as_string()));
      }
      s.bytes += s.inputs.back().size();
    }
    for (const auto& ids : so.at("ids").as_array()) {
      std::vector<int32_t> v;
      for (const auto& x : ids.as_array()) v.push_back(static_cast<int32_t>(x.as_int64()));
      s.ref_ids.push_back(std::move(v));
    }
    const auto& rs = so.at("ref_seconds").as_object();
    s.ref_encode_s = rs.at("encode").to_number<double>();
    s.ref_batch_s = rs.at("encode_batch").to_number<double>();
    sets.push_back(std::move(s));
  }

  std::printf("# deepshard tokenizer encode benchmark: %s (load %.2f s), 1 thread, best of %d\n", dir.c_str(), load_s,
              reps);
  std::printf("# reference: Hugging Face tokenizers (Rust), same inputs, same machine, timed by tools/bench_tokenizer.py\n");
  std::printf("# %-12s %6s %10s %9s %10s %10s %11s %11s %8s %8s %7s\n", "set", "inputs", "bytes", "tokens", "time_ms",
              "MB/s", "ref_MB/s", "refb_MB/s", "ratio", "ratio_b", "#wrong");
  bool all_ok = true;
  boost::json::array json_rows;
  for (const Set& s : sets) {
    size_t wrong = 0, tokens = 0;
    for (size_t i = 0; i < s.inputs.size(); ++i) {  // warm-up and check
      std::vector<int32_t> ids = (*tok)->Encode(s.inputs[i], /*add_special_tokens=*/false);
      tokens += ids.size();
      if (i >= s.ref_ids.size() || ids != s.ref_ids[i]) ++wrong;
    }
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      auto start = std::chrono::steady_clock::now();
      size_t sink = 0;
      for (const std::string& input : s.inputs) sink += (*tok)->Encode(input, false).size();
      double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (sink != tokens) ++wrong;
      best = std::min(best, t);
    }
    const double mb = static_cast<double>(s.bytes) / 1e6;
    const double ours = mb / best, ref = mb / s.ref_encode_s, refb = mb / s.ref_batch_s;
    std::printf("  %-12s %6zu %10zu %9zu %10.2f %10.2f %11.2f %11.2f %8.2f %8.2f %7zu\n", s.name.c_str(),
                s.inputs.size(), s.bytes, tokens, best * 1e3, ours, ref, refb, ours / ref, ours / refb, wrong);
    all_ok = all_ok && wrong == 0;
    json_rows.push_back({{"set", s.name},
                         {"inputs", s.inputs.size()},
                         {"bytes", s.bytes},
                         {"tokens", tokens},
                         {"seconds", best},
                         {"mb_per_s", ours},
                         {"ref_mb_per_s", ref},
                         {"ref_batch_mb_per_s", refb},
                         {"wrong", wrong}});
  }
  std::printf("# ratio = deepshard MB/s / reference MB/s (ref: Tokenizer.encode per input; refb: encode_batch, "
              "TOKENIZERS_PARALLELISM=false)\n");
  std::printf("# %s\n", all_ok ? "OK" : "FAILED");
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << boost::json::serialize(boost::json::object{{"rows", json_rows}, {"ok", all_ok}}) << "\n";
  }
  return all_ok ? 0 : 1;
}
