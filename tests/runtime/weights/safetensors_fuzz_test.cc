// Header fuzz test for SafetensorsFile::FromBuffer: seeded random mutations of
// a valid small file (byte edits, insertions, deletions, truncations, header
// length edits, and JSON-aware edits of numbers, dtype strings and structure).
// The reader must never crash, and any file it accepts must have every tensor
// inside the buffer with a byte size that matches its shape and dtype.
//
// Each mutated file is copied into a heap block of exactly its size, so a build
// with -fsanitize=address catches any read past the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "runtime/weights/safetensors.h"
#include "runtime/weights/safetensors_writer.h"

namespace deepshard {
namespace {

std::vector<uint8_t> SeedFile() {
  std::vector<TensorToWrite> ts(5);
  ts[0] = {"model.layers.0.self_attn.q_proj.weight", DType::kF8E4M3, {3, 5}, {}};
  ts[1] = {"model.layers.0.self_attn.q_proj.weight_scale_inv", DType::kF32, {1, 1}, {}};
  ts[2] = {"model.norm.weight", DType::kBF16, {6}, {}};
  ts[3] = {"empty", DType::kF16, {2, 3, 0}, {}};
  ts[4] = {"ids", DType::kI64, {2}, {}};
  std::vector<const TensorToWrite*> ptrs;
  for (auto& t : ts) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    t.bytes.resize(n * DTypeSize(t.dtype));
    for (size_t i = 0; i < t.bytes.size(); ++i) t.bytes[i] = static_cast<uint8_t>(i * 37 + 11);
    ptrs.push_back(&t);
  }
  return SerializeSafetensors(ptrs, {{"format", "pt"}});
}

uint64_t HeaderLen(const std::vector<uint8_t>& f) {
  if (f.size() < 8) return 0;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | f[i];
  return n;
}
void SetHeaderLen(std::vector<uint8_t>& f, uint64_t n) {
  if (f.size() < 8) f.resize(8, 0);
  for (int i = 0; i < 8; ++i) f[i] = static_cast<uint8_t>(n >> (8 * i));
}

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  uint64_t Below(uint64_t n) { return n == 0 ? 0 : rng_() % n; }

  // The header text of `f` (clamped to the file), for JSON-aware edits.
  static std::string Header(const std::vector<uint8_t>& f, uint64_t* len) {
    *len = std::min<uint64_t>(HeaderLen(f), f.size() < 8 ? 0 : f.size() - 8);
    return std::string(f.begin() + std::min<size_t>(8, f.size()), f.begin() + std::min<size_t>(8, f.size()) + *len);
  }
  // Replaces the header with `h`, keeping the data section; fixes the length
  // field most of the time so the edit reaches the JSON checks.
  void PutHeader(std::vector<uint8_t>& f, uint64_t old_len, const std::string& h) {
    std::vector<uint8_t> out(8, 0);
    out.insert(out.end(), h.begin(), h.end());
    if (f.size() > 8 + old_len) out.insert(out.end(), f.begin() + 8 + old_len, f.end());
    SetHeaderLen(out, Below(10) < 8 ? h.size() : HeaderLen(f));
    f.swap(out);
  }

  void Mutate(std::vector<uint8_t>& f) {
    switch (Below(12)) {
      case 0: {  // flip bits of one byte (header-heavy)
        if (f.empty()) return;
        const uint64_t pos = Below(3) ? Below(std::min<uint64_t>(f.size(), 8 + HeaderLen(f) + 1)) : Below(f.size());
        if (pos < f.size()) f[pos] ^= static_cast<uint8_t>(1u << Below(8));
        return;
      }
      case 1: {  // overwrite a byte with a JSON-significant character
        static const char kChars[] = "{}[]\",:0123456789-.eE \\ntfu\x00\xff";
        if (f.empty()) return;
        f[Below(f.size())] = static_cast<uint8_t>(kChars[Below(sizeof(kChars) - 1)]);
        return;
      }
      case 2: {  // insert random bytes
        const uint64_t pos = Below(f.size() + 1);
        const uint64_t n = 1 + Below(8);
        std::vector<uint8_t> ins(n);
        for (auto& b : ins) b = static_cast<uint8_t>(rng_());
        f.insert(f.begin() + pos, ins.begin(), ins.end());
        return;
      }
      case 3: {  // delete a range
        if (f.empty()) return;
        const uint64_t pos = Below(f.size());
        const uint64_t n = 1 + Below(std::min<uint64_t>(16, f.size() - pos));
        f.erase(f.begin() + pos, f.begin() + pos + n);
        return;
      }
      case 4: {  // truncate
        f.resize(Below(f.size() + 1));
        return;
      }
      case 5: {  // edit the header-length field
        const uint64_t n = HeaderLen(f);
        static const uint64_t kSpecial[] = {0, 1, 2, 7, 8, UINT64_MAX, UINT64_MAX - 7, uint64_t{1} << 63,
                                            (uint64_t{100} << 20), (uint64_t{100} << 20) + 1};
        switch (Below(5)) {
          case 0: SetHeaderLen(f, n + Below(17) - 8); break;
          case 1: SetHeaderLen(f, f.size() < 8 ? 0 : f.size() - 8 - Below(3)); break;
          case 2: SetHeaderLen(f, f.size() - 7 + Below(3)); break;
          case 3: SetHeaderLen(f, kSpecial[Below(std::size(kSpecial))]); break;
          default: SetHeaderLen(f, rng_()); break;
        }
        return;
      }
      case 6:
      case 7: {  // replace a number in the header
        uint64_t len;
        std::string h = Header(f, &len);
        std::vector<std::pair<size_t, size_t>> nums;
        for (size_t i = 0; i < h.size();) {
          if (std::isdigit(static_cast<unsigned char>(h[i])) || h[i] == '-') {
            size_t j = i + 1;
            while (j < h.size() && (std::isdigit(static_cast<unsigned char>(h[j])) || h[j] == '.' ||
                                    h[j] == 'e' || h[j] == 'E' || h[j] == '+' || h[j] == '-'))
              ++j;
            nums.push_back({i, j - i});
            i = j;
          } else {
            ++i;
          }
        }
        if (nums.empty()) return;
        static const char* kNums[] = {"0", "1", "-1", "2", "3", "4", "5", "6", "8", "15", "16", "24", "48", "1000",
                                      "9223372036854775807", "9223372036854775808", "18446744073709551615",
                                      "18446744073709551616", "4294967296", "1e300", "-0", "1.5", "2e1",
                                      "99999999999999999999999999", "-9223372036854775808", "0.0", "1E2",
                                      "4611686018427387904", "3074457345618258603", "2305843009213693952"};
        const auto [pos, n] = nums[Below(nums.size())];
        std::string rep;
        if (Below(4) == 0) {
          // A nearby value: off by a little from the original, if it is small.
          long long v = std::atoll(h.substr(pos, n).c_str());
          rep = std::to_string(v + static_cast<long long>(Below(9)) - 4);
        } else {
          rep = kNums[Below(std::size(kNums))];
        }
        h.replace(pos, n, rep);
        PutHeader(f, len, h);
        return;
      }
      case 8: {  // change a dtype string
        uint64_t len;
        std::string h = Header(f, &len);
        std::vector<size_t> at;
        for (size_t p = h.find("\"dtype\":\""); p != std::string::npos; p = h.find("\"dtype\":\"", p + 1)) {
          at.push_back(p + 9);
        }
        if (at.empty()) return;
        static const char* kTypes[] = {"F32", "BF16", "F16", "F8_E4M3", "I64", "I32", "U8", "BOOL", "F64",
                                       "F8_E5M2", "I8", "", "f32", "F32\\u0000", "U64", "C64"};
        const size_t p = at[Below(at.size())];
        const size_t e = h.find('"', p);
        if (e == std::string::npos) return;
        h.replace(p, e - p, kTypes[Below(std::size(kTypes))]);
        PutHeader(f, len, h);
        return;
      }
      case 9: {  // replace a JSON value token with another kind of value
        uint64_t len;
        std::string h = Header(f, &len);
        std::vector<size_t> colons;
        for (size_t i = 0; i < h.size(); ++i)
          if (h[i] == ':') colons.push_back(i);
        if (colons.empty()) return;
        static const char* kVals[] = {"null", "true", "[]", "{}", "\"x\"", "[1,2,3]", "{\"a\":1}", "[0]",
                                      "[0,0]", "[[0,1]]", "-1", "\"F32\"", "[1e400]", "[-0]", "[0,-1]"};
        const size_t c = colons[Below(colons.size())] + 1;
        // The value ends at the matching ',' or '}' at depth 0 (strings ignored: approximate).
        size_t e = c;
        int depth = 0;
        for (; e < h.size(); ++e) {
          if (h[e] == '[' || h[e] == '{') ++depth;
          if (h[e] == ']' || h[e] == '}') {
            if (depth == 0) break;
            --depth;
          }
          if (h[e] == ',' && depth == 0) break;
        }
        h.replace(c, e - c, kVals[Below(std::size(kVals))]);
        PutHeader(f, len, h);
        return;
      }
      case 10: {  // duplicate or drop a tensor entry / key
        uint64_t len;
        std::string h = Header(f, &len);
        const size_t a = h.find("\"", 1 + Below(h.size()));
        if (a == std::string::npos) return;
        const size_t b = h.find(',', a);
        if (b == std::string::npos) return;
        if (Below(2)) {
          h.erase(a, b - a + 1);
        } else {
          h.insert(a, h.substr(a, b - a + 1));
        }
        PutHeader(f, len, h);
        return;
      }
      default: {  // grow or shrink the data section
        if (Below(2)) {
          f.resize(f.size() + 1 + Below(16), 0x5a);
        } else if (!f.empty()) {
          f.resize(f.size() - 1 - Below(std::min<uint64_t>(f.size(), 16)));
        }
        return;
      }
    }
  }

 private:
  std::mt19937_64 rng_;
};

// Checks every promise an accepted file makes; returns a checksum of the
// tensors' bytes so the reads cannot be optimised away.
uint64_t CheckAccepted(const SafetensorsFile& sf, const uint8_t* buf, uint64_t size, const std::string& what) {
  uint64_t sum = 0;
  const uint64_t header_len = HeaderLen(std::vector<uint8_t>(buf, buf + 8));
  EXPECT_LE(8 + header_len, size) << what;
  for (const std::string& name : sf.TensorNames()) {
    const TensorInfo* t = sf.Find(name);
    EXPECT_NE(t, nullptr) << what;
    if (t == nullptr) continue;
    EXPECT_LE(t->begin, t->end) << what << " " << name;
    const uint8_t* p = sf.Data(*t);
    const uint64_t n = t->end - t->begin;
    EXPECT_GE(p, buf + 8 + header_len) << what << " " << name;
    EXPECT_LE(t->end, size - 8 - header_len) << what << " " << name;
    if (p < buf + 8 + header_len || t->end > size - 8 - header_len) continue;
    EXPECT_LE(p + n, buf + size) << what << " " << name;
    EXPECT_EQ(static_cast<uint64_t>(t->numel()) * DTypeSize(t->dtype), n) << what << " " << name;
    for (int64_t d : t->shape) EXPECT_GE(d, 0) << what << " " << name;
    for (uint64_t i = 0; i < n; ++i) sum += p[i];
  }
  return sum;
}

TEST(SafetensorsFuzz, RandomHeaderMutationsNeverCrash) {
  const std::vector<uint8_t> seed = SeedFile();
  {
    auto ok = SafetensorsFile::FromBuffer(seed.data(), seed.size(), "seed");
    ASSERT_TRUE(ok.ok()) << ok.status();
    ASSERT_EQ((*ok)->TensorNames().size(), 5u);
  }
  constexpr int kCases = 6000;
  int accepted = 0, rejected = 0;
  uint64_t checksum = 0;
  for (int i = 0; i < kCases; ++i) {
    Mutator mut(0x5eed0000ull + i);
    std::vector<uint8_t> f = seed;
    const int rounds = 1 + static_cast<int>(mut.Below(3));
    for (int r = 0; r < rounds; ++r) mut.Mutate(f);
    // Exactly-sized heap copy: ASan reports any read past its end.
    std::unique_ptr<uint8_t[]> buf(new uint8_t[f.size() == 0 ? 1 : f.size()]);
    if (!f.empty()) std::memcpy(buf.get(), f.data(), f.size());
    const std::string what = "case " + std::to_string(i);
    auto res = SafetensorsFile::FromBuffer(f.empty() ? nullptr : buf.get(), f.size(), "fuzz.safetensors");
    if (res.ok()) {
      ++accepted;
      checksum += CheckAccepted(**res, buf.get(), f.size(), what);
      if (::testing::Test::HasFailure()) {
        FAIL() << what << " accepted a bad file";
      }
    } else {
      ++rejected;
      // Errors always name the file.
      ASSERT_NE(std::string(res.status().message()).find("fuzz.safetensors"), std::string::npos)
          << what << ": " << res.status();
    }
  }
  // The mix must exercise both outcomes; otherwise the mutations are too weak or too strong.
  EXPECT_GT(accepted, kCases / 50) << "accepted " << accepted;
  EXPECT_GT(rejected, kCases / 2) << "rejected " << rejected;
  std::printf("# fuzz: %d cases, %d accepted, %d rejected (checksum %llu)\n", kCases, accepted, rejected,
              static_cast<unsigned long long>(checksum));
}

}  // namespace
}  // namespace deepshard
