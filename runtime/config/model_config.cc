#include "runtime/config/model_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "boost/json.hpp"
#include "base/status_macros.h"

namespace deepshard {
namespace json = boost::json;
namespace {

// Supported limits on config.json sizes (ParseModelConfig rejects larger
// values naming the key). Real DeepSeek checkpoints are far below them
// (V3: vocab 129280, hidden 7168, 61 layers, 128 heads, 256 experts); they keep
// every size computed from the config (weight shapes, KV widths, workspaces)
// well inside int64.
constexpr int64_t kMaxConfigVocab = int64_t{1} << 24;      // token ids are int32
constexpr int64_t kMaxConfigDim = int64_t{1} << 20;        // hidden, intermediate, ranks, head dims
constexpr int64_t kMaxConfigHeads = int64_t{1} << 14;
constexpr int64_t kMaxConfigLayers = int64_t{1} << 16;
constexpr int64_t kMaxConfigPositions = int64_t{1} << 24;
constexpr int64_t kMaxConfigExperts = 1024;                // routed, shared, groups


// Reads typed fields from one JSON object and names the file and key in errors.
class Fields {
 public:
  Fields(const json::object& o, std::string source) : o_(o), source_(std::move(source)) {}

  absl::Status Error(const std::string& key, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": key \"", key, "\" ", what));
  }
  bool Has(const std::string& key) const {
    auto it = o_.find(key);
    return it != o_.end();
  }
  bool IsNull(const std::string& key) const {
    auto it = o_.find(key);
    return it != o_.end() && it->value().is_null();
  }
  const json::value* Find(const std::string& key) const {
    auto it = o_.find(key);
    return it == o_.end() ? nullptr : &it->value();
  }

  absl::StatusOr<int64_t> Int(const std::string& key, std::optional<int64_t> def = std::nullopt) const {
    const json::value* v = Find(key);
    if (v == nullptr || v->is_null()) {
      if (def) return *def;
      return Error(key, v ? "must be an integer, got null" : "is missing");
    }
    if (v->is_int64()) return v->as_int64();
    if (v->is_uint64() && v->as_uint64() <= INT64_MAX) return static_cast<int64_t>(v->as_uint64());
    return Error(key, absl::StrCat("must be an integer, got ", Kind(*v), " ", json::serialize(*v)));
  }
  absl::StatusOr<double> Number(const std::string& key, std::optional<double> def = std::nullopt) const {
    const json::value* v = Find(key);
    if (v == nullptr || v->is_null()) {
      if (def) return *def;
      return Error(key, v ? "must be a number, got null" : "is missing");
    }
    if (v->is_double()) return v->as_double();
    if (v->is_int64()) return static_cast<double>(v->as_int64());
    if (v->is_uint64()) return static_cast<double>(v->as_uint64());
    return Error(key, absl::StrCat("must be a number, got ", Kind(*v), " ", json::serialize(*v)));
  }
  absl::StatusOr<bool> Bool(const std::string& key, std::optional<bool> def = std::nullopt) const {
    const json::value* v = Find(key);
    if (v == nullptr || v->is_null()) {
      if (def) return *def;
      return Error(key, v ? "must be a boolean, got null" : "is missing");
    }
    if (v->is_bool()) return v->as_bool();
    return Error(key, absl::StrCat("must be a boolean, got ", Kind(*v), " ", json::serialize(*v)));
  }
  absl::StatusOr<std::string> String(const std::string& key,
                                     std::optional<std::string> def = std::nullopt) const {
    const json::value* v = Find(key);
    if (v == nullptr || v->is_null()) {
      if (def) return *def;
      return Error(key, v ? "must be a string, got null" : "is missing");
    }
    if (v->is_string()) return std::string(v->as_string());
    return Error(key, absl::StrCat("must be a string, got ", Kind(*v), " ", json::serialize(*v)));
  }

  static const char* Kind(const json::value& v) {
    switch (v.kind()) {
      case json::kind::null: return "null";
      case json::kind::bool_: return "boolean";
      case json::kind::int64:
      case json::kind::uint64: return "integer";
      case json::kind::double_: return "number";
      case json::kind::string: return "string";
      case json::kind::array: return "array";
      case json::kind::object: return "object";
    }
    return "?";
  }
  const std::string& source() const { return source_; }

 private:
  const json::object& o_;
  std::string source_;
};

absl::Status RequirePositive(const Fields& f, const std::string& key, int64_t v) {
  if (v <= 0) return f.Error(key, absl::StrCat("must be positive, got ", v));
  return absl::OkStatus();
}

// v in [lo, hi]; `hi` is a supported limit (named in the error).
absl::Status RequireRange(const Fields& f, const std::string& key, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo) return f.Error(key, lo == 1 ? absl::StrCat("must be positive, got ", v)
                                          : absl::StrCat("must be >= ", lo, ", got ", v));
  if (v > hi) return f.Error(key, absl::StrCat("(", v, ") exceeds the supported ", hi));
  return absl::OkStatus();
}

// A finite number in (0, hi].
absl::Status RequireFinitePositive(const Fields& f, const std::string& key, double v,
                                   double hi = std::numeric_limits<double>::max()) {
  if (!std::isfinite(v)) return f.Error(key, absl::StrCat("must be finite, got ", v));
  if (!(v > 0)) return f.Error(key, absl::StrCat("must be positive, got ", v));
  if (v > hi) return f.Error(key, absl::StrCat("(", v, ") exceeds ", hi));
  return absl::OkStatus();
}

// An explicit token id must be inside [0, vocab_size); -1 means absent.
absl::Status RequireTokenInVocab(const Fields& f, const std::string& key, int64_t id, int64_t vocab) {
  if (id == -1 && (!f.Has(key) || f.IsNull(key))) return absl::OkStatus();
  if (id < 0 || id >= vocab) {
    return f.Error(key, absl::StrCat("(", id, ") is outside the vocabulary [0, vocab_size (", vocab, "))"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> TokenId(const Fields& f, const std::string& key) {
  const json::value* v = f.Find(key);
  if (v == nullptr || v->is_null()) return -1;
  if (v->is_array()) {  // some configs list several eos ids; the first is the primary one
    const auto& a = v->as_array();
    if (a.empty()) return -1;
    for (const json::value& e : a) {
      if (!e.is_int64()) return f.Error(key, "must be an integer or a list of integers");
    }
    return a[0].as_int64();
  }
  return f.Int(key);
}

absl::Status ParseRopeScaling(const Fields& top, ModelConfig& c) {
  const json::value* v = top.Find("rope_scaling");
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  if (!v->is_object()) return top.Error("rope_scaling", "must be an object or null");
  Fields f(v->as_object(), top.source() + " rope_scaling");
  std::string type;
  if (f.Has("type")) {
    ASSIGN_OR_RETURN(type, f.String("type"));
  } else {
    ASSIGN_OR_RETURN(type, f.String("rope_type"));
  }
  if (type != "yarn") {
    return top.Error("rope_scaling", absl::StrCat("has type \"", type,
                                                  "\"; only \"yarn\" (or null) is supported"));
  }
  YarnConfig y;
  ASSIGN_OR_RETURN(y.factor, f.Number("factor"));
  ASSIGN_OR_RETURN(y.beta_fast, f.Number("beta_fast", 32.0));
  ASSIGN_OR_RETURN(y.beta_slow, f.Number("beta_slow", 1.0));
  ASSIGN_OR_RETURN(y.mscale, f.Number("mscale", 1.0));
  ASSIGN_OR_RETURN(y.mscale_all_dim, f.Number("mscale_all_dim", 0.0));
  ASSIGN_OR_RETURN(y.original_max_position_embeddings,
                   f.Int("original_max_position_embeddings", 4096));
  RETURN_IF_ERROR(RequireFinitePositive(f, "factor", y.factor));
  if (!(y.beta_fast > 0) || !(y.beta_slow > 0)) return f.Error("beta_fast", "and beta_slow must be positive");
  RETURN_IF_ERROR(RequireFinitePositive(f, "beta_fast", y.beta_fast));
  RETURN_IF_ERROR(RequireFinitePositive(f, "beta_slow", y.beta_slow));
  if (!std::isfinite(y.mscale)) return f.Error("mscale", "must be finite");
  if (!std::isfinite(y.mscale_all_dim)) return f.Error("mscale_all_dim", "must be finite");
  RETURN_IF_ERROR(RequireRange(f, "original_max_position_embeddings", y.original_max_position_embeddings, 1,
                               kMaxConfigPositions));
  c.yarn = y;
  return absl::OkStatus();
}

absl::Status ParseQuantization(const Fields& top, ModelConfig& c) {
  const json::value* v = top.Find("quantization_config");
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  if (!v->is_object()) return top.Error("quantization_config", "must be an object or null");
  Fields f(v->as_object(), top.source() + " quantization_config");
  ASSIGN_OR_RETURN(std::string method, f.String("quant_method"));
  if (method != "fp8") {
    return f.Error("quant_method", absl::StrCat("is \"", method, "\"; only \"fp8\" is supported"));
  }
  ASSIGN_OR_RETURN(std::string fmt, f.String("fmt", std::string("e4m3")));
  if (fmt != "e4m3") return f.Error("fmt", absl::StrCat("is \"", fmt, "\"; only \"e4m3\" is supported"));
  ASSIGN_OR_RETURN(std::string act, f.String("activation_scheme", std::string("dynamic")));
  if (act != "dynamic") {
    return f.Error("activation_scheme", absl::StrCat("is \"", act, "\"; only \"dynamic\" is supported"));
  }
  Fp8Config q;
  const json::value* b = f.Find("weight_block_size");
  if (b == nullptr || !b->is_array() || b->as_array().size() != 2 || !b->as_array()[0].is_int64() ||
      !b->as_array()[1].is_int64()) {
    return f.Error("weight_block_size", "must be a list of two integers, e.g. [128, 128]");
  }
  q.block_rows = b->as_array()[0].as_int64();
  q.block_cols = b->as_array()[1].as_int64();
  if (q.block_rows <= 0 || q.block_cols <= 0) return f.Error("weight_block_size", "must be positive");
  if (q.block_rows > kMaxConfigDim || q.block_cols > kMaxConfigDim) {
    return f.Error("weight_block_size", absl::StrCat("exceeds the supported ", kMaxConfigDim));
  }
  if (q.block_rows != q.block_cols) {
    return f.Error("weight_block_size", "must be square (DeepSeek uses [128, 128])");
  }
  c.fp8 = q;
  return absl::OkStatus();
}

}  // namespace

double YarnGetMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

double ModelConfig::softmax_scale() const {
  double s = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  // Both the published modeling_deepseek.py and DeepSeek's inference/model.py
  // multiply by mscale² (the key side of YaRN's temperature is folded in here).
  if (yarn && yarn->mscale_all_dim != 0.0) {
    const double m = YarnGetMscale(yarn->factor, yarn->mscale_all_dim);
    s *= m * m;
  }
  return s;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source) {
  boost::system::error_code ec;
  json::value root = json::parse(json_text, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON: ", ec.message()));
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": must be a JSON object"));
  Fields f(root.as_object(), source);
  ModelConfig c;
  ASSIGN_OR_RETURN(c.model_type, f.String("model_type"));
  if (c.model_type == "deepseek_v3") {
    c.family = ModelFamily::kDeepseekV3;
  } else if (c.model_type == "deepseek_v2") {
    c.family = ModelFamily::kDeepseekV2;
  } else if (c.model_type == "deepseek") {
    c.family = ModelFamily::kDeepseekMoE;
  } else {
    return f.Error("model_type", absl::StrCat("is \"", c.model_type,
                                              "\"; expected deepseek_v3, deepseek_v2 or deepseek"));
  }
  const bool v3 = c.family == ModelFamily::kDeepseekV3;

  ASSIGN_OR_RETURN(c.vocab_size, f.Int("vocab_size"));
  ASSIGN_OR_RETURN(c.hidden_size, f.Int("hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, f.Int("intermediate_size"));
  ASSIGN_OR_RETURN(c.num_hidden_layers, f.Int("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_attention_heads, f.Int("num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_key_value_heads, f.Int("num_key_value_heads", c.num_attention_heads));
  ASSIGN_OR_RETURN(c.max_position_embeddings, f.Int("max_position_embeddings"));
  ASSIGN_OR_RETURN(c.num_nextn_predict_layers, f.Int("num_nextn_predict_layers", 0));
  ASSIGN_OR_RETURN(c.rms_norm_eps, f.Number("rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(c.rope_theta, f.Number("rope_theta", 10000.0));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, f.Bool("tie_word_embeddings", false));
  ASSIGN_OR_RETURN(c.bos_token_id, TokenId(f, "bos_token_id"));
  ASSIGN_OR_RETURN(c.eos_token_id, TokenId(f, "eos_token_id"));
  // Upper bounds keep every size computed from these (weight shapes, KV
  // widths, workspaces) far from int64 overflow; real checkpoints are orders
  // of magnitude below them (docs/reliability.md, "Limits and validation").
  RETURN_IF_ERROR(RequireRange(f, "vocab_size", c.vocab_size, 1, kMaxConfigVocab));
  RETURN_IF_ERROR(RequireRange(f, "hidden_size", c.hidden_size, 1, kMaxConfigDim));
  RETURN_IF_ERROR(RequireRange(f, "intermediate_size", c.intermediate_size, 1, kMaxConfigDim));
  RETURN_IF_ERROR(RequireRange(f, "num_hidden_layers", c.num_hidden_layers, 1, kMaxConfigLayers));
  RETURN_IF_ERROR(RequireRange(f, "num_attention_heads", c.num_attention_heads, 1, kMaxConfigHeads));
  RETURN_IF_ERROR(RequireRange(f, "num_key_value_heads", c.num_key_value_heads, 1, kMaxConfigHeads));
  RETURN_IF_ERROR(RequireRange(f, "max_position_embeddings", c.max_position_embeddings, 1, kMaxConfigPositions));
  RETURN_IF_ERROR(RequireRange(f, "num_nextn_predict_layers", c.num_nextn_predict_layers, 0, kMaxConfigLayers));
  RETURN_IF_ERROR(RequireFinitePositive(f, "rms_norm_eps", c.rms_norm_eps, 1.0));
  RETURN_IF_ERROR(RequireFinitePositive(f, "rope_theta", c.rope_theta));
  RETURN_IF_ERROR(RequireTokenInVocab(f, "bos_token_id", c.bos_token_id, c.vocab_size));
  RETURN_IF_ERROR(RequireTokenInVocab(f, "eos_token_id", c.eos_token_id, c.vocab_size));
  if (const json::value* e = f.Find("eos_token_id"); e != nullptr && e->is_array()) {
    for (const json::value& id : e->as_array()) {
      RETURN_IF_ERROR(RequireTokenInVocab(f, "eos_token_id", id.as_int64(), c.vocab_size));
    }
  }

  ASSIGN_OR_RETURN(std::string act, f.String("hidden_act", std::string("silu")));
  if (act != "silu") return f.Error("hidden_act", absl::StrCat("is \"", act, "\"; only \"silu\" is supported"));
  ASSIGN_OR_RETURN(bool attn_bias, f.Bool("attention_bias", false));
  if (attn_bias) return f.Error("attention_bias", "is true; DeepSeek checkpoints have no attention bias");

  if (c.is_mla()) {
    if (f.IsNull("q_lora_rank") || !f.Has("q_lora_rank")) {
      c.q_lora_rank = 0;  // V2-Lite: plain q_proj
    } else {
      ASSIGN_OR_RETURN(c.q_lora_rank, f.Int("q_lora_rank"));
      RETURN_IF_ERROR(RequireRange(f, "q_lora_rank", c.q_lora_rank, 1, kMaxConfigDim));
    }
    ASSIGN_OR_RETURN(c.kv_lora_rank, f.Int("kv_lora_rank"));
    ASSIGN_OR_RETURN(c.qk_nope_head_dim, f.Int("qk_nope_head_dim"));
    ASSIGN_OR_RETURN(c.qk_rope_head_dim, f.Int("qk_rope_head_dim"));
    ASSIGN_OR_RETURN(c.v_head_dim, f.Int("v_head_dim"));
    for (auto key : {"kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"}) {
      ASSIGN_OR_RETURN(int64_t v, f.Int(key));
      RETURN_IF_ERROR(RequireRange(f, key, v, 1, kMaxConfigDim));
    }
    if (c.qk_rope_head_dim % 2 != 0) return f.Error("qk_rope_head_dim", "must be even");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return f.Error("num_attention_heads", absl::StrCat("(", c.num_attention_heads,
                                                         ") must divide hidden_size (", c.hidden_size, ")"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
    if (c.head_dim % 2 != 0) return f.Error("num_attention_heads", "gives an odd head_dim; RoPE needs it even");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return f.Error("num_key_value_heads", absl::StrCat("(", c.num_key_value_heads,
                                                       ") must divide num_attention_heads (",
                                                       c.num_attention_heads, ")"));
  }

  // MoE.
  ASSIGN_OR_RETURN(c.n_routed_experts, f.Int("n_routed_experts", 0));
  if (c.n_routed_experts > 0) {
    ASSIGN_OR_RETURN(c.moe_intermediate_size, f.Int("moe_intermediate_size"));
    RETURN_IF_ERROR(RequireRange(f, "moe_intermediate_size", c.moe_intermediate_size, 1, kMaxConfigDim));
    ASSIGN_OR_RETURN(c.num_experts_per_tok, f.Int("num_experts_per_tok"));
    RETURN_IF_ERROR(RequirePositive(f, "num_experts_per_tok", c.num_experts_per_tok));
    if (c.num_experts_per_tok > c.n_routed_experts) {
      return f.Error("num_experts_per_tok", absl::StrCat("(", c.num_experts_per_tok,
                                                         ") exceeds n_routed_experts (", c.n_routed_experts, ")"));
    }
  } else if (c.n_routed_experts < 0) {
    return f.Error("n_routed_experts", "must be >= 0");
  }
  ASSIGN_OR_RETURN(c.n_shared_experts, f.Int("n_shared_experts", 0));
  RETURN_IF_ERROR(RequireRange(f, "n_shared_experts", c.n_shared_experts, 0, kMaxConfigExperts));
  ASSIGN_OR_RETURN(c.first_k_dense_replace, f.Int("first_k_dense_replace", 0));
  if (c.first_k_dense_replace < 0 || c.first_k_dense_replace > c.num_hidden_layers) {
    return f.Error("first_k_dense_replace", absl::StrCat("(", c.first_k_dense_replace,
                                                         ") must be in [0, num_hidden_layers]"));
  }
  ASSIGN_OR_RETURN(c.moe_layer_freq, f.Int("moe_layer_freq", 1));
  RETURN_IF_ERROR(RequireRange(f, "moe_layer_freq", c.moe_layer_freq, 1, kMaxConfigLayers));

  ASSIGN_OR_RETURN(std::string topk, f.String("topk_method", std::string(v3 ? "noaux_tc" : "greedy")));
  if (topk == "greedy") {
    c.topk_method = TopkMethod::kGreedy;
  } else if (topk == "group_limited_greedy") {
    c.topk_method = TopkMethod::kGroupLimitedGreedy;
  } else if (topk == "noaux_tc") {
    c.topk_method = TopkMethod::kNoauxTc;
  } else {
    return f.Error("topk_method", absl::StrCat("is \"", topk,
                                               "\"; expected greedy, group_limited_greedy or noaux_tc"));
  }
  ASSIGN_OR_RETURN(std::string scoring, f.String("scoring_func", std::string(v3 ? "sigmoid" : "softmax")));
  if (scoring == "softmax") {
    c.scoring_func = ScoringFunc::kSoftmax;
  } else if (scoring == "sigmoid") {
    c.scoring_func = ScoringFunc::kSigmoid;
  } else {
    return f.Error("scoring_func", absl::StrCat("is \"", scoring, "\"; expected softmax or sigmoid"));
  }
  ASSIGN_OR_RETURN(c.n_group, f.Int("n_group", v3 ? 8 : 1));
  ASSIGN_OR_RETURN(c.topk_group, f.Int("topk_group", v3 ? 4 : 1));
  ASSIGN_OR_RETURN(c.norm_topk_prob, f.Bool("norm_topk_prob", v3));
  ASSIGN_OR_RETURN(c.routed_scaling_factor, f.Number("routed_scaling_factor", v3 ? 2.5 : 1.0));
  RETURN_IF_ERROR(RequireFinitePositive(f, "routed_scaling_factor", c.routed_scaling_factor));
  if (c.n_routed_experts > kMaxConfigExperts) {
    return f.Error("n_routed_experts", absl::StrCat("exceeds the supported ", kMaxConfigExperts));
  }
  // The group counts are checked whatever the routing (greedy ignores them,
  // but a negative count is a broken config, not a harmless one).
  RETURN_IF_ERROR(RequireRange(f, "n_group", c.n_group, 1, kMaxConfigExperts));
  RETURN_IF_ERROR(RequirePositive(f, "topk_group", c.topk_group));
  if (c.topk_group > c.n_group) {
    return f.Error("topk_group", absl::StrCat("(", c.topk_group, ") exceeds n_group (", c.n_group, ")"));
  }
  if (c.n_routed_experts > 0 && c.topk_method != TopkMethod::kGreedy) {
    if (c.n_routed_experts % c.n_group != 0) {
      return f.Error("n_group", absl::StrCat("(", c.n_group, ") must divide n_routed_experts (",
                                             c.n_routed_experts, ")"));
    }
    const int64_t per_group = c.n_routed_experts / c.n_group;
    if (c.num_experts_per_tok > c.topk_group * per_group) {
      return f.Error("num_experts_per_tok",
                     absl::StrCat("(", c.num_experts_per_tok, ") exceeds the experts in topk_group (",
                                  c.topk_group, ") groups of ", per_group));
    }
    if (c.topk_method == TopkMethod::kNoauxTc && per_group < 2) {
      return f.Error("n_group", "leaves fewer than 2 experts per group; noaux_tc scores a group by its top-2 sum");
    }
  }

  ASSIGN_OR_RETURN(c.torch_dtype, f.String("torch_dtype", std::string("bfloat16")));
  if (c.torch_dtype != "bfloat16" && c.torch_dtype != "float16" && c.torch_dtype != "float32") {
    return f.Error("torch_dtype", absl::StrCat("is \"", c.torch_dtype, "\"; expected bfloat16, float16 or float32"));
  }
  if (c.family == ModelFamily::kDeepseekMoE && f.Find("rope_scaling") && !f.IsNull("rope_scaling")) {
    return f.Error("rope_scaling", "is not supported for model_type \"deepseek\" (DeepSeekMoE 16B ships none)");
  }
  RETURN_IF_ERROR(ParseRopeScaling(f, c));
  RETURN_IF_ERROR(ParseQuantization(f, c));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::filesystem::path p(path);
  std::error_code ec;
  if (std::filesystem::is_directory(p, ec)) p /= "config.json";
  if (!std::filesystem::exists(p, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such model directory or config.json"));
  }
  std::ifstream in(p);
  if (!in) return absl::NotFoundError(absl::StrCat(p.string(), ": cannot open config file"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), p.string());
}

}  // namespace deepshard
