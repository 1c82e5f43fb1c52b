// The model makes no arithmetic and no data movement outside the backend.
//
// PoisonedBackend wraps the CPU backend. Its memory (every buffer, every
// uploaded weight) lives in one arena that is mapped PROT_NONE except while one
// of its ops runs, so model code that reads or writes an activation, a cache
// row, a table or a weight on the host dies with SIGSEGV. Every pointer handed
// to an op must point into the arena (host memory passed to an op fails the
// test), and every op is counted by name. A forward pass on it must give the
// CPU backend's logits bit for bit: same kernels, nothing done elsewhere.
#include <sys/mman.h>
#include <unistd.h>

#include <map>
#include <string>

#include "gtest/gtest.h"
#include "runtime/batching/paged_kv_cache.h"
#include "runtime/model/deepseek_model.h"
#include "tests/runtime/model/test_models.h"

namespace deepshard {
namespace {

class PoisonedBackend final : public Backend {
 public:
  PoisonedBackend() : inner_(MakeCpuBackend(MathMode::kExact)) {
    arena_ = static_cast<uint8_t*>(mmap(nullptr, kArena, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    EXPECT_NE(arena_, MAP_FAILED);
  }
  ~PoisonedBackend() override { munmap(arena_, kArena); }

  const std::map<std::string, int64_t>& counts() const { return counts_; }
  void ResetCounts() { counts_.clear(); }
  int64_t host_pointer_errors() const { return host_pointer_errors_; }

  std::string_view name() const override { return "poisoned"; }
  MathMode math_mode() const override { return inner_->math_mode(); }
  MemoryKind memory_kind() const override { return MemoryKind::kDevice; }

  absl::StatusOr<Buffer> Allocate(int64_t bytes, std::string_view what) override {
    void* p = Carve(bytes);
    if (p == nullptr) return absl::ResourceExhaustedError(std::string(what));
    return Buffer(this, p, bytes, MemoryKind::kDevice);
  }
  absl::StatusOr<WeightView> Upload(const WeightView& w) override {
    // The rows up to the view's end (views address from physical row 0).
    const int64_t bytes = (w.row0 + w.rows) * w.cols * DTypeSize(w.dtype);
    WeightView v = w;
    v.data = CopyIn(w.data, bytes);
    if (w.scale_inv != nullptr) {
      const int64_t scale_rows = (w.row0 + w.rows + w.block - 1) / w.block;
      v.scale_inv = static_cast<const float*>(CopyIn(w.scale_inv, scale_rows * w.scale_cols() * 4));
    }
    return v;
  }
  absl::StatusOr<VectorView> Upload(const VectorView& v) override {
    VectorView out = v;
    out.data = CopyIn(v.data, v.size * DTypeSize(v.dtype));
    return out;
  }
  void CopyFromHost(void* dst, const void* src, int64_t bytes) override {
    Op g(this, "CopyFromHost", {dst});
    inner_->CopyFromHost(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, int64_t bytes) override {
    Op g(this, "CopyToHost", {src});
    inner_->CopyToHost(dst, src, bytes);
  }
  void Copy(void* dst, const void* src, int64_t bytes) override {
    Op g(this, "Copy", {dst, src});
    inner_->Copy(dst, src, bytes);
  }
  absl::Status Synchronize() override { return inner_->Synchronize(); }
  void ReserveAttention(int64_t max_kv) override { inner_->ReserveAttention(max_kv); }

  void Linear(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) override {
    Op g(this, "Linear", {x, w.data, y});
    inner_->Linear(x, m, ldx, w, y, ldy);
  }
  void LinearExact(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) override {
    Op g(this, "LinearExact", {x, w.data, y});
    inner_->LinearExact(x, m, ldx, w, y, ldy);
  }
  void LinearT(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy) override {
    Op g(this, "LinearT", {x, w.data, y});
    inner_->LinearT(x, m, ldx, w, y, ldy);
  }
  void LinearHeads(const HeadsLinearParams& p) override {
    Op g(this, "LinearHeads", {p.x, p.w.data, p.y});
    inner_->LinearHeads(p);
  }
  void GroupedMlp(const GroupedMlpParams& p) override {
    std::vector<const void*> ptrs = {p.x, p.out};
    for (const MlpWeights& e : p.experts) ptrs.insert(ptrs.end(), {e.gate_proj.data, e.up_proj.data, e.down_proj.data});
    Op g(this, "GroupedMlp", ptrs);
    inner_->GroupedMlp(p);
  }
  void RmsNorm(const float* x, int64_t m, int64_t d, int64_t ldx, const VectorView& gamma, float eps, float* y,
               int64_t ldy) override {
    Op g(this, "RmsNorm", {x, gamma.data, y});
    inner_->RmsNorm(x, m, d, ldx, gamma, eps, y, ldy);
  }
  void AddRmsNorm(float* x, const float* h, int64_t m, int64_t d, const VectorView& gamma, float eps,
                  float* xn) override {
    Op g(this, "AddRmsNorm", {x, h, gamma.data, xn});
    inner_->AddRmsNorm(x, h, m, d, gamma, eps, xn);
  }
  void Add(float* y, const float* x, int64_t n) override {
    Op g(this, "Add", {y, x});
    inner_->Add(y, x, n);
  }
  void Embedding(const WeightView& table, const int32_t* ids, int64_t m, float* y) override {
    Op g(this, "Embedding", {table.data, ids, y});
    inner_->Embedding(table, ids, m, y);
  }
  void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride, int64_t head_stride, int64_t dim,
            const int32_t* positions, const float* cos_table, const float* sin_table, RopeLayout layout) override {
    Op g(this, "Rope", {x, positions, cos_table, sin_table});
    inner_->Rope(x, n_tokens, n_heads, token_stride, head_stride, dim, positions, cos_table, sin_table, layout);
  }
  void SiluMul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld_in, float* out,
               int64_t ld_out) override {
    Op g(this, "SiluMul", {gate, up, out});
    inner_->SiluMul(gate, up, m, n, ld_in, out, ld_out);
  }
  void CopyRows(const RowCopy& c) override {
    Op g(this, "CopyRows", {c.dst, c.src});
    inner_->CopyRows(c);
  }
  void GatherRows(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, const int32_t* idx, int64_t n,
                  int64_t cols, int32_t idx_div) override {
    Op g(this, "GatherRows", {dst, src, idx});
    inner_->GatherRows(dst, ld_dst, src, ld_src, idx, n, cols, idx_div);
  }
  void ScatterRows(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, const int32_t* idx, int64_t n,
                   int64_t cols) override {
    Op g(this, "ScatterRows", {dst, src, idx});
    inner_->ScatterRows(dst, ld_dst, src, ld_src, idx, n, cols);
  }
  void WeightedSumRows(float* out, const float* rows, const float* weights, int64_t n, int64_t k,
                       int64_t cols) override {
    Op g(this, "WeightedSumRows", {out, rows, weights});
    inner_->WeightedSumRows(out, rows, weights, n, k, cols);
  }
  void KvWrite(const KvLayer& kv, const int32_t* slots, int64_t n, const float* src, int64_t ld_src) override {
    Op g(this, "KvWrite", {kv.data, slots, src});
    inner_->KvWrite(kv, slots, n, src, ld_src);
  }
  void KvGather(const KvLayer& kv, const int32_t* slots, int64_t n, float* dst, int64_t ld_dst) override {
    Op g(this, "KvGather", {kv.data, slots, dst});
    inner_->KvGather(kv, slots, n, dst, ld_dst);
  }
  void Attention(const AttentionParams& p) override {
    Op g(this, "Attention", {p.q, p.k, p.v, p.seqs, p.out, p.block_tables});
    inner_->Attention(p);
  }
  void RouteTopK(const RouterParams& p, const float* logits, const float* bias, int64_t T, int32_t* ids,
                 float* weights) override {
    Op g(this, "RouteTopK", {logits, bias, ids, weights});
    inner_->RouteTopK(p, logits, bias, T, ids, weights);
  }
  void GroupByExpert(const int32_t* ids, int64_t n, int64_t n_experts, int32_t* offsets, int32_t* order) override {
    Op g(this, "GroupByExpert", {ids, offsets, order});
    inner_->GroupByExpert(ids, n, n_experts, offsets, order);
  }

 protected:
  void Free(void*, int64_t) override {}  // an arena: freed with the backend

 private:
  static constexpr size_t kArena = size_t{4} << 30;  // address space only (MAP_NORESERVE)

  // Opens the arena for the op's duration; checks its pointers.
  struct Op {
    Op(PoisonedBackend* b, const char* name, std::initializer_list<const void*> ptrs) : Op(b, name, std::vector(ptrs)) {}
    Op(PoisonedBackend* b, const char* name, const std::vector<const void*>& ptrs) : b(b) {
      ++b->counts_[name];
      for (const void* p : ptrs) {
        if (p != nullptr && !b->Inside(p)) {
          ++b->host_pointer_errors_;
          ADD_FAILURE() << name << " was given host memory " << p << ", not backend memory";
        }
      }
      b->Open(true);
    }
    ~Op() { b->Open(false); }
    PoisonedBackend* b;
  };

  bool Inside(const void* p) const {
    const uint8_t* q = static_cast<const uint8_t*>(p);
    return q >= arena_ && q < arena_ + used_;
  }
  void Open(bool open) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t len = (used_ + page - 1) / page * page;
    if (len > 0) {
      ASSERT_EQ(mprotect(arena_, len, open ? PROT_READ | PROT_WRITE : PROT_NONE), 0);
    }
  }
  void* Carve(int64_t bytes) {
    const size_t at = (used_ + 63) / 64 * 64;
    if (at + static_cast<size_t>(std::max<int64_t>(bytes, 1)) > kArena) return nullptr;
    used_ = at + static_cast<size_t>(std::max<int64_t>(bytes, 1));
    return arena_ + at;
  }
  const void* CopyIn(const void* src, int64_t bytes) {
    void* p = Carve(bytes);
    Open(true);
    std::memcpy(p, src, bytes);
    Open(false);
    return p;
  }

  std::unique_ptr<Backend> inner_;
  uint8_t* arena_ = nullptr;
  size_t used_ = 0;
  std::map<std::string, int64_t> counts_;
  int64_t host_pointer_errors_ = 0;
};

struct StepsRun {
  std::vector<float> logits;                       // every step's, concatenated
  std::map<std::string, int64_t> decode_op_counts;  // of the last decode step
};

// Two sequences in one paged pool: a chunked prefill of both (different
// lengths, so naive MLA), then decode steps of both at once (absorbed MLA).
StepsRun RunSteps(DeepseekModel& m, PoisonedBackend* poisoned) {
  StepsRun out;
  const int64_t V = m.config().vocab_size;
  auto pool = PagedKvCache::Create(m.backend(), m.config(), m.n_local_layers(), 4, 32, m.runtime().kv_dtype).value();
  auto a = pool->NewSequence(), b = pool->NewSequence();
  std::vector<int32_t> pa = {5, 9, 200, 17, 3, 44, 81}, pb = {7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};
  auto step = [&](std::vector<SequenceChunk> batch) {
    for (const SequenceChunk& ch : batch) EXPECT_TRUE(pool->Reserve(*ch.cache, ch.n_tokens).ok());
    std::vector<float> l(batch.size() * V);
    const absl::Status st = m.Forward(batch, false, l.data());
    EXPECT_TRUE(st.ok()) << st;
    out.logits.insert(out.logits.end(), l.begin(), l.end());
  };
  step({{a.get(), 0, pa.data(), 7}, {b.get(), 0, pb.data(), 6}});
  step({{b.get(), 6, pb.data() + 6, 5}});
  for (int s = 0; s < 4; ++s) {
    if (poisoned != nullptr) poisoned->ResetCounts();
    int32_t ta = 3 + s, tb = 30 + s;
    step({{a.get(), a->length(), &ta, 1}, {b.get(), b->length(), &tb, 1}});
  }
  if (poisoned != nullptr) out.decode_op_counts = poisoned->counts();
  pool->Free(*a), pool->Free(*b);
  return out;
}

// The poison works: the host touching the backend's memory outside an op dies.
TEST(PoisonedBackendDeathTest, HostAccessOutsideAnOpCrashes) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        PoisonedBackend b;
        Buffer buf = b.Allocate(64, "a buffer").value();
        static_cast<volatile float*>(buf.data())[0] = 1.0f;
      },
      "");
}

class BackendSeamTest : public ::testing::TestWithParam<std::tuple<std::string, DType, DType>> {};

TEST_P(BackendSeamTest, ModelComputesOnlyThroughTheBackend) {
  const auto [preset, weights, kv] = GetParam();
  const std::string dir = testing_util::TinyModel(preset, weights);
  RuntimeConfig rt;
  rt.kv_dtype = kv;
  auto cpu = DeepseekModel::Load(dir, rt);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto owned = std::make_unique<PoisonedBackend>();
  PoisonedBackend* poisoned = owned.get();
  auto pm = DeepseekModel::Load(dir, rt, LoadSpec{}, std::move(owned));
  ASSERT_TRUE(pm.ok()) << pm.status();
  const StepsRun want = RunSteps(**cpu, nullptr);
  const StepsRun got = RunSteps(**pm, poisoned);
  EXPECT_EQ(poisoned->host_pointer_errors(), 0);
  ASSERT_EQ(got.logits.size(), want.logits.size());
  EXPECT_EQ(got.logits, want.logits) << "the poisoned backend runs the same kernels: results must be identical";

  // One decode step of two sequences, as data: per layer one attention call for
  // both sequences, both absorption products as one call each, one grouped
  // call for the dense MLP or each MoE layer's routed and shared experts.
  const ModelConfig& c = (*pm)->config();
  const int64_t L = c.num_hidden_layers;
  std::printf("[ %s, %s weights, %s KV ] ops in one decode step of 2 sequences (%ld layers):", preset.c_str(),
              DTypeName(weights), DTypeName(kv), static_cast<long>(L));
  for (const auto& [op, n] : got.decode_op_counts) std::printf(" %s %ld", op.c_str(), static_cast<long>(n));
  std::printf("\n");
  auto count = [&](const char* op) {
    auto it = got.decode_op_counts.find(op);
    return it == got.decode_op_counts.end() ? int64_t{0} : it->second;
  };
  EXPECT_EQ(count("Attention"), L);
  EXPECT_EQ(count("KvWrite"), L);
  if (c.is_mla()) {
    EXPECT_EQ(count("LinearHeads"), 2 * L);
  }
  const int64_t moe_layers = L - c.first_k_dense_replace;
  EXPECT_EQ(count("RouteTopK"), moe_layers);
  EXPECT_EQ(count("GroupedMlp"), (L - moe_layers) + moe_layers * (c.n_shared_experts > 0 ? 2 : 1));
  EXPECT_EQ(count("CopyToHost"), 1 + moe_layers);  // the logits, and each MoE layer's expert counts
}

INSTANTIATE_TEST_SUITE_P(Models, BackendSeamTest,
                         ::testing::Values(std::make_tuple("tiny-v3", DType::kF32, DType::kF32),
                                           std::make_tuple("tiny-v3", DType::kF8E4M3, DType::kBF16),
                                           std::make_tuple("tiny-v2-lite", DType::kBF16, DType::kF32),
                                           std::make_tuple("tiny-v2", DType::kF32, DType::kBF16),
                                           std::make_tuple("tiny-moe16b", DType::kF32, DType::kBF16)),
                         [](const auto& info) {
                           std::string s = std::get<0>(info.param) + "_" + DTypeName(std::get<1>(info.param)) +
                                           "_kv_" + DTypeName(std::get<2>(info.param));
                           for (auto& ch : s) if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace deepshard
