// Little-endian payload encoding for the control plane (serve/control_plane.h).
//
// A payload is a flat byte string written field by field with WireWriter and
// read back in the same order with WireReader. There is no schema and no
// tagging: both sides agree on the field order, which is versioned by the frame
// type. Strings and vectors carry a u64 count first.
//
// WireReader never reads past the end and never throws: a truncated or lying
// payload (a count larger than the bytes left) gives InvalidArgument naming the
// field being read. The first error is also kept (status()), so a parser can
// read a whole record and check once:
//
//   WireReader r(frame.payload);
//   auto step = r.I64("step");
//   auto ids = r.I32Vector("token ids");
//   RETURN_IF_ERROR(r.Finish());   // first error, or trailing bytes
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deepshard::serve {

class WireWriter {
 public:
  void PutU8(uint8_t v);
  void PutI32(int32_t v);
  void PutI64(int64_t v);
  void PutU32(uint32_t v);
  void PutU64(uint64_t v);
  void PutF32(float v);  // IEEE-754 bits, so NaN payloads and -0 survive
  void PutF64(double v);
  void PutString(std::string_view s);             // u64 length, then the bytes
  void PutI32Vector(const std::vector<int32_t>& v);  // u64 count, then the values
  void PutBytes(std::string_view raw);            // the bytes alone, no length

  size_t size() const { return buf_.size(); }
  const std::string& data() const { return buf_; }
  std::string Take() { return std::move(buf_); }

 private:
  std::string buf_;
};

class WireReader {
 public:
  // `data` must outlive the reader.
  explicit WireReader(std::string_view data) : data_(data) {}

  // Each read names the field in its error ("token ids: need 4 bytes, 2 left").
  // After the first error every later read fails too.
  absl::StatusOr<uint8_t> U8(std::string_view what = "u8");
  absl::StatusOr<int32_t> I32(std::string_view what = "i32");
  absl::StatusOr<int64_t> I64(std::string_view what = "i64");
  absl::StatusOr<uint32_t> U32(std::string_view what = "u32");
  absl::StatusOr<uint64_t> U64(std::string_view what = "u64");
  absl::StatusOr<float> F32(std::string_view what = "f32");
  absl::StatusOr<double> F64(std::string_view what = "f64");
  absl::StatusOr<std::string> String(std::string_view what = "string");
  absl::StatusOr<std::vector<int32_t>> I32Vector(std::string_view what = "i32 vector");
  // Exactly `n` raw bytes, or everything left.
  absl::StatusOr<std::string_view> Bytes(size_t n, std::string_view what = "bytes");
  std::string_view Rest();

  size_t remaining() const { return data_.size() - pos_; }
  bool ok() const { return status_.ok(); }
  const absl::Status& status() const { return status_; }
  // The first error, or InvalidArgument if bytes are left over.
  absl::Status Finish() const;

 private:
  // Checks that `n` more bytes exist; records and returns the error if not.
  absl::Status Need(uint64_t n, std::string_view what);

  std::string_view data_;
  size_t pos_ = 0;
  absl::Status status_;
};

}  // namespace deepshard::serve
