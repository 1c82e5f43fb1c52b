#include "comm/communicator.h"

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

}  // namespace deepshard
