// libFuzzer: SafetensorsFile::FromBuffer on arbitrary bytes (header length, JSON
// header, data section). An accepted file must have every tensor inside the buffer
// with a byte size matching its shape and dtype.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "kernels/dtype.h"
#include "runtime/weights/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A heap copy of exactly `size` bytes: ASan sees any read past the end.
  std::unique_ptr<uint8_t[]> buf(new uint8_t[size > 0 ? size : 1]);
  if (size > 0) std::memcpy(buf.get(), data, size);
  auto f = deepshard::SafetensorsFile::FromBuffer(buf.get(), size, "fuzz.safetensors");
  if (!f.ok()) return 0;
  for (const std::string& name : (*f)->TensorNames()) {
    const deepshard::TensorInfo* t = (*f)->Find(name);
    if (t == nullptr || t->begin > t->end || t->end > size) std::abort();
    const int64_t n = t->numel();
    if (n < 0) std::abort();
    if (static_cast<uint64_t>(n) * deepshard::DTypeSize(t->dtype) != t->end - t->begin) std::abort();
    volatile uint8_t sink = 0;
    if (t->end > t->begin) sink = (*f)->Data(*t)[t->end - t->begin - 1];
    (void)sink;
  }
  return 0;
}
