// RateLimitedLog: a log line that a flood (hostile connections, a descriptor
// shortage) can trigger thousands of times a second. The first `burst` lines
// of each `period` are printed; later ones are only counted, and the first
// line after the period prints how many were left out. Thread-safe.
//
//   static RateLimitedLog log(/*burst=*/5, std::chrono::seconds(10));
//   log.Print("deepshard control (rank 0): rejected connection from 1.2.3.4:5: wrong job secret");
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

namespace deepshard::serve {

class RateLimitedLog {
 public:
  using Clock = std::chrono::steady_clock;
  RateLimitedLog(int burst, Clock::duration period) : burst_(burst), period_(period) {}

  // Prints `line` (with a newline) to stderr unless over the burst; returns
  // whether it was printed. `what` names the lines in the summary.
  bool Print(const std::string& line, const char* what = "similar lines") {
    std::lock_guard<std::mutex> lock(mu_);
    const Clock::time_point now = Clock::now();
    if (printed_ == 0 && suppressed_ == 0) window_start_ = now;
    if (now - window_start_ >= period_) {
      if (suppressed_ > 0) {
        std::fprintf(stderr, "%s (%lld more %s in the last %.0f s were not logged)\n", line.c_str(),
                     static_cast<long long>(suppressed_), what, std::chrono::duration<double>(now - window_start_).count());
        std::fflush(stderr);
        window_start_ = now;
        printed_ = 1;
        suppressed_ = 0;
        return true;
      }
      window_start_ = now;
      printed_ = 0;
    }
    if (printed_ >= burst_) {
      ++suppressed_;
      ++total_suppressed_;
      return false;
    }
    ++printed_;
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
    return true;
  }

  int64_t suppressed_total() const {
    std::lock_guard<std::mutex> lock(mu_);
    return total_suppressed_;
  }

 private:
  const int burst_;
  const Clock::duration period_;
  mutable std::mutex mu_;
  Clock::time_point window_start_;
  int printed_ = 0;
  int64_t suppressed_ = 0;
  int64_t total_suppressed_ = 0;
};

}  // namespace deepshard::serve
