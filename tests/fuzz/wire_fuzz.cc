// libFuzzer: the control-plane payload decoders. The first byte picks the decoder
// (DecodePlan, DecodeResults, DecodeStats, or a WireReader driven by the input);
// a decoded value must re-encode to bytes that decode again to the same encoding.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "serve/step_plan.h"
#include "serve/wire.h"

using namespace deepshard::serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t kind = data[0] % 4;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (kind) {
    case 0: {
      auto p = DecodePlan(in);
      if (!p.ok()) return 0;
      std::string e = EncodePlan(*p);
      auto q = DecodePlan(e);
      if (!q.ok() || EncodePlan(*q) != e) std::abort();
      break;
    }
    case 1: {
      auto r = DecodeResults(in);
      if (!r.ok()) return 0;
      std::string e = EncodeResults(*r);
      auto q = DecodeResults(e);
      if (!q.ok() || EncodeResults(*q) != e) std::abort();
      break;
    }
    case 2: {
      auto s = DecodeStats(in);
      if (!s.ok()) return 0;
      std::string e = EncodeStats(*s);
      auto q = DecodeStats(e);
      if (!q.ok() || EncodeStats(*q) != e) std::abort();
      break;
    }
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
