// PagedKvCache: the model reads and writes KV through block tables and gets
// exactly the logits of the contiguous cache, in every attention form.
#include "runtime/batching/paged_kv_cache.h"

#include <cmath>

#include "gtest/gtest.h"
#include "runtime/model/deepseek_model.h"
#include "tests/runtime/model/test_models.h"

namespace deepshard {
namespace {

using testing_util::TinyModel;

TEST(ParseByteSize, UnitsAndErrors) {
  EXPECT_EQ(*ParseByteSize("4GiB"), int64_t{4} << 30);
  EXPECT_EQ(*ParseByteSize("512MiB"), int64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("512 mib"), int64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("1.5KiB"), 1536);
  EXPECT_EQ(*ParseByteSize("2GB"), 2000000000);
  EXPECT_EQ(*ParseByteSize("123456"), 123456);
  for (const char* bad : {"", "GiB", "4 parsecs", "-1GiB", "1.2.3MiB", "99999999TiB"}) {
    const auto r = ParseByteSize(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(std::string(ParseByteSize("4 parsecs").status().message()).find("4 parsecs"), std::string::npos);
}

std::unique_ptr<DeepseekModel> Load(const std::string& preset, MlaMode mode) {
  RuntimeConfig rt;
  rt.mla_mode = mode;
  rt.max_context = 128;
  auto m = DeepseekModel::Load(TinyModel(preset), rt);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(m).value();
}

TEST(PagedKvCache, PoolSizeComesFromTheByteBudget) {
  auto m = Load("tiny-v3", MlaMode::kAuto);
  const ModelConfig& c = m->config();
  const int64_t per_block = PagedKvCache::BytesPerBlock(c, m->n_local_layers(), 64, DType::kF32);
  EXPECT_EQ(per_block, m->n_local_layers() * 64 * (c.kv_lora_rank + c.qk_rope_head_dim) * 4);
  auto pool = PagedKvCache::FromBudget(m->backend(), c, m->n_local_layers(), 64, 10 * per_block + per_block / 2, DType::kF32);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->n_blocks(), 10);
  EXPECT_EQ((*pool)->bytes(), 10 * per_block);
  const auto tiny = PagedKvCache::FromBudget(m->backend(), c, m->n_local_layers(), 64, per_block - 1, DType::kF32);
  EXPECT_EQ(tiny.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(tiny.status().message()).find("--kv-cache-memory"), std::string::npos);
}

TEST(PagedKvCache, OutOfBlocksIsResourceExhaustedAndUnreservedSlotsAreRefused) {
  auto m = Load("tiny-v2-lite", MlaMode::kAuto);
  auto owned = PagedKvCache::Create(m->backend(), m->config(), m->n_local_layers(), 4, 3, DType::kF32).value();
  PagedKvCache& pool = *owned;
  auto a = pool.NewSequence(), b = pool.NewSequence();
  ASSERT_TRUE(pool.Reserve(*a, 10).ok());
  const auto st = pool.Reserve(*b, 5);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_EQ(b->capacity(), 0);
  EXPECT_EQ(pool.blocks().n_free(), 0);
  // Forward refuses tokens beyond the reserved slots instead of writing past the table.
  const std::vector<int32_t> prompt(12, 3);
  std::vector<float> logits(m->config().vocab_size);
  SequenceChunk ch{a.get(), 0, prompt.data(), 12};
  EXPECT_EQ(m->Forward({&ch, 1}, false, logits.data()).code(), absl::StatusCode::kFailedPrecondition);
  ch.n_tokens = 10;
  EXPECT_TRUE(m->Forward({&ch, 1}, false, logits.data()).ok());
  pool.Free(*a);
  EXPECT_EQ(a->length(), 0);
  EXPECT_EQ(pool.blocks().n_free(), 3);
  EXPECT_TRUE(pool.Reserve(*b, 5).ok());
}

// Runs one fixed schedule of three sequences (chunked prefills batched
// together, one freed half way, a fork, mixed decode steps) on either
// contiguous caches or a paged pool, and returns every step's logits.
std::vector<float> RunSchedule(DeepseekModel& m, PagedKvCache* pool) {
  const int64_t V = m.config().vocab_size;
  auto tok = [V](int64_t i, int s) { return static_cast<int32_t>((i * 7919 + s * 104729 + 13) % (V - 2) + 2); };
  std::vector<int32_t> pa(37), pb(70), pc(23);
  for (int64_t i = 0; i < 37; ++i) pa[i] = tok(i, 1);
  for (int64_t i = 0; i < 70; ++i) pb[i] = tok(i, 2);
  for (int64_t i = 0; i < 23; ++i) pc[i] = tok(i, 3);
  auto make = [&] { return pool != nullptr ? pool->NewSequence() : m.NewCache().value(); };
  auto a = make(), b = make(), c = make();
  std::vector<float> out;
  auto step = [&](std::vector<SequenceChunk> batch) {
    for (const SequenceChunk& ch : batch) {
      if (pool != nullptr) {
        EXPECT_TRUE(pool->Reserve(*ch.cache, ch.n_tokens).ok());
      }
    }
    std::vector<float> l(batch.size() * V);
    EXPECT_TRUE(m.Forward(batch, false, l.data()).ok());
    out.insert(out.end(), l.begin(), l.end());
  };
  step({{b.get(), 0, pb.data(), 30}, {a.get(), 0, pa.data(), 20}});
  step({{c.get(), 0, pc.data(), 23}});
  step({{a.get(), 20, pa.data() + 20, 17}, {c.get(), 23, pa.data(), 2}});
  if (pool != nullptr) pool->Free(*c);  // leaves a hole in the middle of the pool
  step({{b.get(), 30, pb.data() + 30, 40}});
  if (pool != nullptr) {  // b's blocks are not one run: it grew into the hole c left
    const std::vector<int32_t>& bt = b->block_table().blocks;
    bool scattered = false;
    for (size_t i = 1; i < bt.size(); ++i) scattered |= bt[i] != bt[i - 1] + 1;
    EXPECT_TRUE(scattered);
  }
  // d: a fork of a (shares a's blocks, including a partly filled one).
  std::unique_ptr<KvCache> d;
  if (pool != nullptr) {
    d = pool->Fork(*a);
  } else {
    d = m.NewCache().value();
    std::vector<float> rows(a->length() * a->width());
    std::vector<int32_t> slots(a->length());
    for (int64_t j = 0; j < a->length(); ++j) slots[j] = static_cast<int32_t>(a->slot(j));
    for (int64_t l = 0; l < m.n_local_layers(); ++l) {  // contiguous caches: slot j is row j
      m.backend().KvGather(a->layer(l), slots.data(), a->length(), rows.data(), a->width());
      m.backend().KvWrite(d->layer(l), slots.data(), a->length(), rows.data(), a->width());
    }
    d->set_length(a->length());
  }
  for (int s = 0; s < 6; ++s) {
    int32_t ta = tok(s, 4), tb = tok(s, 5), td = tok(s, 6);
    step({{a.get(), a->length(), &ta, 1}, {b.get(), b->length(), &tb, 1}, {d.get(), d->length(), &td, 1}});
  }
  int32_t two[2] = {tok(9, 7), tok(10, 7)};  // a two-token step (naive MLA under kAuto) on the fork
  step({{d.get(), d->length(), two, 2}, {a.get(), a->length(), two, 1}});
  if (pool != nullptr) {
    pool->Free(*a), pool->Free(*b), pool->Free(*d);
    EXPECT_EQ(pool->blocks().n_free(), pool->n_blocks());
  }
  return out;
}

struct PagedCase {
  std::string preset;
  int64_t block_size;
  MlaMode mode;
};

void PrintTo(const PagedCase& c, std::ostream* os) { *os << c.preset << " block_size " << c.block_size; }

class PagedMatchesContiguous : public ::testing::TestWithParam<PagedCase> {};

TEST_P(PagedMatchesContiguous, SameLogits) {
  const PagedCase& pc = GetParam();
  auto m = Load(pc.preset, pc.mode);
  const std::vector<float> want = RunSchedule(*m, nullptr);
  auto pool = PagedKvCache::Create(m->backend(), m->config(), m->n_local_layers(), pc.block_size,
                                   256 / pc.block_size + 6, DType::kF32).value();
  const std::vector<float> got = RunSchedule(*m, pool.get());
  ASSERT_EQ(got.size(), want.size());
  double err = 0, mx = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, static_cast<double>(std::fabs(got[i] - want[i])));
    mx = std::max(mx, static_cast<double>(std::fabs(want[i])));
  }
  EXPECT_LE(err / mx, 1e-6) << pc.preset << " block_size " << pc.block_size;
}

INSTANTIATE_TEST_SUITE_P(
    Presets, PagedMatchesContiguous,
    ::testing::Values(PagedCase{"tiny-v3", 4, MlaMode::kAuto}, PagedCase{"tiny-v3", 64, MlaMode::kAuto},
                      PagedCase{"tiny-v2-lite", 4, MlaMode::kAuto}, PagedCase{"tiny-v2-lite", 64, MlaMode::kAuto},
                      PagedCase{"tiny-moe16b", 4, MlaMode::kAuto}, PagedCase{"tiny-moe16b", 64, MlaMode::kAuto},
                      PagedCase{"tiny-v3", 4, MlaMode::kNaive}, PagedCase{"tiny-v3", 4, MlaMode::kAbsorbed},
                      PagedCase{"tiny-v2-lite", 64, MlaMode::kNaive},
                      PagedCase{"tiny-v2-lite", 64, MlaMode::kAbsorbed}),
    [](const auto& info) {
      std::string name = info.param.preset + "_bs" + std::to_string(info.param.block_size) +
                         (info.param.mode == MlaMode::kAuto    ? "_auto"
                          : info.param.mode == MlaMode::kNaive ? "_naive"
                                                               : "_absorbed");
      for (char& ch : name) ch = (ch == '-') ? '_' : ch;
      return name;
    });

}  // namespace
}  // namespace deepshard
