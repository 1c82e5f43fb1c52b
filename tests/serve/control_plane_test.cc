// Control plane tests: a ControlServer and real ControlClients in one process
// over loopback, plus raw POSIX sockets that play broken or hostile clients
// (and a silent server). Also WireReader against truncation and fuzzed bytes.
#include "serve/control_plane.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "serve/wire.h"

namespace deepshard::serve {
namespace {

using Clock = std::chrono::steady_clock;

Clock::time_point After(double s) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Polls `pred` until it holds or `timeout_s` passes.
bool Eventually(const std::function<bool()>& pred, double timeout_s = 5.0) {
  const auto deadline = After(timeout_s);
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

// Short timers so the suite runs in seconds, but not so short that a loaded
// 2-core machine misses heartbeats.
ControlOptions TestOptions() {
  ControlOptions o;
  o.heartbeat_interval_s = 0.05;
  o.heartbeat_timeout_s = 1.5;
  o.hello_timeout_s = 0.5;
  return o;
}

// ------------------------------------------------------------------ wire ----

TEST(Wire, RoundTripsEveryField) {
  WireWriter w;
  w.PutU8(200);
  w.PutI32(-7);
  w.PutI64(-(int64_t{1} << 40));
  w.PutU32(0xdeadbeef);
  w.PutU64(~uint64_t{0});
  w.PutF32(-0.0f);
  w.PutF64(3.25);
  w.PutString(std::string("a\0b", 3));
  w.PutI32Vector({1, -2, 2147483647});
  w.PutI32Vector({});
  w.PutBytes("tail");
  const std::string bytes = w.Take();

  WireReader r(bytes);
  EXPECT_EQ(*r.U8(), 200);
  EXPECT_EQ(*r.I32(), -7);
  EXPECT_EQ(*r.I64(), -(int64_t{1} << 40));
  EXPECT_EQ(*r.U32(), 0xdeadbeefu);
  EXPECT_EQ(*r.U64(), ~uint64_t{0});
  const float f = *r.F32();
  EXPECT_EQ(f, 0.0f);
  EXPECT_TRUE(std::signbit(f));
  EXPECT_EQ(*r.F64(), 3.25);
  EXPECT_EQ(*r.String(), std::string("a\0b", 3));
  EXPECT_EQ(*r.I32Vector(), (std::vector<int32_t>{1, -2, 2147483647}));
  EXPECT_TRUE(r.I32Vector()->empty());
  EXPECT_EQ(r.Rest(), "tail");
  EXPECT_TRUE(r.Finish().ok());
}

TEST(Wire, LittleEndianOnTheWire) {
  WireWriter w;
  w.PutU32(0x04030201);
  EXPECT_EQ(w.data(), std::string("\x01\x02\x03\x04", 4));
  EXPECT_EQ(EncodeFrame(FrameType::kPlan, "xy").substr(0, 4), "DSCP");
  EXPECT_EQ(EncodeFrame(FrameType::kPlan, "xy").size(), kFrameHeaderSize + 2);
}

TEST(Wire, TruncationNamesTheField) {
  WireWriter w;
  w.PutI64(5);
  w.PutI32Vector({1, 2, 3});
  const std::string full = w.Take();
  for (size_t n = 0; n < full.size(); ++n) {
    WireReader r(std::string_view(full).substr(0, n));
    absl::StatusOr<int64_t> step = r.I64("step");
    absl::StatusOr<std::vector<int32_t>> ids = r.I32Vector("token ids");
    EXPECT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    if (n < 8) {
      EXPECT_FALSE(step.ok());
      EXPECT_NE(r.status().message().find("step"), std::string::npos) << r.status();
    } else {
      EXPECT_TRUE(step.ok());
      EXPECT_NE(r.status().message().find("token ids"), std::string::npos) << r.status();
    }
    EXPECT_FALSE(ids.ok());
    EXPECT_FALSE(r.Finish().ok());
  }
}

TEST(Wire, LyingCountsFailWithoutAllocating) {
  WireWriter w;
  w.PutU64(uint64_t{1} << 62);  // string length far beyond the payload
  w.PutBytes("abc");
  WireReader r1(w.data());
  absl::StatusOr<std::string> s = r1.String("prompt");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("prompt"), std::string::npos);

  WireReader r2(w.data());
  absl::StatusOr<std::vector<int32_t>> v = r2.I32Vector("block table");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("block table"), std::string::npos);
  // The first error sticks.
  EXPECT_FALSE(r2.U8().ok());
  EXPECT_NE(r2.status().message().find("block table"), std::string::npos);
}

TEST(Wire, TrailingBytesAreAnError) {
  WireWriter w;
  w.PutI32(1);
  w.PutU8(0);
  WireReader r(w.data());
  ASSERT_TRUE(r.I32().ok());
  EXPECT_EQ(r.Finish().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Wire, FuzzedPayloadsNeverCrash) {
  WireWriter w;
  w.PutI64(42);
  w.PutString("hello world");
  w.PutI32Vector({1, 2, 3, 4, 5, 6, 7, 8});
  w.PutF32(0.5f);
  w.PutF64(-1.0);
  w.PutU8(3);
  const std::string base = w.Take();
  std::mt19937 rng(1234);
  int failures = 0;
  for (int iter = 0; iter < 5000; ++iter) {
    std::string bytes = base;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 4) {
        case 0:  // flip a byte
          if (!bytes.empty()) bytes[rng() % bytes.size()] = static_cast<char>(rng());
          break;
        case 1:  // truncate
          bytes.resize(rng() % (bytes.size() + 1));
          break;
        case 2:  // insert random bytes
          bytes.insert(rng() % (bytes.size() + 1), std::string(1 + rng() % 9, static_cast<char>(rng())));
          break;
        case 3:  // erase a run
          if (!bytes.empty()) bytes.erase(rng() % bytes.size(), 1 + rng() % 9);
          break;
      }
    }
    WireReader r(bytes);
    (void)r.I64("step");
    (void)r.String("text");
    (void)r.I32Vector("ids");
    (void)r.F32("temperature");
    (void)r.F64("top_p");
    (void)r.U8("flags");
    const absl::Status s = r.Finish();
    if (!s.ok()) {
      ++failures;
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    }
  }
  EXPECT_GT(failures, 1000);  // most mutations must be noticed
}

TEST(ControlPlane, JobSecretIsRandomHex) {
  const std::string a = NewJobSecret();
  const std::string b = NewJobSecret();
  ASSERT_EQ(a.size(), 64u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
}

// -------------------------------------------------------- test helpers ----

// Collects what the server's handlers see (they run on its io thread).
struct Recorder {
  std::mutex mu;
  std::vector<std::pair<int, Frame>> frames;            // not heartbeats
  std::map<int, std::vector<std::string>> heartbeats;  // rank -> payloads
  std::map<int, std::string> lost;                      // rank -> why
  std::map<int, int> lost_calls;

  void Attach(ControlServer& server) {
    server.set_on_frame([this](int rank, Frame f) {
      std::lock_guard<std::mutex> lock(mu);
      if (f.type == FrameType::kHeartbeat) {
        heartbeats[rank].push_back(std::move(f.payload));
      } else {
        frames.emplace_back(rank, std::move(f));
      }
    });
    server.set_on_rank_lost([this](int rank, std::string why) {
      std::lock_guard<std::mutex> lock(mu);
      lost[rank] = std::move(why);
      ++lost_calls[rank];
    });
  }
  size_t frame_count() {
    std::lock_guard<std::mutex> lock(mu);
    return frames.size();
  }
  size_t lost_count() {
    std::lock_guard<std::mutex> lock(mu);
    return lost.size();
  }
  bool is_lost(int rank) {
    std::lock_guard<std::mutex> lock(mu);
    return lost.count(rank) > 0;
  }
  std::string lost_why(int rank) {
    std::lock_guard<std::mutex> lock(mu);
    return lost.count(rank) ? lost[rank] : std::string();
  }
  size_t heartbeat_count(int rank) {
    std::lock_guard<std::mutex> lock(mu);
    return heartbeats[rank].size();
  }
};

// A blocking POSIX TCP client for playing a misbehaving worker.
class RawSocket {
 public:
  explicit RawSocket(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  explicit RawSocket(int fd, bool) : fd_(fd), connected_(true) {}
  ~RawSocket() { Close(); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return connected_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  bool Write(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // One whole frame, or nullopt on EOF, error or timeout.
  std::optional<Frame> ReadFrame(double timeout_s) {
    const auto deadline = After(timeout_s);
    char header[kFrameHeaderSize];
    if (!ReadExact(header, sizeof(header), deadline)) return std::nullopt;
    WireReader r(std::string_view(header, sizeof(header)));
    (void)r.U32();
    const uint32_t type = *r.U32();
    const uint64_t length = *r.U64();
    std::string payload(length, '\0');
    if (length > 0 && !ReadExact(payload.data(), length, deadline)) return std::nullopt;
    return Frame{static_cast<FrameType>(type), std::move(payload)};
  }

  // True once the peer has closed (EOF or reset); frames before that are skipped.
  bool WaitClosed(double timeout_s) {
    const auto deadline = After(timeout_s);
    char buf[4096];
    while (Clock::now() < deadline) {
      if (!Readable(deadline)) return false;
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return true;
    }
    return false;
  }

 private:
  bool Readable(Clock::time_point deadline) {
    const int ms = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (ms <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, ms) > 0;
  }
  bool ReadExact(char* out, size_t n, Clock::time_point deadline) {
    while (n > 0) {
      if (!Readable(deadline)) return false;
      ssize_t got = ::recv(fd_, out, n, 0);
      if (got <= 0) return false;
      out += got;
      n -= static_cast<size_t>(got);
    }
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
};

std::string RawHeader(uint32_t magic, uint32_t type, uint64_t length) {
  WireWriter w;
  w.PutU32(magic);
  w.PutU32(type);
  w.PutU64(length);
  return w.Take();
}

// A server for world size 4 (workers 1..3) with a recorder attached.
class ControlPlaneTest : public ::testing::Test {
 protected:
  void StartServer(int world_size = 4, ControlOptions opts = TestOptions(), std::string host = "127.0.0.1") {
    opts_ = opts;
    auto server = ControlServer::Start(host, 0, secret_, world_size, opts);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    recorder_.Attach(*server_);
    ASSERT_GT(server_->port(), 0);
  }

  std::unique_ptr<ControlClient> Connect(int rank) {
    ControlOptions opts = opts_;
    opts.hello_timeout_s = 5.0;  // client side: only bounds the wait for the welcome
    auto client = ControlClient::Connect("127.0.0.1", server_->port(), secret_, rank, 5.0, opts);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  // Checks both directions through `client`: a plan from rank 0 and results back.
  void ExpectFramesFlow(ControlClient& client, int rank, const std::string& tag) {
    server_->Send(rank, FrameType::kPlan, "plan " + tag);
    absl::StatusOr<Frame> f = client.Receive(5.0);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->type, FrameType::kPlan);
    EXPECT_EQ(f->payload, "plan " + tag);
    const size_t before = recorder_.frame_count();
    client.Send(FrameType::kResults, "results " + tag);
    ASSERT_TRUE(Eventually([&] { return recorder_.frame_count() > before; }));
    std::lock_guard<std::mutex> lock(recorder_.mu);
    EXPECT_EQ(recorder_.frames.back().first, rank);
    EXPECT_EQ(recorder_.frames.back().second.type, FrameType::kResults);
    EXPECT_EQ(recorder_.frames.back().second.payload, "results " + tag);
  }

  void TearDown() override {
    if (server_) server_->Stop();
  }

  std::string secret_ = NewJobSecret();
  ControlOptions opts_;
  Recorder recorder_;
  std::unique_ptr<ControlServer> server_;
};

// --------------------------------------------------------- happy paths ----

TEST_F(ControlPlaneTest, WorkersConnectAndFramesFlowBothWays) {
  StartServer();
  std::vector<std::unique_ptr<ControlClient>> clients;
  for (int r = 1; r <= 3; ++r) {
    clients.push_back(Connect(r));
    ASSERT_NE(clients.back(), nullptr);
    clients.back()->set_heartbeat_payload([r] { return "stats of rank " + std::to_string(r); });
  }
  ASSERT_TRUE(server_->WaitForWorkers(5.0).ok());
  for (int r = 1; r <= 3; ++r) EXPECT_TRUE(server_->IsConnected(r));

  // Plans arrive in order at every worker, whichever thread broadcasts.
  constexpr int kPlans = 200;
  for (int i = 0; i < kPlans; ++i) {
    WireWriter w;
    w.PutI64(i);
    w.PutString(std::string(static_cast<size_t>(i % 7) * 100, 'p'));
    server_->Broadcast(FrameType::kPlan, w.data());
  }
  server_->Broadcast(FrameType::kShutdown, "");
  for (int r = 1; r <= 3; ++r) {
    for (int i = 0; i < kPlans; ++i) {
      absl::StatusOr<Frame> f = clients[r - 1]->Receive(5.0);
      ASSERT_TRUE(f.ok()) << f.status();
      ASSERT_EQ(f->type, FrameType::kPlan);
      WireReader reader(f->payload);
      EXPECT_EQ(*reader.I64("step"), i);
      EXPECT_EQ(reader.String("body")->size(), static_cast<size_t>(i % 7) * 100);
      EXPECT_TRUE(reader.Finish().ok());
    }
    absl::StatusOr<Frame> f = clients[r - 1]->Receive(5.0);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->type, FrameType::kShutdown);
  }

  // Results from several threads reach on_frame with the sender's rank, in order per rank.
  {
    std::vector<std::thread> senders;
    for (int r = 1; r <= 3; ++r) {
      senders.emplace_back([&, r] {
        for (int i = 0; i < 50; ++i) clients[r - 1]->Send(FrameType::kResults, std::to_string(r * 1000 + i));
      });
    }
    for (auto& t : senders) t.join();
  }
  ASSERT_TRUE(Eventually([&] { return recorder_.frame_count() == 150; }));
  {
    std::lock_guard<std::mutex> lock(recorder_.mu);
    std::map<int, int> next;
    for (const auto& [rank, frame] : recorder_.frames) {
      EXPECT_EQ(frame.type, FrameType::kResults);
      EXPECT_EQ(frame.payload, std::to_string(rank * 1000 + next[rank]++));
    }
    for (int r = 1; r <= 3; ++r) EXPECT_EQ(next[r], 50);
  }

  // Heartbeats carry the provider's payload.
  ASSERT_TRUE(Eventually([&] {
    return recorder_.heartbeat_count(1) >= 2 && recorder_.heartbeat_count(2) >= 2 && recorder_.heartbeat_count(3) >= 2;
  }));
  {
    std::lock_guard<std::mutex> lock(recorder_.mu);
    for (int r = 1; r <= 3; ++r) EXPECT_EQ(recorder_.heartbeats[r].back(), "stats of rank " + std::to_string(r));
  }
  EXPECT_EQ(server_->rejected_connections(), 0);
  EXPECT_EQ(recorder_.lost_count(), 0u);
}

TEST_F(ControlPlaneTest, LargePayloadArrivesIntact) {
  StartServer(2);
  auto client = Connect(1);
  ASSERT_NE(client, nullptr);
  std::string big(3 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131);
  server_->Send(1, FrameType::kPlan, big);
  absl::StatusOr<Frame> f = client->Receive(5.0);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->payload, big);
  client->Send(FrameType::kResults, big);
  ASSERT_TRUE(Eventually([&] { return recorder_.frame_count() == 1; }));
  std::lock_guard<std::mutex> lock(recorder_.mu);
  EXPECT_EQ(recorder_.frames[0].second.payload, big);
}

TEST_F(ControlPlaneTest, BindsAllInterfaces) {
  StartServer(2, TestOptions(), "0.0.0.0");
  auto client = Connect(1);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(server_->WaitForWorkers(5.0).ok());
  ExpectFramesFlow(*client, 1, "any");
}

TEST_F(ControlPlaneTest, WorldOfOneNeedsNoWorkers) {
  StartServer(1);
  EXPECT_TRUE(server_->WaitForWorkers(0.0).ok());
}

TEST_F(ControlPlaneTest, StartRejectsBadArguments) {
  StartServer(2);
  auto taken = ControlServer::Start("127.0.0.1", server_->port(), secret_, 2, TestOptions());
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kUnavailable) << taken.status();
  EXPECT_NE(taken.status().message().find(std::to_string(server_->port())), std::string::npos);
  ControlOptions bad = TestOptions();
  bad.heartbeat_timeout_s = bad.heartbeat_interval_s;
  EXPECT_EQ(ControlServer::Start("127.0.0.1", 0, secret_, 2, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ControlServer::Start("127.0.0.1", 0, "", 2, TestOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ControlClient::Connect("127.0.0.1", server_->port(), secret_, 0, 1.0, TestOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ControlPlaneTest, WaitForWorkersNamesTheMissingRanks) {
  StartServer(4);
  auto client = Connect(2);
  ASSERT_NE(client, nullptr);
  const auto start = Clock::now();
  absl::Status s = server_->WaitForWorkers(0.3);
  EXPECT_GE(SecondsSince(start), 0.25);
  ASSERT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("ranks 1, 3"), std::string::npos) << s;
}

TEST_F(ControlPlaneTest, ClientRetriesUntilTheServerListens) {
  // Find a free port, then start the server on it only after the client began.
  int port;
  {
    auto probe = ControlServer::Start("127.0.0.1", 0, secret_, 1, TestOptions());
    ASSERT_TRUE(probe.ok());
    port = (*probe)->port();
  }
  absl::StatusOr<std::unique_ptr<ControlClient>> client = absl::UnknownError("not run");
  std::thread t([&] { client = ControlClient::Connect("127.0.0.1", port, secret_, 1, 5.0, TestOptions()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto server = ControlServer::Start("127.0.0.1", port, secret_, 2, TestOptions());
  t.join();
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*server)->WaitForWorkers(5.0).ok());
}

TEST_F(ControlPlaneTest, ConnectGivesUpAtItsDeadline) {
  int port;
  {
    auto probe = ControlServer::Start("127.0.0.1", 0, secret_, 1, TestOptions());
    ASSERT_TRUE(probe.ok());
    port = (*probe)->port();
  }
  const auto start = Clock::now();
  auto client = ControlClient::Connect("127.0.0.1", port, secret_, 1, 0.3, TestOptions());
  EXPECT_LT(SecondsSince(start), 3.0);
  ASSERT_EQ(client.status().code(), absl::StatusCode::kDeadlineExceeded) << client.status();
  EXPECT_NE(client.status().message().find("rank 1"), std::string::npos);
}

TEST_F(ControlPlaneTest, WrongSecretIsPermissionDenied) {
  StartServer(2);
  auto client = ControlClient::Connect("127.0.0.1", server_->port(), "not the secret", 1, 5.0, opts_);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kPermissionDenied) << client.status();
  EXPECT_TRUE(Eventually([&] { return server_->rejected_connections() == 1; }));
}

// ------------------------------------------------------------ liveness ----

TEST_F(ControlPlaneTest, StoppedOrDestroyedClientIsLost) {
  StartServer(4);
  auto c1 = Connect(1);
  auto c2 = Connect(2);
  auto c3 = Connect(3);
  ASSERT_TRUE(c1 && c2 && c3);
  ASSERT_TRUE(server_->WaitForWorkers(5.0).ok());

  auto start = Clock::now();
  c2->Stop();
  ASSERT_TRUE(Eventually([&] { return recorder_.is_lost(2); }, opts_.heartbeat_timeout_s + 1.0));
  EXPECT_LT(SecondsSince(start), opts_.heartbeat_timeout_s + 1.0);
  EXPECT_FALSE(server_->IsConnected(2));
  EXPECT_FALSE(c2->Receive(0.0).ok());

  start = Clock::now();
  c3.reset();
  ASSERT_TRUE(Eventually([&] { return recorder_.is_lost(3); }, opts_.heartbeat_timeout_s + 1.0));
  EXPECT_LT(SecondsSince(start), opts_.heartbeat_timeout_s + 1.0);

  // The survivor is unaffected; a lost rank may not come back.
  ExpectFramesFlow(*c1, 1, "after losses");
  auto again = ControlClient::Connect("127.0.0.1", server_->port(), secret_, 2, 5.0, opts_);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kPermissionDenied) << again.status();
  EXPECT_EQ(server_->WaitForWorkers(0.1).code(), absl::StatusCode::kUnavailable);
  std::lock_guard<std::mutex> lock(recorder_.mu);
  EXPECT_EQ(recorder_.lost_calls[2], 1);
  EXPECT_EQ(recorder_.lost_calls[3], 1);
  EXPECT_EQ(recorder_.lost.count(1), 0u);
}

TEST_F(ControlPlaneTest, SilentAuthenticatedWorkerTimesOut) {
  ControlOptions opts = TestOptions();
  opts.heartbeat_timeout_s = 0.4;
  StartServer(3, opts);
  auto c1 = Connect(1);
  ASSERT_NE(c1, nullptr);

  RawSocket raw(server_->port());
  ASSERT_TRUE(raw.connected());
  ASSERT_TRUE(raw.Write(EncodeFrame(FrameType::kHello, EncodeHello(2, secret_))));
  std::optional<Frame> welcome = raw.ReadFrame(5.0);
  ASSERT_TRUE(welcome.has_value());
  EXPECT_EQ(welcome->type, FrameType::kWelcome);
  const auto joined = Clock::now();
  ASSERT_TRUE(server_->WaitForWorkers(5.0).ok());

  // It stays connected but never sends another byte.
  ASSERT_TRUE(Eventually([&] { return recorder_.is_lost(2); }, 5.0));
  EXPECT_GE(SecondsSince(joined), 0.35);
  EXPECT_NE(recorder_.lost_why(2).find("heartbeat timeout"), std::string::npos) << recorder_.lost_why(2);
  EXPECT_TRUE(raw.WaitClosed(2.0));
  EXPECT_FALSE(recorder_.is_lost(1));  // the heartbeating client is fine
  ExpectFramesFlow(*c1, 1, "after timeout");
  EXPECT_EQ(server_->rejected_connections(), 0);
}

TEST_F(ControlPlaneTest, MalformedFrameFromAuthenticatedWorkerLosesIt) {
  StartServer(3);
  RawSocket raw(server_->port());
  ASSERT_TRUE(raw.Write(EncodeFrame(FrameType::kHello, EncodeHello(2, secret_))));
  ASSERT_TRUE(raw.ReadFrame(5.0).has_value());
  ASSERT_TRUE(raw.Write(RawHeader(0x12345678, 4, 0)));
  ASSERT_TRUE(Eventually([&] { return recorder_.is_lost(2); }));
  EXPECT_NE(recorder_.lost_why(2).find("magic"), std::string::npos) << recorder_.lost_why(2);
  EXPECT_TRUE(raw.WaitClosed(2.0));
  EXPECT_EQ(server_->rejected_connections(), 0);
}

// An authenticated worker that sends a valid frame and then garbage is a
// broken rank (docs/reliability.md, "Fault injection"): rank 0 loses it at
// once (not after a heartbeat timeout), names it and the reason in the log and
// to on_rank_lost, exactly once, never counts it as a rejected stranger, and
// keeps serving the other workers; the rank may not come back, and
// WaitForWorkers reports it. Only a frame cut short with the connection left
// open has to wait for the heartbeat timeout: nothing is wrong until then.
TEST(ControlPlaneGarbage, AnAuthenticatedWorkerSendingGarbageIsLostAtOnceAndNamed) {
  struct Case {
    std::string name;
    std::function<std::string(const std::string& secret)> bytes;  // sent after the valid frames
    std::string reason;         // in the loss message
    bool close_after = false;   // the worker hangs up right after
    bool with_hello = false;    // in the same write as the hello (before the welcome is read)
    bool timeout = false;       // only the heartbeat timeout can tell
  };
  std::mt19937 rng(16);
  std::string noise(64, '\0');
  for (char& c : noise) c = static_cast<char>(rng());
  noise[0] = 'x';  // not the magic's first byte
  const std::vector<Case> cases = {
      {"an HTTP request", [](const std::string&) { return std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n"); },
       "bad frame magic"},
      {"random bytes", [&](const std::string&) { return noise; }, "bad frame magic"},
      {"garbage in the hello's own write", [](const std::string&) { return std::string(40, '\xff'); },
       "bad frame magic", false, true},
      {"a header with a bad magic", [](const std::string&) { return RawHeader(0x12345678, 4, 0); },
       "bad frame magic 0x12345678"},
      {"an unknown frame type", [](const std::string&) { return RawHeader(kFrameMagic, 99, 0); },
       "unknown frame type 99"},
      {"a payload over the limit", [](const std::string&) {
         return RawHeader(kFrameMagic, static_cast<uint32_t>(FrameType::kResults), ControlOptions{}.max_payload + 1);
       }, "exceeds the limit"},
      {"a second hello", [](const std::string& secret) {
         return EncodeFrame(FrameType::kHello, EncodeHello(2, secret));
       }, "unexpected hello"},
      {"a welcome", [](const std::string&) { return EncodeFrame(FrameType::kWelcome, ""); }, "unexpected welcome"},
      {"a header cut short, then a close", [](const std::string&) {
         return EncodeFrame(FrameType::kResults, "abcdef").substr(0, 7);
       }, "connection closed inside a frame header (7 of 16 bytes)", true},
      {"a payload cut short, then a close", [](const std::string&) {
         return EncodeFrame(FrameType::kResults, std::string(100, 'r')).substr(0, kFrameHeaderSize + 10);
       }, "connection closed inside a results payload (10 of 100 bytes)", true},
      {"a payload cut short, then silence", [](const std::string&) {
         return EncodeFrame(FrameType::kResults, std::string(100, 'r')).substr(0, kFrameHeaderSize + 10);
       }, "heartbeat timeout", false, false, true},
  };
  const ControlOptions opts = TestOptions();
  const std::string secret = NewJobSecret();
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto server = ControlServer::Start("127.0.0.1", 0, secret, 3, opts);
    ASSERT_TRUE(server.ok()) << server.status();
    Recorder rec;
    rec.Attach(**server);
    ControlOptions client_opts = opts;
    client_opts.hello_timeout_s = 5.0;
    auto good = ControlClient::Connect("127.0.0.1", (*server)->port(), secret, 1, 5.0, client_opts);
    ASSERT_TRUE(good.ok()) << good.status();

    RawSocket raw((*server)->port());
    ASSERT_TRUE(raw.connected());
    const std::string hello = EncodeFrame(FrameType::kHello, EncodeHello(2, secret));
    Clock::time_point start;
    ::testing::internal::CaptureStderr();
    if (c.with_hello) {
      start = Clock::now();
      ASSERT_TRUE(raw.Write(hello + c.bytes(secret)));
    } else {
      ASSERT_TRUE(raw.Write(hello));
      std::optional<Frame> welcome = raw.ReadFrame(5.0);
      ASSERT_TRUE(welcome.has_value());
      EXPECT_EQ(welcome->type, FrameType::kWelcome);
      // A valid frame first: rank 2 is a working member of the job.
      ASSERT_TRUE(raw.Write(EncodeFrame(FrameType::kHeartbeat, "stats")));
      ASSERT_TRUE(Eventually([&] { return rec.heartbeat_count(2) == 1; }));
      ASSERT_TRUE((*server)->WaitForWorkers(5.0).ok());
      start = Clock::now();
      ASSERT_TRUE(raw.Write(c.bytes(secret)));
    }
    if (c.close_after) raw.Close();
    const bool lost = Eventually([&] { return rec.is_lost(2); }, opts.heartbeat_timeout_s + 2.0);
    const double took = SecondsSince(start);
    const std::string log = ::testing::internal::GetCapturedStderr();
    ASSERT_TRUE(lost) << log;
    const std::string why = rec.lost_why(2);
    EXPECT_NE(why.find(c.reason), std::string::npos) << why;
    if (c.timeout) {
      EXPECT_GE(took, opts.heartbeat_timeout_s - 0.1);
      EXPECT_LT(took, opts.heartbeat_timeout_s + 1.0);
    } else {
      EXPECT_LT(took, 0.5) << "a garbage frame must lose the rank at once, not at the heartbeat timeout";
    }
    // Named in rank 0's log, with its address and the reason.
    EXPECT_NE(log.find("deepshard control (rank 0): lost rank 2 (127.0.0.1:"), std::string::npos) << log;
    EXPECT_NE(log.find(c.reason), std::string::npos) << log;
    EXPECT_EQ(log.find("rejected"), std::string::npos) << log;
    if (!c.close_after) {
      EXPECT_TRUE(raw.WaitClosed(2.0));
    }
    EXPECT_EQ((*server)->rejected_connections(), 0);
    EXPECT_FALSE((*server)->IsConnected(2));
    {
      std::lock_guard<std::mutex> lock(rec.mu);
      EXPECT_EQ(rec.lost_calls[2], 1);
      EXPECT_EQ(rec.lost.count(1), 0u);
      EXPECT_EQ(rec.lost.count(0), 0u);  // rank 0 did not stall: the worker is to blame
    }
    // The other worker goes on; rank 2 may not come back; the loss is reported.
    (*server)->Send(1, FrameType::kPlan, "after " + c.name);
    absl::StatusOr<Frame> f = (*good)->Receive(5.0);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->payload, "after " + c.name);
    auto again = ControlClient::Connect("127.0.0.1", (*server)->port(), secret, 2, 5.0, client_opts);
    EXPECT_EQ(again.status().code(), absl::StatusCode::kPermissionDenied) << again.status();
    const absl::Status w = (*server)->WaitForWorkers(0.1);
    EXPECT_EQ(w.code(), absl::StatusCode::kUnavailable) << w;
    EXPECT_NE(w.message().find("rank 2"), std::string::npos) << w;
    (*server)->Stop();
    (*good)->Stop();
  }
}

TEST_F(ControlPlaneTest, ReceiveIsUnavailableWhenServerStops) {
  StartServer(2);
  auto client = Connect(1);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(server_->WaitForWorkers(5.0).ok());
  EXPECT_EQ(client->Receive(0.05).status().code(), absl::StatusCode::kDeadlineExceeded);

  absl::StatusOr<Frame> got = absl::UnknownError("not run");
  Clock::time_point returned;
  std::thread waiter([&] {
    got = client->Receive();
    returned = Clock::now();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto stopped = Clock::now();
  server_->Stop();
  waiter.join();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_NE(got.status().message().find("rank 0"), std::string::npos);
  EXPECT_LT(std::chrono::duration<double>(returned - stopped).count(), 1.0);
  EXPECT_FALSE(client->connected());
}

TEST_F(ControlPlaneTest, ShutdownQueuedBeforeStopIsDelivered) {
  StartServer(2);
  auto client = Connect(1);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(server_->WaitForWorkers(5.0).ok());
  for (int i = 0; i < 100; ++i) server_->Broadcast(FrameType::kPlan, std::string(10000, 'x'));
  server_->Broadcast(FrameType::kShutdown, "bye");
  server_->Stop();
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<Frame> f = client->Receive(5.0);
    ASSERT_TRUE(f.ok()) << i << ": " << f.status();
  }
  absl::StatusOr<Frame> f = client->Receive(5.0);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->type, FrameType::kShutdown);
  EXPECT_EQ(f->payload, "bye");
  EXPECT_EQ(client->Receive(5.0).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ControlPlaneTest, ClientNoticesASilentServer) {
  // A fake rank 0 that welcomes and then says nothing more.
  int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);
  std::thread fake([lfd] {
    RawSocket conn(::accept(lfd, nullptr, nullptr), true);
    std::optional<Frame> hello = conn.ReadFrame(5.0);
    if (hello) conn.Write(EncodeFrame(FrameType::kWelcome, ""));
    conn.WaitClosed(10.0);  // keeps reading (heartbeats), never writes
  });
  ControlOptions opts = TestOptions();
  opts.heartbeat_timeout_s = 0.3;
  auto client = ControlClient::Connect("127.0.0.1", port, "s", 1, 5.0, opts);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<Frame> f = (*client)->Receive(5.0);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kUnavailable) << f.status();
  EXPECT_NE(f.status().message().find("heartbeat timeout"), std::string::npos) << f.status();
  client->reset();
  fake.join();
  ::close(lfd);
}

// ----------------------------------------------------- hostile clients ----

struct BadClient {
  std::string name;
  std::function<void(RawSocket&, const std::string& secret)> act;
  bool close_after = false;  // the raw client hangs up itself (nothing to wait for)
};

TEST_F(ControlPlaneTest, BadConnectionsAreDroppedAndServingGoesOn) {
  StartServer(4);
  auto c1 = Connect(1);
  ASSERT_NE(c1, nullptr);

  const std::vector<BadClient> cases = {
      {"wrong secret", [](RawSocket& s, const std::string&) {
         s.Write(EncodeFrame(FrameType::kHello, EncodeHello(2, "guess")));
       }},
      {"secret off by one byte", [](RawSocket& s, const std::string& secret) {
         std::string wrong = secret;
         wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
         s.Write(EncodeFrame(FrameType::kHello, EncodeHello(2, wrong)));
       }},
      {"secret prefix", [](RawSocket& s, const std::string& secret) {
         s.Write(EncodeFrame(FrameType::kHello, EncodeHello(2, secret.substr(0, 63))));
       }},
      {"garbage bytes", [](RawSocket& s, const std::string&) {
         s.Write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
       }},
      {"bad magic", [](RawSocket& s, const std::string&) { s.Write(RawHeader(0xdeadbeef, 1, 4) + "abcd"); }},
      {"oversized length", [](RawSocket& s, const std::string&) {
         s.Write(RawHeader(kFrameMagic, 1, uint64_t{1} << 40));
       }},
      {"hello over the hello limit", [](RawSocket& s, const std::string&) {
         s.Write(RawHeader(kFrameMagic, 1, kMaxHelloPayload + 1));
       }},
      {"unknown type", [](RawSocket& s, const std::string&) { s.Write(RawHeader(kFrameMagic, 99, 0)); }},
      {"plan before hello", [](RawSocket& s, const std::string&) {
         s.Write(EncodeFrame(FrameType::kPlan, "step"));
       }},
      {"malformed hello", [](RawSocket& s, const std::string&) { s.Write(EncodeFrame(FrameType::kHello, "ab")); }},
      {"rank 0", [](RawSocket& s, const std::string& secret) {
         s.Write(EncodeFrame(FrameType::kHello, EncodeHello(0, secret)));
       }},
      {"rank out of range", [](RawSocket& s, const std::string& secret) {
         s.Write(EncodeFrame(FrameType::kHello, EncodeHello(4, secret)));
       }},
      {"negative rank", [](RawSocket& s, const std::string& secret) {
         s.Write(EncodeFrame(FrameType::kHello, EncodeHello(-1, secret)));
       }},
      {"duplicate rank", [](RawSocket& s, const std::string& secret) {
         s.Write(EncodeFrame(FrameType::kHello, EncodeHello(1, secret)));
       }},
      {"no hello", [](RawSocket&, const std::string&) {}},
      {"truncated header then close", [](RawSocket& s, const std::string&) {
         s.Write(EncodeFrame(FrameType::kHello, EncodeHello(2, "x")).substr(0, 7));
         s.Close();
       }, true},
      {"truncated hello payload then close", [](RawSocket& s, const std::string& secret) {
         const std::string hello = EncodeFrame(FrameType::kHello, EncodeHello(2, secret));
         s.Write(hello.substr(0, hello.size() - 5));
         s.Close();
       }, true},
      {"connect and close", [](RawSocket& s, const std::string&) { s.Close(); }, true},
  };

  int64_t expected = 0;
  for (const BadClient& bad : cases) {
    SCOPED_TRACE(bad.name);
    RawSocket raw(server_->port());
    ASSERT_TRUE(raw.connected());
    const auto start = Clock::now();
    bad.act(raw, secret_);
    ++expected;
    if (!bad.close_after) {
      EXPECT_TRUE(raw.WaitClosed(5.0));
      if (bad.name == "no hello") {
        EXPECT_GE(SecondsSince(start), 0.45);
      }
    }
    EXPECT_TRUE(Eventually([&] { return server_->rejected_connections() == expected; }))
        << server_->rejected_connections() << " rejected, expected " << expected;
    ExpectFramesFlow(*c1, 1, bad.name);
  }

  // A worker that connects after all that is served normally.
  auto c2 = Connect(2);
  ASSERT_NE(c2, nullptr);
  auto c3 = Connect(3);
  ASSERT_NE(c3, nullptr);
  ASSERT_TRUE(server_->WaitForWorkers(5.0).ok());
  ExpectFramesFlow(*c2, 2, "late worker");
  ExpectFramesFlow(*c1, 1, "first worker");
  EXPECT_EQ(server_->rejected_connections(), expected);
  EXPECT_EQ(recorder_.lost_count(), 0u);
}

TEST_F(ControlPlaneTest, ManyBadConnectionsAtOnce) {
  StartServer(2);
  auto c1 = Connect(1);
  ASSERT_NE(c1, nullptr);
  std::vector<std::unique_ptr<RawSocket>> raws;
  for (int i = 0; i < 20; ++i) {
    raws.push_back(std::make_unique<RawSocket>(server_->port()));
    raws.back()->Write(RawHeader(kFrameMagic + static_cast<uint32_t>(i % 2), 1 + i % 9, 8));
  }
  EXPECT_TRUE(Eventually([&] { return server_->rejected_connections() == 20; }));
  ExpectFramesFlow(*c1, 1, "after flood");
}

TEST_F(ControlPlaneTest, StopIsIdempotentAndHandlersStop) {
  StartServer(2);
  auto c1 = Connect(1);
  ASSERT_NE(c1, nullptr);
  server_->Stop();
  server_->Stop();
  server_->Send(1, FrameType::kPlan, "ignored");
  server_->Broadcast(FrameType::kPlan, "ignored");
  EXPECT_EQ(server_->WaitForWorkers(1.0).code(), absl::StatusCode::kCancelled);
  c1->Stop();
  c1->Stop();
  c1->Send(FrameType::kResults, "ignored");
  EXPECT_EQ(recorder_.lost_count(), 0u);  // no on_rank_lost for a stop of our own
}

}  // namespace
// ------------------------------------------------------ issue 16 (#4, #6) ----

int CountLines(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t pos = 0; (pos = text.find(needle, pos)) != std::string::npos; pos += needle.size()) ++n;
  return n;
}

TEST_F(ControlPlaneTest, RejectedConnectionLogsAreRateLimited) {
  StartServer(2);
  ::testing::internal::CaptureStderr();
  std::vector<std::unique_ptr<RawSocket>> raws;
  for (int i = 0; i < 60; ++i) {
    raws.push_back(std::make_unique<RawSocket>(server_->port()));
    raws.back()->Write(RawHeader(kFrameMagic + 1, 1, 8));
  }
  const bool all = Eventually([&] { return server_->rejected_connections() == 60; });
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(all) << server_->rejected_connections();
  EXPECT_LE(CountLines(log, "rejected connection"), 5) << log;
  EXPECT_GE(CountLines(log, "rejected connection"), 1) << log;
}

TEST_F(ControlPlaneTest, AWorkerLeavingAfterTheShutdownIsNotLost) {
  StartServer(2);
  auto c1 = Connect(1);
  ASSERT_NE(c1, nullptr);
  ASSERT_TRUE(server_->WaitForWorkers(5).ok());
  ::testing::internal::CaptureStderr();
  server_->Broadcast(FrameType::kShutdown, "");
  absl::StatusOr<Frame> f = c1->Receive(5.0);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->type, FrameType::kShutdown);
  c1->Stop();
  const bool gone = Eventually([&] {
    std::lock_guard<std::mutex> lock(recorder_.mu);
    return recorder_.lost.count(1) == 1;
  });
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(gone);
  EXPECT_EQ(log.find("lost rank"), std::string::npos) << log;
  EXPECT_NE(log.find("rank 1 (127.0.0.1:"), std::string::npos) << log;
  std::lock_guard<std::mutex> lock(recorder_.mu);
  EXPECT_NE(recorder_.lost[1].find("left after the shutdown"), std::string::npos) << recorder_.lost[1];
}

TEST_F(ControlPlaneTest, AStalledRankZeroSaysSoInsteadOfBlamingTheWorker) {
  ControlOptions o = TestOptions();
  o.heartbeat_timeout_s = 0.3;
  StartServer(2, o);
  auto c1 = Connect(1);
  ASSERT_NE(c1, nullptr);
  ASSERT_TRUE(server_->WaitForWorkers(5).ok());
  // Rank 0's io thread stops for longer than the worker's heartbeat timeout
  // (as under SIGSTOP): the worker gives up and leaves.
  server_->set_on_frame([](int, Frame f) {
    if (f.type == FrameType::kResults) std::this_thread::sleep_for(std::chrono::milliseconds(800));
  });
  ::testing::internal::CaptureStderr();
  c1->Send(FrameType::kResults, "x");
  ASSERT_TRUE(Eventually([&] { return !c1->connected(); }));
  c1->Stop();
  const bool reported = Eventually([&] {
    std::lock_guard<std::mutex> lock(recorder_.mu);
    return recorder_.lost_calls[0] + recorder_.lost_calls[1] == 1;
  });
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(reported) << log;
  // Rank 0 is the one at fault (on_rank_lost gets rank 0), and the message
  // says so before naming the worker that gave up: nothing reads "lost rank 1".
  std::lock_guard<std::mutex> lock(recorder_.mu);
  EXPECT_EQ(recorder_.lost.count(1), 0u) << recorder_.lost[1];
  EXPECT_EQ(recorder_.lost[0].find("rank 0 did not run for "), 0u) << recorder_.lost[0];
  EXPECT_NE(recorder_.lost[0].find("rank 1 gave up on it"), std::string::npos) << recorder_.lost[0];
  EXPECT_EQ(log.find("lost rank 1"), std::string::npos) << log;
  EXPECT_NE(log.find("rank 0 did not run for "), std::string::npos) << log;
  EXPECT_NE(log.find("rank 1 (127.0.0.1:"), std::string::npos) << log;
}

}  // namespace deepshard::serve
