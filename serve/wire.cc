// Field encoding for control-plane payloads. Bytes are assembled with shifts,
// so the wire format is little-endian whatever the host's byte order.
#include "serve/wire.h"

#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace deepshard::serve {
namespace {

// Debian's Abseil keeps its own string_view type, which StrCat wants.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

template <typename U>
void AppendLe(std::string& out, U v) {
  for (size_t i = 0; i < sizeof(U); ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

template <typename U>
U LoadLe(const char* p) {
  U v = 0;
  for (size_t i = 0; i < sizeof(U); ++i) v |= static_cast<U>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

}  // namespace

void WireWriter::PutU8(uint8_t v) { buf_.push_back(static_cast<char>(v)); }
void WireWriter::PutI32(int32_t v) { AppendLe(buf_, static_cast<uint32_t>(v)); }
void WireWriter::PutI64(int64_t v) { AppendLe(buf_, static_cast<uint64_t>(v)); }
void WireWriter::PutU32(uint32_t v) { AppendLe(buf_, v); }
void WireWriter::PutU64(uint64_t v) { AppendLe(buf_, v); }
void WireWriter::PutF32(float v) { AppendLe(buf_, std::bit_cast<uint32_t>(v)); }
void WireWriter::PutF64(double v) { AppendLe(buf_, std::bit_cast<uint64_t>(v)); }
void WireWriter::PutBytes(std::string_view raw) { buf_.append(raw); }

void WireWriter::PutString(std::string_view s) {
  PutU64(s.size());
  buf_.append(s);
}

void WireWriter::PutI32Vector(const std::vector<int32_t>& v) {
  PutU64(v.size());
  buf_.reserve(buf_.size() + 4 * v.size());
  for (int32_t x : v) PutI32(x);
}

absl::Status WireReader::Need(uint64_t n, std::string_view what) {
  if (!status_.ok()) return status_;
  if (n > remaining()) {
    status_ = absl::InvalidArgumentError(absl::StrCat("payload truncated reading ", Av(what), ": need ", n,
                                                 " bytes at offset ", pos_, ", ", remaining(), " left"));
  }
  return status_;
}

absl::StatusOr<uint8_t> WireReader::U8(std::string_view what) {
  if (absl::Status s = Need(1, what); !s.ok()) return s;
  return static_cast<uint8_t>(data_[pos_++]);
}

absl::StatusOr<uint32_t> WireReader::U32(std::string_view what) {
  if (absl::Status s = Need(4, what); !s.ok()) return s;
  uint32_t v = LoadLe<uint32_t>(data_.data() + pos_);
  pos_ += 4;
  return v;
}

absl::StatusOr<uint64_t> WireReader::U64(std::string_view what) {
  if (absl::Status s = Need(8, what); !s.ok()) return s;
  uint64_t v = LoadLe<uint64_t>(data_.data() + pos_);
  pos_ += 8;
  return v;
}

absl::StatusOr<int32_t> WireReader::I32(std::string_view what) {
  absl::StatusOr<uint32_t> v = U32(what);
  if (!v.ok()) return v.status();
  return static_cast<int32_t>(*v);
}

absl::StatusOr<int64_t> WireReader::I64(std::string_view what) {
  absl::StatusOr<uint64_t> v = U64(what);
  if (!v.ok()) return v.status();
  return static_cast<int64_t>(*v);
}

absl::StatusOr<float> WireReader::F32(std::string_view what) {
  absl::StatusOr<uint32_t> v = U32(what);
  if (!v.ok()) return v.status();
  return std::bit_cast<float>(*v);
}

absl::StatusOr<double> WireReader::F64(std::string_view what) {
  absl::StatusOr<uint64_t> v = U64(what);
  if (!v.ok()) return v.status();
  return std::bit_cast<double>(*v);
}

absl::StatusOr<std::string> WireReader::String(std::string_view what) {
  absl::StatusOr<uint64_t> n = U64(absl::StrCat(Av(what), " length"));
  if (!n.ok()) return n.status();
  // NOTES: the length is checked against the bytes left before anything is
  // allocated, so a lying length cannot make us reserve gigabytes.
  if (absl::Status s = Need(*n, what); !s.ok()) return s;
  std::string out(data_.substr(pos_, *n));
  pos_ += *n;
  return out;
}

absl::StatusOr<std::vector<int32_t>> WireReader::I32Vector(std::string_view what) {
  absl::StatusOr<uint64_t> n = U64(absl::StrCat(Av(what), " count"));
  if (!n.ok()) return n.status();
  if (status_.ok() && *n > remaining() / 4) {
    status_ = absl::InvalidArgumentError(absl::StrCat("payload truncated reading ", Av(what), ": count ", *n,
                                                 " needs ", *n, " x 4 bytes at offset ", pos_, ", ",
                                                 remaining(), " left"));
    return status_;
  }
  std::vector<int32_t> out(*n);
  for (uint64_t i = 0; i < *n; ++i) {
    out[i] = static_cast<int32_t>(LoadLe<uint32_t>(data_.data() + pos_));
    pos_ += 4;
  }
  return out;
}

absl::StatusOr<std::string_view> WireReader::Bytes(size_t n, std::string_view what) {
  if (absl::Status s = Need(n, what); !s.ok()) return s;
  std::string_view out = data_.substr(pos_, n);
  pos_ += n;
  return out;
}

std::string_view WireReader::Rest() {
  if (!status_.ok()) return {};
  std::string_view out = data_.substr(pos_);
  pos_ = data_.size();
  return out;
}

absl::Status WireReader::Finish() const {
  if (!status_.ok()) return status_;
  if (remaining() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload has ", remaining(), " unexpected trailing bytes at offset ", pos_));
  }
  return absl::OkStatus();
}

}  // namespace deepshard::serve
