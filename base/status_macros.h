// Status helpers shared by every deepshard library.
//
// Debian's Abseil (20220623) has absl::Status and absl::StatusOr but no
// RETURN_IF_ERROR / ASSIGN_OR_RETURN, so they are defined here.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define DS_CONCAT_INNER(a, b) a##b
#define DS_CONCAT(a, b) DS_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status _ds_status = (expr);            \
    if (!_ds_status.ok()) return _ds_status;       \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` unwraps a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  DS_ASSIGN_OR_RETURN_IMPL(DS_CONCAT(_ds_statusor_, __LINE__), lhs, expr)
#define DS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

// Programmer-error check: aborts with a message. Never use it for bad input.
#define DS_CHECK(cond)                                                          \
  do {                                                                          \
    if (!(cond)) ::deepshard::internal::CheckFailed(#cond, __FILE__, __LINE__); \
  } while (0)

namespace deepshard::internal {
[[noreturn]] void CheckFailed(const char* cond, const char* file, int line);
}  // namespace deepshard::internal
