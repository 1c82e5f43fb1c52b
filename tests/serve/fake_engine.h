// FakeEngine: an Engine (serve/generation_api.h) for front-end tests. Each
// submitted request plays a scripted token sequence on its own thread, one
// event every `interval`, stops at max_tokens (kLength), honours Cancel
// (final kCancelled event), and ends with the scripted reason. Health and
// Submit's result can be set; prompts and cancellations are recorded.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "serve/generation_api.h"

namespace deepshard::serve::testing {

class FakeEngine : public GenerationApi {
 public:
  struct Script {
    Script() = default;
    Script(std::vector<int32_t> t, FinishReason e = FinishReason::kStop, std::string err = "",
           std::chrono::milliseconds every = std::chrono::milliseconds(2), bool final_last = false)
        : tokens(std::move(t)), end(e), error(std::move(err)), interval(every), final_carries_last_token(final_last) {}
    std::vector<int32_t> tokens;
    FinishReason end = FinishReason::kStop;
    std::string error;                                    // with end == kError
    std::chrono::milliseconds interval{2};                // between events
    bool final_carries_last_token = false;                // else a separate, empty final event
  };

  ~FakeEngine() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [id, flag] : cancelled_flags_) flag->store(true);
    }
    for (auto& t : threads_) t.join();
  }

  void SetScript(Script s) {
    std::lock_guard<std::mutex> lock(mu_);
    script_ = std::move(s);
  }
  void SetHealth(EngineHealth h) {
    std::lock_guard<std::mutex> lock(mu_);
    health_ = std::move(h);
  }
  void SetSubmitError(absl::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    submit_error_ = std::move(s);
  }
  void SetMaxContext(int64_t n) { max_context_ = n; }

  absl::StatusOr<int64_t> Submit(GenerationRequest request, TokenSink sink) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!submit_error_.ok()) return submit_error_;
    const int64_t id = next_id_++;
    requests_.push_back(request);
    auto flag = std::make_shared<std::atomic<bool>>(false);
    cancelled_flags_[id] = flag;
    Script script = script_;
    cv_.notify_all();
    threads_.emplace_back([script, request, sink = std::move(sink), flag] {
      auto Event = [](std::vector<int32_t> tokens, bool finished, FinishReason reason, std::string error) {
        TokenEvent ev;
        ev.tokens = std::move(tokens);
        ev.finished = finished;
        ev.reason = reason;
        ev.error = std::move(error);
        return ev;
      };
      size_t n = std::min<size_t>(script.tokens.size(), static_cast<size_t>(request.max_tokens));
      const bool length = static_cast<int64_t>(script.tokens.size()) > request.max_tokens;
      for (size_t i = 0; i < n; ++i) {
        std::this_thread::sleep_for(script.interval);
        if (flag->load()) {
          sink(Event({}, true, FinishReason::kCancelled, ""));
          return;
        }
        TokenEvent ev = Event({script.tokens[i]}, false, FinishReason::kNone, "");
        if (i + 1 == n && script.final_carries_last_token) {
          ev.finished = true;
          ev.reason = length ? FinishReason::kLength : script.end;
          ev.error = script.error;
          sink(std::move(ev));
          return;
        }
        sink(std::move(ev));
      }
      std::this_thread::sleep_for(script.interval);
      if (flag->load()) {
        sink(Event({}, true, FinishReason::kCancelled, ""));
        return;
      }
      sink(Event({}, true, length ? FinishReason::kLength : script.end, script.error));
    });
    return id;
  }

  void Cancel(int64_t id) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cancelled_flags_.find(id);
    if (it == cancelled_flags_.end()) return;
    it->second->store(true);
    cancelled_.push_back(id);
    cv_.notify_all();
  }

  EngineHealth Health() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return health_;
  }
  int64_t max_context() const override { return max_context_; }

  // Test helpers.
  std::vector<GenerationRequest> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  std::vector<int64_t> cancelled() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }
  // Waits until `n` requests were submitted.
  bool WaitForRequests(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return requests_.size() >= n; });
  }
  // Waits until `n` Cancel calls hit a known request.
  bool WaitForCancels(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return cancelled_.size() >= n; });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Script script_;
  EngineHealth health_;
  absl::Status submit_error_;
  std::atomic<int64_t> max_context_{4096};
  int64_t next_id_ = 1;
  std::vector<GenerationRequest> requests_;
  std::vector<int64_t> cancelled_;
  std::map<int64_t, std::shared_ptr<std::atomic<bool>>> cancelled_flags_;
  std::vector<std::thread> threads_;
};

}  // namespace deepshard::serve::testing
