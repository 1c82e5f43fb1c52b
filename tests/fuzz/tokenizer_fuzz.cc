// libFuzzer: Tokenizer::FromJson + Encode + Decode.
// Input: tokenizer.json text, then optionally a NUL byte and the text to encode
// (default: a fixed sample). The encoded ids and the input bytes read as int32 ids
// are decoded; ids outside the vocabulary must be skipped, never crash.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string_view json = in, text = "Hello world! 123 <|x|> \xe4\xbd\xa0\xe5\xa5\xbd \xff";
  if (size_t nul = in.find('\0'); nul != std::string_view::npos) {
    json = in.substr(0, nul);
    text = in.substr(nul + 1);
  }
  auto tok = deepshard::Tokenizer::FromJson(json, "");
  if (!tok.ok()) return 0;
  for (bool special : {false, true}) {
    std::vector<int32_t> ids = (*tok)->Encode(text, special);
    for (int32_t id : ids) {
      if (id < 0 || id >= (*tok)->vocab_size()) {
        std::fprintf(stderr, "id %d outside [0, %lld)\n", id, static_cast<long long>((*tok)->vocab_size()));
        std::abort();
      }
    }
    (void)(*tok)->Decode(ids, special);
  }
  std::vector<int32_t> raw(text.size() / 4);
  if (!raw.empty()) std::memcpy(raw.data(), text.data(), raw.size() * 4);
  (void)(*tok)->Decode(raw, false);
  return 0;
}
