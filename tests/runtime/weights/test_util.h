// Helpers shared by the safetensors tests: scratch directories, raw files.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace deepshard::testing_util {

// A fresh directory under ::testing::TempDir(), unique per test and process,
// removed when the object goes out of scope.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("deepshard_") + info->test_suite_name() + "_" + info->name() + "_" +
                       std::to_string(::getpid());
    path_ = (std::filesystem::path(::testing::TempDir()) / name).string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& leaf) const { return path_ + "/" + leaf; }

 private:
  std::string path_;
};

inline void WriteBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  ASSERT_TRUE(out) << path;
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out) << path;
}

inline void WriteText(const std::string& path, const std::string& text) {
  WriteBytes(path, std::vector<uint8_t>(text.begin(), text.end()));
}

inline std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A safetensors file from raw header text (used as is, no padding) and data.
inline std::vector<uint8_t> RawSafetensors(const std::string& header, const std::vector<uint8_t>& data,
                                           uint64_t header_len_override = UINT64_MAX) {
  const uint64_t n = header_len_override == UINT64_MAX ? header.size() : header_len_override;
  std::vector<uint8_t> out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Asserts `st` failed and its message contains every piece of `needles`.
inline ::testing::AssertionResult ErrorMentions(const absl::Status& st, std::vector<std::string> needles) {
  if (st.ok()) return ::testing::AssertionFailure() << "expected an error, got OK";
  const std::string msg(st.message());
  for (const auto& n : needles) {
    if (msg.find(n) == std::string::npos) {
      return ::testing::AssertionFailure() << "message \"" << msg << "\" does not mention \"" << n << "\"";
    }
  }
  return ::testing::AssertionSuccess() << msg;
}

}  // namespace deepshard::testing_util
