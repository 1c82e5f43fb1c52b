// This ISA level's kernel table (kernels/cpu/cpu_kernels.h).
#include "kernels/cpu/isa/kernels.h"

namespace deepshard::cpu::DS_ISA_NS {

extern const CpuKernels kKernels;
const CpuKernels kKernels = {
    .isa = DS_ISA_ENUM,
    .gemv_rows = GemvRows,
    .gemv_rows_fast = GemvRowsFast,
    .gemv_batch = GemvBatch,
    .quantize_act = QuantizeAct,
    .gemv_rows_qdot = GemvRowsQDot,
    .gemm_rows = GemmRows,
    .gemv_cols = GemvCols,
    .gemv_heads = GemvHeads,
    .widen_rows_f32 = WidenRowsF32,
    .widen_rows_bf16 = WidenRowsBf16,
    .f32_to_bf16_rows = F32ToBf16Rows,
    .rms_norm = RmsNorm,
    .add_rms_norm = AddRmsNorm,
    .add = Add,
    .rope = Rope,
    .silu_mul = SiluMul,
    .weighted_sum_rows = WeightedSumRows,
    .kv_write_bf16 = KvWriteBf16,
    .kv_gather_bf16 = KvGatherBf16,
    .attention_scratch = AttentionScratch,
    .attention = Attention,
    .read_sum = ReadSum,
};

}  // namespace deepshard::cpu::DS_ISA_NS
