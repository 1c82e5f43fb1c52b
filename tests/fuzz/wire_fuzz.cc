// libFuzzer: the control plane's decoders. The first byte picks what reads the
// rest: DecodePlan, DecodeResults, DecodeStats (a decoded value must re-encode
// to bytes that decode again to the same encoding), a WireReader driven by the
// input, or (4) a worker's connection as rank 0 reads it: frame headers
// (DecodeFrameHeader, the first under the hello limit), the hello
// (DecodeHello), then each payload by its frame type. A header or hello that
// decodes must re-encode to the bytes read.
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "serve/control_plane.h"
#include "serve/step_plan.h"
#include "serve/wire.h"

using namespace deepshard::serve;

namespace {

void PlanRoundTrip(std::string_view in) {
  auto p = DecodePlan(in);
  if (!p.ok()) return;
  std::string e = EncodePlan(*p);
  auto q = DecodePlan(e);
  if (!q.ok() || EncodePlan(*q) != e) std::abort();
}

void ResultsRoundTrip(std::string_view in) {
  auto r = DecodeResults(in);
  if (!r.ok()) return;
  std::string e = EncodeResults(*r);
  auto q = DecodeResults(e);
  if (!q.ok() || EncodeResults(*q) != e) std::abort();
}

void StatsRoundTrip(std::string_view in) {
  auto s = DecodeStats(in);
  if (!s.ok()) return;
  std::string e = EncodeStats(*s);
  auto q = DecodeStats(e);
  if (!q.ok() || EncodeStats(*q) != e) std::abort();
}

// Frames as ControlServer reads a worker's connection (FrameStream::OnHeader,
// Authenticate, Job's frame handler); stops where the server would drop it.
void Connection(std::string_view in) {
  uint64_t max_payload = kMaxHelloPayload;  // until the hello is accepted
  bool hello_seen = false;
  while (in.size() >= kFrameHeaderSize) {
    std::array<char, kFrameHeaderSize> header;
    std::memcpy(header.data(), in.data(), kFrameHeaderSize);
    in.remove_prefix(kFrameHeaderSize);
    auto h = DecodeFrameHeader(header, max_payload);
    if (!h.ok()) return;
    if (h->length > max_payload) std::abort();
    if (EncodeFrameHeader(h->type, h->length) != std::string_view(header.data(), header.size())) std::abort();
    if (h->length > in.size()) return;  // closed inside the payload
    const std::string_view payload = in.substr(0, h->length);
    in.remove_prefix(h->length);
    if (!hello_seen) {
      if (h->type != FrameType::kHello) return;
      auto hello = DecodeHello(payload);
      if (!hello.ok()) return;
      if (EncodeHello(hello->rank, hello->secret) != payload) std::abort();
      hello_seen = true;
      max_payload = 1 << 20;
      continue;
    }
    switch (h->type) {
      case FrameType::kPlan: PlanRoundTrip(payload); break;  // what a worker reads
      case FrameType::kResults: ResultsRoundTrip(payload); break;
      case FrameType::kHeartbeat:
        if (!payload.empty()) StatsRoundTrip(payload);
        break;
      default: break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t kind = data[0] % 5;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (kind) {
    case 0: PlanRoundTrip(in); break;
    case 1: ResultsRoundTrip(in); break;
    case 2: StatsRoundTrip(in); break;
    case 4: Connection(in); break;
    default: {
      // Ops from the front of the input, read from the rest: never past the end.
      if (in.size() < 8) return 0;
      std::string_view ops = in.substr(0, 8), payload = in.substr(8);
      WireReader r(payload);
      for (char op : ops) {
        switch (static_cast<uint8_t>(op) % 10) {
          case 0: (void)r.U8(); break;
          case 1: (void)r.I32(); break;
          case 2: (void)r.I64(); break;
          case 3: (void)r.U32(); break;
          case 4: (void)r.U64(); break;
          case 5: (void)r.F32(); break;
          case 6: (void)r.F64(); break;
          case 7: (void)r.String(); break;
          case 8: (void)r.I32Vector(); break;
          case 9: (void)r.Bytes(static_cast<uint8_t>(op) >> 4); break;
        }
        if (r.remaining() > payload.size()) std::abort();
      }
      (void)r.Rest();
      (void)r.Finish();
      break;
    }
  }
  return 0;
}
