// Run-time kernel selection (kernels/cpu/isa.h): CPU feature detection agrees
// with the kernel's view (/proc/cpuinfo), levels parse and select as documented,
// and a bad DEEPSHARD_CPU_KERNELS is an error naming the variable.
#include "kernels/cpu/isa.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"

namespace deepshard::cpu {
namespace {

std::set<std::string> ProcCpuFlags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) {
      std::istringstream ss(line.substr(line.find(':') + 1));
      std::set<std::string> out;
      for (std::string f; ss >> f;) out.insert(f);
      return out;
    }
  }
  return {};
}

class EnvGuard {
 public:
  explicit EnvGuard(const char* value) {
    if (const char* old = getenv("DEEPSHARD_CPU_KERNELS")) old_ = old, had_ = true;
    if (value) {
      setenv("DEEPSHARD_CPU_KERNELS", value, 1);
    } else {
      unsetenv("DEEPSHARD_CPU_KERNELS");
    }
  }
  ~EnvGuard() {
    if (had_) {
      setenv("DEEPSHARD_CPU_KERNELS", old_.c_str(), 1);
    } else {
      unsetenv("DEEPSHARD_CPU_KERNELS");
    }
  }

 private:
  std::string old_;
  bool had_ = false;
};

TEST(CpuIsaTest, FeaturesAgreeWithProcCpuinfo) {
  const std::set<std::string> flags = ProcCpuFlags();
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags line";
  const CpuFeatures& f = HostCpuFeatures();
  // /proc/cpuinfo lists what the kernel enabled, so it agrees with our
  // CPUID + XCR0 view.
  EXPECT_EQ(f.avx2, flags.count("avx2") == 1);
  EXPECT_EQ(f.fma, flags.count("fma") == 1);
  EXPECT_EQ(f.f16c, flags.count("f16c") == 1);
  EXPECT_EQ(f.avx512f, flags.count("avx512f") == 1);
  EXPECT_EQ(f.avx512bw, flags.count("avx512bw") == 1);
  EXPECT_EQ(f.avx512vl, flags.count("avx512vl") == 1);
  EXPECT_EQ(f.avx512_bf16, flags.count("avx512_bf16") == 1);
  EXPECT_EQ(f.avx512_vnni, flags.count("avx512_vnni") == 1);
  EXPECT_EQ(f.amx_bf16, flags.count("amx_bf16") == 1);
  EXPECT_EQ(f.amx_tile, flags.count("amx_tile") == 1);
}

TEST(CpuIsaTest, NamesRoundTripAndUnknownNamesAreErrors) {
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16}) {
    auto parsed = ParseCpuIsa(CpuIsaName(isa));
    ASSERT_TRUE(parsed.ok()) << CpuIsaName(isa);
    EXPECT_EQ(*parsed, isa);
    const CpuKernels* k = CpuKernelsFor(isa);
    ASSERT_NE(k, nullptr) << CpuIsaName(isa);
    EXPECT_EQ(k->isa, isa);
  }
  auto bad = ParseCpuIsa("avx9000");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("avx9000"), std::string::npos);
  EXPECT_NE(bad.status().message().find("avx512-bf16"), std::string::npos);
}

TEST(CpuIsaTest, AvailableLevelsAreSupportedAndOrdered) {
  const std::vector<CpuIsa> levels = AvailableCpuIsas();
  ASSERT_FALSE(levels.empty());
  EXPECT_EQ(levels.front(), CpuIsa::kScalar);
  for (size_t i = 0; i < levels.size(); ++i) {
    EXPECT_TRUE(CpuSupports(levels[i]));
    if (i > 0) {
      EXPECT_LT(static_cast<int>(levels[i - 1]), static_cast<int>(levels[i]));
    }
  }
  // Each level needs the one below it.
  if (CpuSupports(CpuIsa::kAvx512Bf16)) {
    EXPECT_TRUE(CpuSupports(CpuIsa::kAvx512));
  }
  if (CpuSupports(CpuIsa::kAvx512)) {
    EXPECT_TRUE(CpuSupports(CpuIsa::kAvx2));
  }
}

TEST(CpuIsaTest, SelectionFollowsTheEnvironment) {
  {
    EnvGuard g(nullptr);
    auto isa = SelectCpuIsa();
    ASSERT_TRUE(isa.ok());
    EXPECT_EQ(*isa, AvailableCpuIsas().back());
  }
  {
    EnvGuard g("scalar");
    auto isa = SelectCpuIsa();
    ASSERT_TRUE(isa.ok());
    EXPECT_EQ(*isa, CpuIsa::kScalar);
    auto be = MakeBackend("cpu", MathMode::kExact);
    ASSERT_TRUE(be.ok());
    EXPECT_NE((*be)->Describe().find("scalar kernels"), std::string::npos) << (*be)->Describe();
  }
  {
    EnvGuard g("sse9");
    auto isa = SelectCpuIsa();
    ASSERT_FALSE(isa.ok());
    EXPECT_NE(isa.status().message().find("DEEPSHARD_CPU_KERNELS"), std::string::npos) << isa.status();
    auto be = MakeBackend("cpu", MathMode::kExact);
    ASSERT_FALSE(be.ok());
    EXPECT_NE(be.status().message().find("DEEPSHARD_CPU_KERNELS"), std::string::npos) << be.status();
  }
}

TEST(CpuIsaTest, ALevelThisCpuLacksIsRefused) {
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16}) {
    if (CpuSupports(isa)) continue;
    EnvGuard g(std::string(CpuIsaName(isa)).c_str());
    auto sel = SelectCpuIsa();
    ASSERT_FALSE(sel.ok());
    EXPECT_NE(sel.status().message().find("cannot run"), std::string::npos) << sel.status();
    return;
  }
  GTEST_SKIP() << "this CPU runs every level";
}

}  // namespace
}  // namespace deepshard::cpu
