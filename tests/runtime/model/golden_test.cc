// Golden tests: our forward pass against Hugging Face transformers (and the
// original modeling_deepseek.py where transformers is wrong or absent).
//
// Fixtures in tests/data/golden/<variant>.safetensors come from
// tools/reference/make_fixtures.py. Each records the make-model options and an
// FNV-1a fingerprint of the weights; this test regenerates the model with the
// same options, checks the fingerprint, and compares:
//   - full-sequence logits of three prompts (5, 17, 45 tokens; 45 exceeds
//     original_max_position_embeddings = 32),
//   - 16 greedy decode steps through the KV cache (tokens and logits),
// in both MLA forms. Error metric, per logits row: max|ours - ref| / max|ref|.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "gtest/gtest.h"
#include "tests/util/logits.h"
#include "runtime/generate.h"
#include "runtime/model/deepseek_model.h"
#include "runtime/model/random_model.h"
#include "runtime/weights/safetensors.h"
#include "tests/runtime/model/test_models.h"

namespace deepshard {
namespace {

// Exact math (f32 products of exactly widened weights) must reach the bar the
// issue sets for f32: 1e-4 relative.
constexpr double kExactTol = 1e-4;

std::vector<std::string> FixtureVariants() {
  std::vector<std::string> out;
  const std::string dir = std::string(DS_SOURCE_DIR) + "/tests/data/golden";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".safetensors") out.push_back(e.path().stem().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct Fixture {
  std::unique_ptr<SafetensorsFile> file;
  std::string meta(const std::string& k) const {
    auto it = file->metadata().find(k);
    return it == file->metadata().end() ? "" : it->second;
  }
  template <typename T>
  std::vector<T> Get(const std::string& name) const {
    const TensorInfo* t = file->Find(name);
    EXPECT_NE(t, nullptr) << name;
    if (t == nullptr) return {};
    std::vector<T> out(t->numel());
    if constexpr (std::is_same_v<T, float>) {
      EXPECT_EQ(t->dtype, DType::kF32);
      std::memcpy(out.data(), file->Data(*t), out.size() * 4);
    } else {
      EXPECT_EQ(t->dtype, DType::kI64);
      std::vector<int64_t> v(t->numel());
      std::memcpy(v.data(), file->Data(*t), v.size() * 8);
      for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<T>(v[i]);
    }
    return out;
  }
};

// Max over rows of max|a - b| / max|b|.

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string path = std::string(DS_SOURCE_DIR) + "/tests/data/golden/" + GetParam() + ".safetensors";
    auto f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    fx_.file = std::move(f).value();
    RandomModelOptions o;
    o.preset = fx_.meta("preset");
    o.seed = std::stoull(fx_.meta("seed"));
    const std::string dt = fx_.meta("dtype");
    o.dtype = dt == "bf16" ? DType::kBF16 : dt == "fp8" ? DType::kF8E4M3 : DType::kF32;
    o.yarn = fx_.meta("make_model_cmd").find("--no-yarn") == std::string::npos;
    dir_ = testing_util::TinyModel(o);
    auto fp = WeightsFingerprint(dir_);
    ASSERT_TRUE(fp.ok());
    ASSERT_EQ(*fp, fx_.meta("weights_fnv1a64"))
        << "make-model no longer produces the weights this fixture was made from; regenerate with "
           "tools/reference/make_fixtures.py (see tools/reference/README.md)";
  }

  void CheckForm(MlaMode mode, MathMode math, double tol, DType kv_dtype = DType::kF32) {
    RuntimeConfig rt;
    rt.mla_mode = mode;
    rt.math = math;
    rt.kv_dtype = kv_dtype;
    auto m = DeepseekModel::Load(dir_, rt);
    ASSERT_TRUE(m.ok()) << m.status();
    const int64_t V = (*m)->config().vocab_size;
    for (int i = 0;; ++i) {
      const std::string key = "prompt" + std::to_string(i);
      if (fx_.file->Find(key + ".ids") == nullptr) break;
      const auto ids = fx_.Get<int32_t>(key + ".ids");
      const auto ref = fx_.Get<float>(key + ".logits");
      std::vector<float> ours(ids.size() * V);
      auto cache = (*m)->NewCache().value();
      SequenceChunk ch{cache.get(), 0, ids.data(), static_cast<int64_t>(ids.size())};
      ASSERT_TRUE((*m)->Forward({&ch, 1}, true, ours.data()).ok());
      const double err = testing_util::RowRelErr(ours, ref, V);
      std::printf("[ %s ] %s prompt%d (%zu tokens): max rel logit err %.3g\n", GetParam().c_str(),
                  mode == MlaMode::kNaive ? "naive" : mode == MlaMode::kAbsorbed ? "absorbed" : "auto", i,
                  ids.size(), err);
      EXPECT_LE(err, tol) << key;
    }
    const auto prompt = fx_.Get<int32_t>("decode.prompt_ids");
    const auto ref_tokens = fx_.Get<int32_t>("decode.tokens");
    const auto ref_logits = fx_.Get<float>("decode.logits");
    GenerateOptions g;
    g.max_new_tokens = static_cast<int64_t>(ref_tokens.size());
    g.stop_at_eos = false;
    std::vector<float> step_logits;
    g.step_logits = &step_logits;
    auto out = Generate(**m, prompt, g);
    ASSERT_TRUE(out.ok()) << out.status();
    const double err = testing_util::RowRelErr(step_logits, ref_logits, V);
    std::printf("[ %s ] decode %zu greedy steps: max rel logit err %.3g, tokens %s\n", GetParam().c_str(),
                ref_tokens.size(), err, *out == ref_tokens ? "identical" : "DIFFER");
    EXPECT_LE(err, tol);
    EXPECT_EQ(*out, ref_tokens);
  }

  Fixture fx_;
  std::string dir_;
};

TEST_P(GoldenTest, DefaultFormsMatchReference) { CheckForm(MlaMode::kAuto, MathMode::kExact, kExactTol); }

// A bf16 KV cache (--kv-cache-dtype bf16, what GPU MLA kernels read) rounds
// every cached value to 8 significant bits (relative 2^-9 ≈ 2e-3); measured
// logit errors are 1.5e-3 .. 3.5e-3, bounded here by 1e-2. A perturbation that
// small can still move one token's MoE routing across a near-tie (a discrete
// change, seen on about one random model in ten): such a step is detected by
// comparing the routed-expert counts of a bf16 and an f32 run in lockstep,
// reported, and its logits are not held to the bf16 bound. Greedy tokens must
// match the reference either way.
constexpr double kBf16KvTol = 1e-2;

TEST_P(GoldenTest, Bf16KvCacheMatchesReference) {
  RuntimeConfig f32_rt, bf16_rt;
  bf16_rt.kv_dtype = DType::kBF16;
  auto a = DeepseekModel::Load(dir_, f32_rt), b = DeepseekModel::Load(dir_, bf16_rt);
  ASSERT_TRUE(a.ok() && b.ok());
  StepProfile pa, pb;
  (*a)->set_profile(&pa);
  (*b)->set_profile(&pb);
  const int64_t V = (*a)->config().vocab_size;
  int flips = 0;
  // Runs one step on both; true when the routing was the same.
  auto step = [&](KvCache& ca, KvCache& cb, const int32_t* ids, int64_t n, bool all, float* la, float* lb) {
    const std::vector<int64_t> ra = pa.expert_tokens, rb = pb.expert_tokens;
    SequenceChunk x{&ca, ca.length(), ids, n}, y{&cb, cb.length(), ids, n};
    EXPECT_TRUE((*a)->Forward({&x, 1}, all, la).ok());
    EXPECT_TRUE((*b)->Forward({&y, 1}, all, lb).ok());
    bool same = pa.expert_tokens.size() == pb.expert_tokens.size();
    for (size_t i = 0; same && i < pa.expert_tokens.size(); ++i) {
      same = pa.expert_tokens[i] - (i < ra.size() ? ra[i] : 0) == pb.expert_tokens[i] - (i < rb.size() ? rb[i] : 0);
    }
    if (!same) ++flips;
    return same;
  };
  for (int i = 0;; ++i) {
    const std::string key = "prompt" + std::to_string(i);
    if (fx_.file->Find(key + ".ids") == nullptr) break;
    const auto ids = fx_.Get<int32_t>(key + ".ids");
    const auto ref = fx_.Get<float>(key + ".logits");
    std::vector<float> la(ids.size() * V), lb(ids.size() * V);
    auto ca = (*a)->NewCache().value(), cb = (*b)->NewCache().value();
    const bool same = step(*ca, *cb, ids.data(), static_cast<int64_t>(ids.size()), true, la.data(), lb.data());
    const double err = testing_util::RowRelErr(lb, ref, V);
    std::printf("[ %s ] bf16 KV prompt%d (%zu tokens): max rel logit err %.3g%s\n", GetParam().c_str(), i, ids.size(),
                err, same ? "" : " (routing differs from the f32 run: not compared)");
    if (same) {
      EXPECT_LE(err, kBf16KvTol) << key;
    }
  }
  const auto prompt = fx_.Get<int32_t>("decode.prompt_ids");
  const auto ref_tokens = fx_.Get<int32_t>("decode.tokens");
  const auto ref_logits = fx_.Get<float>("decode.logits");
  auto ca = (*a)->NewCache().value(), cb = (*b)->NewCache().value();
  std::vector<float> la(V), lb(V);
  std::vector<int32_t> tokens;
  double worst = 0;
  bool same = step(*ca, *cb, prompt.data(), static_cast<int64_t>(prompt.size()), false, la.data(), lb.data());
  for (size_t s = 0; s < ref_tokens.size(); ++s) {
    if (s > 0) same = step(*ca, *cb, &tokens.back(), 1, false, la.data(), lb.data());
    const std::vector<float> want(ref_logits.begin() + s * V, ref_logits.begin() + (s + 1) * V);
    const double err = testing_util::RowRelErr(lb, want, V);
    if (same) worst = std::max(worst, err);
    tokens.push_back(static_cast<int32_t>(std::max_element(lb.begin(), lb.end()) - lb.begin()));
  }
  std::printf("[ %s ] bf16 KV decode %zu greedy steps: max rel logit err %.3g, tokens %s, %d step(s) with "
              "different routing\n", GetParam().c_str(), ref_tokens.size(), worst,
              tokens == ref_tokens ? "identical" : "DIFFER", flips);
  EXPECT_LE(worst, kBf16KvTol);
  EXPECT_EQ(tokens, ref_tokens);
}

TEST_P(GoldenTest, NaiveOnlyMatchesReference) {
  if (fx_.meta("model_type") == "deepseek") GTEST_SKIP() << "MHA model: no MLA forms";
  CheckForm(MlaMode::kNaive, MathMode::kExact, kExactTol);
}

TEST_P(GoldenTest, AbsorbedOnlyMatchesReference) {
  if (fx_.meta("model_type") == "deepseek") GTEST_SKIP() << "MHA model: no MLA forms";
  CheckForm(MlaMode::kAbsorbed, MathMode::kExact, kExactTol);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::ValuesIn(FixtureVariants()),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& ch : s) if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

TEST(GoldenFixtures, AllVariantsPresent) {
  // The coverage list: V2-Lite-, V2- and V3-style, with and without
  // YaRN, FP8 block-scaled, and DeepSeekMoE 16B.
  const auto v = FixtureVariants();
  for (const char* want : {"tiny-v3-f32", "tiny-v3-fp8", "tiny-v3-bf16", "tiny-v3-noyarn-f32", "tiny-v2-f32",
                           "tiny-v2-lite-f32", "tiny-moe16b-f32"}) {
    EXPECT_NE(std::find(v.begin(), v.end(), want), v.end()) << "missing fixture " << want;
  }
}

}  // namespace
}  // namespace deepshard
