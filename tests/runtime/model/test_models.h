// Random tiny models written once per test binary into a temp directory.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "runtime/model/random_model.h"

namespace deepshard::testing_util {

// Returns the directory of a model made with `opts` (cached per options).
inline std::string TinyModel(const RandomModelOptions& opts) {
  static std::map<std::string, std::string> made;
  const std::string key = opts.preset + "-" + std::to_string(opts.seed) + "-" + DTypeName(opts.dtype) + "-" +
                          std::to_string(opts.shards) + (opts.yarn ? "" : "-noyarn");
  auto it = made.find(key);
  if (it != made.end()) return it->second;
  const std::string dir = ::testing::TempDir() + "/deepshard_models_" + std::to_string(::getpid()) + "/" + key;
  auto st = WriteRandomModel(opts, dir);
  EXPECT_TRUE(st.ok()) << st;
  made[key] = dir;
  return dir;
}

inline std::string TinyModel(const std::string& preset, DType dtype = DType::kF32) {
  RandomModelOptions o;
  o.preset = preset;
  o.dtype = dtype;
  return TinyModel(o);
}

}  // namespace deepshard::testing_util
