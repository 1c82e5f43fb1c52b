// Every backend this build has, for tests parametrised over backends: a new
// backend gets the whole op conformance suite (tests/kernels/ops_test.cc) by
// adding one line here.
#pragma once

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"

namespace deepshard::testing_util {

struct BackendFactory {
  std::string name;
  std::function<std::unique_ptr<Backend>(MathMode)> make;
};

// Test names and ctest listings show the backend's name, not its bytes.
inline void PrintTo(const BackendFactory& f, std::ostream* os) { *os << f.name; }

// The CPU backend once per kernel level this machine runs ("cpu_avx2", ...).
inline std::vector<BackendFactory> AllBackendFactories() {
  std::vector<BackendFactory> out;
  for (cpu::CpuIsa isa : cpu::AvailableCpuIsas()) {
    std::string name = "cpu_" + std::string(cpu::CpuIsaName(isa));
    for (char& c : name) c = c == '-' ? '_' : c;
    out.push_back({name, [isa](MathMode m) { return MakeCpuBackend(m, 0, isa); }});
  }
  return out;
}

inline std::string BackendName(const ::testing::TestParamInfo<BackendFactory>& info) { return info.param.name; }

// A host vector copied into backend memory, and back.
template <typename T>
class DeviceVec {
 public:
  DeviceVec(Backend& be, const std::vector<T>& host) : be_(be), n_(static_cast<int64_t>(host.size())) {
    buf_ = be.Allocate(std::max<int64_t>(1, n_) * static_cast<int64_t>(sizeof(T)), "test data").value();
    be.CopyFromHost(buf_.data(), host.data(), n_ * static_cast<int64_t>(sizeof(T)));
  }
  DeviceVec(Backend& be, int64_t n, T fill = T()) : DeviceVec(be, std::vector<T>(n, fill)) {}
  T* get() const { return buf_.as<T>(); }
  std::vector<T> Read() const {
    std::vector<T> out(n_);
    EXPECT_TRUE(be_.Synchronize().ok());
    be_.CopyToHost(out.data(), buf_.data(), n_ * static_cast<int64_t>(sizeof(T)));
    return out;
  }

 private:
  Backend& be_;
  int64_t n_;
  Buffer buf_;
};

}  // namespace deepshard::testing_util
