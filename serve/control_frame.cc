// The control-plane frame codec (control_plane.h): headers, the hello payload,
// frame type names. No sockets, so the fuzz targets link it alone.
#include <array>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "serve/control_plane.h"
#include "serve/wire.h"

namespace deepshard::serve {

namespace {

// Debian's Abseil keeps its own string_view type, which StrCat wants.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsKnownFrameType(uint32_t t) { return t >= 1 && t <= 8; }

}  // namespace

std::string_view FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kHello: return "hello";
    case FrameType::kWelcome: return "welcome";
    case FrameType::kPlan: return "plan";
    case FrameType::kResults: return "results";
    case FrameType::kHeartbeat: return "heartbeat";
    case FrameType::kShutdown: return "shutdown";
    case FrameType::kFatal: return "fatal";
    case FrameType::kDrain: return "drain";
  }
  return "unknown";
}

std::string EncodeFrameHeader(FrameType type, uint64_t length) {
  WireWriter w;
  w.PutU32(kFrameMagic);
  w.PutU32(static_cast<uint32_t>(type));
  w.PutU64(length);
  return w.Take();
}

absl::StatusOr<FrameHeader> DecodeFrameHeader(const std::array<char, kFrameHeaderSize>& bytes,
                                              uint64_t max_payload) {
  WireReader r(std::string_view(bytes.data(), bytes.size()));
  const uint32_t magic = *r.U32("magic");
  const uint32_t type = *r.U32("type");
  const uint64_t length = *r.U64("length");
  if (magic != kFrameMagic) return absl::InvalidArgumentError(absl::StrFormat("bad frame magic 0x%08x", magic));
  if (!IsKnownFrameType(type)) return absl::InvalidArgumentError(absl::StrCat("unknown frame type ", type));
  if (length > max_payload) {
    return absl::InvalidArgumentError(absl::StrCat(Av(FrameTypeName(static_cast<FrameType>(type))), " payload of ",
                                                   length, " bytes exceeds the limit of ", max_payload));
  }
  return FrameHeader{static_cast<FrameType>(type), length};
}

std::string EncodeFrame(FrameType type, std::string_view payload) {
  std::string out = EncodeFrameHeader(type, payload.size());
  out.append(payload);
  return out;
}

std::string EncodeHello(int rank, std::string_view secret) {
  WireWriter w;
  w.PutI32(rank);
  w.PutBytes(secret);
  return w.Take();
}

absl::StatusOr<Hello> DecodeHello(std::string_view payload) {
  WireReader reader(payload);
  absl::StatusOr<int32_t> rank = reader.I32("hello rank");
  if (!rank.ok()) return absl::InvalidArgumentError(absl::StrCat("malformed hello: ", rank.status().message()));
  return Hello{*rank, reader.Rest()};
}

}  // namespace deepshard::serve
