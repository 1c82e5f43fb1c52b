#include "kernels/cpu/isa.h"

#include <cpuid.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace deepshard::cpu {
namespace {

uint64_t ReadXcr0() {
  uint32_t eax = 0, edx = 0;
  // xgetbv with ecx = 0; only valid when CPUID says OSXSAVE.
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

CpuFeatures Detect() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(1, 0, a, b, c, d);
  const bool osxsave = (c >> 27) & 1;
  const bool fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
  const uint64_t xcr0 = osxsave ? ReadXcr0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;                // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;        // XTILECFG, XTILEDATA
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = os_avx && ((b >> 5) & 1);
  f.fma = os_avx && fma;
  f.f16c = os_avx && f16c;
  f.avx512f = os_avx512 && ((b >> 16) & 1);
  f.avx512dq = os_avx512 && ((b >> 17) & 1);
  f.avx512cd = os_avx512 && ((b >> 28) & 1);
  f.avx512bw = os_avx512 && ((b >> 30) & 1);
  f.avx512vl = os_avx512 && ((b >> 31) & 1);
  f.avx512_vnni = os_avx512 && ((c >> 11) & 1);
  f.amx_bf16 = os_amx && ((d >> 22) & 1);
  f.amx_tile = os_amx && ((d >> 24) & 1);
  f.amx_int8 = os_amx && ((d >> 25) & 1);
  __cpuid_count(7, 1, a, b, c, d);
  f.avx512_bf16 = os_avx512 && ((a >> 5) & 1);
  if (__get_cpuid_max(0x80000000, nullptr) >= 0x80000004) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      __cpuid(0x80000002 + i, a, b, c, d);
      std::memcpy(brand + 16 * i, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
    f.model = brand;
    while (!f.model.empty() && f.model.back() == ' ') f.model.pop_back();
    while (!f.model.empty() && f.model.front() == ' ') f.model.erase(0, 1);
  }
  return f;
}

constexpr CpuIsa kAll[] = {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16};

}  // namespace

const CpuFeatures& HostCpuFeatures() {
  static const CpuFeatures f = Detect();
  return f;
}

std::string_view CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Bf16: return "avx512-bf16";
  }
  return "?";
}

absl::StatusOr<CpuIsa> ParseCpuIsa(std::string_view name) {
  for (CpuIsa isa : kAll) {
    if (name == CpuIsaName(isa)) return isa;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown CPU kernel level '", std::string(name), "' (choices: scalar, avx2, avx512, avx512-bf16)"));
}

bool CpuSupports(CpuIsa isa) {
  const CpuFeatures& f = HostCpuFeatures();
  const bool v3 = f.avx2 && f.fma && f.f16c;
  const bool v4 = v3 && f.avx512f && f.avx512bw && f.avx512cd && f.avx512dq && f.avx512vl;
  switch (isa) {
    case CpuIsa::kScalar: return true;
    case CpuIsa::kAvx2: return v3;
    case CpuIsa::kAvx512: return v4;
    case CpuIsa::kAvx512Bf16: return v4 && f.avx512_bf16 && f.avx512_vnni;
  }
  return false;
}

std::vector<CpuIsa> AvailableCpuIsas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : kAll) {
    if (CpuSupports(isa)) out.push_back(isa);
  }
  return out;
}

absl::StatusOr<CpuIsa> SelectCpuIsa() {
  const char* env = std::getenv("DEEPSHARD_CPU_KERNELS");
  if (env == nullptr || *env == '\0') return AvailableCpuIsas().back();
  auto isa = ParseCpuIsa(env);
  if (!isa.ok()) return absl::InvalidArgumentError(absl::StrCat("DEEPSHARD_CPU_KERNELS: ", isa.status().message()));
  if (!CpuSupports(*isa)) {
    return absl::InvalidArgumentError(absl::StrCat("DEEPSHARD_CPU_KERNELS=", env, ": this CPU (",
                                                   HostCpuFeatures().model, ") cannot run these kernels; available: ",
                                                   std::string(CpuIsaName(AvailableCpuIsas().back())), " and below"));
  }
  return *isa;
}

std::string DescribeCpuKernels(CpuIsa isa) {
  const CpuFeatures& f = HostCpuFeatures();
  std::string s = absl::StrCat(std::string(CpuIsaName(isa)), " kernels (", f.model.empty() ? "unknown CPU" : f.model);
  if (f.amx_bf16) absl::StrAppend(&s, "; AMX-BF16 present, used by oneDNN in fast prefill");
  absl::StrAppend(&s, ")");
  return s;
}

}  // namespace deepshard::cpu
