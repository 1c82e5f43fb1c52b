// Constrained decoding cost (text/structured) on a real tokenizer: vocabulary build,
// schema compile, first mask, and the per-token cost (AllowedTokens + Accept) while
// generating JSON objects of a nested schema by uniform random choice among the
// allowed tokens.
//
//   deepshard_bench_structured [tokenizer_dir] [objects]
//   (default: tests/data/tokenizers/deepseek-v3, 200 objects; run from the repo root)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "boost/json.hpp"
#include "text/structured/json_constraint.h"
#include "text/structured/json_schema.h"
#include "text/structured/token_vocabulary.h"
#include "text/tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;
double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

const char* kSchema = R"({
  "$defs": {
    "Address": {"type": "object", "properties": {
        "street": {"type": "string", "maxLength": 40},
        "city": {"type": "string"},
        "zip": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
      "required": ["street", "city"]},
    "Item": {"type": "object", "properties": {
        "sku": {"type": "string", "minLength": 1, "maxLength": 12},
        "qty": {"type": "integer"},
        "price": {"type": "number"},
        "tags": {"type": "array", "items": {"enum": ["new", "sale", "gift"]}, "maxItems": 3}},
      "required": ["sku", "qty", "price"]}
  },
  "type": "object",
  "properties": {
    "id": {"type": "integer"},
    "customer": {"type": "object", "properties": {
        "name": {"type": "string"},
        "email": {"type": ["string", "null"]},
        "address": {"$ref": "#/$defs/Address"}},
      "required": ["name", "address"]},
    "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1, "maxItems": 4},
    "status": {"enum": ["open", "paid", "shipped"]},
    "paid": {"type": "boolean"},
    "notes": {"type": "string", "maxLength": 60}
  },
  "required": ["id", "customer", "items", "status", "paid"],
  "additionalProperties": false
})";

struct Stats {
  std::vector<double> step_us;
  int64_t computed = 0, hits = 0;
  double computed_ms = 0;
  size_t bytes = 0;
};

// Generates `objects` values; a fresh grammar per object when `cold` (no mask shared
// across requests), else one grammar for all (the server shares a grammar per schema).
Stats Generate(const deepshard::structured::TokenVocabulary& vocab,
               const std::shared_ptr<const deepshard::structured::TokenVocabulary>& vp, const boost::json::value& schema,
               int objects, bool cold, uint32_t seed) {
  using namespace deepshard::structured;
  Stats s;
  std::mt19937 rng(seed);
  auto shared = *JsonGrammar::FromSchema(schema);
  std::vector<int32_t> allowed;
  for (int o = 0; o < objects; ++o) {
    auto g = cold ? *JsonGrammar::FromSchema(schema) : shared;
    JsonConstraint c(g, vp);
    for (int step = 0;; ++step) {
      const auto t0 = Clock::now();
      const int64_t before = c.masks_computed();
      const std::vector<uint64_t>& mask = c.AllowedTokens();
      const auto t1 = Clock::now();
      if (c.masks_computed() != before) s.computed_ms += Ms(t0, t1);
      allowed.clear();
      for (size_t w = 0; w < mask.size(); ++w) {
        for (uint64_t bits = mask[w]; bits != 0; bits &= bits - 1) {
          allowed.push_back(static_cast<int32_t>(w * 64 + static_cast<size_t>(__builtin_ctzll(bits))));
        }
      }
      if (allowed.empty()) {
        std::fprintf(stderr, "empty mask\n");
        std::exit(1);
      }
      // Past 60 tokens, prefer tokens that close strings, objects, arrays (and EOS).
      if (step >= 60) {
        std::vector<int32_t> closing;
        for (int32_t id : allowed) {
          const std::string& b = vocab.token_bytes(id);
          bool all = id == vocab.eos_id();
          if (!b.empty()) all = b.find_first_not_of("\"}]") == std::string::npos;
          if (all) closing.push_back(id);
        }
        if (!closing.empty()) allowed.swap(closing);
      }
      const int32_t id = allowed[std::uniform_int_distribution<size_t>(0, allowed.size() - 1)(rng)];
      const auto t2 = Clock::now();
      if (!c.Accept(id).ok()) {
        std::fprintf(stderr, "Accept failed\n");
        std::exit(1);
      }
      const auto t3 = Clock::now();
      s.step_us.push_back(Ms(t0, t1) * 1e3 + Ms(t2, t3) * 1e3);
      if (id == vocab.eos_id()) break;
      s.bytes += vocab.token_bytes(id).size();
    }
    s.computed += c.masks_computed();
    s.hits += c.mask_cache_hits();
  }
  return s;
}

void Report(const char* name, Stats s) {
  std::sort(s.step_us.begin(), s.step_us.end());
  double sum = 0;
  for (double x : s.step_us) sum += x;
  const size_t n = s.step_us.size();
  std::printf("%s: %zu tokens (%zu bytes), per token (AllowedTokens + Accept): mean %.1f us, median %.1f us, "
              "p99 %.1f us, max %.1f ms; masks computed %lld (mean %.2f ms), cache hits %lld\n",
              name, n, s.bytes, sum / static_cast<double>(n), s.step_us[n / 2], s.step_us[n * 99 / 100],
              s.step_us[n - 1] / 1e3, static_cast<long long>(s.computed),
              s.computed > 0 ? s.computed_ms / static_cast<double>(s.computed) : 0.0,
              static_cast<long long>(s.hits));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace deepshard::structured;
  const std::string dir = argc > 1 ? argv[1] : "tests/data/tokenizers/deepseek-v3";
  const int objects = argc > 2 ? std::atoi(argv[2]) : 200;
  auto t0 = Clock::now();
  auto tok = deepshard::Tokenizer::FromDirectory(dir);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  auto t1 = Clock::now();
  auto vocab = *TokenVocabulary::FromTokenizer(**tok);
  auto t2 = Clock::now();
  std::printf("tokenizer load %.1f ms; vocabulary build %.1f ms (%lld tokens, %zu trie nodes, max depth %d)\n", Ms(t0, t1),
              Ms(t1, t2), static_cast<long long>(vocab->size()), vocab->trie().size(), vocab->max_depth());

  const boost::json::value schema = boost::json::parse(kSchema);
  auto t3 = Clock::now();
  auto g = *JsonGrammar::FromSchema(schema);
  auto t4 = Clock::now();
  std::printf("schema compile %.3f ms (%zu nodes)\n", Ms(t3, t4), g->nodes().size());

  {
    JsonConstraint c(g, vocab);
    auto a = Clock::now();
    c.AllowedTokens();
    auto b = Clock::now();
    (void)c.Accept(*(*tok)->TokenToId("{\""));
    (void)c.Accept(*(*tok)->TokenToId("id"));
    (void)c.Accept(*(*tok)->TokenToId("\":"));
    (void)c.Accept(*(*tok)->TokenToId("Ġ\""));  // not allowed (id is an integer): state unchanged
    auto d = Clock::now();
    c.AllowedTokens();
    auto e = Clock::now();
    JsonConstraint s(JsonGrammar::AnyObject(), vocab);
    (void)s.Accept(*(*tok)->TokenToId("{\""));
    auto f = Clock::now();
    s.AllowedTokens();  // inside a key string: nearly every token survives
    auto h = Clock::now();
    std::printf("first mask (start of value) %.3f ms; after '{\"id\":' %.3f ms; inside a string (worst case) %.3f ms\n",
                Ms(a, b), Ms(d, e), Ms(f, h));
  }
  Report("json_schema, shared grammar", Generate(*vocab, vocab, schema, objects, /*cold=*/false, 1));
  Report("json_schema, grammar per object (cold cache)", Generate(*vocab, vocab, schema, objects / 4, /*cold=*/true, 2));
  Report("json_object", Generate(*vocab, vocab, boost::json::parse(R"({"type":"object"})"), objects, false, 3));
  return 0;
}
