// Group-quantised weights: the formats behind --weights int8|int4.
//
// A weight row of `cols` values is cut into groups of `group` consecutive
// columns (group a multiple of 32 that divides cols; 32 by default, as
// llama.cpp's Q8_0 and Q4_0). Each group has one f16 scale d, kept apart from
// the values (WeightView::qscale), and its values are symmetric integers:
//
//   kQ8: q in [-127, 127], one int8 per value;  w = q * d,
//        d = amax / 127, amax = the group's largest |w|.
//   kQ4: q in [0, 15], two per byte;            w = (q - 8) * d,
//        d = m / -8, m = the group's value of largest magnitude (the first
//        one on ties), so m itself lands exactly on q = 0 and the other sign
//        reaches +7 (llama.cpp's Q4_0 does the same).
//        Packing: each 32 columns take 16 bytes; byte j holds column j in its
//        low nibble and column j + 16 in its high nibble.
//
// Both: d is computed in f32 and rounded to f16 away from zero when rounding
// to nearest would shrink it, so no |w / d| exceeds 127 (int8) or 8 (int4);
// q = round-half-even(w / d) in f32, clamped. w = q * d is then exact in f32,
// so a product over dequantised weights matches a float32 reference of the
// dequantised model up to summation order (tools/reference/make_fixtures.py
// builds that reference independently). An all-zero group has d = 0.
//
// Storage per value: int8 1 + 2/group bytes (1.0625 at group 32, as Q8_0);
// int4 0.5 + 2/group (0.5625, as Q4_0).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/dtype.h"
#include "kernels/tensor.h"

namespace deepshard {

// What --weights asks for.
enum class WeightQuant { kStored, kInt8, kInt4 };
const char* WeightQuantName(WeightQuant q);  // "stored", "int8", "int4"

inline constexpr int64_t kDefaultQuantGroup = 32;

// Why `w` cannot be quantised with `group` (an f32/bf16/f16/fp8 weight whose
// columns the group divides, group a positive multiple of 32), or OK.
absl::Status CheckQuantizable(const WeightView& w, int64_t group);

// Quantises logical rows [r0, r1) of `w` (f32, bf16, f16 or block-scaled fp8,
// widened to f32 first) into `target` (kQ8 or kQ4): row r's values at
// q + (r - r0) * RowBytes(target, w.cols) and its scales at
// scales + (r - r0) * (w.cols / group). Portable scalar code (runs once, at
// load); call from several threads on disjoint rows.
void QuantizeRows(const WeightView& w, int64_t r0, int64_t r1, DType target, int64_t group, uint8_t* q,
                  uint16_t* scales);

// One row of values `x[cols]` into `target`: the scalar reference of the format.
void QuantizeRow(const float* x, int64_t cols, DType target, int64_t group, uint8_t* q, uint16_t* scales);

// Logical row r of a kQ8/kQ4 view as f32 (the reference dequantiser).
void DequantizeRow(const WeightView& w, int64_t r, float* out);

}  // namespace deepshard
