// The real DeepSeek-V3 tokenizer (tests/data/tokenizers/deepseek-v3), loaded
// once per test process.
#pragma once

#include <string>

#include "gtest/gtest.h"
#include "text/tokenizer/tokenizer.h"

namespace deepshard::testing_util {

inline const Tokenizer& DeepseekV3Tokenizer() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::FromDirectory(std::string(DS_SOURCE_DIR) + "/tests/data/tokenizers/deepseek-v3");
    EXPECT_TRUE(t.ok()) << t.status();
    return t->release();
  }();
  return *tok;
}

}  // namespace deepshard::testing_util
