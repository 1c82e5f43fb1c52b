// libFuzzer: ParseCompletionRequest and ParseChatRequest on arbitrary bodies.
#include <cstdint>
#include <string_view>

#include "serve/openai_api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  auto c = deepshard::serve::ParseCompletionRequest(body, "tiny");
  auto h = deepshard::serve::ParseChatRequest(body, "tiny");
  (void)c;
  (void)h;
  return 0;
}
