// Which CPU kernels run: one binary for every x86-64 machine.
//
// The compute kernels (kernels/cpu/isa/) are compiled several times, once per
// instruction-set level, into separate namespaces; the rest of the program is
// compiled for baseline x86-64. At start-up the backend picks the best level the
// CPU (and the operating system's saved register state) supports, so a binary
// built on an AVX-512 node also runs on an AVX2-only node. The environment
// variable DEEPSHARD_CPU_KERNELS (scalar, avx2, avx512, avx512-bf16) forces a
// lower level, like oneDNN's ONEDNN_MAX_CPU_ISA.
#pragma once

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace deepshard::cpu {

enum class CpuIsa {
  kScalar,      // baseline x86-64: portable C++ loops
  kAvx2,        // x86-64-v3: AVX2, FMA, F16C
  kAvx512,      // x86-64-v4: AVX-512 F/BW/CD/DQ/VL
  kAvx512Bf16,  // x86-64-v4 + AVX512_BF16 + AVX512_VNNI (Cooper Lake, Sapphire Rapids, Zen 4)
};

// What this CPU offers, from CPUID, with AVX/AVX-512/AMX counted only when the
// OS saves their registers (XCR0).
struct CpuFeatures {
  std::string model;  // the CPUID brand string
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512cd = false, avx512dq = false, avx512vl = false;
  bool avx512_bf16 = false, avx512_vnni = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
};
const CpuFeatures& HostCpuFeatures();

std::string_view CpuIsaName(CpuIsa isa);
// Prints the name (test parameters, logs).
inline std::ostream& operator<<(std::ostream& os, CpuIsa isa) { return os << CpuIsaName(isa); }
// "scalar", "avx2", "avx512", "avx512-bf16"; InvalidArgument naming the choices.
absl::StatusOr<CpuIsa> ParseCpuIsa(std::string_view name);
// Whether this CPU can run the kernels of `isa`.
bool CpuSupports(CpuIsa isa);
// Every level this build carries that this CPU runs, lowest first.
std::vector<CpuIsa> AvailableCpuIsas();
// The best available level, or the one DEEPSHARD_CPU_KERNELS names (an error if
// the name is unknown or this CPU cannot run it).
absl::StatusOr<CpuIsa> SelectCpuIsa();
// One line for logs: "avx512-bf16 (Intel(R) Xeon(R) ...; AMX bf16 present: used by oneDNN for prefill)".
std::string DescribeCpuKernels(CpuIsa isa);

}  // namespace deepshard::cpu
