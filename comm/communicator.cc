#include "comm/communicator.h"

#include "absl/strings/str_cat.h"

namespace deepshard {

int64_t CommDTypeSize(CommDType t) {
  switch (t) {
    case CommDType::kF32: return 4;
    case CommDType::kI32: return 4;
    case CommDType::kI64: return 8;
    case CommDType::kU8: return 1;
  }
  return 0;
}

const char* CommDTypeName(CommDType t) {
  switch (t) {
    case CommDType::kF32: return "f32";
    case CommDType::kI32: return "i32";
    case CommDType::kI64: return "i64";
    case CommDType::kU8: return "u8";
  }
  return "?";
}

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

namespace comm_internal {

absl::Status CheckPerPeerCounts(std::span<const int64_t> v, int size, const char* what,
                                const std::function<std::string(int)>& where) {
  if (static_cast<int64_t>(v.size()) != size) {
    return absl::InvalidArgumentError(absl::StrCat(where(-1), ": ", what, " has ", v.size(),
                                                   " entries, expected one per rank (", size, ")"));
  }
  for (int p = 0; p < size; ++p) {
    if (v[p] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where(p), ": ", what, "[", p, "] is negative (", v[p], ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckAllToAllVArgs(std::span<const int64_t> send_counts, std::span<const int64_t> send_displs,
                                std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                                int size, const std::function<std::string(int)>& where) {
  const std::pair<const char*, std::span<const int64_t>> args[] = {
      {"send_counts", send_counts}, {"send_displs", send_displs}, {"recv_counts", recv_counts},
      {"recv_displs", recv_displs}};
  for (const auto& [what, v] : args) {
    if (auto s = CheckPerPeerCounts(v, size, what, where); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace comm_internal

}  // namespace deepshard
