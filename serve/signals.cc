#include "serve/signals.h"

#include <pthread.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace deepshard::serve {

void Log(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "deepshard %s: %s\n", command.c_str(), message.c_str());
  std::fflush(stderr);
}

void ExitNow(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(code);
}

StopSignals::StopSignals(std::string command) : command_(std::move(command)) {
  sigemptyset(&set_);
  sigaddset(&set_, SIGTERM);
  sigaddset(&set_, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  thread_ = std::thread([this] { Loop(); });
}

StopSignals::~StopSignals() {
  stopping_ = true;
  pthread_kill(thread_.native_handle(), SIGTERM);  // wakes sigwait; stopping_ makes it return
  thread_.join();
}

void StopSignals::SetHandler(Handler h) {
  std::lock_guard<std::mutex> lock(mu_);
  handler_ = std::move(h);
}

void StopSignals::Loop() {
  int sig = 0, count = 0;
  while (sigwait(&set_, &sig) == 0) {
    if (stopping_) return;
    Handler h;
    {
      std::lock_guard<std::mutex> lock(mu_);
      h = handler_;
    }
    ++count;
    if (!h) {
      Log(command_, absl::StrCat(strsignal(sig), " during start-up: exiting"));
      ExitNow(128 + sig);
    }
    h(sig, count);
  }
}

}  // namespace deepshard::serve
