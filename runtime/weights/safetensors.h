// Safetensors checkpoints: one file, or shards listed in model.safetensors.index.json.
//
// Files are memory-mapped and validated when opened: header length, JSON,
// dtypes, shapes, offsets inside the file, and no overlapping or missing bytes
// between tensors. Nothing is copied: tensors are views into the mapping, so a
// rank touches only the pages of the tensors it asks for. Every error names
// the file and, where there is one, the tensor.
//
// Alignment: the format lets the header have any length, so a tensor's bytes
// need not be aligned for its element type. Checkpoint::Get never hands out a
// misaligned pointer: such a tensor is copied once into a 64-byte aligned
// buffer the Checkpoint owns (bytes_copied() counts them). Files written with
// the usual 8-byte header padding are never copied.
//
// A mapped file that shrinks later (overwritten or truncated in place while a
// job runs, or storage that fails) makes any read of the lost pages raise
// SIGBUS. Weights stay mapped for the whole job (copying them out would double
// the memory of a model bigger than RAM's page cache can hold twice), so Open
// installs, once per process, a SIGBUS handler: a fault inside a mapped
// checkpoint file logs the file, the tensor and the byte offset, and exits
// with kMappedFileFaultExitCode; any other SIGBUS goes to the previous handler
// (by default: the usual core dump). The size check at open (tensors must tile
// the data section exactly) catches files that are already short.
//
//   ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open("/models/tiny-v3"));
//   ASSIGN_OR_RETURN(TensorRef t, ckpt->Get("model.norm.weight", {hidden}));
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "kernels/tensor.h"

namespace deepshard {

// The exit code after a SIGBUS inside a mapped checkpoint file.
inline constexpr int kMappedFileFaultExitCode = 1;

struct TensorInfo {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
  int64_t numel() const;
};

std::string ShapeString(const std::vector<int64_t>& shape);

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  // Maps and validates `path`.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Validates a header and data section held in memory (used by Open and the fuzz test).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBuffer(const uint8_t* bytes,
                                                                     uint64_t size,
                                                                     const std::string& name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const TensorInfo* Find(const std::string& name) const;
  std::vector<std::string> TensorNames() const;
  const uint8_t* Data(const TensorInfo& t) const { return data_ + t.begin; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  struct FaultRecord;  // internal: what the SIGBUS handler needs to name a tensor

 private:
  SafetensorsFile() = default;
  std::unique_ptr<FaultRecord> fault_record_;
  int fault_slot_ = -1;
  std::string path_;
  void* map_ = nullptr;
  uint64_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
  absl::flat_hash_map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor found by its Hugging Face name.
struct TensorRef {
  std::string name;
  std::string file;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  uint64_t bytes = 0;
};

// A model directory's weights: model.safetensors, or the shards of
// model.safetensors.index.json (opened lazily, only when one of their tensors
// is requested).
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  bool Has(const std::string& name) const;
  // Returns a tensor; `expected_shape` (if non-empty) must match exactly.
  absl::StatusOr<TensorRef> Get(const std::string& name, const std::vector<int64_t>& expected_shape = {});
  // A 2-D weight [rows, cols] as a view. F8_E4M3 weights need the companion
  // `<name>_scale_inv` (F32 [ceil(rows/block), ceil(cols/block)]).
  absl::StatusOr<WeightView> GetWeight(const std::string& name, int64_t rows, int64_t cols,
                                       int64_t fp8_block = 128);
  // A 1-D vector of length n (norm weights, biases).
  absl::StatusOr<VectorView> GetVector(const std::string& name, int64_t n);

  // Touches every page of every tensor handed out so far, so that the first
  // forward steps do not pay page faults (and a rank fails at load, not mid-run,
  // if its memory is short). Tensors never requested are never touched.
  void Prefault() const;
  // Fails naming the first tensor handed out so far (file and name) that
  // holds a NaN or an infinity. One pass over the bytes (parallel, vectorised
  // bit tests), which also faults every page in as Prefault does.
  absl::Status CheckFinite() const;

  // Byte accounting: bytes of tensor data handed out by Get (each tensor once).
  uint64_t bytes_requested() const { return bytes_requested_; }
  // Of them, bytes copied because the mapping was misaligned for the dtype.
  uint64_t bytes_copied() const { return bytes_copied_; }
  std::vector<std::string> TensorNames() const;
  const std::string& dir() const { return dir_; }

 private:
  absl::StatusOr<SafetensorsFile*> FileFor(const std::string& name);
  std::string dir_;
  std::string index_path_;                                  // empty for a single file
  std::map<std::string, std::string> weight_map_;           // tensor -> file name
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;  // file name -> opened file
  std::map<std::string, bool> counted_;
  struct Requested {
    const uint8_t* data;
    uint64_t bytes;
    DType dtype;
    std::string name, file;
  };
  std::vector<Requested> requested_;  // data ranges handed out
  uint64_t bytes_requested_ = 0;
  struct FreeDeleter {
    void operator()(uint8_t* p) const;
  };
  // Aligned copies of tensors whose bytes in the mapping are misaligned.
  std::map<std::string, std::unique_ptr<uint8_t, FreeDeleter>> aligned_copies_;
  uint64_t bytes_copied_ = 0;
};

// A cheap fingerprint of a model directory as a rank sees it: config.json's
// bytes, and each *.safetensors file's name, size and header (which fixes every
// tensor's name, dtype, shape and offsets). Ranks compare it at start-up.
absl::StatusOr<uint64_t> ModelFilesFingerprint(const std::string& dir);

}  // namespace deepshard
