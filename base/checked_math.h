// Overflow-checked size arithmetic for sizes computed from untrusted values
// (config.json, flags): a product that does not fit in int64, or a negative
// factor, is an error naming what was being sized, never signed-overflow UB.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace deepshard {

// The product of `factors` (each >= 0), or InvalidArgument "<what>: size
// overflows (a x b x ...)" when it exceeds INT64_MAX.
inline absl::StatusOr<int64_t> CheckedMul(std::initializer_list<int64_t> factors, std::string_view what) {
  int64_t p = 1;
  bool overflow = false, negative = false;
  for (int64_t f : factors) {
    if (f < 0) negative = true;
    if (!overflow && !negative && __builtin_mul_overflow(p, f, &p)) overflow = true;
  }
  if (negative || overflow) {
    std::string list;
    for (int64_t f : factors) absl::StrAppend(&list, list.empty() ? "" : " x ", f);
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), negative ? ": negative size (" : ": size overflows int64 (",
                                                   list, ")"));
  }
  return p;
}

// a + b for sizes (both >= 0), with the same error.
inline absl::StatusOr<int64_t> CheckedAdd(int64_t a, int64_t b, std::string_view what) {
  int64_t s;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &s)) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": size overflows int64 (", a, " + ", b, ")"));
  }
  return s;
}

}  // namespace deepshard

#include <unistd.h>

namespace deepshard {

// Bytes of physical memory on this machine (0 if unknown).
inline int64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 0;
  int64_t bytes;
  if (__builtin_mul_overflow(static_cast<int64_t>(pages), static_cast<int64_t>(page), &bytes)) return INT64_MAX;
  return bytes;
}

// ResourceExhausted naming `what` when `bytes` exceeds this machine's
// physical memory (so a size from the config fails before the allocation
// rather than through std::bad_alloc, the OOM killer or minutes of paging).
inline absl::Status CheckFitsInMemory(int64_t bytes, std::string_view what) {
  const int64_t phys = PhysicalMemoryBytes();
  if (phys > 0 && bytes > phys) {
    return absl::ResourceExhaustedError(absl::StrCat(std::string(what), " needs ", bytes, " bytes, more than this machine's ",
                                                     phys, " bytes of memory"));
  }
  return absl::OkStatus();
}

}  // namespace deepshard
