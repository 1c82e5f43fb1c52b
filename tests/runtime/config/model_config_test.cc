// Tests for runtime/config: the four real architecture configs in
// tests/data/configs parse with the right values, and every invalid config is
// rejected with a message that names the file and the key.
#include "runtime/config/model_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "boost/json.hpp"

namespace deepshard {
namespace {
namespace json = boost::json;

std::string ConfigDir(const std::string& name) { return std::string(DS_SOURCE_DIR) + "/tests/data/configs/" + name; }

std::string ReadConfigText(const std::string& name) {
  std::ifstream in(ConfigDir(name) + "/config.json");
  EXPECT_TRUE(in) << ConfigDir(name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ModelConfig Load(const std::string& name) {
  auto c = LoadModelConfig(ConfigDir(name));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

// ---------------------------------------------------------------------------
// The real configs
// ---------------------------------------------------------------------------

TEST(ModelConfigReal, DeepseekV3) {
  const ModelConfig c = Load("deepseek-v3");
  EXPECT_EQ(c.family, ModelFamily::kDeepseekV3);
  EXPECT_EQ(c.model_type, "deepseek_v3");
  EXPECT_TRUE(c.is_mla());
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.intermediate_size, 18432);
  EXPECT_EQ(c.moe_intermediate_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.num_key_value_heads, 128);
  EXPECT_EQ(c.max_position_embeddings, 163840);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_id, 1);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.kv_cache_width(), 576);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_EQ(c.moe_layer_freq, 1);
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSigmoid);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  ASSERT_TRUE(c.fp8.has_value());
  EXPECT_EQ(c.fp8->block_rows, 128);
  EXPECT_EQ(c.fp8->block_cols, 128);
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_DOUBLE_EQ(c.yarn->factor, 40.0);
  EXPECT_DOUBLE_EQ(c.yarn->mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.yarn->mscale_all_dim, 1.0);
  EXPECT_DOUBLE_EQ(c.yarn->beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.yarn->beta_slow, 1.0);
  EXPECT_EQ(c.yarn->original_max_position_embeddings, 4096);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
  EXPECT_TRUE(c.is_moe_layer(60));
}

TEST(ModelConfigReal, DeepseekV2) {
  const ModelConfig c = Load("deepseek-v2");
  EXPECT_EQ(c.family, ModelFamily::kDeepseekV2);
  EXPECT_EQ(c.hidden_size, 5120);
  EXPECT_EQ(c.num_hidden_layers, 60);
  EXPECT_EQ(c.num_nextn_predict_layers, 0);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.kv_cache_width(), 576);
  EXPECT_EQ(c.n_routed_experts, 160);
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.topk_method, TopkMethod::kGroupLimitedGreedy);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 3);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 16.0);
  EXPECT_FALSE(c.fp8.has_value());
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_DOUBLE_EQ(c.yarn->factor, 40.0);
  EXPECT_DOUBLE_EQ(c.yarn->mscale, 0.707);
  EXPECT_DOUBLE_EQ(c.yarn->mscale_all_dim, 0.707);
  EXPECT_EQ(c.bos_token_id, 100000);
  EXPECT_EQ(c.eos_token_id, 100001);
}

TEST(ModelConfigReal, DeepseekV2Lite) {
  const ModelConfig c = Load("deepseek-v2-lite");
  EXPECT_EQ(c.family, ModelFamily::kDeepseekV2);
  EXPECT_EQ(c.q_lora_rank, 0);  // null in the file: plain q_proj
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 27);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.n_routed_experts, 64);
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_EQ(c.n_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 1.0);
  EXPECT_FALSE(c.fp8.has_value());
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_DOUBLE_EQ(c.yarn->mscale_all_dim, 0.707);
}

TEST(ModelConfigReal, DeepseekMoE16B) {
  const ModelConfig c = Load("deepseek-moe-16b");
  EXPECT_EQ(c.family, ModelFamily::kDeepseekMoE);
  EXPECT_FALSE(c.is_mla());
  EXPECT_EQ(c.model_type, "deepseek");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.qk_head_dim(), 128);
  EXPECT_EQ(c.num_key_value_heads, 16);
  EXPECT_EQ(c.kv_cache_width(), 2 * 16 * 128);
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.kv_lora_rank, 0);
  EXPECT_FALSE(c.yarn.has_value());
  EXPECT_FALSE(c.fp8.has_value());
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 10944);
  EXPECT_EQ(c.moe_intermediate_size, 1408);
  EXPECT_EQ(c.num_hidden_layers, 28);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.n_routed_experts, 64);
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_DOUBLE_EQ(c.softmax_scale(), 1.0 / std::sqrt(128.0));
}

TEST(ModelConfigReal, SoftmaxScaleUnderYarn) {
  for (const char* name : {"deepseek-v3", "deepseek-v2", "deepseek-v2-lite"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = Load(name);
    ASSERT_TRUE(c.yarn.has_value());
    const double m = 0.1 * c.yarn->mscale_all_dim * std::log(c.yarn->factor) + 1.0;
    const double want = std::pow(static_cast<double>(c.qk_head_dim()), -0.5) * m * m;
    EXPECT_NEAR(c.softmax_scale(), want, 1e-15);
  }
  // V3 by the numbers: 192^-0.5 * (0.1 ln 40 + 1)^2.
  const double v3 = std::pow(192.0, -0.5) * std::pow(0.1 * std::log(40.0) + 1.0, 2);
  EXPECT_NEAR(Load("deepseek-v3").softmax_scale(), v3, 1e-15);
  EXPECT_NEAR(v3, 0.13524, 1e-5);
  EXPECT_DOUBLE_EQ(YarnGetMscale(1.0, 0.707), 1.0);
  EXPECT_DOUBLE_EQ(YarnGetMscale(0.5, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(YarnGetMscale(40.0, 1.0), 0.1 * std::log(40.0) + 1.0);
}

TEST(ModelConfigReal, LoadFileOrDirectory) {
  auto from_dir = LoadModelConfig(ConfigDir("deepseek-v3"));
  auto from_file = LoadModelConfig(ConfigDir("deepseek-v3") + "/config.json");
  auto from_text = ParseModelConfig(ReadConfigText("deepseek-v3"), "v3");
  ASSERT_TRUE(from_dir.ok() && from_file.ok() && from_text.ok());
  EXPECT_EQ(from_dir->hidden_size, from_file->hidden_size);
  EXPECT_EQ(from_dir->vocab_size, from_text->vocab_size);
  auto missing = LoadModelConfig(ConfigDir("no-such-model"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(missing.status().message()).find("no-such-model"), std::string::npos) << missing.status();
}

// ---------------------------------------------------------------------------
// Invalid configs: each error names the source and the key
// ---------------------------------------------------------------------------

constexpr const char* kSource = "/models/test/config.json";

// Parses `base`'s config after `edit` changes its JSON.
absl::Status ParseEdited(const std::string& base, const std::function<void(json::object&)>& edit) {
  json::value v = json::parse(ReadConfigText(base));
  edit(v.as_object());
  return ParseModelConfig(json::serialize(v), kSource).status();
}

::testing::AssertionResult Mentions(const absl::Status& st, const std::vector<std::string>& needles) {
  if (st.ok()) return ::testing::AssertionFailure() << "expected an error, got OK";
  const std::string msg(st.message());
  for (const auto& n : needles) {
    if (msg.find(n) == std::string::npos) {
      return ::testing::AssertionFailure() << "message \"" << msg << "\" does not mention \"" << n << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}

std::string Key(const std::string& k) { return "\"" + k + "\""; }

TEST(ModelConfigErrors, InvalidJson) {
  EXPECT_TRUE(Mentions(ParseModelConfig("{\"model_type\": ", kSource).status(), {kSource, "invalid JSON"}));
  EXPECT_TRUE(Mentions(ParseModelConfig("", kSource).status(), {kSource, "JSON"}));
  EXPECT_TRUE(Mentions(ParseModelConfig("[1]", kSource).status(), {kSource, "object"}));
}

TEST(ModelConfigErrors, MissingKey) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"deepseek-v3", {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "max_position_embeddings", "kv_lora_rank", "qk_nope_head_dim",
                       "qk_rope_head_dim", "v_head_dim", "moe_intermediate_size", "num_experts_per_tok"}},
      {"deepseek-moe-16b", {"hidden_size", "num_attention_heads", "moe_intermediate_size"}},
  };
  for (const auto& [base, keys] : cases) {
    for (const auto& key : keys) {
      SCOPED_TRACE(base + " without " + key);
      EXPECT_TRUE(Mentions(ParseEdited(base, [&](json::object& o) { o.erase(key); }), {kSource, Key(key), "missing"}));
    }
  }
  // Nested objects name their section too.
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["rope_scaling"].as_object().erase("factor"); }),
                       {kSource, "rope_scaling", Key("factor"), "missing"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["rope_scaling"].as_object().erase("type"); }),
                       {kSource, "rope_scaling", "rope_type", "missing"}));
  EXPECT_TRUE(Mentions(
      ParseEdited("deepseek-v3", [](json::object& o) { o["quantization_config"].as_object().erase("quant_method"); }),
      {kSource, "quantization_config", Key("quant_method"), "missing"}));
  EXPECT_TRUE(Mentions(
      ParseEdited("deepseek-v3", [](json::object& o) { o["quantization_config"].as_object().erase("weight_block_size"); }),
      {kSource, Key("weight_block_size")}));
  // Optional keys fall back to the family's defaults.
  auto st = ParseEdited("deepseek-v3", [](json::object& o) {
    for (const char* k : {"topk_method", "scoring_func", "n_group", "topk_group", "norm_topk_prob",
                          "routed_scaling_factor", "num_nextn_predict_layers", "rope_scaling", "quantization_config"}) {
      o.erase(k);
    }
  });
  EXPECT_TRUE(st.ok()) << st;
}

TEST(ModelConfigErrors, MistypedKey) {
  struct Case {
    const char* base;
    const char* key;
    json::value value;
    const char* what;
  };
  const std::vector<Case> cases = {
      {"deepseek-v3", "hidden_size", json::value("7168"), "must be an integer, got string"},
      {"deepseek-v3", "hidden_size", json::value(7168.5), "must be an integer"},
      {"deepseek-v3", "num_hidden_layers", json::value(true), "must be an integer"},
      {"deepseek-v3", "vocab_size", json::value(nullptr), "must be an integer, got null"},
      {"deepseek-v3", "vocab_size", json::array{129280}, "must be an integer, got array"},
      {"deepseek-v3", "q_lora_rank", json::value("1536"), "must be an integer"},
      {"deepseek-v3", "n_routed_experts", json::value(256.0), "must be an integer"},
      {"deepseek-v3", "norm_topk_prob", json::value("true"), "must be a boolean, got string"},
      {"deepseek-v3", "norm_topk_prob", json::value(1), "must be a boolean"},
      {"deepseek-v3", "tie_word_embeddings", json::value("no"), "must be a boolean"},
      {"deepseek-v3", "rms_norm_eps", json::value("1e-6"), "must be a number, got string"},
      {"deepseek-v3", "routed_scaling_factor", json::value(false), "must be a number"},
      {"deepseek-v3", "topk_method", json::value(3), "must be a string, got integer"},
      {"deepseek-v3", "scoring_func", json::value(1.5), "must be a string, got number"},
      {"deepseek-v3", "model_type", json::value(3), "must be a string"},
      {"deepseek-v3", "hidden_act", json::value(1), "must be a string"},
      {"deepseek-v3", "rope_scaling", json::value("yarn"), "must be an object or null"},
      {"deepseek-v3", "quantization_config", json::array{}, "must be an object or null"},
      {"deepseek-v3", "eos_token_id", json::value("1"), "must be an integer"},
      {"deepseek-v3", "eos_token_id", json::array{"a"}, "integer"},
      {"deepseek-moe-16b", "num_attention_heads", json::value("16"), "must be an integer"},
      {"deepseek-v2-lite", "first_k_dense_replace", json::value("1"), "must be an integer"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.base) + " " + c.key + " = " + json::serialize(c.value));
    EXPECT_TRUE(Mentions(ParseEdited(c.base, [&](json::object& o) { o[c.key] = c.value; }), {kSource, Key(c.key), c.what}));
  }
  // Nested.
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["rope_scaling"].as_object()["factor"] = "40"; }),
                       {kSource, "rope_scaling", Key("factor"), "must be a number"}));
  EXPECT_TRUE(Mentions(
      ParseEdited("deepseek-v3",
                  [](json::object& o) { o["rope_scaling"].as_object()["original_max_position_embeddings"] = 4096.5; }),
      {Key("original_max_position_embeddings"), "must be an integer"}));
  for (json::value bad : {json::value(json::array{128}), json::value(json::array{128, "128"}), json::value(128),
                          json::value(json::array{128.0, 128.0})}) {
    SCOPED_TRACE(json::serialize(bad));
    EXPECT_TRUE(Mentions(
        ParseEdited("deepseek-v3", [&](json::object& o) { o["quantization_config"].as_object()["weight_block_size"] = bad; }),
        {kSource, "quantization_config", Key("weight_block_size"), "two integers"}));
  }
  // A list of eos ids: the first is the primary one.
  auto c = ParseModelConfig(
      [] {
        json::value v = json::parse(ReadConfigText("deepseek-v3"));
        v.as_object()["eos_token_id"] = json::array{7, 1};
        return json::serialize(v);
      }(),
      kSource);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_id, 7);
}

TEST(ModelConfigErrors, OutOfRangeValues) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "max_position_embeddings", "kv_lora_rank", "qk_rope_head_dim",
                          "v_head_dim", "moe_intermediate_size", "num_experts_per_tok", "moe_layer_freq", "q_lora_rank"}) {
    for (int64_t bad : {0, -5}) {
      SCOPED_TRACE(std::string(key) + " = " + std::to_string(bad));
      EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [&](json::object& o) { o[key] = bad; }), {kSource, Key(key)}));
    }
  }
  for (const char* key : {"n_routed_experts", "n_shared_experts", "num_nextn_predict_layers", "first_k_dense_replace"}) {
    SCOPED_TRACE(key);
    EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [&](json::object& o) { o[key] = -1; }), {kSource, Key(key)}));
  }
  for (const char* key : {"rms_norm_eps", "rope_theta", "routed_scaling_factor"}) {
    SCOPED_TRACE(key);
    EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [&](json::object& o) { o[key] = 0.0; }),
                         {kSource, Key(key), "must be positive"}));
  }
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["qk_rope_head_dim"] = 63; }),
                       {kSource, Key("qk_rope_head_dim"), "even"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["rope_scaling"].as_object()["factor"] = 0; }),
                       {kSource, Key("factor"), "positive"}));
  EXPECT_TRUE(Mentions(
      ParseEdited("deepseek-v3", [](json::object& o) { o["quantization_config"].as_object()["weight_block_size"] = json::array{128, 64}; }),
      {kSource, Key("weight_block_size"), "square"}));
  EXPECT_TRUE(Mentions(
      ParseEdited("deepseek-v3", [](json::object& o) { o["quantization_config"].as_object()["weight_block_size"] = json::array{0, 0}; }),
      {kSource, Key("weight_block_size"), "positive"}));
}

TEST(ModelConfigErrors, Contradictory) {
  // n_group must divide the routed experts (V3: 256 experts, V2: 160).
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["n_group"] = 7; }),
                       {kSource, Key("n_group"), "(7) must divide n_routed_experts (256)"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v2", [](json::object& o) { o["n_group"] = 3; }),
                       {kSource, Key("n_group"), "n_routed_experts"}));
  // topk_group cannot exceed n_group.
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["topk_group"] = 9; }),
                       {kSource, Key("topk_group"), "(9) exceeds n_group (8)"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v2", [](json::object& o) { o["topk_group"] = 9; }),
                       {kSource, Key("topk_group"), "n_group"}));
  // first_k_dense_replace beyond the layers.
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["first_k_dense_replace"] = 62; }),
                       {kSource, Key("first_k_dense_replace"), "num_hidden_layers"}));
  EXPECT_TRUE(ParseEdited("deepseek-v3", [](json::object& o) { o["first_k_dense_replace"] = 61; }).ok());
  // More experts per token than experts.
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["num_experts_per_tok"] = 257; }),
                       {kSource, Key("num_experts_per_tok"), "(257) exceeds n_routed_experts (256)"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-moe-16b", [](json::object& o) { o["num_experts_per_tok"] = 65; }),
                       {kSource, Key("num_experts_per_tok"), "n_routed_experts"}));
  // More experts per token than the selected groups hold (V3: 1 group of 32).
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["topk_group"] = 1; o["num_experts_per_tok"] = 33; }),
                       {kSource, Key("num_experts_per_tok"), "topk_group"}));
  EXPECT_TRUE(ParseEdited("deepseek-v3", [](json::object& o) { o["topk_group"] = 1; o["num_experts_per_tok"] = 32; }).ok());
  // noaux_tc scores a group by its top-2 experts.
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["n_group"] = 256; o["topk_group"] = 8; }),
                       {kSource, Key("n_group"), "top-2"}));
  // Heads.
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["num_key_value_heads"] = 3; }),
                       {kSource, Key("num_key_value_heads"), "divide num_attention_heads"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-moe-16b", [](json::object& o) { o["num_attention_heads"] = 15; }),
                       {kSource, Key("num_attention_heads"), "hidden_size"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-moe-16b", [](json::object& o) { o["num_attention_heads"] = 2048; o["num_key_value_heads"] = 2048; }),
                       {kSource, Key("num_attention_heads"), "even"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["attention_bias"] = true; }),
                       {kSource, Key("attention_bias")}));
}

// Issue 16: every field against its meaning and the others, whatever the routing.
TEST(ModelConfigErrors, GroupCountsUnderGreedyRouting) {
  // DeepSeekMoE 16B and V2-Lite route greedily; n_group / topk_group are still checked.
  for (const char* base : {"deepseek-moe-16b", "deepseek-v2-lite"}) {
    SCOPED_TRACE(base);
    EXPECT_TRUE(Mentions(ParseEdited(base, [](json::object& o) { o["n_group"] = -3; }),
                         {kSource, Key("n_group"), "must be positive"}));
    EXPECT_TRUE(Mentions(ParseEdited(base, [](json::object& o) { o["n_group"] = 0; }), {kSource, Key("n_group")}));
    EXPECT_TRUE(Mentions(ParseEdited(base, [](json::object& o) { o["topk_group"] = -1; }),
                         {kSource, Key("topk_group"), "must be positive"}));
    EXPECT_TRUE(Mentions(ParseEdited(base, [](json::object& o) { o["n_group"] = 1; o["topk_group"] = 2; }),
                         {kSource, Key("topk_group"), "exceeds n_group"}));
  }
}

TEST(ModelConfigErrors, TokenIdsInsideTheVocabulary) {
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["bos_token_id"] = 129280; }),
                       {kSource, Key("bos_token_id"), "vocab_size (129280)"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["eos_token_id"] = -2; }),
                       {kSource, Key("eos_token_id")}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["eos_token_id"] = json::array{1, 999999}; }),
                       {kSource, Key("eos_token_id"), "vocab_size"}));
  EXPECT_TRUE(ParseEdited("deepseek-v3", [](json::object& o) { o["eos_token_id"] = json::array{1, 2}; }).ok());
  EXPECT_TRUE(ParseEdited("deepseek-v3", [](json::object& o) { o["bos_token_id"] = nullptr; }).ok());
}

TEST(ModelConfigErrors, NonFiniteNumbers) {
  // JSON has no Inf; an exponent past the double range parses as one.
  std::string text = ReadConfigText("deepseek-v3");
  for (const char* key : {"rms_norm_eps", "rope_theta", "routed_scaling_factor"}) {
    SCOPED_TRACE(key);
    json::value v = json::parse(text);
    v.as_object()[key] = 123454321;
    std::string t = json::serialize(v);
    const size_t at = t.find("123454321");
    ASSERT_NE(at, std::string::npos);
    t.replace(at, 9, "1e999");
    EXPECT_TRUE(Mentions(ParseModelConfig(t, kSource).status(), {kSource, Key(key), "finite"}));
  }
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["rms_norm_eps"] = 2.0; }),
                       {kSource, Key("rms_norm_eps")}));
}

TEST(ModelConfigErrors, HugeSizesAreRejectedNamingTheKey) {
  const int64_t huge = INT64_MAX - 7;
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "max_position_embeddings", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                          "v_head_dim", "moe_intermediate_size", "q_lora_rank", "n_shared_experts",
                          "num_nextn_predict_layers", "moe_layer_freq"}) {
    for (int64_t bad : {huge, int64_t{1} << 40}) {
      SCOPED_TRACE(std::string(key) + " = " + std::to_string(bad));
      EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [&](json::object& o) { o[key] = bad; }),
                           {kSource, Key(key), "exceeds"}));
    }
  }
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["num_hidden_layers"] = 1000000000; }),
                       {kSource, Key("num_hidden_layers"), "exceeds"}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-moe-16b", [](json::object& o) { o["hidden_size"] = int64_t{1} << 40; o["num_attention_heads"] = 1024; }),
                       {kSource, Key("hidden_size"), "exceeds"}));
  EXPECT_TRUE(Mentions(
      ParseEdited("deepseek-v3", [](json::object& o) { o["quantization_config"].as_object()["weight_block_size"] = json::array{huge, huge}; }),
      {kSource, Key("weight_block_size"), "exceeds"}));
  EXPECT_TRUE(Mentions(
      ParseEdited("deepseek-v3", [&](json::object& o) { o["rope_scaling"].as_object()["original_max_position_embeddings"] = huge; }),
      {kSource, Key("original_max_position_embeddings"), "exceeds"}));
}

TEST(ModelConfigErrors, UnknownEnumValues) {
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["model_type"] = "llama"; }),
                       {kSource, Key("model_type"), "\"llama\""}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["topk_method"] = "aux_free"; }),
                       {kSource, Key("topk_method"), "\"aux_free\""}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["scoring_func"] = "tanh"; }),
                       {kSource, Key("scoring_func"), "\"tanh\""}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["rope_scaling"].as_object()["type"] = "linear"; }),
                       {kSource, Key("rope_scaling"), "\"linear\""}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["quantization_config"].as_object()["quant_method"] = "gptq"; }),
                       {kSource, Key("quant_method"), "\"gptq\""}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["quantization_config"].as_object()["fmt"] = "e5m2"; }),
                       {kSource, Key("fmt"), "\"e5m2\""}));
  EXPECT_TRUE(Mentions(
      ParseEdited("deepseek-v3", [](json::object& o) { o["quantization_config"].as_object()["activation_scheme"] = "static"; }),
      {kSource, Key("activation_scheme"), "\"static\""}));
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3", [](json::object& o) { o["hidden_act"] = "gelu"; }),
                       {kSource, Key("hidden_act"), "\"gelu\""}));
  // "rope_type" is accepted as the spelling of "type" (newer transformers).
  auto st = ParseEdited("deepseek-v3", [](json::object& o) {
    auto& r = o["rope_scaling"].as_object();
    r.erase("type");
    r["rope_type"] = "yarn";
  });
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_TRUE(Mentions(ParseEdited("deepseek-v3",
                                   [](json::object& o) {
                                     auto& r = o["rope_scaling"].as_object();
                                     r.erase("type");
                                     r["rope_type"] = "dynamic";
                                   }),
                       {kSource, Key("rope_scaling"), "\"dynamic\""}));
}

}  // namespace
}  // namespace deepshard
