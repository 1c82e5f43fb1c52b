// The decode loop allocates nothing: every heap allocation in this binary is
// counted (global operator new), and steady-state decode steps must add none.
#include <atomic>
#include <cstdlib>
#include <new>

#include "gtest/gtest.h"
#include "runtime/model/deepseek_model.h"
#include "runtime/sampling.h"
#include "tests/runtime/model/test_models.h"

namespace {
std::atomic<int64_t> g_allocs{0};
}  // namespace

void* operator new(std::size_t n) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace deepshard {
namespace {

class DecodeAllocTest : public ::testing::TestWithParam<std::tuple<std::string, DType, DType>> {};

TEST_P(DecodeAllocTest, SteadyStateDecodeDoesNotAllocate) {
  const auto [preset, dtype, kv_dtype] = GetParam();
  RuntimeConfig rt;
  rt.kv_dtype = kv_dtype;
  auto m = DeepseekModel::Load(testing_util::TinyModel(preset, dtype), rt);
  ASSERT_TRUE(m.ok()) << m.status();
  DeepseekModel& model = **m;
  const int64_t V = model.config().vocab_size;
  std::vector<float> logits(V);
  Sampler greedy(V, SamplingParams{});
  SamplingParams sp;
  sp.temperature = 0.8f, sp.top_k = 40, sp.top_p = 0.9f, sp.seed = 3;
  Sampler sampled(V, sp);
  auto cache = model.NewCache(64).value();
  std::vector<int32_t> prompt = {5, 9, 200, 17, 3, 44, 81, 6};
  SequenceChunk ch{cache.get(), 0, prompt.data(), static_cast<int64_t>(prompt.size())};
  ASSERT_TRUE(model.Forward({&ch, 1}, false, logits.data()).ok());
  int32_t tok = greedy.Sample(logits.data());
  // Two warm-up steps size every scratch buffer and oneDNN primitive.
  for (int i = 0; i < 2; ++i) {
    ch = SequenceChunk{cache.get(), cache->length(), &tok, 1};
    ASSERT_TRUE(model.Forward({&ch, 1}, false, logits.data()).ok());
    tok = greedy.Sample(logits.data());
  }
  const int64_t before = g_allocs.load();
  for (int i = 0; i < 20; ++i) {
    ch = SequenceChunk{cache.get(), cache->length(), &tok, 1};
    ASSERT_TRUE(model.Forward({&ch, 1}, false, logits.data()).ok());
    tok = (i % 2 ? greedy : sampled).Sample(logits.data());
  }
  EXPECT_EQ(g_allocs.load() - before, 0) << "heap allocations during 20 decode steps";
}

INSTANTIATE_TEST_SUITE_P(Models, DecodeAllocTest,
                         ::testing::Values(std::make_tuple("tiny-v3", DType::kF32, DType::kF32),
                                           std::make_tuple("tiny-v3", DType::kF8E4M3, DType::kF32),
                                           std::make_tuple("tiny-v3", DType::kBF16, DType::kBF16),
                                           std::make_tuple("tiny-v2-lite", DType::kBF16, DType::kF32),
                                           std::make_tuple("tiny-moe16b", DType::kF32, DType::kF32),
                                           std::make_tuple("tiny-moe16b", DType::kF32, DType::kBF16)),
                         [](const auto& info) {
                           std::string s = std::get<0>(info.param) + "_" + DTypeName(std::get<1>(info.param)) +
                                           (std::get<2>(info.param) == DType::kBF16 ? "_kv_bf16" : "");
                           for (auto& ch : s) if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace deepshard
