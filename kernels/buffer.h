// Memory that belongs to a backend.
//
// Every activation, cache and table the model touches lives in a Buffer that
// its Backend allocated, so the same model code runs whether that memory is
// host RAM (the CPU backend) or device memory (a GPU backend). A Buffer knows
// which memory it lives in and gives itself back to its backend when dropped.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace deepshard {

class Backend;

enum class MemoryKind { kHost, kDevice };
const char* MemoryKindName(MemoryKind kind);  // "host", "device"

class Buffer {
 public:
  Buffer() = default;
  // Made by Backend::Allocate implementations.
  Buffer(Backend* owner, void* data, int64_t bytes, MemoryKind kind)
      : owner_(owner), data_(data), bytes_(bytes), kind_(kind) {}
  Buffer(Buffer&& o) noexcept { *this = static_cast<Buffer&&>(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Reset(); }

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  int64_t bytes() const { return bytes_; }
  MemoryKind kind() const { return kind_; }
  bool empty() const { return data_ == nullptr; }
  void Reset();  // gives the memory back

 private:
  Backend* owner_ = nullptr;
  void* data_ = nullptr;
  int64_t bytes_ = 0;
  MemoryKind kind_ = MemoryKind::kHost;
};

// Grow-only scratch in backend memory: reallocated (contents not kept) only
// when a request exceeds every earlier one, so a loop over fixed shapes (the
// decode step) allocates nothing once warmed up.
class ScratchBuffer {
 public:
  template <typename T>
  absl::StatusOr<T*> Get(Backend& backend, int64_t n, std::string_view what) {
    auto p = GetBytes(backend, n * static_cast<int64_t>(sizeof(T)), what);
    if (!p.ok()) return p.status();
    return static_cast<T*>(*p);
  }
  int64_t capacity_bytes() const { return buf_.bytes(); }

 private:
  absl::StatusOr<void*> GetBytes(Backend& backend, int64_t bytes, std::string_view what);
  Buffer buf_;
};

}  // namespace deepshard
