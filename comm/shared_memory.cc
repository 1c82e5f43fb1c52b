#include "comm/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard {
namespace {

constexpr int kNameLen = 96;

// Same machine <=> same hostname and same kernel boot id.
std::string NodeIdentity() {
  char host[64] = {0};
  gethostname(host, sizeof(host) - 1);
  std::string boot;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::getline(f, boot);
  std::string id = absl::StrCat(host, "|", boot);
  id.resize(kNameLen, '\0');
  return id;
}

void* MapSegment(const char* name, int64_t bytes, bool create, std::string* error) {
  const int fd = shm_open(name, create ? (O_CREAT | O_EXCL | O_RDWR) : O_RDWR, 0600);
  if (fd < 0) {
    *error = absl::StrCat("shm_open(", name, "): ", std::strerror(errno));
    return nullptr;
  }
  if (create) {
    // Reserve the pages now: a tmpfs that is too small fails here, not with a
    // SIGBUS on first touch.
    const int rc = posix_fallocate(fd, 0, bytes);
    if (rc != 0) {
      *error = absl::StrCat("posix_fallocate(", name, ", ", bytes, " bytes): ", std::strerror(rc));
      close(fd);
      shm_unlink(name);
      return nullptr;
    }
  }
  // MAP_POPULATE: map every page now so that steady-state calls take no faults.
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    *error = absl::StrCat("mmap(", name, ", ", bytes, " bytes): ", std::strerror(errno));
    if (create) shm_unlink(name);
    return nullptr;
  }
  return p;
}

// Collective: every rank learns whether all ranks succeeded (first failing rank, or -1).
absl::StatusOr<int> FirstFailure(Communicator& comm, bool ok) {
  const int R = comm.size();
  int32_t mine = ok ? 1 : 0;
  std::vector<int32_t> all(R);
  RETURN_IF_ERROR(comm.AllGather(&mine, all.data(), 1, CommDType::kI32));
  for (int p = 0; p < R; ++p)
    if (all[p] == 0) return p;
  return -1;
}

}  // namespace

SharedSegments::~SharedSegments() {
  for (char* m : maps_)
    if (m != nullptr) munmap(m, bytes_);
}

absl::StatusOr<std::unique_ptr<SharedSegments>> SharedSegments::Create(Communicator& comm,
                                                                      int64_t bytes_per_rank) {
  const int R = comm.size(), me = comm.rank();
  const std::string where = absl::StrCat("SharedSegments on rank ", me, "/", R, ": ");
  bytes_per_rank = std::max<int64_t>(bytes_per_rank, 1);

  // 1. All on one machine?
  const std::string id = NodeIdentity();
  std::vector<char> ids(static_cast<size_t>(R) * kNameLen);
  RETURN_IF_ERROR(comm.AllGather(id.data(), ids.data(), kNameLen, CommDType::kU8));
  for (int p = 0; p < R; ++p) {
    if (std::memcmp(ids.data() + p * kNameLen, id.data(), kNameLen) != 0) {
      return absl::UnavailableError(absl::StrCat(where, "rank ", p, " runs on another machine"));
    }
  }

  std::unique_ptr<SharedSegments> seg(new SharedSegments);
  seg->bytes_ = bytes_per_rank;
  seg->maps_.assign(R, nullptr);

  // 2. Create this rank's segment under a name no other job uses.
  std::random_device rd;
  std::string name = absl::StrCat("/deepshard-", getpid(), "-", rd(), "-", me);
  name.resize(kNameLen, '\0');
  std::string error;
  seg->maps_[me] = static_cast<char*>(MapSegment(name.c_str(), bytes_per_rank, /*create=*/true, &error));
  ASSIGN_OR_RETURN(int bad, FirstFailure(comm, seg->maps_[me] != nullptr));
  if (bad >= 0) {
    if (seg->maps_[me] != nullptr) shm_unlink(name.c_str());
    return absl::UnavailableError(absl::StrCat(where, bad == me ? error : absl::StrCat("rank ", bad, " could not create its segment")));
  }

  // 3. Map every peer's segment; unlink names once all are mapped.
  std::vector<char> names(static_cast<size_t>(R) * kNameLen);
  absl::Status st = comm.AllGather(name.data(), names.data(), kNameLen, CommDType::kU8);
  if (!st.ok()) {
    shm_unlink(name.c_str());
    return st;
  }
  bool ok = true;
  for (int p = 0; p < R && ok; ++p) {
    if (p == me) continue;
    const std::string peer(names.data() + p * kNameLen, strnlen(names.data() + p * kNameLen, kNameLen));
    seg->maps_[p] = static_cast<char*>(MapSegment(peer.c_str(), bytes_per_rank, /*create=*/false, &error));
    ok = seg->maps_[p] != nullptr;
  }
  absl::StatusOr<int> mapped = FirstFailure(comm, ok);  // also: every rank is done opening
  shm_unlink(name.c_str());
  if (!mapped.ok()) return mapped.status();
  if (*mapped >= 0) {
    return absl::UnavailableError(absl::StrCat(where, *mapped == me ? error : absl::StrCat("rank ", *mapped, " could not map the segments")));
  }
  return seg;
}

}  // namespace deepshard
