// Tests for runtime/weights: the safetensors writer and reader, Checkpoint
// (single file and sharded index), GetWeight / GetVector, byte accounting,
// and one test per malformed-input error, asserting that the message names
// the file and the tensor.
#include "runtime/weights/safetensors.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/gemv.h"
#include "kernels/dtype.h"
#include "runtime/weights/safetensors_writer.h"
#include "tests/runtime/weights/test_util.h"

namespace deepshard {
namespace {

using testing_util::ErrorMentions;
using testing_util::RawSafetensors;
using testing_util::ReadBytes;
using testing_util::ScratchDir;
using testing_util::WriteBytes;
using testing_util::WriteText;

TensorToWrite RandomTensor(const std::string& name, DType dt, std::vector<int64_t> shape, uint32_t seed) {
  TensorToWrite t;
  t.name = name;
  t.dtype = dt;
  t.shape = std::move(shape);
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  t.bytes.resize(n * DTypeSize(dt));
  std::mt19937 rng(seed);
  for (auto& b : t.bytes) b = static_cast<uint8_t>(rng());
  return t;
}

TensorToWrite F32Tensor(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
  TensorToWrite t;
  t.name = name;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  t.bytes.resize(v.size() * 4);
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

// One tensor of every dtype, including a scalar and an empty tensor, plus an
// FP8 weight with its block scales.
std::vector<TensorToWrite> AllDTypeTensors() {
  std::vector<TensorToWrite> ts;
  ts.push_back(RandomTensor("model.embed_tokens.weight", DType::kBF16, {16, 8}, 1));
  ts.push_back(RandomTensor("model.norm.weight", DType::kF32, {8}, 2));
  ts.push_back(RandomTensor("model.layers.0.mlp.gate_proj.weight", DType::kF8E4M3, {130, 200}, 3));
  std::vector<float> scales(2 * 2);
  for (int i = 0; i < 4; ++i) scales[i] = 0.5f + i;
  ts.push_back(F32Tensor("model.layers.0.mlp.gate_proj.weight_scale_inv", {2, 2}, scales));
  ts.push_back(RandomTensor("half", DType::kF16, {3, 5}, 4));
  ts.push_back(RandomTensor("ids", DType::kI64, {7}, 5));
  ts.push_back(RandomTensor("ids32", DType::kI32, {2, 3}, 6));
  ts.push_back(RandomTensor("bytes", DType::kU8, {11}, 7));
  ts.push_back(RandomTensor("mask", DType::kBool, {5}, 8));
  ts.push_back(RandomTensor("doubles", DType::kF64, {3}, 9));
  ts.push_back(RandomTensor("scalar", DType::kF32, {}, 10));
  ts.push_back(RandomTensor("empty", DType::kBF16, {0, 4}, 11));
  return ts;
}

void ExpectSameTensors(Checkpoint& ck, const std::vector<TensorToWrite>& ts) {
  std::vector<std::string> want_names;
  for (const auto& t : ts) want_names.push_back(t.name);
  std::sort(want_names.begin(), want_names.end());
  EXPECT_EQ(ck.TensorNames(), want_names);
  for (const auto& t : ts) {
    SCOPED_TRACE(t.name);
    EXPECT_TRUE(ck.Has(t.name));
    auto ref = ck.Get(t.name, t.shape.empty() ? std::vector<int64_t>{} : t.shape);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(ref->name, t.name);
    EXPECT_EQ(ref->dtype, t.dtype);
    EXPECT_EQ(ref->shape, t.shape);
    ASSERT_EQ(ref->bytes, t.bytes.size());
    if (!t.bytes.empty()) {
      EXPECT_EQ(std::memcmp(ref->data, t.bytes.data(), t.bytes.size()), 0);
    }
  }
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

TEST(SafetensorsRoundTrip, SingleFileAllDTypes) {
  ScratchDir dir;
  const auto ts = AllDTypeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir.path(), ts, 1, {{"format", "pt"}}).ok());
  ASSERT_TRUE(std::filesystem::exists(dir / "model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors.index.json"));

  // The header is padded to a multiple of 8 so the data section is aligned.
  const auto raw = ReadBytes(dir / "model.safetensors");
  uint64_t hl = 0;
  for (int i = 7; i >= 0; --i) hl = (hl << 8) | raw[i];
  EXPECT_EQ(hl % 8, 0u);

  auto file = SafetensorsFile::Open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->TensorNames().size(), ts.size());
  EXPECT_EQ((*file)->path(), dir / "model.safetensors");
  // Tensors sit in the order given, back to back.
  uint64_t expect_begin = 0;
  for (const auto& t : ts) {
    const TensorInfo* info = (*file)->Find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->begin, expect_begin) << t.name;
    EXPECT_EQ(info->end - info->begin, t.bytes.size()) << t.name;
    EXPECT_EQ(static_cast<uint64_t>(info->numel() * DTypeSize(t.dtype)), t.bytes.size()) << t.name;
    expect_begin = info->end;
  }
  EXPECT_EQ((*file)->Find("not.there"), nullptr);

  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->dir(), dir.path());
  ExpectSameTensors(**ck, ts);
  auto ref = (*ck)->Get("half");
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(ref->file, dir / "model.safetensors");
}

TEST(SafetensorsRoundTrip, NoMetadataAndNoTensors) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), {}, 1, {}).ok());
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE((*ck)->TensorNames().empty());
  EXPECT_EQ((*ck)->bytes_requested(), 0u);
}

TEST(SafetensorsRoundTrip, ShardedAllDTypes) {
  for (int shards : {2, 3, 5, 20}) {
    SCOPED_TRACE("shards " + std::to_string(shards));
    ScratchDir dir;
    const auto ts = AllDTypeTensors();
    ASSERT_TRUE(WriteCheckpoint(dir.path(), ts, shards, {{"format", "pt"}}).ok());
    EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors"));
    ASSERT_TRUE(std::filesystem::exists(dir / "model.safetensors.index.json"));
    char last[64];
    std::snprintf(last, sizeof(last), "model-%05d-of-%05d.safetensors", shards, shards);
    EXPECT_TRUE(std::filesystem::exists(dir / last));

    auto ck = Checkpoint::Open(dir.path());
    ASSERT_TRUE(ck.ok()) << ck.status();
    ExpectSameTensors(**ck, ts);
    // Every tensor comes from a shard named in the Hugging Face pattern.
    std::set<std::string> files;
    for (const auto& t : ts) {
      auto ref = (*ck)->Get(t.name);
      ASSERT_TRUE(ref.ok());
      const std::string leaf = std::filesystem::path(ref->file).filename().string();
      EXPECT_EQ(leaf.rfind("model-", 0), 0u) << leaf;
      files.insert(leaf);
    }
    EXPECT_GT(files.size(), 1u);
    // Each shard is a valid file by itself.
    for (int s = 1; s <= shards; ++s) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s, shards);
      auto f = SafetensorsFile::Open(dir / name);
      EXPECT_TRUE(f.ok()) << f.status();
    }
  }
}

TEST(SafetensorsRoundTrip, SerializeIsWhatOpenReads) {
  const auto ts = AllDTypeTensors();
  std::vector<const TensorToWrite*> ptrs;
  for (const auto& t : ts) ptrs.push_back(&t);
  const auto bytes = SerializeSafetensors(ptrs, {{"k", "v"}});
  auto f = SafetensorsFile::FromBuffer(bytes.data(), bytes.size(), "in-memory");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->path(), "in-memory");
  EXPECT_EQ((*f)->metadata().at("k"), "v");
  for (const auto& t : ts) {
    const TensorInfo* info = (*f)->Find(t.name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->shape, t.shape);
    if (!t.bytes.empty()) {
      EXPECT_EQ(std::memcmp((*f)->Data(*info), t.bytes.data(), t.bytes.size()), 0);
    }
  }
}

// ---------------------------------------------------------------------------
// GetWeight / GetVector
// ---------------------------------------------------------------------------

TEST(CheckpointGetWeight, Fp8WithBlockScales) {
  ScratchDir dir;
  const auto ts = AllDTypeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir.path(), ts, 3, {}).ok());
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  const std::string name = "model.layers.0.mlp.gate_proj.weight";
  auto w = (*ck)->GetWeight(name, 130, 200);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->dtype, DType::kF8E4M3);
  EXPECT_EQ(w->rows, 130);
  EXPECT_EQ(w->cols, 200);
  EXPECT_EQ(w->row0, 0);
  EXPECT_EQ(w->block, 128);
  ASSERT_NE(w->scale_inv, nullptr);
  EXPECT_EQ(w->scale_inv[3], 3.5f);
  // Dequantised values are fp8 * the scale of the element's block.
  const TensorToWrite& src = ts[2];
  std::vector<float> row(200);
  for (int64_t r : {0, 127, 128, 129}) {
    cpu::WidenRowsF32(*w, r, 1, row.data());
    for (int64_t c = 0; c < 200; ++c) {
      const uint8_t b = src.bytes[r * 200 + c];
      if ((b & 0x7f) == 0x7f) continue;  // NaN code
      ASSERT_EQ(row[c], F8E4M3ToF32(b) * (0.5f + (r / 128) * 2 + c / 128)) << r << "," << c;
    }
  }
  // A different block edge changes the expected scale shape.
  auto w64 = (*ck)->GetWeight(name, 130, 200, 64);
  EXPECT_TRUE(ErrorMentions(w64.status(), {name + "_scale_inv", "[2, 2]", "expected [3, 4]"}));
}

// The header length is free in the format: with an odd one the data section,
// and so every tensor, starts at an odd address in the mapping. Get must hand
// out pointers aligned for the dtype (a misaligned float* is UB: UBSan's
// "misaligned load"), with the same values, and copy nothing for an aligned file.
TEST(CheckpointAlignment, OddHeaderLengthGivesAlignedPointersAndSameValues) {
  ScratchDir dir;
  std::vector<float> f(37), scales = {0.5f, 1.5f, 2.5f, 3.5f};
  for (size_t i = 0; i < f.size(); ++i) f[i] = 0.25f * static_cast<float>(i) - 3.0f;
  std::vector<uint16_t> h(10);
  for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<uint16_t>(0x3f80 + i);  // bf16 1.0, 1.0078, ...
  std::vector<uint8_t> fp8(130 * 200);
  for (size_t i = 0; i < fp8.size(); ++i) fp8[i] = static_cast<uint8_t>((i * 7) % 0x70);
  std::vector<uint8_t> data;
  auto add = [&data](const void* p, size_t n) {
    const size_t at = data.size();
    data.insert(data.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    return std::pair<size_t, size_t>(at, data.size());
  };
  // A one-byte tensor first shifts every later one off its natural alignment too.
  const uint8_t one = 9;
  auto [b0, e0] = add(&one, 1);
  auto [b1, e1] = add(f.data(), f.size() * 4);
  auto [b2, e2] = add(h.data(), h.size() * 2);
  auto [b3, e3] = add(fp8.data(), fp8.size());
  auto [b4, e4] = add(scales.data(), scales.size() * 4);
  std::string header = absl::StrCat(
      "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[", b0, ",", e0, "]},",
      "\"f\":{\"dtype\":\"F32\",\"shape\":[37],\"data_offsets\":[", b1, ",", e1, "]},",
      "\"h\":{\"dtype\":\"BF16\",\"shape\":[2,5],\"data_offsets\":[", b2, ",", e2, "]},",
      "\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[130,200],\"data_offsets\":[", b3, ",", e3, "]},",
      "\"w_scale_inv\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[", b4, ",", e4, "]}}");
  for (int pad : {0, 1, 2, 3, 5}) {
    std::string hd = header;
    while ((8 + hd.size()) % 8 != static_cast<size_t>(pad)) hd += ' ';
    WriteBytes(dir / "model.safetensors", RawSafetensors(hd, data));
    auto ck = Checkpoint::Open(dir.path());
    ASSERT_TRUE(ck.ok()) << ck.status();
    auto t = (*ck)->Get("f", {37});
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % alignof(float), 0u) << "pad " << pad;
    EXPECT_EQ(std::memcmp(t->data, f.data(), f.size() * 4), 0) << "pad " << pad;
    auto hw = (*ck)->GetWeight("h", 2, 5);
    ASSERT_TRUE(hw.ok()) << hw.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(hw->data) % alignof(uint16_t), 0u) << "pad " << pad;
    std::vector<float> row(5);
    cpu::WidenRowsF32(*hw, 1, 1, row.data());
    for (int c = 0; c < 5; ++c) EXPECT_EQ(row[c], Bf16ToF32(h[5 + c])) << "pad " << pad;
    auto w = (*ck)->GetWeight("w", 130, 200);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(w->scale_inv) % alignof(float), 0u) << "pad " << pad;
    EXPECT_EQ(w->scale_inv[3], 3.5f);
    std::vector<float> wrow(200);
    cpu::WidenRowsF32(*w, 129, 1, wrow.data());
    for (int c = 0; c < 200; ++c) {
      ASSERT_EQ(wrow[c], F8E4M3ToF32(fp8[129 * 200 + c]) * scales[2 + c / 128]) << "pad " << pad << " col " << c;
    }
    ASSERT_TRUE((*ck)->CheckFinite().ok());
    // Only the misaligned tensors were copied (U8 and F8 never are).
    const bool f_aligned = (pad + b1) % 4 == 0;
    EXPECT_EQ((*ck)->bytes_copied() == 0, f_aligned && (pad + b2) % 2 == 0 && (pad + b4) % 4 == 0) << "pad " << pad;
    EXPECT_EQ((*ck)->bytes_requested(), f.size() * 4 + h.size() * 2 + fp8.size() + scales.size() * 4);
  }
}

// A checkpoint truncated after it was mapped (overwritten in place while a job
// runs): the next read of a lost page raises SIGBUS. The process must end with
// kMappedFileFaultExitCode and a line naming the file and the tensor, not die
// silently of the signal.
TEST(CheckpointTruncatedWhileMappedDeathTest, ReadNamesFileAndTensorAndExits) {
  ScratchDir dir;
  std::vector<TensorToWrite> ts;
  ts.push_back(RandomTensor("model.norm.weight", DType::kF32, {16}, 1));
  ts.push_back(RandomTensor("model.layers.0.big.weight", DType::kBF16, {512, 1024}, 2));  // 1 MiB
  ASSERT_TRUE(WriteCheckpoint(dir.path(), ts, 1, {}).ok());
  const std::string file = dir / "model.safetensors";
  EXPECT_EXIT(
      {
        auto ck = Checkpoint::Open(dir.path());
        if (!ck.ok()) std::_Exit(90);
        if (!(*ck)->Get("model.layers.0.big.weight").ok() || !(*ck)->Get("model.norm.weight").ok()) std::_Exit(91);
        if (::truncate(file.c_str(), 4096) != 0) std::_Exit(92);
        (*ck)->Prefault();  // touches every page of both tensors
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(kMappedFileFaultExitCode),
      "SIGBUS reading tensor \"model.layers.0.big.weight\" \\(byte [0-9]+ of 1048576\\) in .*model.safetensors.*"
      "truncated");
}

TEST(CheckpointGetWeight, PlainFloatWeightsAndVectors) {
  ScratchDir dir;
  const auto ts = AllDTypeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir.path(), ts, 1, {}).ok());
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  auto w = (*ck)->GetWeight("model.embed_tokens.weight", 16, 8);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->dtype, DType::kBF16);
  EXPECT_EQ(w->scale_inv, nullptr);
  EXPECT_EQ(std::memcmp(w->data, ts[0].bytes.data(), ts[0].bytes.size()), 0);
  auto h = (*ck)->GetWeight("half", 3, 5);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->dtype, DType::kF16);

  auto v = (*ck)->GetVector("model.norm.weight", 8);
  ASSERT_TRUE(v.ok()) << v.status();
  float first;
  std::memcpy(&first, ts[1].bytes.data(), 4);
  if (!std::isnan(first)) {
    EXPECT_EQ(v->At(0), first);
  }
  EXPECT_EQ(v->size, 8);

  const std::string file = dir / "model.safetensors";
  EXPECT_TRUE(ErrorMentions((*ck)->GetWeight("ids32", 2, 3).status(), {file, "\"ids32\"", "I32"}));
  EXPECT_TRUE(ErrorMentions((*ck)->GetVector("ids", 7).status(), {file, "\"ids\"", "I64"}));
  EXPECT_TRUE(ErrorMentions((*ck)->GetVector("model.norm.weight", 9).status(),
                            {file, "model.norm.weight", "wrong shape [8]", "expected [9]"}));
  EXPECT_TRUE(ErrorMentions((*ck)->GetWeight("half", 5, 3).status(),
                            {file, "\"half\"", "wrong shape [3, 5]", "expected [5, 3]"}));
}

// ---------------------------------------------------------------------------
// Errors: each names the file and, where there is one, the tensor
// ---------------------------------------------------------------------------

std::vector<uint8_t> Zeros(size_t n) { return std::vector<uint8_t>(n, 0); }

absl::Status ParseError(const std::string& header, const std::vector<uint8_t>& data) {
  const auto bytes = RawSafetensors(header, data);
  return SafetensorsFile::FromBuffer(bytes.data(), bytes.size(), "/models/x/model.safetensors").status();
}

constexpr const char* kFile = "/models/x/model.safetensors";

TEST(SafetensorsErrors, MissingTensor) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), AllDTypeTensors(), 1, {}).ok());
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  EXPECT_FALSE((*ck)->Has("model.layers.99.weight"));
  auto r = (*ck)->Get("model.layers.99.weight");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ErrorMentions(r.status(), {dir / "model.safetensors", "missing tensor", "\"model.layers.99.weight\""}));
  EXPECT_TRUE(ErrorMentions((*ck)->GetWeight("nope.weight", 2, 2).status(), {"model.safetensors", "\"nope.weight\""}));
  EXPECT_TRUE(ErrorMentions((*ck)->GetVector("nope.bias", 2).status(), {"model.safetensors", "\"nope.bias\""}));
}

TEST(SafetensorsErrors, MissingTensorSharded) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), AllDTypeTensors(), 2, {}).ok());
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  EXPECT_TRUE(ErrorMentions((*ck)->Get("lm_head.weight").status(),
                            {dir / "model.safetensors.index.json", "missing tensor", "\"lm_head.weight\""}));
}

TEST(SafetensorsErrors, WrongShape) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), AllDTypeTensors(), 1, {}).ok());
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  EXPECT_TRUE(ErrorMentions((*ck)->Get("model.embed_tokens.weight", {8, 16}).status(),
                            {dir / "model.safetensors", "\"model.embed_tokens.weight\"", "wrong shape [16, 8]",
                             "expected [8, 16]"}));
  EXPECT_TRUE(ErrorMentions((*ck)->Get("model.norm.weight", {8, 1}).status(), {"model.norm.weight", "[8, 1]"}));
  // A failed shape check does not count bytes.
  EXPECT_EQ((*ck)->bytes_requested(), 0u);
}

TEST(SafetensorsErrors, UnknownDType) {
  const auto st = ParseError(R"({"w.weight":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}})", Zeros(2));
  EXPECT_TRUE(ErrorMentions(st, {kFile, "\"w.weight\"", "unknown dtype \"F8_E5M2\""}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":7,"shape":[2],"data_offsets":[0,2]}})", Zeros(2)),
                            {kFile, "\"w\"", "dtype"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"shape":[2],"data_offsets":[0,2]}})", Zeros(2)),
                            {kFile, "\"w\"", "dtype"}));
}

TEST(SafetensorsErrors, TruncatedData) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), {RandomTensor("a.weight", DType::kF32, {4, 4}, 1),
                                           RandomTensor("b.weight", DType::kBF16, {4, 4}, 2)},
                              1, {})
                  .ok());
  const std::string path = dir / "model.safetensors";
  auto bytes = ReadBytes(path);
  bytes.resize(bytes.size() - 5);
  WriteBytes(path, bytes);
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(ErrorMentions(f.status(), {path, "\"b.weight\"", "out of bounds", "truncated"}));
  auto ck = Checkpoint::Open(dir.path());
  EXPECT_TRUE(ErrorMentions(ck.status(), {path, "\"b.weight\"", "truncated"}));
}

TEST(SafetensorsErrors, TruncatedHeader) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), {RandomTensor("a.weight", DType::kF32, {4, 4}, 1)}, 1, {}).ok());
  const std::string path = dir / "model.safetensors";
  const auto full = ReadBytes(path);
  for (size_t keep : {size_t{0}, size_t{3}, size_t{7}, size_t{8}, size_t{20}}) {
    SCOPED_TRACE("keep " + std::to_string(keep));
    WriteBytes(path, std::vector<uint8_t>(full.begin(), full.begin() + keep));
    auto f = SafetensorsFile::Open(path);
    EXPECT_TRUE(ErrorMentions(f.status(), {path, "truncated"}));
  }
}

TEST(SafetensorsErrors, HeaderLengthOutOfBounds) {
  const std::string header = R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  for (uint64_t len : {uint64_t{1} << 63, UINT64_MAX - 1, uint64_t{200} << 20}) {
    const auto bytes = RawSafetensors(header, Zeros(4), len);
    auto f = SafetensorsFile::FromBuffer(bytes.data(), bytes.size(), kFile);
    EXPECT_TRUE(ErrorMentions(f.status(), {kFile, "header length", std::to_string(len)}));
  }
  // Just past the end of the file.
  const uint64_t too_long = header.size() + 4 + 1;
  const auto bytes = RawSafetensors(header, Zeros(4), too_long);
  auto f = SafetensorsFile::FromBuffer(bytes.data(), bytes.size(), kFile);
  EXPECT_TRUE(ErrorMentions(f.status(), {kFile, "truncated", "header length " + std::to_string(too_long)}));
  // Shorter than the real header: JSON cut off.
  const auto cut = RawSafetensors(header, Zeros(4), header.size() - 3);
  f = SafetensorsFile::FromBuffer(cut.data(), cut.size(), kFile);
  EXPECT_TRUE(ErrorMentions(f.status(), {kFile, "JSON"}));
}

TEST(SafetensorsErrors, InvalidHeaderJson) {
  EXPECT_TRUE(ErrorMentions(ParseError("{\"w\": ", {}), {kFile, "not valid JSON"}));
  EXPECT_TRUE(ErrorMentions(ParseError("", {}), {kFile, "JSON"}));
  EXPECT_TRUE(ErrorMentions(ParseError("[1, 2]", {}), {kFile, "JSON object"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w": 5})", {}), {kFile, "\"w\"", "object"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"__metadata__": {"a": 1}})", {}), {kFile, "__metadata__", "\"a\""}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"__metadata__": [1]})", {}), {kFile, "__metadata__"}));
}

TEST(SafetensorsErrors, BadShape) {
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", {}),
                            {kFile, "\"w\"", "shape"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,0]}})", {}),
                            {kFile, "\"w\"", "shape"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","shape":"4","data_offsets":[0,4]}})", Zeros(4)),
                            {kFile, "\"w\"", "shape"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","data_offsets":[0,4]}})", Zeros(4)),
                            {kFile, "\"w\"", "shape"}));
  EXPECT_TRUE(ErrorMentions(
      ParseError(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", Zeros(8)),
      {kFile, "\"w\"", "overflow"}));
  EXPECT_TRUE(ErrorMentions(
      ParseError(R"({"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,8]}})", Zeros(8)),
      {kFile, "\"w\"", "shape"}));
  // A zero dimension makes the element count 0, but the partial product before
  // it (3 * 2^62) does not fit in int64, so TensorInfo::numel() would overflow.
  EXPECT_TRUE(ErrorMentions(
      ParseError(R"({"w":{"dtype":"U8","shape":[3,4611686018427387904,0],"data_offsets":[0,0]}})", {}),
      {kFile, "\"w\"", "overflow"}));
  // Empty tensors with a zero dimension are fine.
  EXPECT_TRUE(ParseError(R"({"w":{"dtype":"U8","shape":[0,4611686018427387904],"data_offsets":[0,0]}})", {}).ok());
}

TEST(SafetensorsErrors, OffsetsOutOfBounds) {
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","shape":[40],"data_offsets":[0,40]}})", Zeros(16)),
                            {kFile, "\"w\"", "out of bounds", "40", "16 bytes"}));
  EXPECT_TRUE(ErrorMentions(
      ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}})",
                 Zeros(16)),
      {kFile, "\"w\"", "out of bounds"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", Zeros(1)),
                            {kFile, "\"w\"", "data_offsets"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", Zeros(1)),
                            {kFile, "\"w\"", "data_offsets"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0, 1.0]}})", Zeros(1)),
                            {kFile, "\"w\"", "data_offsets"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","shape":[1]}})", Zeros(1)),
                            {kFile, "\"w\"", "data_offsets"}));
}

TEST(SafetensorsErrors, ReversedOffsets) {
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}})", Zeros(8)),
                            {kFile, "\"w\"", "[8, 4]", "reversed"}));
}

TEST(SafetensorsErrors, OverlappingData) {
  const std::string h = R"({"a.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                        R"("b.weight":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  EXPECT_TRUE(ErrorMentions(ParseError(h, Zeros(24)), {kFile, "\"b.weight\"", "overlaps", "\"a.weight\""}));
  // Same range twice.
  const std::string h2 = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  EXPECT_TRUE(ErrorMentions(ParseError(h2, Zeros(4)), {kFile, "overlaps"}));
  // One inside another.
  const std::string h3 = R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})";
  EXPECT_TRUE(ErrorMentions(ParseError(h3, Zeros(8)), {kFile, "\"b\"", "overlaps", "\"a\""}));
}

TEST(SafetensorsErrors, GapAndTrailingBytes) {
  const std::string gap = R"({"a.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                          R"("b.weight":{"dtype":"F32","shape":[4],"data_offsets":[20,36]}})";
  EXPECT_TRUE(ErrorMentions(ParseError(gap, Zeros(36)), {kFile, "\"b.weight\"", "gap", "16"}));
  const std::string lead = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  EXPECT_TRUE(ErrorMentions(ParseError(lead, Zeros(8)), {kFile, "\"a\"", "gap"}));
  const std::string trail = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  EXPECT_TRUE(ErrorMentions(ParseError(trail, Zeros(6)), {kFile, "6 bytes", "cover 4"}));
}

TEST(SafetensorsErrors, SizeMismatchBetweenShapeAndOffsets) {
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", Zeros(12)),
                            {kFile, "\"w\"", "shape [4] of F32 needs 16 bytes", "span 12"}));
  EXPECT_TRUE(ErrorMentions(ParseError(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,13]}})", Zeros(13)),
                            {kFile, "\"w\"", "[2, 3]", "12 bytes", "13"}));
}

TEST(SafetensorsErrors, OpenMissingFileOrDir) {
  ScratchDir dir;
  auto f = SafetensorsFile::Open(dir / "nothing.safetensors");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ErrorMentions(f.status(), {dir / "nothing.safetensors"}));
  auto ck = Checkpoint::Open(dir.path());
  EXPECT_EQ(ck.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ErrorMentions(ck.status(), {dir.path(), "model.safetensors"}));
}

// An FP8 checkpoint whose scales are given by `scale`; empty name = none.
absl::Status Fp8WeightError(const ScratchDir& dir, const TensorToWrite* scale) {
  std::vector<TensorToWrite> ts = {RandomTensor("q.weight", DType::kF8E4M3, {200, 130}, 1)};
  if (scale != nullptr) ts.push_back(*scale);
  auto st = WriteCheckpoint(dir.path(), ts, 1, {});
  if (!st.ok()) return st;
  auto ck = Checkpoint::Open(dir.path());
  if (!ck.ok()) return ck.status();
  return (*ck)->GetWeight("q.weight", 200, 130).status();
}

TEST(SafetensorsErrors, MissingScaleInvForF8Weight) {
  ScratchDir dir;
  EXPECT_TRUE(ErrorMentions(Fp8WeightError(dir, nullptr),
                            {dir / "model.safetensors", "\"q.weight\"", "F8_E4M3", "\"q.weight_scale_inv\"", "missing"}));
}

TEST(SafetensorsErrors, NonF32Scales) {
  ScratchDir dir;
  const TensorToWrite bf = RandomTensor("q.weight_scale_inv", DType::kBF16, {2, 2}, 3);
  EXPECT_TRUE(ErrorMentions(Fp8WeightError(dir, &bf),
                            {dir / "model.safetensors", "\"q.weight_scale_inv\"", "must be F32", "BF16"}));
  const TensorToWrite wrong_shape = RandomTensor("q.weight_scale_inv", DType::kF32, {2, 1}, 3);
  EXPECT_TRUE(ErrorMentions(Fp8WeightError(dir, &wrong_shape),
                            {"\"q.weight_scale_inv\"", "wrong shape [2, 1]", "expected [2, 2]"}));
}

// ---------------------------------------------------------------------------
// Sharded index errors
// ---------------------------------------------------------------------------

TEST(SafetensorsIndexErrors, IndexNamesMissingShard) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), AllDTypeTensors(), 2, {}).ok());
  const std::string gone = "model-00002-of-00002.safetensors";
  std::filesystem::remove(dir / gone);
  auto ck = Checkpoint::Open(dir.path());  // shards open lazily
  ASSERT_TRUE(ck.ok()) << ck.status();
  // Tensors of the first shard still load.
  EXPECT_TRUE((*ck)->Get("model.embed_tokens.weight").ok());
  // The last tensor lives in the missing shard.
  auto r = (*ck)->Get("empty");
  EXPECT_TRUE(ErrorMentions(r.status(), {dir / gone, "\"empty\"", "model.safetensors.index.json"}));
}

TEST(SafetensorsIndexErrors, CorruptShardOnlyFailsItsTensors) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), AllDTypeTensors(), 2, {}).ok());
  const std::string bad = "model-00002-of-00002.safetensors";
  auto bytes = ReadBytes(dir / bad);
  bytes.resize(bytes.size() - 1);
  WriteBytes(dir / bad, bytes);
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE((*ck)->Get("model.embed_tokens.weight").ok());
  EXPECT_TRUE(ErrorMentions((*ck)->Get("mask").status(), {dir / bad, "truncated"}));
}

TEST(SafetensorsIndexErrors, IndexListsTensorTheShardLacks) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), {RandomTensor("a", DType::kF32, {2}, 1)}, 1, {}).ok());
  std::filesystem::rename(dir / "model.safetensors", dir / "shard.safetensors");
  WriteText(dir / "model.safetensors.index.json",
            R"({"metadata": {}, "weight_map": {"a": "shard.safetensors", "b": "shard.safetensors"}})");
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE((*ck)->Get("a", {2}).ok());
  EXPECT_TRUE(ErrorMentions((*ck)->Get("b").status(), {dir / "shard.safetensors", "missing tensor \"b\"", "index"}));
}

TEST(SafetensorsIndexErrors, PathWithSlash) {
  for (const std::string f : {"sub/model.safetensors", "../model.safetensors", "/etc/passwd", "..", ".", ""}) {
    SCOPED_TRACE(f);
    ScratchDir dir;
    WriteText(dir / "model.safetensors.index.json",
              R"({"weight_map": {"model.norm.weight": ")" + f + R"("}})");
    auto ck = Checkpoint::Open(dir.path());
    EXPECT_TRUE(ErrorMentions(ck.status(), {dir / "model.safetensors.index.json", "\"model.norm.weight\"",
                                            "not a plain file name"}));
  }
}

TEST(SafetensorsIndexErrors, InvalidJson) {
  ScratchDir dir;
  const std::string index = dir / "model.safetensors.index.json";
  WriteText(index, R"({"weight_map": {"a": "x.safetensors",)");
  EXPECT_TRUE(ErrorMentions(Checkpoint::Open(dir.path()).status(), {index, "invalid JSON"}));
  WriteText(index, "");
  EXPECT_TRUE(ErrorMentions(Checkpoint::Open(dir.path()).status(), {index, "JSON"}));
  WriteText(index, "[]");
  EXPECT_TRUE(ErrorMentions(Checkpoint::Open(dir.path()).status(), {index, "object"}));
  WriteText(index, R"({"metadata": {}})");
  EXPECT_TRUE(ErrorMentions(Checkpoint::Open(dir.path()).status(), {index, "weight_map"}));
  WriteText(index, R"({"weight_map": []})");
  EXPECT_TRUE(ErrorMentions(Checkpoint::Open(dir.path()).status(), {index, "weight_map"}));
  WriteText(index, R"({"weight_map": {"a.weight": 3}})");
  EXPECT_TRUE(ErrorMentions(Checkpoint::Open(dir.path()).status(), {index, "\"a.weight\""}));
}

// ---------------------------------------------------------------------------
// Byte accounting
// ---------------------------------------------------------------------------

TEST(CheckpointBytes, QuarterOfTensorsIsQuarterOfBytes) {
  ScratchDir dir;
  std::vector<TensorToWrite> ts;
  uint64_t total = 0;
  for (int i = 0; i < 32; ++i) {
    // Slightly different sizes so the answer is "about" a quarter.
    ts.push_back(RandomTensor("layers." + std::to_string(i) + ".weight", DType::kBF16, {64, 32 + (i % 4)}, i));
    total += ts.back().bytes.size();
  }
  ASSERT_TRUE(WriteCheckpoint(dir.path(), ts, 4, {}).ok());
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  EXPECT_EQ((*ck)->bytes_requested(), 0u);
  uint64_t want = 0;
  for (int i = 0; i < 32; i += 4) {
    ASSERT_TRUE((*ck)->Get(ts[i].name).ok());
    want += ts[i].bytes.size();
  }
  EXPECT_EQ((*ck)->bytes_requested(), want);
  const double frac = static_cast<double>((*ck)->bytes_requested()) / static_cast<double>(total);
  EXPECT_NEAR(frac, 0.25, 0.02);
  // Asking again does not count twice, whichever accessor is used.
  ASSERT_TRUE((*ck)->Get(ts[0].name).ok());
  ASSERT_TRUE((*ck)->GetWeight(ts[4].name, 64, 32).ok());
  EXPECT_EQ((*ck)->bytes_requested(), want);
}

TEST(CheckpointBytes, Fp8WeightCountsItsScales) {
  ScratchDir dir;
  auto ts = AllDTypeTensors();
  ASSERT_TRUE(WriteCheckpoint(dir.path(), ts, 1, {}).ok());
  auto ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  ASSERT_TRUE((*ck)->GetWeight("model.layers.0.mlp.gate_proj.weight", 130, 200).ok());
  EXPECT_EQ((*ck)->bytes_requested(), 130u * 200u + 2u * 2u * 4u);
  ASSERT_TRUE((*ck)->GetVector("model.norm.weight", 8).ok());
  EXPECT_EQ((*ck)->bytes_requested(), 130u * 200u + 16u + 32u);
}

// CheckFinite's vectorised scan: the largest finite values of each dtype
// pass; every NaN/Inf encoding (both signs) is found at its exact element,
// including the first and last element of a 4096-element chunk and the last
// element of an odd-length tensor.
TEST(CheckpointCheckFinite, FindsEveryNonFiniteEncodingAtItsElement) {
  struct Case {
    DType dtype;
    std::vector<uint32_t> finite;  // largest finite magnitudes, +/-
    std::vector<uint32_t> bad;     // NaN and Inf encodings
  };
  const std::vector<Case> cases = {
      {DType::kF32, {0x7F7FFFFFu, 0xFF7FFFFFu, 0x00000001u}, {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFFFFFFFu}},
      {DType::kBF16, {0x7F7Fu, 0xFF7Fu, 0x0001u}, {0x7F80u, 0xFF80u, 0x7FC0u, 0xFFFFu}},
      {DType::kF16, {0x7BFFu, 0xFBFFu, 0x0001u}, {0x7C00u, 0xFC00u, 0x7E00u, 0xFFFFu}},
      {DType::kF8E4M3, {0x7Eu, 0xFEu, 0x01u}, {0x7Fu, 0xFFu}},
  };
  const int64_t n = 2 * 4096 + 7;
  for (const Case& c : cases) {
    SCOPED_TRACE(DTypeName(c.dtype));
    const int64_t size = DTypeSize(c.dtype);
    TensorToWrite t;
    t.name = "w";
    t.dtype = c.dtype;
    t.shape = {n};
    t.bytes.resize(n * size);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t v = c.finite[i % c.finite.size()];
      std::memcpy(t.bytes.data() + i * size, &v, size);  // little-endian: the low bytes
    }
    {
      ScratchDir dir;
      ASSERT_TRUE(WriteCheckpoint(dir.path(), {t}, 1, {}).ok());
      auto ck = Checkpoint::Open(dir.path());
      ASSERT_TRUE(ck.ok());
      ASSERT_TRUE((*ck)->Get("w").ok());
      EXPECT_TRUE((*ck)->CheckFinite().ok()) << (*ck)->CheckFinite();
    }
    for (int64_t at : {int64_t{0}, int64_t{4095}, int64_t{4096}, n - 1}) {
      for (uint32_t bad : c.bad) {
        SCOPED_TRACE(absl::StrCat("element ", at, " = 0x", absl::Hex(bad)));
        TensorToWrite poked = t;
        std::memcpy(poked.bytes.data() + at * size, &bad, size);
        ScratchDir dir;
        ASSERT_TRUE(WriteCheckpoint(dir.path(), {poked}, 1, {}).ok());
        auto ck = Checkpoint::Open(dir.path());
        ASSERT_TRUE(ck.ok());
        ASSERT_TRUE((*ck)->Get("w").ok());
        const absl::Status st = (*ck)->CheckFinite();
        ASSERT_FALSE(st.ok());
        EXPECT_NE(st.message().find(absl::StrCat("at element ", at, " ")), std::string_view::npos) << st;
        EXPECT_NE(st.message().find("\"w\""), std::string_view::npos) << st;
      }
    }
  }
}

}  // namespace
}  // namespace deepshard
