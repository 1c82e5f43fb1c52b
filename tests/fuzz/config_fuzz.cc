// libFuzzer: ParseModelConfig on arbitrary config.json text.
#include <cstdint>
#include <string>

#include "runtime/config/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto c = deepshard::ParseModelConfig(text, "fuzz/config.json");
  (void)c;
  return 0;
}
