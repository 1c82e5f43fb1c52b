#include "kernels/buffer.h"

#include "kernels/backend.h"

namespace deepshard {

const char* MemoryKindName(MemoryKind kind) { return kind == MemoryKind::kHost ? "host" : "device"; }

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    Reset();
    owner_ = o.owner_, data_ = o.data_, bytes_ = o.bytes_, kind_ = o.kind_;
    o.owner_ = nullptr, o.data_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}

void Buffer::Reset() {
  if (owner_ != nullptr && data_ != nullptr) owner_->Free(data_, bytes_);
  owner_ = nullptr, data_ = nullptr, bytes_ = 0;
}

absl::StatusOr<void*> ScratchBuffer::GetBytes(Backend& backend, int64_t bytes, std::string_view what) {
  if (bytes > buf_.bytes()) {
    buf_.Reset();  // give the old block back first: peak memory is the new size only
    auto b = backend.Allocate(bytes, what);
    if (!b.ok()) return b.status();
    buf_ = *std::move(b);
  }
  return buf_.data();
}

}  // namespace deepshard
