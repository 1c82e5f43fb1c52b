// Control plane over Boost.Asio (see control_plane.h for the protocol).
//
// Shape: both ends build on FrameStream, one TCP connection that reads frames
// in a loop and writes a per-connection queue. Everything that touches a
// socket, a timer or the acceptor runs on the owner's single io thread;
// Send() from other threads only appends to the queue under a mutex and posts
// a write, so frames are written whole and in order.
//
// NOTES:
// - Closing. An error or a protocol violation closes at once. Stop() instead
//   closes gracefully: finish the queued writes, shutdown(SHUT_WR), keep
//   reading (and discarding) until the peer's EOF, then close. Closing a TCP
//   socket that still has unread input makes Linux send RST, and an RST can
//   throw away frames (a kShutdown) the peer has not read yet.
// - Lifetimes. Handlers hold a shared_ptr to their stream. Stop() joins the io
//   thread (after io_context::stop() if the flush outlives its timeout);
//   handlers that never ran are destroyed with the io_context, which is
//   declared first in each Impl so that it is destroyed last.
// - Liveness is checked by one periodic sweep timer on the server (hello
//   deadlines, heartbeat timeouts, the server's own heartbeats) and by the
//   heartbeat timer on the client, rather than one timer per connection.
#include "serve/control_plane.h"

#include <sys/random.h>  // getrandom

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>  // io_context, ip::tcp, steady_timer, async_read/async_write

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "serve/rate_limited_log.h"
#include "serve/wire.h"

namespace deepshard::serve {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

namespace control_internal {

// Debian's Abseil keeps its own string_view type, which StrCat wants.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

Clock::duration Seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

double ToSeconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void Log(int rank, const std::string& line) {
  std::fprintf(stderr, "deepshard control (rank %d): %s\n", rank, line.c_str());
  std::fflush(stderr);
}

std::string EndpointString(const tcp::endpoint& ep) {
  if (ep.address().is_v6()) return absl::StrCat("[", ep.address().to_string(), "]:", ep.port());
  return absl::StrCat(ep.address().to_string(), ":", ep.port());
}

// Compares in time that depends only on the expected length.
bool ConstantTimeEquals(std::string_view got, std::string_view expected) {
  volatile unsigned char diff = got.size() != expected.size() ? 1 : 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < got.size() ? static_cast<unsigned char>(got[i]) : 0;
    diff = static_cast<unsigned char>(diff | (g ^ static_cast<unsigned char>(expected[i])));
  }
  return diff == 0;
}

// One framed TCP connection. Reads, Close and CloseGracefully run on the io
// thread; Enqueue may be called from any thread.
class FrameStream : public std::enable_shared_from_this<FrameStream> {
 public:
  FrameStream(tcp::socket socket, uint64_t max_payload)
      : socket_(std::move(socket)), max_payload_(max_payload), last_rx_(Clock::now()) {
    error_code ec;
    tcp::endpoint ep = socket_.remote_endpoint(ec);
    peer_ = ec ? std::string("unknown peer") : EndpointString(ep);
    socket_.set_option(tcp::no_delay(true), ec);
  }
  virtual ~FrameStream() = default;

  const std::string& peer() const { return peer_; }
  Clock::time_point last_rx() const { return last_rx_; }
  bool closed() const { return closed_.load(); }
  void set_max_payload(uint64_t n) { max_payload_ = n; }
  // Bytes received but not yet read: the peer is alive even if last_rx() is
  // old (the io thread was busy or the process stalled).
  bool HasUnreadInput() {
    error_code ec;
    return !closed_ && socket_.available(ec) > 0 && !ec;
  }

  void StartReading() { ReadHeader(); }

  // Queues one frame. Dropped if the stream is closed or closing.
  void Enqueue(FrameType type, std::string payload) {
    std::string header = EncodeFrameHeader(type, payload.size());
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_ || draining_) return;
    queue_.push_back(std::move(header));
    if (!payload.empty()) queue_.push_back(std::move(payload));
    if (!write_scheduled_) {
      write_scheduled_ = true;
      asio::post(socket_.get_executor(), [self = shared_from_this()] { self->WriteNext(); });
    }
  }

  // Closes now; pending operations complete as aborted and are ignored.
  void Close() {
    if (closed_.exchange(true)) return;
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
  }

  // Writes what is queued, then half-closes and waits for the peer's EOF.
  // OnFrame/OnFailure are not called any more.
  void CloseGracefully() {
    if (closed_) return;
    bool idle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (draining_) return;
      draining_ = true;
      idle = !write_scheduled_;
    }
    if (idle) ShutdownSend();
  }

 protected:
  virtual void OnFrame(Frame frame) = 0;        // io thread; may Close()
  virtual void OnFailure(std::string why) = 0;  // io thread; at most once, already closed

 private:
  void ReadHeader() {
    asio::async_read(socket_, asio::buffer(header_),
                     [self = shared_from_this()](error_code ec, size_t n) { self->OnHeader(ec, n); });
  }

  void OnHeader(error_code ec, size_t n) {
    if (closed_) return;
    if (ec) {
      if (ec == asio::error::eof && n == 0) return Fail("connection closed by peer");
      if (ec == asio::error::eof) {
        return Fail(absl::StrCat("connection closed inside a frame header (", n, " of ",
                                 kFrameHeaderSize, " bytes)"));
      }
      return Fail("read failed: " + ec.message());
    }
    absl::StatusOr<FrameHeader> h = DecodeFrameHeader(header_, max_payload_);
    if (!h.ok()) return Fail(std::string(h.status().message()));
    if (h->length == 0) return Deliver(h->type);
    payload_.resize(h->length);
    asio::async_read(socket_, asio::buffer(payload_),
                     [self = shared_from_this(), type = h->type](error_code ec, size_t n) {
                       self->OnPayload(type, ec, n);
                     });
  }

  void OnPayload(FrameType type, error_code ec, size_t n) {
    if (closed_) return;
    if (ec) {
      if (ec == asio::error::eof) {
        return Fail(absl::StrCat("connection closed inside a ", Av(FrameTypeName(type)), " payload (", n,
                                 " of ", payload_.size(), " bytes)"));
      }
      return Fail("read failed: " + ec.message());
    }
    Deliver(type);
  }

  void Deliver(FrameType type) {
    last_rx_ = Clock::now();
    Frame frame{type, std::move(payload_)};
    payload_ = std::string();
    if (!draining_) OnFrame(std::move(frame));
    if (!closed_) ReadHeader();
  }

  void Fail(std::string why) {
    if (closed_) return;
    Close();
    if (!draining_) OnFailure(std::move(why));
  }

  void WriteNext() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) {
        write_scheduled_ = false;
        return;
      }
      if (queue_.empty()) {
        write_scheduled_ = false;
        if (!draining_) return;
      } else {
        inflight_.swap(queue_);
      }
    }
    if (inflight_.empty()) return ShutdownSend();  // drained while closing
    buffers_.clear();
    for (const std::string& s : inflight_) buffers_.push_back(asio::buffer(s));
    asio::async_write(socket_, buffers_, [self = shared_from_this()](error_code ec, size_t) {
      self->inflight_.clear();
      if (self->closed_) return;
      if (ec) return self->Fail("write failed: " + ec.message());
      self->WriteNext();
    });
  }

  void ShutdownSend() {
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) Close();
  }

  tcp::socket socket_;
  std::string peer_;
  uint64_t max_payload_;
  Clock::time_point last_rx_;  // io thread
  std::array<char, kFrameHeaderSize> header_{};
  std::string payload_;
  std::atomic<bool> closed_{false};

  std::mutex mu_;  // guards queue_, write_scheduled_, draining_ (written on the io thread only)
  std::deque<std::string> queue_;
  bool write_scheduled_ = false;  // a WriteNext is posted or a write is in flight
  bool draining_ = false;

  std::deque<std::string> inflight_;  // io thread: the buffers of the write in flight
  std::vector<asio::const_buffer> buffers_;
};

class ServerPeer;
class ClientLink;

}  // namespace control_internal

using namespace control_internal;

std::string NewJobSecret() {
  unsigned char bytes[32];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (got < sizeof(bytes)) {
    std::random_device rd;
    for (size_t i = got; i < sizeof(bytes); ++i) bytes[i] = static_cast<unsigned char>(rd());
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * sizeof(bytes));
  for (unsigned char b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

namespace {

absl::Status ValidateOptions(const ControlOptions& o) {
  if (!(o.heartbeat_interval_s > 0) || !(o.heartbeat_timeout_s > 0) || !(o.hello_timeout_s > 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "control plane: heartbeat_interval_s (%g), heartbeat_timeout_s (%g) and hello_timeout_s (%g) "
        "must be positive",
        o.heartbeat_interval_s, o.heartbeat_timeout_s, o.hello_timeout_s));
  }
  if (o.heartbeat_timeout_s <= o.heartbeat_interval_s) {
    return absl::InvalidArgumentError(
        absl::StrFormat("control plane: heartbeat_timeout_s (%g) must exceed heartbeat_interval_s (%g)",
                        o.heartbeat_timeout_s, o.heartbeat_interval_s));
  }
  if (o.max_payload == 0) return absl::InvalidArgumentError("control plane: max_payload must be positive");
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------- server ----

namespace control_internal {

class ServerPeer final : public FrameStream {
 public:
  ServerPeer(tcp::socket socket, ControlServer::Impl* server)
      : FrameStream(std::move(socket), kMaxHelloPayload), server_(server) {}

  int rank = 0;  // 0 until the hello is accepted
  Clock::time_point accepted_at = Clock::now();
  Clock::time_point last_heartbeat_sent;

 protected:
  void OnFrame(Frame frame) override;
  void OnFailure(std::string why) override;

 private:
  std::shared_ptr<ServerPeer> self() { return std::static_pointer_cast<ServerPeer>(shared_from_this()); }
  ControlServer::Impl* server_;
};

}  // namespace control_internal

class ControlServer::Impl {
 public:
  using FrameHandler = std::function<void(int, Frame)>;
  using LostHandler = std::function<void(int, std::string)>;

  Impl(std::string secret, int world_size, ControlOptions opts)
      : opts_(opts),
        secret_(std::move(secret)),
        world_size_(world_size),
        by_rank_(world_size),
        joined_(world_size, false),
        lost_why_(world_size) {
    const double period =
        std::min({opts_.heartbeat_interval_s, opts_.heartbeat_timeout_s / 4, opts_.hello_timeout_s / 4});
    sweep_period_ = Seconds(std::clamp(period, 0.005, 0.25));
  }

  ~Impl() { Stop(0); }

  absl::Status Bind(const std::string& host, int port) {
    error_code ec;
    tcp::endpoint ep;
    asio::ip::address addr = asio::ip::make_address(host, ec);
    if (!ec) {
      ep = tcp::endpoint(addr, static_cast<unsigned short>(port));
    } else {
      tcp::resolver resolver(io_);
      auto results = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
      if (ec || results.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("control plane: cannot resolve bind host '", host,
                                                  "': ", ec ? ec.message() : "no addresses"));
      }
      ep = results.begin()->endpoint();
    }
    const std::string where = absl::StrCat(host, ":", port);
    acceptor_.open(ep.protocol(), ec);
    if (ec) return absl::UnavailableError(absl::StrCat("control plane: socket for ", where, ": ", ec.message()));
    acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    acceptor_.bind(ep, ec);
    if (ec) return absl::UnavailableError(absl::StrCat("control plane: cannot bind ", where, ": ", ec.message()));
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return absl::UnavailableError(absl::StrCat("control plane: cannot listen on ", where, ": ", ec.message()));
    port_ = acceptor_.local_endpoint(ec).port();
    return absl::OkStatus();
  }

  void Run() {
    work_.emplace(io_.get_executor());
    Accept();
    ArmSweep();
    done_future_ = done_.get_future();
    thread_ = std::thread([this] {
      io_thread_id_ = std::this_thread::get_id();
      io_.run();
      done_.set_value();
    });
  }

  int port() const { return port_; }
  int64_t rejected() const { return rejected_.load(); }

  absl::Status WaitForWorkers(double timeout_s) {
    const Clock::time_point deadline = Clock::now() + Seconds(timeout_s);
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (stopping_) return absl::CancelledError("control plane: server stopped while waiting for workers");
      std::vector<int> missing;
      for (int r = 1; r < world_size_; ++r) {
        if (joined_[r] && by_rank_[r] == nullptr) {
          return absl::UnavailableError(absl::StrCat("control plane: rank ", r,
                                                     " was lost while waiting for workers: ", lost_why_[r]));
        }
        if (!joined_[r]) missing.push_back(r);
      }
      if (missing.empty()) return absl::OkStatus();
      if (Clock::now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrFormat(
            "control plane: %s %s did not connect within %.1f s (%d of %d workers connected)",
            missing.size() == 1 ? "rank" : "ranks", absl::StrJoin(missing, ", "), timeout_s,
            world_size_ - 1 - static_cast<int>(missing.size()), world_size_ - 1));
      }
      cv_.wait_until(lock, deadline);
    }
  }

  void Send(int rank, FrameType type, std::string payload) {
    std::shared_ptr<ServerPeer> peer;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ || rank < 1 || rank >= world_size_) return;
      peer = by_rank_[rank];
    }
    if (type == FrameType::kShutdown) shutdown_sent_ = true;
    if (peer) peer->Enqueue(type, std::move(payload));
  }

  void Broadcast(FrameType type, const std::string& payload) {
    std::vector<std::shared_ptr<ServerPeer>> peers;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      for (const auto& p : by_rank_) {
        if (p) peers.push_back(p);
      }
    }
    if (type == FrameType::kShutdown) shutdown_sent_ = true;
    for (const auto& p : peers) p->Enqueue(type, payload);
  }

  bool IsConnected(int rank) const {
    std::lock_guard<std::mutex> lock(mu_);
    return rank >= 1 && rank < world_size_ && by_rank_[rank] != nullptr;
  }

  void set_on_frame(FrameHandler f) {
    std::lock_guard<std::mutex> lock(mu_);
    on_frame_ = std::make_shared<const FrameHandler>(std::move(f));
  }
  void set_on_rank_lost(LostHandler f) {
    std::lock_guard<std::mutex> lock(mu_);
    on_rank_lost_ = std::make_shared<const LostHandler>(std::move(f));
  }

  void Stop(double flush_timeout_s) {
    if (std::this_thread::get_id() == io_thread_id_) {
      // From a handler: we cannot join ourselves. Begin the stop; the
      // destructor's Stop() finishes it.
      BeginStop();
      return;
    }
    std::lock_guard<std::mutex> stop_lock(stop_mu_);
    if (stopped_) return;
    BeginStop();
    work_.reset();
    if (thread_.joinable()) {
      if (done_future_.wait_for(Seconds(std::max(0.0, flush_timeout_s))) != std::future_status::ready) {
        io_.stop();
      }
      thread_.join();
    }
    stopped_ = true;
    std::lock_guard<std::mutex> lock(mu_);
    std::fill(by_rank_.begin(), by_rank_.end(), nullptr);
  }

  // Called by ServerPeer on the io thread.
  void OnPeerFrame(const std::shared_ptr<ServerPeer>& p, Frame frame);
  void OnPeerFailure(const std::shared_ptr<ServerPeer>& p, std::string why);

 private:
  void BeginStop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    asio::post(io_, [this] {
      error_code ec;
      acceptor_.close(ec);
      sweep_.cancel();
      accept_retry_.cancel();
      for (const auto& p : peers_) p->CloseGracefully();
      peers_.clear();
    });
  }

  void Accept() {
    acceptor_.async_accept([this](error_code ec, tcp::socket socket) {
      if (stopping_ || ec == asio::error::operation_aborted) return;
      if (ec) {
        // E.g. EMFILE: back off instead of spinning on the same error.
        accept_log_.Print(absl::StrCat("deepshard control (rank 0): accept failed: ", ec.message(),
                                       "; retrying in 50 ms"),
                          "accept failures");
        accept_retry_.expires_after(std::chrono::milliseconds(50));
        accept_retry_.async_wait([this](error_code ec) {
          if (!ec && !stopping_) Accept();
        });
        return;
      }
      auto peer = std::make_shared<ServerPeer>(std::move(socket), this);
      peers_.insert(peer);
      if (CountUnauthenticated() > kMaxUnauthenticated) {
        Reject(peer, absl::StrCat("more than ", kMaxUnauthenticated, " connections waiting to authenticate"));
      } else {
        peer->StartReading();
      }
      Accept();
    });
  }

  // A bound on what a flood of idle connections can hold until their hello
  // timeout; far above any real world size joining at once.
  static constexpr int kMaxUnauthenticated = 256;

  int CountUnauthenticated() const {
    int n = 0;
    for (const auto& p : peers_) n += p->rank == 0 ? 1 : 0;
    return n;
  }

  void ArmSweep() {
    sweep_.expires_after(sweep_period_);
    sweep_.async_wait([this](error_code ec) {
      if (ec || stopping_) return;
      Sweep();
      ArmSweep();
    });
  }

  void Sweep() {
    const Clock::time_point now = Clock::now();
    // This thread did not run for longer than a heartbeat timeout (the process
    // was stopped, or starved): the workers' silence is ours, not theirs. Give
    // them a round to be heard before timing anyone out, and remember it.
    const Clock::duration gap = now - last_sweep_;
    last_sweep_ = now;
    if (gap > StallThreshold()) {
      stalled_for_ = gap;
      stalled_at_ = now;
    }
    const bool own_stall = gap > StallThreshold();
    const std::vector<std::shared_ptr<ServerPeer>> snapshot(peers_.begin(), peers_.end());
    for (const auto& p : snapshot) {
      if (p->closed()) continue;
      if (p->rank == 0) {
        if (now - p->accepted_at > Seconds(opts_.hello_timeout_s)) {
          Reject(p, absl::StrFormat("no complete hello within %.2f s", opts_.hello_timeout_s));
        }
        continue;
      }
      const Clock::duration silent = now - p->last_rx();
      if (!own_stall && silent > Seconds(opts_.heartbeat_timeout_s) && !p->HasUnreadInput()) {
        Lose(p, absl::StrFormat("heartbeat timeout: no frame for %.2f s (limit %.2f s)", ToSeconds(silent),
                                opts_.heartbeat_timeout_s));
        continue;
      }
      if (now - p->last_heartbeat_sent >= Seconds(opts_.heartbeat_interval_s)) {
        p->Enqueue(FrameType::kHeartbeat, std::string());
        p->last_heartbeat_sent = now;
      }
    }
  }

  // A connection that never authenticated.
  void Reject(const std::shared_ptr<ServerPeer>& p, const std::string& why) {
    p->Close();
    peers_.erase(p);
    ++rejected_;
    reject_log_.Print(absl::StrCat("deepshard control (rank 0): rejected connection from ", p->peer(), ": ", why),
                      "rejected connections");
  }

  // Rank 0's io thread not running for longer than this means the process
  // was stopped or starved: its own silence, not the workers'. Half the
  // heartbeat timeout, not all of it: rank 0's last frame before the stall may
  // have left up to a sweep plus a heartbeat interval earlier, so a worker can
  // time out on rank 0 after a stall somewhat shorter than the timeout.
  Clock::duration StallThreshold() const { return Seconds(opts_.heartbeat_timeout_s) / 2; }

  // An authenticated rank's connection.
  void Lose(const std::shared_ptr<ServerPeer>& p, const std::string& cause) {
    const int r = p->rank;
    std::string why = cause;
    int at_fault = r;  // who the handler is told to blame
    const bool after_shutdown = shutdown_sent_;
    std::string line;
    if (after_shutdown) {
      why = absl::StrCat("left after the shutdown (", cause, ")");
      line = absl::StrCat("rank ", r, " (", p->peer(), ") ", why);
    } else {
      // Rank 0 itself was stopped (SIGSTOP, a debugger) or starved: the worker
      // most likely timed out on rank 0 and left. Blame rank 0, not the worker.
      const Clock::time_point now = Clock::now();
      Clock::duration stall = now - last_sweep_;
      if (now - stalled_at_ < 2 * Seconds(opts_.heartbeat_timeout_s)) stall = std::max(stall, stalled_for_);
      if (stall > StallThreshold()) {
        at_fault = 0;
        why = absl::StrFormat(
            "rank 0 did not run for %.2f s (it was stopped or stalled; the heartbeat timeout is %.2f s) and rank %d "
            "gave up on it (%s)",
            ToSeconds(stall), opts_.heartbeat_timeout_s, r, cause);
        line = absl::StrFormat(
            "rank 0 did not run for %.2f s (it was stopped or stalled; the heartbeat timeout is %.2f s) and rank %d "
            "(%s) gave up on it (%s)",
            ToSeconds(stall), opts_.heartbeat_timeout_s, r, p->peer(), cause);
      } else {
        line = absl::StrCat("lost rank ", r, " (", p->peer(), "): ", why);
      }
    }
    p->Close();
    peers_.erase(p);
    std::shared_ptr<const LostHandler> handler;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (by_rank_[r] == p) by_rank_[r] = nullptr;
      lost_why_[r] = why;
      handler = on_rank_lost_;
    }
    cv_.notify_all();
    if (stopping_) return;
    Log(0, line);
    if (handler && *handler) (*handler)(at_fault, why);
  }

  void Authenticate(const std::shared_ptr<ServerPeer>& p, const Frame& frame) {
    if (frame.type != FrameType::kHello) {
      return Reject(p, absl::StrCat("first frame is ", Av(FrameTypeName(frame.type)), ", not hello"));
    }
    absl::StatusOr<Hello> hello = DecodeHello(frame.payload);
    if (!hello.ok()) return Reject(p, std::string(hello.status().message()));
    // The secret is checked before the rank, so a stranger learns nothing
    // about which ranks exist.
    if (!ConstantTimeEquals(hello->secret, secret_)) return Reject(p, "wrong job secret");
    const int32_t rank = hello->rank;
    if (rank < 1 || rank >= world_size_) {
      return Reject(p, absl::StrCat("hello names rank ", rank, ", outside [1, ", world_size_, ")"));
    }
    std::string refusal;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!joined_[rank]) {
        joined_[rank] = true;
        by_rank_[rank] = p;
      } else if (by_rank_[rank] != nullptr) {
        refusal = absl::StrCat("rank ", rank, " is already connected from ", by_rank_[rank]->peer());
      } else {
        refusal = absl::StrCat("rank ", rank, " was lost earlier and may not rejoin");
      }
    }
    if (!refusal.empty()) return Reject(p, refusal);
    cv_.notify_all();
    p->rank = rank;
    p->set_max_payload(opts_.max_payload);
    p->last_heartbeat_sent = Clock::now();
    p->Enqueue(FrameType::kWelcome, std::string());
  }

  // Declared first: destroyed last, after every socket and timer below.
  asio::io_context io_;
  const ControlOptions opts_;
  const std::string secret_;
  const int world_size_;
  Clock::duration sweep_period_;
  int port_ = 0;

  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  tcp::acceptor acceptor_{io_};
  asio::steady_timer sweep_{io_};
  asio::steady_timer accept_retry_{io_};
  std::set<std::shared_ptr<ServerPeer>> peers_;  // io thread: every open connection

  std::thread thread_;
  std::atomic<std::thread::id> io_thread_id_{};
  std::promise<void> done_;
  std::future<void> done_future_;
  std::mutex stop_mu_;
  bool stopped_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> stopping_{false};  // written under mu_
  std::vector<std::shared_ptr<ServerPeer>> by_rank_;  // authenticated and open
  std::vector<bool> joined_;                          // authenticated once
  std::vector<std::string> lost_why_;
  std::shared_ptr<const FrameHandler> on_frame_;
  std::shared_ptr<const LostHandler> on_rank_lost_;
  std::atomic<int64_t> rejected_{0};
  std::atomic<bool> shutdown_sent_{false};  // a kShutdown went out: workers leaving is the plan
  // Io thread: when Sweep last ran, and the last time this thread was found stalled.
  Clock::time_point last_sweep_ = Clock::now();
  Clock::time_point stalled_at_{};
  Clock::duration stalled_for_{};
  RateLimitedLog reject_log_{5, std::chrono::seconds(10)};
  RateLimitedLog accept_log_{3, std::chrono::seconds(10)};
};

void ControlServer::Impl::OnPeerFrame(const std::shared_ptr<ServerPeer>& p, Frame frame) {
  if (stopping_) return;
  if (p->rank == 0) return Authenticate(p, frame);
  if (frame.type == FrameType::kHello || frame.type == FrameType::kWelcome) {
    return Lose(p, absl::StrCat("protocol error: unexpected ", Av(FrameTypeName(frame.type)), " frame"));
  }
  std::shared_ptr<const FrameHandler> handler;
  {
    std::lock_guard<std::mutex> lock(mu_);
    handler = on_frame_;
  }
  if (handler && *handler) (*handler)(p->rank, std::move(frame));
}

void ControlServer::Impl::OnPeerFailure(const std::shared_ptr<ServerPeer>& p, std::string why) {
  if (stopping_) {
    peers_.erase(p);
    return;
  }
  if (p->rank == 0) return Reject(p, why);
  Lose(p, why);
}

namespace control_internal {
void ServerPeer::OnFrame(Frame frame) { server_->OnPeerFrame(self(), std::move(frame)); }
void ServerPeer::OnFailure(std::string why) { server_->OnPeerFailure(self(), std::move(why)); }
}  // namespace control_internal

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(const std::string& bind_host, int port,
                                                                    std::string secret, int world_size,
                                                                    ControlOptions opts) {
  if (world_size < 1) return absl::InvalidArgumentError(absl::StrCat("control plane: world size ", world_size, " < 1"));
  if (port < 0 || port > 65535) return absl::InvalidArgumentError(absl::StrCat("control plane: bad port ", port));
  if (secret.empty() || secret.size() > kMaxHelloPayload - 4) {
    return absl::InvalidArgumentError(absl::StrCat("control plane: the job secret must have 1 to ",
                                                   kMaxHelloPayload - 4, " bytes, not ", secret.size()));
  }
  RETURN_IF_ERROR(ValidateOptions(opts));
  auto impl = std::make_unique<Impl>(std::move(secret), world_size, opts);
  RETURN_IF_ERROR(impl->Bind(bind_host, port));
  impl->Run();
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(impl)));
}

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControlServer::~ControlServer() { impl_->Stop(1.0); }
int ControlServer::port() const { return impl_->port(); }
absl::Status ControlServer::WaitForWorkers(double timeout_s) { return impl_->WaitForWorkers(timeout_s); }
void ControlServer::Send(int rank, FrameType type, std::string payload) {
  impl_->Send(rank, type, std::move(payload));
}
void ControlServer::Broadcast(FrameType type, const std::string& payload) { impl_->Broadcast(type, payload); }
bool ControlServer::IsConnected(int rank) const { return impl_->IsConnected(rank); }
void ControlServer::set_on_frame(std::function<void(int, Frame)> f) { impl_->set_on_frame(std::move(f)); }
void ControlServer::set_on_rank_lost(std::function<void(int, std::string)> f) {
  impl_->set_on_rank_lost(std::move(f));
}
void ControlServer::Stop(double flush_timeout_s) { impl_->Stop(flush_timeout_s); }
int64_t ControlServer::rejected_connections() const { return impl_->rejected(); }

// ---------------------------------------------------------------- client ----

namespace control_internal {

class ClientLink final : public FrameStream {
 public:
  ClientLink(tcp::socket socket, uint64_t max_payload, ControlClient::Impl* client)
      : FrameStream(std::move(socket), max_payload), client_(client) {}

 protected:
  void OnFrame(Frame frame) override;
  void OnFailure(std::string why) override;

 private:
  ControlClient::Impl* client_;
};

}  // namespace control_internal

class ControlClient::Impl {
 public:
  Impl(int rank, ControlOptions opts) : rank_(rank), opts_(opts) {}
  ~Impl() { Stop(0); }

  absl::Status Connect(const std::string& host, int port, const std::string& secret, double timeout_s) {
    const std::string target = absl::StrCat(host, ":", port);
    const Clock::time_point deadline = Clock::now() + Seconds(timeout_s);
    tcp::socket socket(io_);
    std::string last_error = "no attempt";
    while (true) {
      error_code ec;
      tcp::resolver resolver(io_);
      auto endpoints = resolver.resolve(host, std::to_string(port), tcp::resolver::numeric_service, ec);
      if (!ec) {
        bool done = false;
        error_code connect_ec;
        asio::async_connect(socket, endpoints, [&](error_code e, const tcp::endpoint&) {
          connect_ec = e;
          done = true;
        });
        if (!RunUntil(done, deadline, socket)) connect_ec = asio::error::timed_out;
        if (!connect_ec) break;
        last_error = connect_ec.message();
      } else {
        last_error = "cannot resolve: " + ec.message();
      }
      // The server may not be listening yet: retry until the deadline.
      const auto pause = std::chrono::milliseconds(50);
      if (Clock::now() + pause >= deadline) {
        return absl::DeadlineExceededError(absl::StrFormat(
            "control plane: rank %d could not connect to rank 0 at %s within %.1f s: %s", rank_, target,
            timeout_s, last_error));
      }
      std::this_thread::sleep_for(pause);
    }

    // Handshake: hello, then exactly one welcome header (and its payload, if any).
    error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    const Clock::time_point hello_deadline = Clock::now() + Seconds(opts_.hello_timeout_s);
    const std::string hello = EncodeFrame(FrameType::kHello, EncodeHello(rank_, secret));
    bool done = false;
    asio::async_write(socket, asio::buffer(hello), [&](error_code e, size_t) {
      ec = e;
      done = true;
    });
    if (!RunUntil(done, hello_deadline, socket)) {
      return absl::DeadlineExceededError(
          absl::StrCat("control plane: rank ", rank_, " timed out sending its hello to rank 0 at ", target));
    }
    if (ec) {
      return absl::UnavailableError(absl::StrCat("control plane: rank ", rank_, " could not send its hello to ",
                                                 target, ": ", ec.message()));
    }
    std::array<char, kFrameHeaderSize> header{};
    done = false;
    asio::async_read(socket, asio::buffer(header), [&](error_code e, size_t) {
      ec = e;
      done = true;
    });
    if (!RunUntil(done, hello_deadline, socket)) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "control plane: rank 0 at %s did not answer rank %d's hello within %.1f s", target, rank_,
          opts_.hello_timeout_s));
    }
    if (ec == asio::error::eof || ec == asio::error::connection_reset) {
      return absl::PermissionDeniedError(absl::StrCat(
          "control plane: rank 0 at ", target, " closed the connection instead of welcoming rank ", rank_,
          " (wrong job secret, rank out of range, or rank already connected: rank 0's log says which)"));
    }
    if (ec) {
      return absl::UnavailableError(absl::StrCat("control plane: rank ", rank_, " waiting for welcome from ",
                                                 target, ": ", ec.message()));
    }
    absl::StatusOr<FrameHeader> h = DecodeFrameHeader(header, kMaxHelloPayload);
    if (!h.ok() || h->type != FrameType::kWelcome) {
      return absl::UnavailableError(absl::StrCat(
          "control plane: rank 0 at ", target, " answered the hello with ",
          h.ok() ? absl::StrCat("a ", Av(FrameTypeName(h->type)), " frame") : std::string(h.status().message()),
          " instead of welcome"));
    }
    if (h->length > 0) {
      std::string ignored(h->length, '\0');
      done = false;
      asio::async_read(socket, asio::buffer(ignored), [&](error_code e, size_t) {
        ec = e;
        done = true;
      });
      if (!RunUntil(done, hello_deadline, socket) || ec) {
        return absl::UnavailableError(
            absl::StrCat("control plane: rank ", rank_, " could not read the welcome from ", target));
      }
    }
    link_ = std::make_shared<ClientLink>(std::move(socket), opts_.max_payload, this);
    return absl::OkStatus();
  }

  void Run() {
    io_.restart();
    work_.emplace(io_.get_executor());
    link_->StartReading();
    ArmHeartbeat();
    done_future_ = done_.get_future();
    thread_ = std::thread([this] {
      io_thread_id_ = std::this_thread::get_id();
      io_.run();
      done_.set_value();
    });
  }

  void set_heartbeat_payload(std::function<std::string()> f) {
    std::lock_guard<std::mutex> lock(mu_);
    heartbeat_payload_ = std::make_shared<const std::function<std::string()>>(std::move(f));
  }

  void Send(FrameType type, std::string payload) {
    if (stopping_ || link_ == nullptr) return;
    link_->Enqueue(type, std::move(payload));
  }

  absl::StatusOr<Frame> Receive(std::optional<double> timeout_s) {
    std::unique_lock<std::mutex> lock(mu_);
    auto ready = [this] { return !inbox_.empty() || lost_; };
    if (timeout_s.has_value()) {
      if (!cv_.wait_for(lock, Seconds(std::max(0.0, *timeout_s)), ready)) {
        return absl::DeadlineExceededError(
            absl::StrFormat("control plane: no frame from rank 0 within %.3f s", *timeout_s));
      }
    } else {
      cv_.wait(lock, ready);
    }
    if (!inbox_.empty()) {
      Frame f = std::move(inbox_.front());
      inbox_.pop_front();
      return f;
    }
    return absl::UnavailableError(absl::StrCat("control plane: connection to rank 0 lost: ", lost_why_));
  }

  bool connected() const {
    std::lock_guard<std::mutex> lock(mu_);
    return !lost_;
  }

  void Stop(double flush_timeout_s) {
    if (std::this_thread::get_id() == io_thread_id_) {
      stopping_ = true;
      asio::post(io_, [this] { StopOnIo(); });
      return;
    }
    std::lock_guard<std::mutex> stop_lock(stop_mu_);
    if (stopped_) return;
    stopping_ = true;
    if (thread_.joinable()) {
      asio::post(io_, [this] { StopOnIo(); });
      work_.reset();
      if (done_future_.wait_for(Seconds(std::max(0.0, flush_timeout_s))) != std::future_status::ready) {
        io_.stop();
      }
      thread_.join();
    }
    stopped_ = true;
    MarkLost("this rank stopped its control client");
  }

  // Called by ClientLink on the io thread.
  void OnLinkFrame(Frame frame) {
    if (frame.type == FrameType::kHeartbeat) return;  // liveness only (last_rx)
    if (frame.type == FrameType::kHello || frame.type == FrameType::kWelcome) {
      link_->Close();
      hb_timer_.cancel();
      return MarkLost(absl::StrCat("protocol error: unexpected ", Av(FrameTypeName(frame.type)), " frame"));
    }
    // After a shutdown, rank 0 closing the connection is expected: no log line.
    if (frame.type == FrameType::kShutdown) shutdown_seen_ = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      inbox_.push_back(std::move(frame));
    }
    cv_.notify_all();
  }

  void OnLinkFailure(std::string why) {
    hb_timer_.cancel();
    MarkLost(std::move(why));
  }

 private:
  // Runs io_ on the calling thread (before the io thread exists) until `done`
  // or the deadline. On the deadline, closes the socket and lets the aborted
  // operation's handler run, so nothing refers to our locals afterwards.
  bool RunUntil(const bool& done, Clock::time_point deadline, tcp::socket& socket) {
    io_.restart();
    while (!done && Clock::now() < deadline) {
      if (io_.run_one_until(deadline) == 0 && io_.stopped()) break;
    }
    if (done) return true;
    error_code ec;
    socket.close(ec);
    io_.restart();
    io_.run();
    return false;
  }

  void StopOnIo() {
    hb_timer_.cancel();
    if (link_) link_->CloseGracefully();
  }

  void ArmHeartbeat() {
    hb_timer_.expires_after(Seconds(opts_.heartbeat_interval_s));
    hb_timer_.async_wait([this](error_code ec) {
      if (ec || stopping_ || link_->closed()) return;
      const Clock::duration silent = Clock::now() - link_->last_rx();
      if (silent > Seconds(opts_.heartbeat_timeout_s) && !link_->HasUnreadInput()) {
        link_->Close();
        return MarkLost(absl::StrFormat("heartbeat timeout: no frame from rank 0 for %.2f s (limit %.2f s)",
                                        ToSeconds(silent), opts_.heartbeat_timeout_s));
      }
      std::shared_ptr<const std::function<std::string()>> provider;
      {
        std::lock_guard<std::mutex> lock(mu_);
        provider = heartbeat_payload_;
      }
      link_->Enqueue(FrameType::kHeartbeat, provider && *provider ? (*provider)() : std::string());
      ArmHeartbeat();
    });
  }

  void MarkLost(std::string why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (lost_) return;
      lost_ = true;
      lost_why_ = why;
    }
    cv_.notify_all();
    if (!stopping_ && !shutdown_seen_) Log(rank_, "lost the connection to rank 0: " + why);
  }

  std::atomic<bool> shutdown_seen_{false};  // a kShutdown frame arrived (io thread)
  // Declared first: destroyed last, after the link and the timer.
  asio::io_context io_;
  const int rank_;
  const ControlOptions opts_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  asio::steady_timer hb_timer_{io_};
  std::shared_ptr<ClientLink> link_;  // set by Connect, then never changed

  std::thread thread_;
  std::atomic<std::thread::id> io_thread_id_{};
  std::promise<void> done_;
  std::future<void> done_future_;
  std::mutex stop_mu_;
  bool stopped_ = false;
  std::atomic<bool> stopping_{false};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> inbox_;
  bool lost_ = false;
  std::string lost_why_;
  std::shared_ptr<const std::function<std::string()>> heartbeat_payload_;
};

namespace control_internal {
void ClientLink::OnFrame(Frame frame) { client_->OnLinkFrame(std::move(frame)); }
void ClientLink::OnFailure(std::string why) { client_->OnLinkFailure(std::move(why)); }
}  // namespace control_internal

absl::StatusOr<std::unique_ptr<ControlClient>> ControlClient::Connect(const std::string& host, int port,
                                                                      const std::string& secret, int rank,
                                                                      double connect_timeout_s,
                                                                      ControlOptions opts) {
  if (rank < 1) return absl::InvalidArgumentError(absl::StrCat("control plane: client rank ", rank, " < 1"));
  if (port < 1 || port > 65535) return absl::InvalidArgumentError(absl::StrCat("control plane: bad port ", port));
  RETURN_IF_ERROR(ValidateOptions(opts));
  auto impl = std::make_unique<Impl>(rank, opts);
  RETURN_IF_ERROR(impl->Connect(host, port, secret, connect_timeout_s));
  impl->Run();
  return std::unique_ptr<ControlClient>(new ControlClient(std::move(impl)));
}

ControlClient::ControlClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControlClient::~ControlClient() { impl_->Stop(1.0); }
void ControlClient::set_heartbeat_payload(std::function<std::string()> f) {
  impl_->set_heartbeat_payload(std::move(f));
}
void ControlClient::Send(FrameType type, std::string payload) { impl_->Send(type, std::move(payload)); }
absl::StatusOr<Frame> ControlClient::Receive() { return impl_->Receive(std::nullopt); }
absl::StatusOr<Frame> ControlClient::Receive(double timeout_s) { return impl_->Receive(timeout_s); }
bool ControlClient::connected() const { return impl_->connected(); }
void ControlClient::Stop(double flush_timeout_s) { impl_->Stop(flush_timeout_s); }

}  // namespace deepshard::serve
