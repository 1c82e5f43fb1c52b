// The control plane of `deepshard serve`: a TCP channel between rank 0 and
// every other rank, for small messages. Tensors stay on MPI (the data plane).
//
// Rank 0 runs a ControlServer; ranks 1..N-1 each run a ControlClient. At start
// the launcher starts the server (port 0 = ephemeral), broadcasts "host:port"
// and NewJobSecret() over MPI, and every worker connects and authenticates:
//
//   rank 0:  ASSIGN_OR_RETURN(auto server, ControlServer::Start("0.0.0.0", 0, secret, world));
//            server->set_on_frame(...); server->set_on_rank_lost(...);
//            RETURN_IF_ERROR(server->WaitForWorkers(60));
//            server->Broadcast(FrameType::kPlan, plan_bytes);
//   rank r:  ASSIGN_OR_RETURN(auto client, ControlClient::Connect(host, port, secret, r, 60));
//            ASSIGN_OR_RETURN(Frame f, client->Receive());
//
// Wire format: every frame is a 16-byte little-endian header
// {u32 magic "DSCP", u32 type, u64 payload length} and then the payload. The
// first frame of a client is kHello {i32 rank, secret bytes}; the server answers
// kWelcome (empty payload). Payloads are built with serve/wire.h.
//
// Liveness: each side sends kHeartbeat every heartbeat_interval_s (a worker's
// carries the payload of its heartbeat provider, e.g. stats) and declares the
// other lost after heartbeat_timeout_s without any frame. An EOF, a socket
// error or a malformed frame also loses the rank at once.
//
// Hostile or confused connections (wrong secret, bad rank, bad magic, unknown
// type, over-long payload, no hello in time, closing early) are dropped, logged
// to stderr with the peer's address and the reason (rate-limited: the first 5
// in 10 s, then one line with the count of those left out), and counted in
// rejected_connections(); nothing else is affected.
//
// Loss messages say what happened: a worker that leaves after rank 0 sent
// kShutdown "left after the shutdown" (not a loss in the log); a worker lost
// just after rank 0's own io thread did not run for longer than half the
// heartbeat timeout (rank 0 was stopped or stalled, and the worker most
// likely timed out on it) is reported as rank 0's failure ("rank 0 did not
// run for X s ... and rank N gave up on it"), and that own stall does not
// time out the workers.
//
// Threads: each side runs one io thread. Send/Broadcast are thread-safe and
// never block: frames are queued per connection and written in order. Handlers
// run on the io thread and must not block for long or call Stop().
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deepshard::serve {

enum class FrameType : uint32_t {
  kHello = 1,      // worker -> 0: {i32 rank, secret bytes}
  kWelcome = 2,    // 0 -> worker: the hello was accepted
  kPlan = 3,       // 0 -> workers: a step plan
  kResults = 4,    // last-stage workers -> 0: finished tokens
  kHeartbeat = 5,  // both ways; a worker's carries its stats payload
  kShutdown = 6,   // 0 -> workers
  kFatal = 7,      // worker -> 0: an error it cannot recover from
  kDrain = 8,      // worker -> 0: it got SIGTERM; please drain the job
};
std::string_view FrameTypeName(FrameType type);

struct Frame {
  FrameType type;
  std::string payload;
};

inline constexpr uint32_t kFrameMagic = 0x50435344u;  // the bytes "DSCP" read as little-endian u32
inline constexpr size_t kFrameHeaderSize = 16;
// Payload limit for a connection that has not yet authenticated: a hello is tiny.
inline constexpr uint64_t kMaxHelloPayload = 4096;

// Header then payload, as written on the wire.
std::string EncodeFrame(FrameType type, std::string_view payload);
// Hello payload: {i32 rank, secret bytes}.
std::string EncodeHello(int rank, std::string_view secret);

// The frame codec without the sockets (serve/control_frame.cc; fuzzed by
// tests/fuzz/wire_fuzz.cc). Both ends read a frame as DecodeFrameHeader on
// 16 bytes, then `length` payload bytes.
struct FrameHeader {
  FrameType type;
  uint64_t length;
};
std::string EncodeFrameHeader(FrameType type, uint64_t length);
// InvalidArgument for a bad magic ("bad frame magic 0x..."), an unknown type,
// or a length over max_payload (naming the frame type and both sizes).
absl::StatusOr<FrameHeader> DecodeFrameHeader(const std::array<char, kFrameHeaderSize>& bytes, uint64_t max_payload);
struct Hello {
  int32_t rank;
  std::string_view secret;  // points into the payload
};
// InvalidArgument "malformed hello: ..." when the payload is shorter than the rank.
absl::StatusOr<Hello> DecodeHello(std::string_view payload);

// 32 random bytes (getrandom, else std::random_device), hex-encoded: 64 chars.
std::string NewJobSecret();

struct ControlOptions {
  double heartbeat_interval_s = 0.5;  // each side sends kHeartbeat this often
  double heartbeat_timeout_s = 3.0;   // no frame for this long from the other side -> lost
  double hello_timeout_s = 5.0;       // server: a new connection must authenticate within this
  uint64_t max_payload = 64ull << 20;  // larger frames are a protocol error
};

class ControlServer {  // rank 0
 public:
  // Binds bind_host:port (port 0: ephemeral; "0.0.0.0", "::", "127.0.0.1" or a
  // name) and accepts workers 1..world_size-1 that authenticate with `secret`.
  // Runs its own io thread.
  static absl::StatusOr<std::unique_ptr<ControlServer>> Start(const std::string& bind_host, int port,
                                                              std::string secret, int world_size,
                                                              ControlOptions opts = {});
  ~ControlServer();  // Stop()
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  int port() const;  // the bound port (the ephemeral one when started with 0)

  // Blocks until every worker has authenticated. DeadlineExceeded naming the
  // missing ranks after `timeout_s`; Unavailable at once if a rank that had
  // joined was lost meanwhile; Cancelled if the server is stopped.
  absl::Status WaitForWorkers(double timeout_s);

  // Thread-safe and non-blocking: queued, then written in order per connection
  // by the io thread. Frames for a rank that is not connected are dropped.
  void Send(int rank, FrameType type, std::string payload);
  void Broadcast(FrameType type, const std::string& payload);  // to every connected worker
  bool IsConnected(int rank) const;

  // Handlers run on the io thread; set them before WaitForWorkers. Every frame
  // but the hello from an authenticated worker goes to on_frame, heartbeats too
  // (so the caller can read their payloads).
  void set_on_frame(std::function<void(int rank, Frame frame)> f);
  // An authenticated worker's connection ended (EOF, socket error), timed out
  // (no frame for heartbeat_timeout_s) or sent a malformed frame (bad magic,
  // unknown type, over-long payload, a second hello: garbage after a valid
  // frame). Called at most once per lost worker: a lost rank may not join
  // again. Not called after Stop(). `rank` is the rank at fault: the worker, or
  // 0 when the worker left right after rank 0 itself did not run for longer
  // than it takes a worker to time out on it (the process was stopped or
  // starved); `why` then names the worker that gave up.
  void set_on_rank_lost(std::function<void(int rank, std::string why)> f);

  // Stops accepting, flushes queued frames (best effort, up to
  // flush_timeout_s), closes every connection and joins the io thread. No
  // handler runs once it returns. Idempotent; must not be called from a handler.
  void Stop(double flush_timeout_s = 1.0);

  int64_t rejected_connections() const;

  class Impl;

 private:
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class ControlClient {  // ranks 1..N-1
 public:
  // Connects (retrying until connect_timeout_s: the server may still be
  // starting), sends the hello and waits up to hello_timeout_s for kWelcome.
  // Runs its own io thread, which also sends a heartbeat every
  // heartbeat_interval_s with the heartbeat provider's payload (empty if none).
  // PermissionDenied if rank 0 closes the connection instead of welcoming it
  // (wrong secret, bad or duplicate rank: rank 0's log says which).
  static absl::StatusOr<std::unique_ptr<ControlClient>> Connect(const std::string& host, int port,
                                                                const std::string& secret, int rank,
                                                                double connect_timeout_s,
                                                                ControlOptions opts = {});
  ~ControlClient();  // Stop()
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // Called on the io thread before each heartbeat; keep it quick.
  void set_heartbeat_payload(std::function<std::string()> f);
  // Thread-safe, non-blocking, ordered. Dropped once the connection is lost.
  void Send(FrameType type, std::string payload);
  // Blocks until the next frame from rank 0 (heartbeats are not returned).
  // Frames that arrived before the connection was lost are still returned;
  // after them, Unavailable saying the connection to rank 0 was lost and why.
  absl::StatusOr<Frame> Receive();
  // Same, DeadlineExceeded if nothing came within timeout_s.
  absl::StatusOr<Frame> Receive(double timeout_s);
  // True until the connection is lost or stopped.
  bool connected() const;

  // Flushes queued frames (best effort, up to flush_timeout_s), closes, joins
  // the io thread. Idempotent; Receive then returns Unavailable.
  void Stop(double flush_timeout_s = 1.0);

  class Impl;

 private:
  explicit ControlClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace deepshard::serve
