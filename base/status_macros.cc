#include "base/status_macros.h"

#include <cstdio>
#include <cstdlib>

namespace deepshard::internal {

void CheckFailed(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "deepshard: internal check failed: %s at %s:%d\n", cond, file, line);
  std::abort();
}

}  // namespace deepshard::internal
