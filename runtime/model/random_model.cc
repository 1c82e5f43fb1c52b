#include "runtime/model/random_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "boost/json.hpp"
#include "base/status_macros.h"
#include "runtime/config/model_config.h"
#include "runtime/weights/safetensors_writer.h"

namespace deepshard {
namespace json = boost::json;
namespace {

json::object YarnJson(double mscale) {
  return json::object{{"beta_fast", 32},   {"beta_slow", 1},
                      {"factor", 4.0},      {"mscale", mscale},
                      {"mscale_all_dim", mscale}, {"original_max_position_embeddings", 32},
                      {"type", "yarn"}};
}

absl::StatusOr<json::object> PresetJson(const std::string& name) {
  json::object c;
  if (name == "tiny-v3" || name == "tiny-v2" || name == "tiny-v2-lite") {
    const bool v3 = name == "tiny-v3", lite = name == "tiny-v2-lite";
    c["architectures"] = json::array{v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
    c["model_type"] = v3 ? "deepseek_v3" : "deepseek_v2";
    c["vocab_size"] = 512;
    c["hidden_size"] = 192;
    c["intermediate_size"] = 320;
    c["moe_intermediate_size"] = 48;
    c["num_hidden_layers"] = 3;
    c["num_attention_heads"] = 4;
    c["num_key_value_heads"] = 4;
    c["q_lora_rank"] = lite ? json::value(nullptr) : json::value(96);
    c["kv_lora_rank"] = 64;
    c["qk_nope_head_dim"] = 32;
    c["qk_rope_head_dim"] = 16;
    c["v_head_dim"] = 32;
    c["n_routed_experts"] = 16;
    c["n_shared_experts"] = lite ? 2 : 1;
    c["num_experts_per_tok"] = 4;
    c["first_k_dense_replace"] = 1;
    c["moe_layer_freq"] = 1;
    c["topk_method"] = v3 ? "noaux_tc" : (lite ? "greedy" : "group_limited_greedy");
    c["scoring_func"] = v3 ? "sigmoid" : "softmax";
    c["n_group"] = lite ? 1 : 4;
    c["topk_group"] = lite ? 1 : 2;
    c["norm_topk_prob"] = v3;
    c["routed_scaling_factor"] = v3 ? 2.5 : (lite ? 1.0 : 2.0);
    if (v3) c["num_nextn_predict_layers"] = 1;
    c["max_position_embeddings"] = 128;
    c["rope_theta"] = 10000.0;
    c["rope_scaling"] = YarnJson(v3 ? 1.0 : 0.707);
  } else if (name == "tiny-moe16b") {
    c["architectures"] = json::array{"DeepseekForCausalLM"};
    c["model_type"] = "deepseek";
    c["vocab_size"] = 512;
    c["hidden_size"] = 128;
    c["intermediate_size"] = 256;
    c["moe_intermediate_size"] = 48;
    c["num_hidden_layers"] = 3;
    c["num_attention_heads"] = 4;
    c["num_key_value_heads"] = 4;
    c["n_routed_experts"] = 16;
    c["n_shared_experts"] = 2;
    c["num_experts_per_tok"] = 4;
    c["first_k_dense_replace"] = 1;
    c["moe_layer_freq"] = 1;
    c["scoring_func"] = "softmax";
    c["norm_topk_prob"] = false;
    c["max_position_embeddings"] = 128;
    c["rope_theta"] = 10000.0;
    c["rope_scaling"] = nullptr;
  } else if (name == "bench-v2-lite") {
    // DeepSeek-V2-Lite widths with 4 layers: larger than the L3 cache.
    c["architectures"] = json::array{"DeepseekV2ForCausalLM"};
    c["model_type"] = "deepseek_v2";
    c["vocab_size"] = 102400;
    c["hidden_size"] = 2048;
    c["intermediate_size"] = 10944;
    c["moe_intermediate_size"] = 1408;
    c["num_hidden_layers"] = 4;
    c["num_attention_heads"] = 16;
    c["num_key_value_heads"] = 16;
    c["q_lora_rank"] = nullptr;
    c["kv_lora_rank"] = 512;
    c["qk_nope_head_dim"] = 128;
    c["qk_rope_head_dim"] = 64;
    c["v_head_dim"] = 128;
    c["n_routed_experts"] = 64;
    c["n_shared_experts"] = 2;
    c["num_experts_per_tok"] = 6;
    c["first_k_dense_replace"] = 1;
    c["moe_layer_freq"] = 1;
    c["topk_method"] = "greedy";
    c["scoring_func"] = "softmax";
    c["n_group"] = 1;
    c["topk_group"] = 1;
    c["norm_topk_prob"] = false;
    c["routed_scaling_factor"] = 1.0;
    c["max_position_embeddings"] = 163840;
    c["rope_theta"] = 10000.0;
    json::object y = YarnJson(0.707);
    y["factor"] = 40.0;
    y["original_max_position_embeddings"] = 4096;
    c["rope_scaling"] = y;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--preset: unknown preset \"", name, "\"; known: tiny-v3, tiny-v2, ",
                                                   "tiny-v2-lite, tiny-moe16b, bench-v2-lite"));
  }
  c["hidden_act"] = "silu";
  c["attention_bias"] = false;
  c["rms_norm_eps"] = 1e-6;
  c["bos_token_id"] = 0;
  c["eos_token_id"] = 1;
  c["tie_word_embeddings"] = false;
  c["initializer_range"] = 0.02;
  c["use_cache"] = true;
  return c;
}

void Pretty(const json::value& v, std::string& out, int indent) {
  const std::string pad(indent + 2, ' ');
  if (v.is_object()) {
    const auto& o = v.as_object();
    if (o.empty()) { out += "{}"; return; }
    out += "{\n";
    size_t i = 0;
    for (const auto& kv : o) {
      out += pad + json::serialize(json::value(kv.key())) + ": ";
      Pretty(kv.value(), out, indent + 2);
      out += ++i < o.size() ? ",\n" : "\n";
    }
    out += std::string(indent, ' ') + "}";
  } else if (v.is_array() && !v.as_array().empty() && v.as_array()[0].is_object()) {
    out += "[\n";
    size_t i = 0;
    for (const auto& e : v.as_array()) {
      out += pad;
      Pretty(e, out, indent + 2);
      out += ++i < v.as_array().size() ? ",\n" : "\n";
    }
    out += std::string(indent, ' ') + "]";
  } else {
    out += json::serialize(v);
  }
}

// splitmix64: a tiny, portable generator; values use integer ops only.
struct Rng {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1) on a 2^-23 grid (exact in float).
  float Uniform() { return static_cast<float>(static_cast<int64_t>(Next() >> 40) - (1 << 23)) * 0x1p-23f; }
};

// Builds the tensors of one model in a stable order.
class Builder {
 public:
  Builder(uint64_t seed, DType dtype, int64_t block) : dtype_(dtype), block_(block) { rng_.s = seed; }

  // A Linear weight [rows, cols], uniform with standard deviation `std`.
  // quantizable: stored as fp8 with block scales in an fp8 model.
  void Matrix(const std::string& name, int64_t rows, int64_t cols, float std, bool quantizable = true) {
    std::vector<float> v = Draw(rows * cols, std, 0.0f);
    if (dtype_ == DType::kF8E4M3 && quantizable) {
      AddFp8(name, rows, cols, v);
    } else {
      Add(name, {rows, cols}, v, dtype_ == DType::kF8E4M3 ? DType::kBF16 : dtype_);
    }
  }
  // A norm weight: 1 + small noise.
  void Norm(const std::string& name, int64_t n) {
    Add(name, {n}, Draw(n, 0.1f, 1.0f), dtype_ == DType::kF8E4M3 ? DType::kBF16 : dtype_);
  }
  // An F32 vector (e_score_correction_bias is F32 in real checkpoints).
  void F32Vector(const std::string& name, int64_t n, float std) { Add(name, {n}, Draw(n, std, 0.0f), DType::kF32); }

  std::vector<TensorToWrite>& tensors() { return tensors_; }

 private:
  std::vector<float> Draw(int64_t n, float std, float mean) {
    std::vector<float> v(n);
    const float a = std * 1.7320508f;  // uniform [-a, a) has this std
    // mean + a * u with one rounding (a fused multiply-add), spelled out so the
    // weights do not depend on the compiler's flags: the fixtures were made by
    // a build that contracted this expression into an FMA. With mean = 0 it is
    // the plain product, and skips the (software, on baseline x86-64) fma call.
    for (auto& x : v) {
      const float u = rng_.Uniform();
      x = mean == 0.0f ? a * u : std::fma(a, u, mean);
    }
    return v;
  }
  void Add(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v, DType dt) {
    TensorToWrite t;
    t.name = name;
    t.dtype = dt;
    t.shape = std::move(shape);
    t.bytes.resize(v.size() * DTypeSize(dt));
    for (size_t i = 0; i < v.size(); ++i) {
      if (dt == DType::kF32) {
        std::memcpy(&t.bytes[i * 4], &v[i], 4);
      } else {
        const uint16_t h = dt == DType::kBF16 ? F32ToBf16(v[i]) : F32ToF16(v[i]);
        std::memcpy(&t.bytes[i * 2], &h, 2);
      }
    }
    tensors_.push_back(std::move(t));
  }
  // DeepSeek-V3's scheme: per 128×128 block, scale = amax / 448, q = e4m3(w / scale),
  // and `<name>_scale_inv` stores the scale (the factor that dequantises).
  void AddFp8(const std::string& name, int64_t rows, int64_t cols, const std::vector<float>& v) {
    const int64_t br = (rows + block_ - 1) / block_, bc = (cols + block_ - 1) / block_;
    std::vector<float> scale(br * bc);
    TensorToWrite q;
    q.name = name;
    q.dtype = DType::kF8E4M3;
    q.shape = {rows, cols};
    q.bytes.resize(rows * cols);
    for (int64_t i = 0; i < br; ++i) {
      for (int64_t j = 0; j < bc; ++j) {
        float amax = 0.0f;
        for (int64_t r = i * block_; r < std::min(rows, (i + 1) * block_); ++r)
          for (int64_t c = j * block_; c < std::min(cols, (j + 1) * block_); ++c) amax = std::max(amax, std::fabs(v[r * cols + c]));
        const float s = amax > 0 ? amax / 448.0f : 1.0f;
        scale[i * bc + j] = s;
        for (int64_t r = i * block_; r < std::min(rows, (i + 1) * block_); ++r)
          for (int64_t c = j * block_; c < std::min(cols, (j + 1) * block_); ++c)
            q.bytes[r * cols + c] = F32ToF8E4M3(v[r * cols + c] / s);
      }
    }
    tensors_.push_back(std::move(q));
    Add(name + "_scale_inv", {br, bc}, scale, DType::kF32);
  }

  Rng rng_;
  DType dtype_;
  int64_t block_;
  std::vector<TensorToWrite> tensors_;
};

void AddMlp(Builder& b, const std::string& p, int64_t hidden, int64_t inter) {
  const float s_in = 1.0f / std::sqrt(static_cast<float>(hidden));
  const float s_out = 1.0f / std::sqrt(static_cast<float>(inter));
  b.Matrix(p + "gate_proj.weight", inter, hidden, s_in);
  b.Matrix(p + "up_proj.weight", inter, hidden, s_in);
  b.Matrix(p + "down_proj.weight", hidden, inter, s_out);
}

void AddLayer(Builder& b, const ModelConfig& c, int64_t l) {
  const std::string p = absl::StrCat("model.layers.", l, ".");
  const int64_t H = c.hidden_size, nh = c.num_attention_heads;
  const auto inv_sqrt = [](int64_t n) { return 1.0f / std::sqrt(static_cast<float>(n)); };
  b.Norm(p + "input_layernorm.weight", H);
  const std::string a = p + "self_attn.";
  if (c.is_mla()) {
    const int64_t qk = c.qk_head_dim();
    if (c.q_lora_rank > 0) {
      b.Matrix(a + "q_a_proj.weight", c.q_lora_rank, H, inv_sqrt(H));
      b.Norm(a + "q_a_layernorm.weight", c.q_lora_rank);
      b.Matrix(a + "q_b_proj.weight", nh * qk, c.q_lora_rank, inv_sqrt(c.q_lora_rank));
    } else {
      b.Matrix(a + "q_proj.weight", nh * qk, H, inv_sqrt(H));
    }
    b.Matrix(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, H, inv_sqrt(H));
    b.Norm(a + "kv_a_layernorm.weight", c.kv_lora_rank);
    b.Matrix(a + "kv_b_proj.weight", nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank,
             inv_sqrt(c.kv_lora_rank));
    b.Matrix(a + "o_proj.weight", H, nh * c.v_head_dim, inv_sqrt(nh * c.v_head_dim));
  } else {
    const int64_t hd = c.head_dim, nkv = c.num_key_value_heads;
    b.Matrix(a + "q_proj.weight", nh * hd, H, inv_sqrt(H));
    b.Matrix(a + "k_proj.weight", nkv * hd, H, inv_sqrt(H));
    b.Matrix(a + "v_proj.weight", nkv * hd, H, inv_sqrt(H));
    b.Matrix(a + "o_proj.weight", H, nh * hd, inv_sqrt(nh * hd));
  }
  b.Norm(p + "post_attention_layernorm.weight", H);
  // MTP layers (index >= num_hidden_layers) are MoE layers in V3.
  if (c.is_moe_layer(l) || l >= c.num_hidden_layers) {
    // Router logits with std ~1.5 keep the softmax/sigmoid scores spread out.
    b.Matrix(p + "mlp.gate.weight", c.n_routed_experts, H, 1.5f * inv_sqrt(H), /*quantizable=*/false);
    if (c.topk_method == TopkMethod::kNoauxTc) b.F32Vector(p + "mlp.gate.e_score_correction_bias", c.n_routed_experts, 0.1f);
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      AddMlp(b, absl::StrCat(p, "mlp.experts.", e, "."), H, c.moe_intermediate_size);
    }
    if (c.n_shared_experts > 0) {
      AddMlp(b, p + "mlp.shared_experts.", H, c.moe_intermediate_size * c.n_shared_experts);
    }
  } else {
    AddMlp(b, p + "mlp.", H, c.intermediate_size);
  }
}

}  // namespace

std::vector<std::string> RandomModelPresets() {
  return {"tiny-v3", "tiny-v2", "tiny-v2-lite", "tiny-moe16b", "bench-v2-lite"};
}

absl::StatusOr<std::string> RandomModelConfigJson(const RandomModelOptions& o) {
  ASSIGN_OR_RETURN(json::object c, PresetJson(o.preset));
  if (!o.yarn) c["rope_scaling"] = nullptr;
  if (o.num_layers > 0) c["num_hidden_layers"] = o.num_layers;
  if (o.vocab_size > 0) c["vocab_size"] = o.vocab_size;
  if (o.bos_token_id >= 0) c["bos_token_id"] = o.bos_token_id;
  if (o.eos_token_id >= 0) c["eos_token_id"] = o.eos_token_id;
  switch (o.dtype) {
    case DType::kF32: c["torch_dtype"] = "float32"; break;
    case DType::kBF16: c["torch_dtype"] = "bfloat16"; break;
    case DType::kF8E4M3:
      c["torch_dtype"] = "bfloat16";
      c["quantization_config"] = json::object{{"activation_scheme", "dynamic"}, {"fmt", "e4m3"},
                                              {"quant_method", "fp8"}, {"weight_block_size", json::array{128, 128}}};
      break;
    default:
      return absl::InvalidArgumentError("--dtype must be f32, bf16 or fp8");
  }
  std::string out;
  Pretty(c, out, 0);
  return out + "\n";
}

absl::Status WriteRandomModel(const RandomModelOptions& o, const std::string& dir) {
  ASSIGN_OR_RETURN(std::string text, RandomModelConfigJson(o));
  ASSIGN_OR_RETURN(ModelConfig c, ParseModelConfig(text, "preset " + o.preset));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create directory: ", ec.message()));
  {
    std::ofstream f(dir + "/config.json");
    f << text;
    if (!f) return absl::DataLossError(absl::StrCat(dir, "/config.json: write failed"));
  }
  const int64_t H = c.hidden_size;
  Builder b(o.seed, o.dtype, c.fp8 ? c.fp8->block_rows : 128);
  b.Matrix("model.embed_tokens.weight", c.vocab_size, H, 1.0f, /*quantizable=*/false);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) AddLayer(b, c, l);
  // DeepSeek-V3 MTP modules: a full layer plus its projection and norms, stored
  // after the last layer. Plain generation never reads them.
  for (int64_t m = 0; m < c.num_nextn_predict_layers; ++m) {
    const int64_t l = c.num_hidden_layers + m;
    const std::string p = absl::StrCat("model.layers.", l, ".");
    AddLayer(b, c, l);
    b.Norm(p + "enorm.weight", H);
    b.Norm(p + "hnorm.weight", H);
    b.Matrix(p + "eh_proj.weight", H, 2 * H, 1.0f / std::sqrt(2.0f * H));
    b.Norm(p + "shared_head.norm.weight", H);
  }
  b.Norm("model.norm.weight", H);
  b.Matrix("lm_head.weight", c.vocab_size, H, 2.0f / std::sqrt(static_cast<float>(H)), /*quantizable=*/false);
  return WriteCheckpoint(dir, b.tensors(), o.shards, {{"format", "pt"}});
}

absl::StatusOr<std::string> WeightsFingerprint(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".safetensors") files.push_back(e.path().filename().string());
  }
  if (ec) return absl::NotFoundError(absl::StrCat(dir, ": ", ec.message()));
  std::sort(files.begin(), files.end());
  uint64_t h = 0xcbf29ce484222325ull;
  std::vector<char> buf(1 << 20);
  for (const auto& f : files) {
    std::ifstream in(dir + "/" + f, std::ios::binary);
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const std::streamsize n = in.gcount();
      for (std::streamsize i = 0; i < n; ++i) {
        h ^= static_cast<uint8_t>(buf[i]);
        h *= 0x100000001b3ull;
      }
    }
  }
  return absl::StrFormat("%016x", h);
}

}  // namespace deepshard
