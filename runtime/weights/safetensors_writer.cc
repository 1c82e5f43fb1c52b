#include "runtime/weights/safetensors_writer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "boost/json.hpp"

namespace deepshard {
namespace json = boost::json;

std::vector<uint8_t> SerializeSafetensors(const std::vector<const TensorToWrite*>& tensors,
                                          const std::map<std::string, std::string>& metadata) {
  json::object header;
  if (!metadata.empty()) {
    json::object m;
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (const TensorToWrite* t : tensors) {
    json::object e;
    e["dtype"] = std::string(DTypeName(t->dtype));
    json::array shape;
    for (int64_t d : t->shape) shape.push_back(d);
    e["shape"] = std::move(shape);
    e["data_offsets"] = json::array{offset, offset + t->bytes.size()};
    offset += t->bytes.size();
    header[t->name] = std::move(e);
  }
  std::string h = json::serialize(header);
  while (h.size() % 8 != 0) h.push_back(' ');
  std::vector<uint8_t> out;
  out.reserve(8 + h.size() + offset);
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
  out.insert(out.end(), h.begin(), h.end());
  for (const TensorToWrite* t : tensors) out.insert(out.end(), t->bytes.begin(), t->bytes.end());
  return out;
}

namespace {
absl::Status WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}
}  // namespace

absl::Status WriteCheckpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                             int num_shards, const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create directory: ", ec.message()));
  if (num_shards <= 1) {
    std::vector<const TensorToWrite*> all;
    for (const auto& t : tensors) all.push_back(&t);
    return WriteFile(dir + "/model.safetensors", SerializeSafetensors(all, metadata));
  }
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.bytes.size();
  const uint64_t target = (total + num_shards - 1) / num_shards;
  std::vector<std::vector<const TensorToWrite*>> shards(num_shards);
  uint64_t acc = 0;
  for (const auto& t : tensors) {
    int s = static_cast<int>(std::min<uint64_t>(acc / std::max<uint64_t>(target, 1), num_shards - 1));
    shards[s].push_back(&t);
    acc += t.bytes.size();
  }
  json::object weight_map;
  for (int s = 0; s < num_shards; ++s) {
    const std::string fname = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, num_shards);
    for (const TensorToWrite* t : shards[s]) weight_map[t->name] = fname;
    auto st = WriteFile(dir + "/" + fname, SerializeSafetensors(shards[s], metadata));
    if (!st.ok()) return st;
  }
  json::object index;
  index["metadata"] = json::object{{"total_size", total}};
  index["weight_map"] = std::move(weight_map);
  const std::string text = json::serialize(index);
  return WriteFile(dir + "/model.safetensors.index.json", std::vector<uint8_t>(text.begin(), text.end()));
}

}  // namespace deepshard
