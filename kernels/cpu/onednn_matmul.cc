#include "kernels/cpu/onednn_matmul.h"

#include <map>
#include <tuple>
#include <vector>

#include "dnnl.hpp"

namespace deepshard::cpu {

using dnnl::memory;

constexpr size_t kMaxCachedPrimitives = 256;

struct OneDnnMatmul::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  struct Entry {
    dnnl::matmul prim;
    memory src, wei, dst, scratch;
    std::vector<uint8_t> scratch_buf;
  };
  // key: dtype, m, k, n, ldx, ldw, ldy, w_transposed
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;
  std::map<Key, Entry> cache;

  Entry& Get(memory::data_type dt, int64_t m, int64_t k, int64_t n, int64_t ldx, int64_t ldw,
             bool wt, int64_t ldy) {
    Key key{static_cast<int>(dt), m, k, n, ldx, ldw, ldy, wt};
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    // Shapes with a new M keep arriving (every prefill length, a growing
    // sequence in forced-naive decode): bound the cache. Steady-state decode
    // reuses a handful of shapes and never reaches the bound.
    if (cache.size() >= kMaxCachedPrimitives) cache.clear();
    memory::desc src_md({m, k}, dt, memory::dims{ldx, 1});
    // w[n, k] row-major read as B[k, n] has strides {1, ldw}; an untransposed
    // w[k, n] (wt == false) has strides {ldw, 1}.
    memory::desc wei_md({k, n}, dt, wt ? memory::dims{1, ldw} : memory::dims{ldw, 1});
    memory::desc dst_md({m, n}, memory::data_type::f32, memory::dims{ldy, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, wei_md, dst_md), attr, engine);
    Entry e;
    e.prim = dnnl::matmul(pd);
    e.src = memory(src_md, engine, nullptr);
    e.wei = memory(wei_md, engine, nullptr);
    e.dst = memory(dst_md, engine, nullptr);
    e.scratch_buf.resize(pd.scratchpad_desc().get_size() + 64);
    e.scratch = memory(pd.scratchpad_desc(), engine, e.scratch_buf.data());
    return cache.emplace(key, std::move(e)).first->second;
  }

  void Run(Entry& e, const void* x, const void* w, float* y) {
    e.src.set_data_handle(const_cast<void*>(x));
    e.wei.set_data_handle(const_cast<void*>(w));
    e.dst.set_data_handle(y);
    e.prim.execute(stream, {{DNNL_ARG_SRC, e.src},
                            {DNNL_ARG_WEIGHTS, e.wei},
                            {DNNL_ARG_DST, e.dst},
                            {DNNL_ARG_SCRATCHPAD, e.scratch}});
    stream.wait();
  }
};

OneDnnMatmul::OneDnnMatmul() : impl_(std::make_unique<Impl>()) {}

bool OneDnnMatmul::bf16_supported() const {
  static const bool supported = [this] {
    try {
      memory::desc a({16, 64}, memory::data_type::bf16, memory::dims{64, 1});
      memory::desc b({64, 16}, memory::data_type::bf16, memory::dims{1, 64});
      memory::desc c({16, 16}, memory::data_type::f32, memory::dims{16, 1});
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), impl_->engine);
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return supported;
}
OneDnnMatmul::~OneDnnMatmul() = default;

void OneDnnMatmul::F32(const float* x, int64_t m, int64_t k, int64_t ldx, const float* w, int64_t n,
                       int64_t ldw, bool wt, float* y, int64_t ldy) {
  auto& e = impl_->Get(memory::data_type::f32, m, k, n, ldx, ldw, wt, ldy);
  impl_->Run(e, x, w, y);
}

void OneDnnMatmul::Bf16(const uint16_t* x, int64_t m, int64_t k, int64_t ldx, const uint16_t* w,
                        int64_t n, int64_t ldw, bool wt, float* y, int64_t ldy) {
  auto& e = impl_->Get(memory::data_type::bf16, m, k, n, ldx, ldw, wt, ldy);
  impl_->Run(e, x, w, y);
}

}  // namespace deepshard::cpu
