#include "runtime/batching/paged_kv_cache.h"

#include <cctype>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/checked_math.h"
#include "base/status_macros.h"

namespace deepshard {

absl::StatusOr<int64_t> ParseByteSize(std::string_view text) {
  std::string s(text);
  auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && is_space(s.back())) s.pop_back();
  size_t begin = 0;
  while (begin < s.size() && is_space(s[begin])) ++begin;
  size_t digits = begin;
  while (digits < s.size() && (std::isdigit(static_cast<unsigned char>(s[digits])) || s[digits] == '.')) ++digits;
  std::string unit = s.substr(digits);
  while (!unit.empty() && is_space(unit.front())) unit.erase(unit.begin());
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  struct Unit {
    const char* name;
    double bytes;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},       {"b", 1},          {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0},
      {"tib", 1099511627776.0},         {"kb", 1e3},     {"mb", 1e6},        {"gb", 1e9},
      {"tb", 1e12},  {"k", 1024.0},     {"m", 1048576.0}, {"g", 1073741824.0}};
  const Unit* u = nullptr;
  for (const Unit& c : kUnits) {
    if (unit == c.name) u = &c;
  }
  double value = -1;
  const std::string number = s.substr(begin, digits - begin);
  size_t used = 0;
  try {
    if (!number.empty()) value = std::stod(number, &used);
  } catch (...) {
    value = -1;
  }
  if (value < 0 || used != number.size() || u == nullptr || value * u->bytes >= 9.2e18) {
    return absl::InvalidArgumentError(absl::StrCat("bad byte size \"", s,
                                                   "\": expected a number with an optional unit, e.g. 4GiB, "
                                                   "512MiB or 1000000"));
  }
  return static_cast<int64_t>(value * u->bytes);
}

PagedKvCache::PagedKvCache(Backend& backend, const ModelConfig& config, int64_t n_layers, int64_t block_size,
                           int64_t n_blocks, DType dtype)
    : backend_(backend),
      n_layers_(n_layers),
      width_(config.kv_cache_width()),
      dtype_(dtype),
      blocks_(n_blocks, block_size) {}

absl::StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(Backend& backend, const ModelConfig& config,
                                                                   int64_t n_layers, int64_t block_size,
                                                                   int64_t n_blocks, DType dtype) {
  if (block_size <= 0 || n_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("a KV pool needs blocks: got ", n_blocks, " blocks of ",
                                                   block_size, " tokens"));
  }
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache dtype ", DTypeName(dtype), " is not f32 or bf16"));
  }
  auto pool = std::unique_ptr<PagedKvCache>(new PagedKvCache(backend, config, n_layers, block_size, n_blocks, dtype));
  const std::string what = absl::StrCat("the KV pool (", n_blocks, " blocks of ", block_size, " tokens)");
  ASSIGN_OR_RETURN(const int64_t bytes, CheckedMul({n_layers, block_size, config.kv_cache_width(),
                                                    static_cast<int64_t>(DTypeSize(dtype)), n_blocks}, what));
  ASSIGN_OR_RETURN(pool->pool_, backend.Allocate(bytes, what));
  return pool;
}

absl::StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::FromBudget(Backend& backend, const ModelConfig& config,
                                                                       int64_t n_layers, int64_t block_size,
                                                                       int64_t budget_bytes, DType dtype) {
  if (block_size <= 0) return absl::InvalidArgumentError(absl::StrCat("KV block size ", block_size, " must be > 0"));
  ASSIGN_OR_RETURN(const int64_t per_block,
                   CheckedMul({n_layers, block_size, config.kv_cache_width(), static_cast<int64_t>(DTypeSize(dtype))},
                              absl::StrCat("a KV block of ", block_size, " tokens")));
  const int64_t n_blocks = per_block > 0 ? budget_bytes / per_block : 0;
  if (n_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--kv-cache-memory ", budget_bytes, " bytes holds no KV block (",
                                                   per_block, " bytes each: ", n_layers, " layers x ", block_size,
                                                   " tokens x ", config.kv_cache_width(), " ", DTypeName(dtype),
                                                   " values)"));
  }
  return Create(backend, config, n_layers, block_size, n_blocks, dtype);
}

std::unique_ptr<KvCache> PagedKvCache::NewSequence() {
  return std::make_unique<KvCache>(pool_.data(), dtype_, n_layers_, width_, n_blocks() * block_size() * width_,
                                   block_size());
}

absl::Status PagedKvCache::Reserve(KvCache& seq, int64_t n) {
  DS_CHECK(seq.paged() && seq.block_size() == block_size());
  copies_.clear();
  RETURN_IF_ERROR(blocks_.AppendSlots(seq.block_table(), n, &copies_));
  for (const BlockCopy& c : copies_) CopyBlock(c.src, c.dst);
  return absl::OkStatus();
}

std::unique_ptr<KvCache> PagedKvCache::Fork(const KvCache& seq) {
  auto f = NewSequence();
  // Only the written tokens: slots seq reserved but has not filled stay its own.
  f->block_table() = blocks_.Fork(seq.block_table(), seq.length());
  f->set_length(seq.length());
  return f;
}

void PagedKvCache::Free(KvCache& seq) {
  blocks_.Free(seq.block_table());
  seq.set_length(0);
}

void PagedKvCache::CopyBlock(int32_t src, int32_t dst) {
  const int64_t block = block_size() * width_ * DTypeSize(dtype_), layer = n_blocks() * block;
  uint8_t* base = pool_.as<uint8_t>();
  for (int64_t l = 0; l < n_layers_; ++l) backend_.Copy(base + l * layer + dst * block, base + l * layer + src * block, block);
}

}  // namespace deepshard
