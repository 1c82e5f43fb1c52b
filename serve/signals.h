// Stop signals (SIGTERM, SIGINT) for a whole process, handled on one thread.
#pragma once

#include <signal.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace deepshard::serve {

// Writes "deepshard <command>: <message>" to stderr and flushes.
void Log(const std::string& command, const std::string& message);
// Flushes stdout and stderr and ends the process now (no destructors: other
// threads may be inside MPI or the model).
[[noreturn]] void ExitNow(int code);

// SIGTERM and SIGINT are blocked in every thread (create this before any
// thread starts; threads inherit the mask) and taken by one thread with
// sigwait, so the response can lock and log. Until a handler is installed
// (start-up: loading, connecting, warm-up) a signal ends the process at once
// with 128 + signal, as an unhandled SIGTERM would.
class StopSignals {
 public:
  // handler(signal, how many stop signals so far, counting this one)
  using Handler = std::function<void(int sig, int count)>;

  explicit StopSignals(std::string command);
  ~StopSignals();
  void SetHandler(Handler h);

 private:
  void Loop();

  std::string command_;
  sigset_t set_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  Handler handler_;
  std::thread thread_;
};

}  // namespace deepshard::serve
