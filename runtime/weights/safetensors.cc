#include "runtime/weights/safetensors.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "boost/json.hpp"
#include "base/status_macros.h"

namespace deepshard {
namespace json = boost::json;
namespace {

// The header is JSON text; real checkpoints have headers of a few MB at most.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

absl::Status Err(const std::string& file, const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", msg));
}
absl::Status TensorErr(const std::string& file, const std::string& tensor, const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": tensor \"", tensor, "\": ", msg));
}

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Read by the SIGBUS handler: only plain data, built before registration and
// never changed after.
struct SafetensorsFile::FaultRecord {
  const uint8_t* map_begin = nullptr;
  const uint8_t* map_end = nullptr;
  const uint8_t* data = nullptr;
  std::string path;
  struct Span {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;  // sorted by begin
};

namespace {

constexpr int kMaxFaultSlots = 8192;  // mapped files tracked at once (more are mapped, unnamed)
std::atomic<const SafetensorsFile::FaultRecord*> g_fault_slots[kMaxFaultSlots];
struct sigaction g_previous_sigbus;
std::once_flag g_sigbus_once;

// Async-signal-safe output.
void SafeWrite(const char* s, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}
void SafeWrite(const char* s) { SafeWrite(s, std::strlen(s)); }
void SafeWriteU64(uint64_t v) {
  char buf[24];
  int i = sizeof(buf);
  do {
    buf[--i] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0 && i > 0);
  SafeWrite(buf + i, sizeof(buf) - i);
}

void OnSigbus(int sig, siginfo_t* info, void* ctx) {
  const uint8_t* addr = static_cast<const uint8_t*>(info != nullptr ? info->si_addr : nullptr);
  for (int i = 0; i < kMaxFaultSlots && addr != nullptr; ++i) {
    const SafetensorsFile::FaultRecord* r = g_fault_slots[i].load(std::memory_order_acquire);
    if (r == nullptr || addr < r->map_begin || addr >= r->map_end) continue;
    SafeWrite("deepshard: fatal: SIGBUS reading ");
    if (addr >= r->data) {
      const uint64_t off = static_cast<uint64_t>(addr - r->data);
      // The last span starting at or before `off`.
      size_t lo = 0, hi = r->spans.size();
      while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (r->spans[mid].begin <= off) lo = mid + 1; else hi = mid;
      }
      if (lo > 0 && off < r->spans[lo - 1].end) {
        const auto& s = r->spans[lo - 1];
        SafeWrite("tensor \"");
        SafeWrite(s.name.data(), s.name.size());
        SafeWrite("\" (byte ");
        SafeWriteU64(off - s.begin);
        SafeWrite(" of ");
        SafeWriteU64(s.end - s.begin);
        SafeWrite(") in ");
      } else {
        SafeWrite("the data section of ");
      }
    } else {
      SafeWrite("the header of ");
    }
    SafeWrite(r->path.data(), r->path.size());
    SafeWrite(": the file is shorter than when it was opened (truncated or overwritten in place while the job "
              "ran?) or its storage failed; exiting\n");
    ::_exit(kMappedFileFaultExitCode);
  }
  // Not ours: whatever was there before.
  if (g_previous_sigbus.sa_flags & SA_SIGINFO) {
    if (g_previous_sigbus.sa_sigaction != nullptr) return g_previous_sigbus.sa_sigaction(sig, info, ctx);
  } else if (g_previous_sigbus.sa_handler != SIG_DFL && g_previous_sigbus.sa_handler != SIG_IGN &&
             g_previous_sigbus.sa_handler != nullptr) {
    return g_previous_sigbus.sa_handler(sig);
  }
  // Default action: re-raised when the faulting access runs again.
  signal(SIGBUS, SIG_DFL);
}

void InstallSigbusHandler() {
  std::call_once(g_sigbus_once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &g_previous_sigbus);
  });
}

}  // namespace

SafetensorsFile::~SafetensorsFile() {
  if (fault_slot_ >= 0) g_fault_slots[fault_slot_].store(nullptr, std::memory_order_release);
  if (map_ != nullptr) munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return Err(path, absl::StrCat("cannot stat: ", std::strerror(errno)));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Err(path, absl::StrCat("truncated file: ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return Err(path, absl::StrCat("mmap failed: ", std::strerror(errno)));
  auto file = FromBuffer(static_cast<const uint8_t*>(map), size, path);
  if (!file.ok()) {
    munmap(map, size);
    return file.status();
  }
  (*file)->map_ = map;
  (*file)->map_size_ = size;
  // Name the file and tensor if a read of the mapping faults later.
  auto rec = std::make_unique<FaultRecord>();
  rec->map_begin = static_cast<const uint8_t*>(map);
  rec->map_end = rec->map_begin + size;
  rec->data = (*file)->data_;
  rec->path = path;
  for (const auto& [n, t] : (*file)->tensors_) rec->spans.push_back({t.begin, t.end, n});
  std::sort(rec->spans.begin(), rec->spans.end(),
            [](const FaultRecord::Span& a, const FaultRecord::Span& b) { return a.begin < b.begin; });
  InstallSigbusHandler();
  for (int i = 0; i < kMaxFaultSlots; ++i) {
    const FaultRecord* expected = nullptr;
    if (g_fault_slots[i].compare_exchange_strong(expected, rec.get(), std::memory_order_acq_rel)) {
      (*file)->fault_slot_ = i;
      break;
    }
  }
  (*file)->fault_record_ = std::move(rec);
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBuffer(const uint8_t* bytes,
                                                                             uint64_t size,
                                                                             const std::string& name) {
  if (size < 8) return Err(name, absl::StrCat("truncated file: ", size, " bytes, shorter than the 8-byte header length"));
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
  if (header_len > kMaxHeaderBytes) {
    return Err(name, absl::StrCat("header length ", header_len, " exceeds the ", kMaxHeaderBytes, "-byte limit"));
  }
  if (header_len > size - 8) {
    return Err(name, absl::StrCat("truncated file: header length ", header_len, " exceeds the ",
                                  size - 8, " bytes after the length field"));
  }
  const uint64_t data_size = size - 8 - header_len;
  boost::system::error_code ec;
  json::value root = json::parse(
      json::string_view(reinterpret_cast<const char*>(bytes + 8), header_len), ec);
  if (ec) return Err(name, absl::StrCat("header is not valid JSON: ", ec.message()));
  if (!root.is_object()) return Err(name, "header must be a JSON object");

  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = name;
  file->data_ = bytes + 8 + header_len;
  struct Span { uint64_t begin, end; std::string name; };
  std::vector<Span> spans;
  for (const auto& kv : root.as_object()) {
    const std::string key(kv.key());
    if (key == "__metadata__") {
      if (!kv.value().is_object()) return Err(name, "__metadata__ must be an object of strings");
      for (const auto& m : kv.value().as_object()) {
        if (!m.value().is_string()) {
          return Err(name, absl::StrCat("__metadata__ key \"", std::string(m.key()), "\" must be a string"));
        }
        file->metadata_[std::string(m.key())] = std::string(m.value().as_string());
      }
      continue;
    }
    if (!kv.value().is_object()) return TensorErr(name, key, "header entry must be an object");
    const json::object& o = kv.value().as_object();
    TensorInfo t;
    auto dt = o.find("dtype");
    if (dt == o.end() || !dt->value().is_string()) return TensorErr(name, key, "missing string \"dtype\"");
    const std::string dtype_str(dt->value().as_string());
    if (!ParseDType(dtype_str, &t.dtype)) {
      return TensorErr(name, key, absl::StrCat("unknown dtype \"", dtype_str,
                                               "\" (supported: F32, BF16, F16, F8_E4M3, F64, I64, I32, U8, BOOL)"));
    }
    auto sh = o.find("shape");
    if (sh == o.end() || !sh->value().is_array()) return TensorErr(name, key, "missing array \"shape\"");
    uint64_t numel = 1;
    for (const auto& d : sh->value().as_array()) {
      if (!d.is_int64() || d.as_int64() < 0) {
        return TensorErr(name, key, absl::StrCat("shape entries must be non-negative integers, got ", json::serialize(sh->value())));
      }
      t.shape.push_back(d.as_int64());
      // Every partial product must fit in int64: TensorInfo::numel() multiplies
      // in int64 and a later zero dimension would otherwise hide the overflow.
      if (MulOverflows(numel, static_cast<uint64_t>(d.as_int64()), &numel) || numel > INT64_MAX) {
        return TensorErr(name, key, absl::StrCat("shape ", json::serialize(sh->value()), " overflows"));
      }
    }
    auto off = o.find("data_offsets");
    if (off == o.end() || !off->value().is_array() || off->value().as_array().size() != 2) {
      return TensorErr(name, key, "missing \"data_offsets\" [begin, end]");
    }
    const auto& oa = off->value().as_array();
    for (const auto& v : oa) {
      if (!(v.is_int64() && v.as_int64() >= 0) && !v.is_uint64()) {
        return TensorErr(name, key, "data_offsets must be non-negative integers");
      }
    }
    t.begin = oa[0].is_uint64() ? oa[0].as_uint64() : static_cast<uint64_t>(oa[0].as_int64());
    t.end = oa[1].is_uint64() ? oa[1].as_uint64() : static_cast<uint64_t>(oa[1].as_int64());
    if (t.begin > t.end) {
      return TensorErr(name, key, absl::StrCat("data_offsets [", t.begin, ", ", t.end, "] are reversed"));
    }
    if (t.end > data_size) {
      return TensorErr(name, key, absl::StrCat("data_offsets end ", t.end, " is out of bounds: the data section has ",
                                               data_size, " bytes (truncated file?)"));
    }
    uint64_t nbytes;
    if (MulOverflows(numel, static_cast<uint64_t>(DTypeSize(t.dtype)), &nbytes) || nbytes != t.end - t.begin) {
      return TensorErr(name, key, absl::StrCat("shape ", ShapeString(t.shape), " of ", dtype_str, " needs ",
                                               numel * DTypeSize(t.dtype), " bytes but data_offsets span ",
                                               t.end - t.begin));
    }
    spans.push_back({t.begin, t.end, key});
    file->tensors_.emplace(key, std::move(t));
  }
  // Tensors must tile the data section: no overlap, no gap (as the reference
  // safetensors library requires).
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    if (spans[i].begin < cursor) {
      return TensorErr(name, spans[i].name, absl::StrCat("data [", spans[i].begin, ", ", spans[i].end,
                                                         ") overlaps tensor \"", spans[i - 1].name, "\""));
    }
    if (spans[i].begin > cursor) {
      return TensorErr(name, spans[i].name, absl::StrCat("data starts at ", spans[i].begin,
                                                         " leaving a gap after byte ", cursor));
    }
    cursor = spans[i].end;
  }
  if (cursor != data_size) {
    return Err(name, absl::StrCat("data section has ", data_size, " bytes but tensors cover ", cursor));
  }
  return file;
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsFile::TensorNames() const {
  std::vector<std::string> out;
  for (const auto& kv : tensors_) out.push_back(kv.first);
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  auto ck = std::make_unique<Checkpoint>();
  ck->dir_ = dir;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single = fs::path(dir) / "model.safetensors";
  std::error_code ec;
  if (fs::exists(index, ec)) {
    ck->index_path_ = index.string();
    std::ifstream in(index);
    std::stringstream ss;
    ss << in.rdbuf();
    json::value root = json::parse(ss.str(), ec);
    if (ec) return Err(index.string(), absl::StrCat("invalid JSON: ", ec.message()));
    if (!root.is_object()) return Err(index.string(), "must be a JSON object");
    auto wm = root.as_object().find("weight_map");
    if (wm == root.as_object().end() || !wm->value().is_object()) {
      return Err(index.string(), "key \"weight_map\" is missing or not an object");
    }
    for (const auto& kv : wm->value().as_object()) {
      if (!kv.value().is_string()) {
        return Err(index.string(), absl::StrCat("weight_map entry \"", std::string(kv.key()), "\" must be a file name"));
      }
      std::string f(kv.value().as_string());
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
        return Err(index.string(), absl::StrCat("weight_map entry \"", std::string(kv.key()),
                                                "\" names \"", f, "\", which is not a plain file name"));
      }
      ck->weight_map_[std::string(kv.key())] = f;
    }
    return ck;
  }
  if (!fs::exists(single, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no model.safetensors or model.safetensors.index.json"));
  }
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single.string()));
  for (const auto& n : file->TensorNames()) ck->weight_map_[n] = "model.safetensors";
  ck->files_["model.safetensors"] = std::move(file);
  return ck;
}

void Checkpoint::FreeDeleter::operator()(uint8_t* p) const { std::free(p); }

bool Checkpoint::Has(const std::string& name) const { return weight_map_.count(name) > 0; }

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> out;
  for (const auto& kv : weight_map_) out.push_back(kv.first);
  return out;
}

absl::StatusOr<SafetensorsFile*> Checkpoint::FileFor(const std::string& name) {
  auto it = weight_map_.find(name);
  if (it == weight_map_.end()) {
    return absl::NotFoundError(absl::StrCat(index_path_.empty() ? dir_ + "/model.safetensors" : index_path_,
                                            ": missing tensor \"", name, "\""));
  }
  auto f = files_.find(it->second);
  if (f != files_.end()) return f->second.get();
  const std::string path = (std::filesystem::path(dir_) / it->second).string();
  auto opened = SafetensorsFile::Open(path);
  if (!opened.ok()) {
    // The shard's own error names the shard; add which tensor needed it and where it was listed.
    return absl::Status(opened.status().code(),
                        absl::StrCat(opened.status().message(), " (shard of tensor \"", name, "\" listed in ",
                                     index_path_, ")"));
  }
  std::unique_ptr<SafetensorsFile> file = std::move(opened).value();
  SafetensorsFile* raw = file.get();
  files_[it->second] = std::move(file);
  return raw;
}

absl::StatusOr<TensorRef> Checkpoint::Get(const std::string& name, const std::vector<int64_t>& expected_shape) {
  ASSIGN_OR_RETURN(SafetensorsFile * file, FileFor(name));
  const TensorInfo* info = file->Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat(file->path(), ": missing tensor \"", name,
                                            "\" (the index lists it in this file)"));
  }
  if (!expected_shape.empty() && info->shape != expected_shape) {
    return TensorErr(file->path(), name, absl::StrCat("wrong shape ", ShapeString(info->shape),
                                                      ", expected ", ShapeString(expected_shape)));
  }
  TensorRef ref;
  ref.name = name;
  ref.file = file->path();
  ref.dtype = info->dtype;
  ref.shape = info->shape;
  ref.data = file->Data(*info);
  ref.bytes = info->end - info->begin;
  // Never form a misaligned typed pointer: a tensor whose bytes are not
  // aligned for its element type (an odd header length, say) is read from an
  // aligned copy. Reading it through memcpy in every kernel would cost every
  // well-formed checkpoint; copying costs only the odd ones.
  const uint64_t align = static_cast<uint64_t>(std::max<int64_t>(1, DTypeSize(info->dtype)));
  if (ref.bytes > 0 && reinterpret_cast<uintptr_t>(ref.data) % align != 0) {
    auto& copy = aligned_copies_[name];
    if (copy == nullptr) {
      constexpr uint64_t kAlign = 64;
      const uint64_t rounded = (ref.bytes + kAlign - 1) / kAlign * kAlign;
      copy.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, rounded)));
      if (copy == nullptr) {
        return absl::ResourceExhaustedError(absl::StrCat(file->path(), ": tensor \"", name, "\": cannot allocate ",
                                                         ref.bytes, " bytes for an aligned copy"));
      }
      std::memcpy(copy.get(), ref.data, ref.bytes);
      bytes_copied_ += ref.bytes;
    }
    ref.data = copy.get();
  }
  if (!counted_[name]) {
    counted_[name] = true;
    bytes_requested_ += ref.bytes;
    requested_.push_back({static_cast<const uint8_t*>(ref.data), ref.bytes, ref.dtype, name, ref.file});
  }
  return ref;
}

void Checkpoint::Prefault() const {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  volatile uint8_t sink = 0;
  for (const auto& [ptr, bytes, dtype, name, file] : requested_) {
    for (uint64_t off = 0; off < bytes; off += page) sink = sink + ptr[off];
    if (bytes > 0) sink = sink + ptr[bytes - 1];
  }
  (void)sink;
}

namespace {

// Index of the first non-finite element of n elements of `dtype` at `p`, or -1
// (integer dtypes: always -1). Non-finite = all exponent bits set (F32, BF16,
// F16); E4M3 has no infinity, its NaN is S.1111.111.
template <typename U, U kMask, U kExp>
int64_t FirstNonFiniteBits(const U* v, int64_t n) {
  constexpr int64_t kChunk = 4096;
  for (int64_t a = 0; a < n; a += kChunk) {
    const int64_t e = std::min(n, a + kChunk);
    // (x & kMask) ^ kExp is 0 exactly for a non-finite x. An unsigned min
    // reduction of it vectorises (vpminu*) even at -O2 with the pragma; the
    // former `bad = bad || ...` did not, and scanned ~0.5 GB/s per thread,
    // 20x slower than the page touching it replaced (docs/reliability.md).
    U low = static_cast<U>(~U{0});
#pragma omp simd reduction(min : low)
    for (int64_t i = a; i < e; ++i) low = std::min(low, static_cast<U>((v[i] & kMask) ^ kExp));
    if (low == 0) {
      for (int64_t i = a; i < e; ++i) {
        if (static_cast<U>(v[i] & kMask) == kExp) return i;
      }
    }
  }
  return -1;
}

int64_t FirstNonFinite(DType dtype, const void* p, int64_t n) {
  switch (dtype) {
    case DType::kF32:
      return FirstNonFiniteBits<uint32_t, 0x7F800000u, 0x7F800000u>(static_cast<const uint32_t*>(p), n);
    case DType::kBF16:
      return FirstNonFiniteBits<uint16_t, 0x7F80, 0x7F80>(static_cast<const uint16_t*>(p), n);
    case DType::kF16:
      return FirstNonFiniteBits<uint16_t, 0x7C00, 0x7C00>(static_cast<const uint16_t*>(p), n);
    case DType::kF8E4M3:
      return FirstNonFiniteBits<uint8_t, 0x7F, 0x7F>(static_cast<const uint8_t*>(p), n);
    default:
      return -1;
  }
}

}  // namespace

absl::Status Checkpoint::CheckFinite() const {
  // Tensors in parallel; each is scanned whole (so the error names the first
  // bad element of the first bad tensor in load order).
  const int64_t n = static_cast<int64_t>(requested_.size());
  std::vector<int64_t> bad(n, -1);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < n; ++t) {
    const Requested& r = requested_[t];
    const int64_t size = DTypeSize(r.dtype);
    if (size > 0) bad[t] = FirstNonFinite(r.dtype, r.data, static_cast<int64_t>(r.bytes) / size);
  }
  for (int64_t t = 0; t < n; ++t) {
    if (bad[t] < 0) continue;
    const Requested& r = requested_[t];
    return TensorErr(r.file, r.name, absl::StrCat("holds a non-finite value (NaN or Inf) at element ", bad[t],
                                                  " (", DTypeName(r.dtype), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<WeightView> Checkpoint::GetWeight(const std::string& name, int64_t rows, int64_t cols,
                                                 int64_t fp8_block) {
  ASSIGN_OR_RETURN(TensorRef t, Get(name, {rows, cols}));
  WeightView w;
  w.dtype = t.dtype;
  w.data = t.data;
  w.rows = rows;
  w.cols = cols;
  switch (t.dtype) {
    case DType::kF32:
    case DType::kBF16:
    case DType::kF16:
      return w;
    case DType::kF8E4M3: {
      const std::string sname = name + "_scale_inv";
      const int64_t sr = (rows + fp8_block - 1) / fp8_block, sc = (cols + fp8_block - 1) / fp8_block;
      if (!Has(sname)) {
        return TensorErr(t.file, name, absl::StrCat("is F8_E4M3 but its block scales \"", sname, "\" are missing"));
      }
      ASSIGN_OR_RETURN(TensorRef s, Get(sname, {sr, sc}));
      if (s.dtype != DType::kF32) {
        return TensorErr(s.file, sname, absl::StrCat("block scales must be F32, got ", DTypeName(s.dtype)));
      }
      w.scale_inv = static_cast<const float*>(s.data);
      w.block = fp8_block;
      return w;
    }
    default:
      return TensorErr(t.file, name, absl::StrCat("dtype ", DTypeName(t.dtype), " cannot be a weight matrix"));
  }
}

absl::StatusOr<VectorView> Checkpoint::GetVector(const std::string& name, int64_t n) {
  ASSIGN_OR_RETURN(TensorRef t, Get(name, {n}));
  if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16) {
    return TensorErr(t.file, name, absl::StrCat("dtype ", DTypeName(t.dtype), " is not a float vector type"));
  }
  VectorView v;
  v.dtype = t.dtype;
  v.data = t.data;
  v.size = n;
  return v;
}

absl::StatusOr<uint64_t> ModelFilesFingerprint(const std::string& dir) {
  namespace fs = std::filesystem;
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  };
  std::vector<std::string> files = {"config.json"};
  std::error_code ec;
  std::vector<std::string> st;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (e.path().extension() == ".safetensors" || n == "model.safetensors.index.json" || n == "tokenizer.json" ||
        n == "tokenizer_config.json") {
      st.push_back(n);  // the tokenizer too: ranks must tokenize prompts identically
    }
  }
  if (ec) return absl::NotFoundError(absl::StrCat(dir, ": cannot list directory: ", ec.message()));
  std::sort(st.begin(), st.end());
  files.insert(files.end(), st.begin(), st.end());
  for (const std::string& n : files) {
    const std::string path = (fs::path(dir) / n).string();
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
    mix(n.data(), n.size());
    const uint64_t size = fs::file_size(path, ec);
    mix(&size, sizeof(size));
    uint64_t limit = UINT64_MAX;  // whole file for JSON files
    if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) {
      uint8_t len[8] = {0};
      in.read(reinterpret_cast<char*>(len), 8);
      uint64_t hl = 0;
      for (int i = 7; i >= 0; --i) hl = (hl << 8) | len[i];
      limit = 8 + std::min<uint64_t>(hl, kMaxHeaderBytes);
      in.seekg(0);
    }
    std::vector<char> buf(1 << 16);
    uint64_t done = 0;
    while (done < limit && in) {
      in.read(buf.data(), static_cast<std::streamsize>(std::min<uint64_t>(buf.size(), limit - done)));
      const std::streamsize got = in.gcount();
      if (got <= 0) break;
      mix(buf.data(), static_cast<size_t>(got));
      done += static_cast<uint64_t>(got);
    }
    // Same structure but other weights (another seed, another fine-tune) must
    // differ too: sample 64 evenly spaced 4 KiB blocks of the data section.
    if (limit != UINT64_MAX && size > limit) {
      in.clear();
      constexpr int kSamples = 64;
      constexpr uint64_t kBlock = 4096;
      const uint64_t span = size - limit;
      for (int i = 0; i < kSamples; ++i) {
        const uint64_t off = limit + span * i / kSamples;
        in.seekg(static_cast<std::streamoff>(off));
        in.read(buf.data(), static_cast<std::streamsize>(std::min<uint64_t>(kBlock, size - off)));
        mix(buf.data(), static_cast<size_t>(std::max<std::streamsize>(0, in.gcount())));
        in.clear();
      }
    }
  }
  return h;
}

}  // namespace deepshard
