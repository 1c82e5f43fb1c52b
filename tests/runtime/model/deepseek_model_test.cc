// Whole-model properties that need no reference implementation: the two MLA
// forms agree, chunked prefill and batching change nothing, and loading reads
// exactly the tensors asked for.
#include "runtime/model/deepseek_model.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "boost/json.hpp"
#include "gtest/gtest.h"
#include "runtime/weights/safetensors.h"
#include "tests/runtime/model/test_models.h"

namespace deepshard {
namespace {

using testing_util::TinyModel;

double MaxRelErr(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num = std::max(num, static_cast<double>(std::fabs(a[i] - b[i])));
    den = std::max(den, static_cast<double>(std::fabs(b[i])));
  }
  return num / den;
}

std::vector<int32_t> Prompt(int64_t n, int64_t vocab, int seed) {
  std::vector<int32_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>((i * 7919 + seed * 104729 + 13) % (vocab - 2) + 2);
  return p;
}

std::unique_ptr<DeepseekModel> Load(const std::string& dir, MlaMode mode = MlaMode::kAuto) {
  RuntimeConfig rt;
  rt.mla_mode = mode;
  auto m = DeepseekModel::Load(dir, rt);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(m).value();
}

// Prompt logits (all positions) then `steps` greedy decode steps, concatenated.
std::vector<float> RunSequence(DeepseekModel& m, const std::vector<int32_t>& prompt, int steps) {
  const int64_t V = m.config().vocab_size;
  auto cache = m.NewCache().value();
  std::vector<float> out(prompt.size() * V);
  SequenceChunk ch{cache.get(), 0, prompt.data(), static_cast<int64_t>(prompt.size())};
  EXPECT_TRUE(m.Forward({&ch, 1}, true, out.data()).ok());
  int32_t tok = static_cast<int32_t>(std::max_element(out.end() - V, out.end()) - (out.end() - V));
  for (int s = 0; s < steps; ++s) {
    std::vector<float> l(V);
    ch = SequenceChunk{cache.get(), cache->length(), &tok, 1};
    EXPECT_TRUE(m.Forward({&ch, 1}, false, l.data()).ok());
    out.insert(out.end(), l.begin(), l.end());
    tok = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  }
  return out;
}

class MlaFormsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MlaFormsTest, NaiveAndAbsorbedAgree) {
  const std::string dir = TinyModel(GetParam());
  auto naive = Load(dir, MlaMode::kNaive);
  auto absorbed = Load(dir, MlaMode::kAbsorbed);
  // 40 tokens: beyond the tiny configs' original_max_position_embeddings (32).
  const auto prompt = Prompt(40, naive->config().vocab_size, 1);
  std::vector<float> a = RunSequence(*naive, prompt, 6);
  std::vector<float> b = RunSequence(*absorbed, prompt, 6);
  ASSERT_EQ(a.size(), b.size());
  const double err = MaxRelErr(b.data(), a.data(), static_cast<int64_t>(a.size()));
  std::printf("[ %s ] absorbed vs naive: max rel err %.3g\n", GetParam().c_str(), err);
  EXPECT_LE(err, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Mla, MlaFormsTest, ::testing::Values("tiny-v3", "tiny-v2", "tiny-v2-lite"));

TEST(DeepseekModel, ChunkedPrefillMatchesOneChunk) {
  for (const char* preset : {"tiny-v3", "tiny-moe16b"}) {
    auto m = Load(TinyModel(preset));
    const int64_t V = m->config().vocab_size;
    const auto prompt = Prompt(30, V, 2);
    std::vector<float> whole(V), chunked(V);
    auto c1 = m->NewCache().value();
    SequenceChunk ch{c1.get(), 0, prompt.data(), 30};
    ASSERT_TRUE(m->Forward({&ch, 1}, false, whole.data()).ok());
    auto c2 = m->NewCache().value();
    for (int64_t s = 0; s < 30; s += 10) {
      ch = SequenceChunk{c2.get(), s, prompt.data() + s, 10};
      ASSERT_TRUE(m->Forward({&ch, 1}, false, chunked.data()).ok());
    }
    EXPECT_LE(MaxRelErr(chunked.data(), whole.data(), V), 1e-5) << preset;
  }
}

TEST(DeepseekModel, BatchedSequencesMatchSeparateRuns) {
  for (const char* preset : {"tiny-v2", "tiny-moe16b"}) {
    auto m = Load(TinyModel(preset));
    const int64_t V = m->config().vocab_size;
    const auto p1 = Prompt(9, V, 3), p2 = Prompt(23, V, 4);
    std::vector<float> sep1(V), sep2(V), both(2 * V);
    auto a = m->NewCache().value(), b = m->NewCache().value();
    SequenceChunk c1{a.get(), 0, p1.data(), 9}, c2{b.get(), 0, p2.data(), 23};
    ASSERT_TRUE(m->Forward({&c1, 1}, false, sep1.data()).ok());
    ASSERT_TRUE(m->Forward({&c2, 1}, false, sep2.data()).ok());
    auto a2 = m->NewCache().value(), b2 = m->NewCache().value();
    SequenceChunk batch[2] = {{a2.get(), 0, p1.data(), 9}, {b2.get(), 0, p2.data(), 23}};
    ASSERT_TRUE(m->Forward(batch, false, both.data()).ok());
    EXPECT_LE(MaxRelErr(both.data(), sep1.data(), V), 1e-5) << preset;
    EXPECT_LE(MaxRelErr(both.data() + V, sep2.data(), V), 1e-5) << preset;
    // A decode step for both at once (one token each, mixed lengths).
    int32_t t1 = 5, t2 = 6;
    SequenceChunk d1{a.get(), 9, &t1, 1}, d2{b.get(), 23, &t2, 1};
    ASSERT_TRUE(m->Forward({&d1, 1}, false, sep1.data()).ok());
    ASSERT_TRUE(m->Forward({&d2, 1}, false, sep2.data()).ok());
    SequenceChunk dd[2] = {{a2.get(), 9, &t1, 1}, {b2.get(), 23, &t2, 1}};
    ASSERT_TRUE(m->Forward(dd, false, both.data()).ok());
    EXPECT_LE(MaxRelErr(both.data(), sep1.data(), V), 1e-5) << preset;
    EXPECT_LE(MaxRelErr(both.data() + V, sep2.data(), V), 1e-5) << preset;
  }
}

TEST(DeepseekModel, KvCacheHoldsOnlyTheLatent) {
  auto m = Load(TinyModel("tiny-v3"));
  const ModelConfig& c = m->config();
  auto cache = m->NewCache(10).value();
  EXPECT_EQ(cache->width(), c.kv_lora_rank + c.qk_rope_head_dim);
  EXPECT_EQ(cache->bytes(), c.num_hidden_layers * 10 * (c.kv_lora_rank + c.qk_rope_head_dim) * 4);
  auto mha = Load(TinyModel("tiny-moe16b"));
  EXPECT_EQ(mha->NewCache(10).value()->width(), 2 * mha->config().num_key_value_heads * mha->config().head_dim);
}

TEST(DeepseekModel, MtpLayerIsSkippedAndNeverRead) {
  const std::string dir = TinyModel("tiny-v3");
  auto m = Load(dir);
  ASSERT_EQ(m->config().num_nextn_predict_layers, 1);
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  uint64_t expected = 0, mtp = 0;
  const std::string mtp_prefix = "model.layers." + std::to_string(m->config().num_hidden_layers) + ".";
  for (const auto& name : (*file)->TensorNames()) {
    const TensorInfo* t = (*file)->Find(name);
    (name.rfind(mtp_prefix, 0) == 0 ? mtp : expected) += t->end - t->begin;
  }
  EXPECT_GT(mtp, 0u);
  EXPECT_EQ(m->weight_bytes(), expected);
}

TEST(DeepseekModel, LoadsOnlyRequestedExperts) {
  const std::string dir = TinyModel("tiny-v2");
  auto cfg = LoadModelConfig(dir);
  ASSERT_TRUE(cfg.ok());
  auto expert_bytes = [&](int64_t begin, int64_t end) {
    auto ck = Checkpoint::Open(dir);
    EXPECT_TRUE(ck.ok());
    LoadSpec spec;
    spec.expert_begin = begin, spec.expert_end = end;
    spec.embedding = spec.head = false;
    EXPECT_TRUE(LoadModelWeights(*cfg, **ck, spec).ok());
    return (*ck)->bytes_requested();
  };
  const uint64_t none = expert_bytes(0, 0), all = expert_bytes(0, 16), quarter = expert_bytes(4, 8);
  EXPECT_EQ((quarter - none) * 4, all - none);
}

TEST(DeepseekModel, ShardedCheckpointGivesTheSameLogits) {
  RandomModelOptions o;
  o.preset = "tiny-v2-lite";
  const std::string single = TinyModel(o);
  o.shards = 3;
  const std::string sharded = TinyModel(o);
  EXPECT_TRUE(std::filesystem::exists(sharded + "/model.safetensors.index.json"));
  auto a = Load(single), b = Load(sharded);
  const auto prompt = Prompt(12, a->config().vocab_size, 5);
  EXPECT_EQ(RunSequence(*a, prompt, 3), RunSequence(*b, prompt, 3));
}

TEST(DeepseekModel, ConfigAndWeightsThatDisagreeNameTheTensor) {
  const std::string src = TinyModel("tiny-v2-lite");
  const std::string dir = ::testing::TempDir() + "/deepshard_mismatch_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/model.safetensors", dir + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  std::ifstream in(src + "/config.json");
  std::string cfg((std::istreambuf_iterator<char>(in)), {});
  cfg.replace(cfg.find("\"kv_lora_rank\": 64"), 18, "\"kv_lora_rank\": 48");
  std::ofstream(dir + "/config.json") << cfg;
  auto m = DeepseekModel::Load(dir, RuntimeConfig{});
  ASSERT_FALSE(m.ok());
  const std::string msg(m.status().message());
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.0.self_attn.kv_a_proj_with_mqa.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("wrong shape"), std::string::npos) << msg;
}

TEST(DeepseekModel, BadInputsAreErrorsNotCrashes) {
  auto m = Load(TinyModel("tiny-v3"));
  std::vector<float> logits(m->config().vocab_size);
  auto cache = m->NewCache(8).value();
  const int32_t bad[2] = {3, 100000};
  SequenceChunk ch{cache.get(), 0, bad, 2};
  auto st = m->Forward({&ch, 1}, false, logits.data());
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("100000"), std::string::npos);
  const std::vector<int32_t> long_prompt(9, 3);
  ch = SequenceChunk{cache.get(), 0, long_prompt.data(), 9};
  EXPECT_EQ(m->Forward({&ch, 1}, false, logits.data()).code(), absl::StatusCode::kOutOfRange);
}

// Issue 16: a NaN or Inf in any weight fails the load naming the tensor.
void PokeTensor(const std::string& file, const std::string& tensor, const void* bytes, size_t n) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  uint64_t len = 0;
  f.read(reinterpret_cast<char*>(&len), 8);
  std::string header(len, ' ');
  f.read(header.data(), len);
  const boost::json::value root = boost::json::parse(header);
  const auto& info = root.as_object().at(tensor).as_object();
  const int64_t begin = info.at("data_offsets").as_array()[0].as_int64();
  f.seekp(8 + len + begin + 8);  // the third element (an f32 or two bf16 values in)
  f.write(static_cast<const char*>(bytes), n);
}

TEST(DeepseekModel, NonFiniteWeightsFailTheLoadNamingTheTensor) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    SCOPED_TRACE(DTypeName(dtype));
    const std::string src = TinyModel("tiny-v2-lite", dtype);
    const std::string dir = ::testing::TempDir() + "/deepshard_nan_" + std::to_string(::getpid());
    std::filesystem::remove_all(dir);
    std::filesystem::copy(src, dir);
    const std::string tensor = dtype == DType::kF8E4M3 ? "model.layers.0.self_attn.o_proj.weight" : "model.norm.weight";
    if (dtype == DType::kF32) {
      const float inf = INFINITY;
      PokeTensor(dir + "/model.safetensors", tensor, &inf, 4);
    } else if (dtype == DType::kBF16) {
      const uint16_t nan = 0x7FC0;
      PokeTensor(dir + "/model.safetensors", tensor, &nan, 2);
    } else {
      const uint8_t nan = 0xFF;
      PokeTensor(dir + "/model.safetensors", tensor, &nan, 1);
    }
    auto m = DeepseekModel::Load(dir, RuntimeConfig{});
    ASSERT_FALSE(m.ok());
    const std::string msg(m.status().message());
    EXPECT_NE(msg.find(tensor), std::string::npos) << msg;
    EXPECT_NE(msg.find("non-finite"), std::string::npos) << msg;
    std::filesystem::remove_all(dir);
  }
}

// Issue 16: sizes computed from huge values are checked, never overflowed.
TEST(DeepseekModel, HugeKvCacheSizesAreErrorsNotOverflow) {
  auto m = Load(TinyModel("tiny-v3"));
  for (int64_t capacity : {INT64_MAX / 16, int64_t{1} << 50}) {
    SCOPED_TRACE(capacity);
    auto c = KvCache::Contiguous(m->backend(), m->config(), 61, capacity, DType::kF32);
    ASSERT_FALSE(c.ok());
    EXPECT_NE(std::string(c.status().message()).find("KV cache"), std::string::npos) << c.status();
  }
  auto over = KvCache::Contiguous(m->backend(), m->config(), int64_t{1} << 40, int64_t{1} << 40, DType::kF32);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(std::string(over.status().message()).find("overflows"), std::string::npos) << over.status();
}

}  // namespace
}  // namespace deepshard
