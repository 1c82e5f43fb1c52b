#include "kernels/quant.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace deepshard {
namespace {

// The f16 scale of a group: `d` rounded to nearest, then one step away from
// zero if that made it smaller in magnitude.
uint16_t ScaleUp(float d) {
  uint16_t h = F32ToF16(d);
  if (std::fabs(F16ToF32(h)) < std::fabs(d)) ++h;  // same sign: the next magnitude up
  return h;
}

void WidenRow(const WeightView& w, int64_t r, float* out) {
  const uint8_t* src = w.RowPtr(r);
  ConvertToF32(w.dtype, src, out, w.cols);
  if (w.dtype == DType::kF8E4M3) {
    const float* srow = w.scale_inv + ((w.row0 + r) / w.block) * w.scale_cols();
    for (int64_t c = 0; c < w.cols; ++c) out[c] *= srow[c / w.block];
  }
}

// Round half to even of |v| < 2^22 (here |v| <= 127): adding and subtracting
// 1.5 * 2^23 leaves v rounded to an integer by the FPU's round-to-nearest-even,
// as std::nearbyint does, without its library call (the baseline x86-64 build
// has no ROUNDSS) on every weight at load.
inline float RoundHalfEven(float v) {
  constexpr float kMagic = 0x1.8p23f;
  return (v + kMagic) - kMagic;
}
inline float Clamp(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace

const char* WeightQuantName(WeightQuant q) {
  switch (q) {
    case WeightQuant::kStored: return "stored";
    case WeightQuant::kInt8: return "int8";
    case WeightQuant::kInt4: return "int4";
  }
  return "?";
}

absl::Status CheckQuantizable(const WeightView& w, int64_t group) {
  if (group <= 0 || group % 32 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("quantisation group ", group, " is not a positive multiple of 32"));
  }
  if (w.dtype != DType::kF32 && w.dtype != DType::kBF16 && w.dtype != DType::kF16 && w.dtype != DType::kF8E4M3) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", DTypeName(w.dtype), " cannot be quantised"));
  }
  if (w.cols % group != 0) {
    return absl::InvalidArgumentError(absl::StrCat(w.cols, " columns are not a multiple of the group ", group));
  }
  return absl::OkStatus();
}

void QuantizeRow(const float* x, int64_t cols, DType target, int64_t group, uint8_t* q, uint16_t* scales) {
  const bool int4 = target == DType::kQ4;
  for (int64_t g0 = 0; g0 < cols; g0 += group) {
    const float* xg = x + g0;
    float m = 0.0f;  // the value of largest magnitude, first on ties
    for (int64_t c = 0; c < group; ++c) {
      if (std::fabs(xg[c]) > std::fabs(m)) m = xg[c];
    }
    const uint16_t h = ScaleUp(int4 ? m / -8.0f : std::fabs(m) / 127.0f);
    scales[g0 / group] = h;
    const float d = F16ToF32(h);
    for (int64_t c = 0; c < group; ++c) {
      const float v = d == 0.0f ? 0.0f : RoundHalfEven(xg[c] / d);
      if (int4) {
        const int qi = static_cast<int>(Clamp(v + 8.0f, 0.0f, 15.0f));
        // Column c of a 32-column block: byte c % 16 of the block, low nibble
        // for the first 16 columns, high for the next 16.
        const int64_t col = g0 + c, block = col / 32, j = col % 32;
        uint8_t& byte = q[block * 16 + j % 16];
        byte = j < 16 ? static_cast<uint8_t>((byte & 0xf0) | qi) : static_cast<uint8_t>((byte & 0x0f) | (qi << 4));
      } else {
        q[g0 + c] = static_cast<uint8_t>(static_cast<int8_t>(Clamp(v, -127.0f, 127.0f)));
      }
    }
  }
}

void QuantizeRows(const WeightView& w, int64_t r0, int64_t r1, DType target, int64_t group, uint8_t* q,
                  uint16_t* scales) {
  std::vector<float> row(w.cols);
  const int64_t row_bytes = RowBytes(target, w.cols), groups = w.cols / group;
  for (int64_t r = r0; r < r1; ++r) {
    WidenRow(w, r, row.data());
    QuantizeRow(row.data(), w.cols, target, group, q + (r - r0) * row_bytes, scales + (r - r0) * groups);
  }
}

void DequantizeRow(const WeightView& w, int64_t r, float* out) {
  const uint8_t* q = w.RowPtr(r);
  const uint16_t* s = w.qscale + (w.row0 + r) * (w.cols / w.group);
  for (int64_t c = 0; c < w.cols; ++c) {
    const float d = F16ToF32(s[c / w.group]);
    if (w.dtype == DType::kQ4) {
      const int64_t j = c % 32;
      const uint8_t byte = q[c / 32 * 16 + j % 16];
      const int qi = j < 16 ? (byte & 0x0f) : (byte >> 4);
      out[c] = static_cast<float>(qi - 8) * d;
    } else {
      out[c] = static_cast<float>(static_cast<int8_t>(q[c])) * d;
    }
  }
}

}  // namespace deepshard
