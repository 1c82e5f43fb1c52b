// Shared helpers for the tokenizer tests: fixture loading and a per-process cache of
// loaded tokenizers (the DeepSeek one takes a moment to load).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include "text/tokenizer/tokenizer.h"

namespace deepshard::testing {

inline std::string TokenizerDataDir() { return std::string(DS_SOURCE_DIR) + "/tests/data/tokenizers"; }

// The tokenizers that have fixtures (tests/data/tokenizers/<name>/fixtures.json).
inline const std::vector<std::string>& FixtureTokenizers() {
  static const std::vector<std::string> names = {"deepseek-v3", "synth-bytelevel", "synth-sentencepiece",
                                                 "synth-splits"};
  return names;
}

inline std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline boost::json::value ParseJsonFile(const std::string& path) {
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(ReadFileOrDie(path), ec);
  EXPECT_FALSE(ec) << path << ": " << ec.message();
  return v;
}

inline const Tokenizer& LoadedTokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    auto tok = Tokenizer::FromDirectory(TokenizerDataDir() + "/" + name);
    if (!tok.ok()) {
      ADD_FAILURE() << tok.status();
      std::abort();
    }
    it = cache.emplace(name, std::move(*tok)).first;
  }
  return *it->second;
}

// One corpus entry as the bytes given to Encode.
inline std::string CorpusInput(const boost::json::object& entry) {
  if (const auto* text = entry.if_contains("text")) return std::string(text->as_string());
  std::string hex(entry.at("hex").as_string());
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

inline std::vector<std::string> CorpusInputs() {
  static const std::vector<std::string> inputs = [] {
    std::vector<std::string> out;
    boost::json::value corpus = ParseJsonFile(TokenizerDataDir() + "/corpus.json");
    for (const auto& e : corpus.as_array()) out.push_back(CorpusInput(e.as_object()));
    return out;
  }();
  return inputs;
}

inline std::vector<int32_t> IdsOf(const boost::json::value& v) {
  std::vector<int32_t> ids;
  for (const auto& x : v.as_array()) ids.push_back(static_cast<int32_t>(x.as_int64()));
  return ids;
}

inline std::string Printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

inline std::string IdsString(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
  return out + "]";
}

}  // namespace deepshard::testing
