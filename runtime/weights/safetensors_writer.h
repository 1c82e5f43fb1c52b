// Writes .safetensors files (and a sharded index) in the exact Hugging Face format.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/dtype.h"

namespace deepshard {

// One tensor to write: raw little-endian bytes in `dtype`.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Serialises tensors (in the order given) into safetensors bytes: an 8-byte
// header length, a JSON header padded with spaces to a multiple of 8, then data.
std::vector<uint8_t> SerializeSafetensors(const std::vector<const TensorToWrite*>& tensors,
                                          const std::map<std::string, std::string>& metadata);

// Writes `tensors` into `dir`: one model.safetensors when num_shards <= 1,
// else model-0000i-of-0000N.safetensors plus model.safetensors.index.json,
// splitting by size and keeping the given order.
absl::Status WriteCheckpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                             int num_shards, const std::map<std::string, std::string>& metadata);

}  // namespace deepshard
