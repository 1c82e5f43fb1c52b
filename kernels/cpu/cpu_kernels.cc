#include "kernels/cpu/cpu_kernels.h"

namespace deepshard::cpu {
// One table per level, defined in kernels/cpu/isa/table.cc compiled for it.
namespace scalar { extern const CpuKernels kKernels; }
namespace avx2 { extern const CpuKernels kKernels; }
namespace avx512 { extern const CpuKernels kKernels; }
namespace avx512_bf16 { extern const CpuKernels kKernels; }

const CpuKernels* CpuKernelsFor(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return &scalar::kKernels;
    case CpuIsa::kAvx2: return &avx2::kKernels;
    case CpuIsa::kAvx512: return &avx512::kKernels;
    case CpuIsa::kAvx512Bf16: return &avx512_bf16::kKernels;
  }
  return nullptr;
}

const CpuKernels& ActiveCpuKernels() {
  static const CpuKernels* k = [] {
    auto isa = SelectCpuIsa();
    return CpuKernelsFor(isa.ok() ? *isa : AvailableCpuIsas().back());
  }();
  return *k;
}

}  // namespace deepshard::cpu
