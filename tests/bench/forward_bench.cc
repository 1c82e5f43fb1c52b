// deepshard_bench_forward: decode and prefill speed of the forward pass, with
// the machine's own limits measured in the same run.
//
//   decode  (batch 1): tokens/s, and bytes of weights touched per token ÷ time
//                      against the read ceiling (ReadCeilingGBs).
//   prefill (512 tokens): tokens/s, and FLOP/s against oneDNN's GEMM on the
//                      same shapes in the same precision (f32 exact, bf16 fast).
// Output follows nccl-tests: '#' headers, fixed columns, #wrong, OK/FAILED.
//
//   deepshard_bench_forward --help   (flags and what each column means)
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "dnnl.hpp"
#include "kernels/cpu/cpu_kernels.h"
#include "runtime/model/deepseek_model.h"
#include "runtime/model/random_model.h"
#include "runtime/weights/safetensors.h"

namespace ds = deepshard;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The decode bandwidth ceiling: the best read rate of a 1 GiB buffer (far
// larger than any L3) over several read patterns, with the active kernel
// level's widest loads: 1, 2, 4 or 8 streams per thread, with and without
// software prefetch, on transparent huge pages where the kernel allows them.
// GB/s, the median of 5 runs of the best pattern; `how` names that pattern.
double ReadCeilingGBs(std::string* how) {
  const size_t bytes = 1ull << 30;
  void* raw = std::aligned_alloc(2 << 20, bytes);
  if (raw == nullptr) return 0;
#if defined(MADV_HUGEPAGE)
  const bool huge = madvise(raw, bytes, MADV_HUGEPAGE) == 0;
#else
  const bool huge = false;
#endif
  char* buf = static_cast<char*>(raw);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < bytes; i += 4096) std::memset(buf + i, 1, 4096);  // first touch by the reading thread
  const auto& k = ds::cpu::ActiveCpuKernels();
  volatile float sink = 0;
  auto rate = [&](int streams, int prefetch, int reps) {
    std::vector<double> runs;
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      sink = sink + k.read_sum(buf, static_cast<int64_t>(bytes), streams, prefetch);
      runs.push_back(bytes / Seconds(t0, Clock::now()) / 1e9);
    }
    return Median(runs);
  };
  double best = 0;
  int best_s = 1, best_p = 0;
  for (int streams : {1, 2, 4, 8}) {
    for (int prefetch : {0, 512, 2048}) {
      const double g = rate(streams, prefetch, 3);
      if (g > best) best = g, best_s = streams, best_p = prefetch;
    }
  }
  best = std::max(best, rate(best_s, best_p, 5));
  *how = std::to_string(best_s) + " stream(s)/thread, prefetch " + (best_p ? std::to_string(best_p) + " B" : "off") +
         (huge ? ", huge pages" : ", 4 KiB pages");
  std::free(raw);
  return best;
}

// oneDNN GEMM throughput (GFLOP/s) for y[m,n] = x[m,k]·w[n,k]ᵀ in `dt`, median of 5.
double GemmGflops(int64_t m, int64_t n, int64_t k, dnnl::memory::data_type dt) {
  using dnnl::memory;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  memory::desc a({m, k}, dt, memory::dims{k, 1}), b({k, n}, dt, memory::dims{1, k}),
      c({m, n}, memory::data_type::f32, memory::dims{n, 1});
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), eng);
  dnnl::matmul mm(pd);
  memory A(a, eng), B(b, eng), C(c, eng);
  std::memset(A.get_data_handle(), 0, a.get_size());
  std::memset(B.get_data_handle(), 0, b.get_size());
  std::vector<double> runs;
  for (int r = 0; r < 6; ++r) {
    auto t0 = Clock::now();
    mm.execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
    s.wait();
    if (r > 0) runs.push_back(2.0 * m * n * k / Seconds(t0, Clock::now()) / 1e9);
  }
  return Median(runs);
}

// Bytes a product reads of a weight: its values, and a quantised weight's scales.
uint64_t ReadBytes(const ds::WeightView& w) { return w.bytes() + w.qscale_bytes(); }

uint64_t MlpBytes(const ds::MlpWeights& w) { return ReadBytes(w.gate_proj) + ReadBytes(w.up_proj) + ReadBytes(w.down_proj); }

// Weight bytes one batch-1 decode step reads: all dense weights, k experts per
// MoE layer, one embedding row, lm_head.
uint64_t DecodeBytes(const ds::DeepseekModel& m) {
  const auto& c = m.config();
  const auto& w = m.weights();
  uint64_t b = ReadBytes(w.lm_head) + w.embed_tokens.bytes() / c.vocab_size;
  for (const auto& L : w.layers) {
    const auto& a = L.attn;
    for (const auto* v : {&a.q_proj, &a.q_a_proj, &a.q_b_proj, &a.kv_a_proj_with_mqa, &a.kv_b_proj, &a.k_proj,
                          &a.v_proj, &a.o_proj})
      b += ReadBytes(*v);
    if (L.is_moe) {
      b += ReadBytes(L.moe.gate) + (L.moe.has_shared ? MlpBytes(L.moe.shared) : 0);
      b += c.num_experts_per_tok * MlpBytes(L.moe.experts[0]);
    } else {
      b += MlpBytes(L.mlp);
    }
  }
  return b;
}

// FLOPs of a T-token prefill in GEMMs (2·params·T over the weights each token
// uses, plus attention's QK and PV products).
double PrefillFlops(const ds::DeepseekModel& m, int64_t T) {
  const auto& c = m.config();
  const auto& w = m.weights();
  double params = static_cast<double>(w.lm_head.rows * w.lm_head.cols) / T;  // lm_head on the last token only
  for (const auto& L : w.layers) {
    const auto& a = L.attn;
    for (const auto* v : {&a.q_proj, &a.q_a_proj, &a.q_b_proj, &a.kv_a_proj_with_mqa, &a.kv_b_proj, &a.k_proj,
                          &a.v_proj, &a.o_proj})
      params += static_cast<double>(v->rows * v->cols);
    auto mlp = [](const ds::MlpWeights& x) { return 3.0 * x.gate_proj.rows * x.gate_proj.cols; };
    params += L.is_moe ? (L.moe.has_shared ? mlp(L.moe.shared) : 0) + c.num_experts_per_tok * mlp(L.moe.experts[0]) +
                             static_cast<double>(L.moe.gate.rows * L.moe.gate.cols)
                       : mlp(L.mlp);
  }
  const double attn = 2.0 * c.num_hidden_layers * c.num_attention_heads * (T * (T + 1) / 2.0) *
                      (c.qk_head_dim() + (c.is_mla() ? c.v_head_dim : c.head_dim));
  return 2.0 * params * T + attn;
}

// What the load-time NaN/Inf scan (Checkpoint::CheckFinite) costs over the
// page-touching pass it replaced (Prefault), each on a fresh mapping of the
// same files (already in the page cache), and the scan alone on pages already
// mapped. Medians of 3, milliseconds; bytes = every tensor of the checkpoint.
struct LoadCosts {
  double bytes = 0, prefault_ms = 0, scan_fresh_ms = 0, scan_mapped_ms = 0;
};

LoadCosts MeasureLoadCosts(const std::string& dir) {
  LoadCosts out;
  std::vector<double> pf, sf, sm;
  for (int r = 0; r < 3; ++r) {
    for (int pass = 0; pass < 2; ++pass) {
      auto ck = ds::Checkpoint::Open(dir);
      if (!ck.ok()) return out;
      for (const std::string& n : (*ck)->TensorNames()) {
        if (!(*ck)->Get(n).ok()) return out;
      }
      out.bytes = static_cast<double>((*ck)->bytes_requested());
      auto t0 = Clock::now();
      if (pass == 0) {
        (*ck)->Prefault();
        pf.push_back(Seconds(t0, Clock::now()) * 1e3);
      } else {
        if (!(*ck)->CheckFinite().ok()) return out;
        sf.push_back(Seconds(t0, Clock::now()) * 1e3);
        t0 = Clock::now();
        if (!(*ck)->CheckFinite().ok()) return out;
        sm.push_back(Seconds(t0, Clock::now()) * 1e3);
      }
    }
  }
  out.prefault_ms = Median(pf);
  out.scan_fresh_ms = Median(sf);
  out.scan_mapped_ms = Median(sm);
  return out;
}

}  // namespace

constexpr char kUsage[] =
    "usage: deepshard_bench_forward [flags]\n"
    "\n"
    "Decode (batch 1) and prefill speed of the forward pass, with the machine's limits measured in\n"
    "the same run: decode against the best read rate of memory (the bandwidth ceiling), prefill\n"
    "against oneDNN's GEMM on the same shapes in the same precision (f32 for --math exact, bf16 for\n"
    "--math fast where the CPU has a bf16 matmul). Prints '#' headers, one row per phase, OK/FAILED.\n"
    "\n"
    "  --model DIR         a model directory (default: bench-v2-lite written to the temp dir:\n"
    "                      DeepSeek-V2-Lite widths, --layers layers, bf16, random weights)\n"
    "  --layers N          layers of the default model (default 2)\n"
    "  --prompt N          prefill length in tokens (default 512)\n"
    "  --decode-steps N    batch-1 decode steps after the prompt; the median is reported (default 32)\n"
    "  --threads N         OpenMP threads (default: one per core)\n"
    "  --numa auto|distribute|off  thread pinning, as deepshard --numa (default auto)\n"
    "  --math exact|fast   how GEMMs treat bf16/fp8 weights (default fast)\n"
    "  --weights stored|int8|int4  quantise the projections at load (deepshard --weights; default stored)\n"
    "  --weights-group N   columns per quantisation scale (default 32)\n"
    "  --help              this text\n"
    "\n"
    "The CPU kernel level is chosen at run time; DEEPSHARD_CPU_KERNELS=avx2 (etc.) forces one.\n";

// A positive integer flag value, or an error naming the flag.
bool ParsePositive(const std::string& flag, const std::string& v, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x <= 0) {
    std::fprintf(stderr, "deepshard_bench_forward: %s wants a positive integer, got '%s'\n", flag.c_str(), v.c_str());
    return false;
  }
  *out = x;
  return true;
}

int main(int argc, char** argv) {
  std::string model_dir, math = "fast", weights = "stored";
  ds::NumaMode numa = ds::NumaMode::kAuto;
  int64_t decode_steps = 32, prompt_len = 512, threads = 0, layers = 2, group = ds::kDefaultQuantGroup;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "deepshard_bench_forward: %s needs a value (see --help)\n", f.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    bool ok = true;
    if (f == "--model") {
      model_dir = v;
    } else if (f == "--decode-steps") {
      ok = ParsePositive(f, v, &decode_steps);
    } else if (f == "--prompt") {
      ok = ParsePositive(f, v, &prompt_len);
    } else if (f == "--threads") {
      ok = ParsePositive(f, v, &threads);
    } else if (f == "--numa") {
      auto mode = ds::ParseNumaMode(v);
      if (!mode.ok()) {
        std::fprintf(stderr, "deepshard_bench_forward: %s\n", std::string(mode.status().message()).c_str());
        return 2;
      }
      numa = *mode;
    } else if (f == "--layers") {
      ok = ParsePositive(f, v, &layers);
    } else if (f == "--math") {
      math = v;
      if (math != "exact" && math != "fast") {
        std::fprintf(stderr, "deepshard_bench_forward: --math wants exact or fast, got '%s'\n", v.c_str());
        return 2;
      }
    } else if (f == "--weights") {
      weights = v;
      if (weights != "stored" && weights != "int8" && weights != "int4") {
        std::fprintf(stderr, "deepshard_bench_forward: --weights wants stored, int8 or int4, got '%s'\n", v.c_str());
        return 2;
      }
    } else if (f == "--weights-group") {
      ok = ParsePositive(f, v, &group);
      if (ok && group % 32 != 0) {
        std::fprintf(stderr, "deepshard_bench_forward: --weights-group wants a multiple of 32, got '%s'\n", v.c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr, "deepshard_bench_forward: unknown flag %s (see --help)\n", f.c_str());
      return 2;
    }
    if (!ok) return 2;
  }
  if (model_dir.empty()) {
    model_dir = (std::filesystem::temp_directory_path() /
                 ("deepshard_bench_v2_lite_" + std::to_string(layers) + "l_bf16")).string();
    if (!std::filesystem::exists(model_dir + "/config.json")) {
      ds::RandomModelOptions o;
      o.preset = "bench-v2-lite";
      o.dtype = ds::DType::kBF16;
      o.num_layers = static_cast<int>(layers);
      std::printf("# writing %s ...\n", model_dir.c_str());
      if (auto s = ds::WriteRandomModel(o, model_dir); !s.ok()) {
        std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
        return 1;
      }
    }
  }
  ds::RuntimeConfig rt;
  rt.math = math == "exact" ? ds::MathMode::kExact : ds::MathMode::kFast;
  rt.max_context = prompt_len + decode_steps + 8;
  rt.weights = weights == "int8" ? ds::WeightQuant::kInt8 : weights == "int4" ? ds::WeightQuant::kInt4 : ds::WeightQuant::kStored;
  rt.quant_group = group;
  rt.threads = static_cast<int>(threads);
  rt.numa = numa;
  const auto load0 = Clock::now();
  auto loaded = ds::DeepseekModel::Load(model_dir, rt);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  const double load_s = Seconds(load0, Clock::now());
  const LoadCosts lc = MeasureLoadCosts(model_dir);
  ds::DeepseekModel& m = **loaded;
  const auto& c = m.config();
  const int64_t V = c.vocab_size;

  // Like with like: exact prefill multiplies in f32, so its reference is f32
  // GEMM; fast prefill is compared with bf16 GEMM where oneDNN has one for
  // this CPU (otherwise fast runs f32 products too).
  bool bf16 = math == "fast";
  double gemm_peak = 0;
  if (bf16) {
    try {
      gemm_peak = GemmGflops(prompt_len, 2048, 2048, dnnl::memory::data_type::bf16);
    } catch (const dnnl::error&) {
      bf16 = false;
    }
  }
  if (!bf16) gemm_peak = GemmGflops(prompt_len, 2048, 2048, dnnl::memory::data_type::f32);
  const double gemm_moe = GemmGflops(std::max<int64_t>(1, prompt_len * c.num_experts_per_tok / std::max<int64_t>(1, c.n_routed_experts)),
                                     c.moe_intermediate_size, c.hidden_size,
                                     bf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32);
  std::string read_how;
  const double stream = ReadCeilingGBs(&read_how);

  std::printf("# deepshard forward benchmark\n");
  std::printf("# model %s: %s, hidden %ld, %ld layers, %ld experts (top-%ld), weights %.2f GB\n", model_dir.c_str(),
              c.model_type.c_str(), c.hidden_size, c.num_hidden_layers, c.n_routed_experts, c.num_experts_per_tok,
              m.weight_bytes() / 1e9);
  std::printf("# threads %d, math %s, oneDNN GEMM dtype %s\n", omp_get_max_threads(), math.c_str(), bf16 ? "bf16" : (math == "fast" ? "f32 (no bf16 matmul on this CPU)" : "f32 (as exact math)"));
  std::printf("# backend: %s\n", m.backend().Describe().c_str());
  std::printf("# %s\n", m.weights_summary().c_str());
  std::printf("# read ceiling: %.1f GB/s (%s)\n", stream, read_how.c_str());
  std::printf("# oneDNN GEMM [%ld x 2048 x 2048]: %.1f GFLOP/s, expert-sized [%ld]: %.1f GFLOP/s\n",
              prompt_len, gemm_peak, std::max<int64_t>(1, prompt_len * c.num_experts_per_tok / c.n_routed_experts), gemm_moe);
  std::printf("# load %.2f s; over %.2f GB (fresh mappings, page cache warm): page touch %.0f ms, NaN/Inf scan %.0f ms "
              "(%+.0f ms), scan of mapped pages %.0f ms (%.1f GB/s)\n",
              load_s, lc.bytes / 1e9, lc.prefault_ms, lc.scan_fresh_ms, lc.scan_fresh_ms - lc.prefault_ms,
              lc.scan_mapped_ms, lc.scan_mapped_ms > 0 ? lc.bytes / 1e6 / lc.scan_mapped_ms : 0.0);
  std::printf("#\n# %8s %7s %10s %10s %9s %8s %7s\n", "phase", "tokens", "time_ms", "tok/s", "rate", "of_peak", "#wrong");

  // Prefill: 512 tokens, median of 3 (fresh cache each time).
  std::vector<int32_t> prompt(prompt_len);
  for (int64_t i = 0; i < prompt_len; ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % (V - 2) + 2);
  std::vector<float> logits(V);
  std::vector<double> pre;
  int64_t wrong = 0;
  std::unique_ptr<ds::KvCache> cache;
  for (int r = 0; r < 3; ++r) {
    cache = m.NewCache(prompt_len + decode_steps + 8).value();
    ds::SequenceChunk ch{cache.get(), 0, prompt.data(), prompt_len};
    auto t0 = Clock::now();
    if (!m.Forward({&ch, 1}, false, logits.data()).ok()) return 1;
    pre.push_back(Seconds(t0, Clock::now()));
  }
  for (float x : logits) wrong += !std::isfinite(x);
  const double pre_s = Median(pre), flops = PrefillFlops(m, prompt_len);
  std::printf("  %8s %7ld %10.1f %10.1f %6.1f GF %7.1f%% %7ld\n", "prefill", prompt_len, pre_s * 1e3, prompt_len / pre_s,
              flops / pre_s / 1e9, 100.0 * flops / pre_s / 1e9 / gemm_peak, wrong);

  // Decode at batch 1: per-step times, median.
  std::vector<double> dec;
  int32_t tok = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  wrong = 0;
  for (int64_t s = 0; s < decode_steps; ++s) {
    ds::SequenceChunk ch{cache.get(), cache->length(), &tok, 1};
    auto t0 = Clock::now();
    if (!m.Forward({&ch, 1}, false, logits.data()).ok()) return 1;
    dec.push_back(Seconds(t0, Clock::now()));
    for (float x : logits) wrong += !std::isfinite(x);
    tok = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  const double dec_s = Median(dec), bytes = static_cast<double>(DecodeBytes(m));
  std::printf("  %8s %7d %10.2f %10.2f %6.1f GB/s %5.1f%% %7ld\n", "decode", 1, dec_s * 1e3, 1.0 / dec_s, bytes / dec_s / 1e9,
              100.0 * bytes / dec_s / 1e9 / stream, wrong);
  std::printf("# decode touches %.1f MB of weights per token\n", bytes / 1e6);
  {
    // The M = 1 GEMV alone on the largest weight (lm_head), read from the
    // checkpoint's page-cache mapping (4 KiB pages) and from a copy on
    // anonymous huge pages first touched slab by slab by the thread that reads
    // it (what the backend's Upload does unless DEEPSHARD_CPU_WEIGHTS=map):
    // how close the kernel itself gets to the ceiling, and what the page size
    // costs. The model's own view may be either, so both are made here.
    const ds::WeightView& held = m.weights().lm_head;
    ds::WeightView w = held;
    auto ck = ds::Checkpoint::Open(model_dir);
    auto ref = ck.ok() ? (*ck)->Get("lm_head.weight") : absl::StatusOr<ds::TensorRef>(ck.status());
    if (ref.ok() && ref->shape.size() == 2 && ref->dtype == held.dtype) {
      w.data = ref->data;
      w.row0 = 0;
      w.rows = ref->shape[0];
      w.cols = ref->shape[1];
    }
    std::vector<float> x(w.cols, 0.01f), y(w.rows);
    const auto& k = ds::cpu::ActiveCpuKernels();
    auto gbs = [&](const ds::WeightView& v) {
      std::vector<double> runs;
      for (int r = 0; r < 7; ++r) {
        auto t0 = Clock::now();
        k.gemv_rows(x.data(), 1, w.cols, v, y.data(), w.rows);
        runs.push_back(v.bytes() / Seconds(t0, Clock::now()) / 1e9);
      }
      return Median(runs);
    };
    const double mapped = ref.ok() ? gbs(w) : 0.0;
    const size_t nbytes = (static_cast<size_t>(w.bytes()) + (2 << 20) - 1) / (2 << 20) * (2 << 20);
    void* copy = std::aligned_alloc(2 << 20, nbytes);
    double anon = 0;
    if (copy != nullptr) {
#if defined(MADV_HUGEPAGE)
      madvise(copy, nbytes, MADV_HUGEPAGE);
#endif
      const int64_t row_bytes = w.cols * ds::DTypeSize(w.dtype);
#pragma omp parallel
      {  // the same row slabs the GEMV gives each thread
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t g = ds::cpu::kGemvSlabRows, units = (w.rows + g - 1) / g;
        const int64_t r0 = std::min<int64_t>(w.rows, units * t / nt * g), r1 = std::min<int64_t>(w.rows, units * (t + 1) / nt * g);
        if (r1 > r0) std::memcpy(static_cast<char*>(copy) + r0 * row_bytes, w.RowPtr(r0), (r1 - r0) * row_bytes);
      }
      ds::WeightView v = w;
      v.data = copy;
      v.row0 = 0;
      anon = gbs(v);
      std::free(copy);
    }
    char mapped_text[64] = "n/a (no lm_head.weight)";
    if (ref.ok()) std::snprintf(mapped_text, sizeof mapped_text, "%.1f GB/s", mapped);
    std::printf("# GEMV alone, lm_head [%ld x %ld] %s: %s as mapped, %.1f GB/s on anonymous huge pages\n", w.rows,
                w.cols, ds::DTypeName(w.dtype), mapped_text, anon);
    if (ds::IsQuantized(held.dtype)) {
      // The quantised copy the model holds, read both ways: f32 activations
      // (exact math) and the integer dot products of fast math.
      std::vector<uint8_t> xq(ds::cpu::QActBytes(held.cols));
      k.quantize_act(x.data(), held.cols, xq.data());
      std::vector<double> exact, qdot;
      for (int r = 0; r < 7; ++r) {
        auto t0 = Clock::now();
        k.gemv_rows(x.data(), 1, held.cols, held, y.data(), held.rows);
        exact.push_back(held.bytes() / Seconds(t0, Clock::now()) / 1e9);
        t0 = Clock::now();
        k.gemv_rows_qdot(xq.data(), 1, held, y.data(), held.rows);
        qdot.push_back(held.bytes() / Seconds(t0, Clock::now()) / 1e9);
      }
      std::printf("# GEMV alone, lm_head %s as held: %.1f GB/s with f32 activations (exact), %.1f GB/s with int8 "
                  "activations (fast)\n", ds::DTypeName(held.dtype), Median(exact), Median(qdot));
    }
  }
  std::printf("# %s\n", wrong == 0 ? "OK" : "FAILED");
  return wrong == 0 ? 0 : 1;
}
