// Comparing logits in tests: the error metric every golden and layout test uses.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace deepshard::testing_util {

// Max over rows of max|ours - ref| / max|ref| (rows of `vocab` logits).
inline double RowRelErr(const std::vector<float>& ours, const std::vector<float>& ref, int64_t vocab) {
  double worst = 0;
  for (size_t r = 0; r * vocab < ref.size(); ++r) {
    double num = 0, den = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      num = std::max(num, static_cast<double>(std::fabs(ours[r * vocab + j] - ref[r * vocab + j])));
      den = std::max(den, static_cast<double>(std::fabs(ref[r * vocab + j])));
    }
    worst = std::max(worst, num / den);
  }
  return worst;
}

}  // namespace deepshard::testing_util
