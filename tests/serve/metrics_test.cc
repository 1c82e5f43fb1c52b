// Metrics: exact Prometheus text of a small registry, escaping, histogram
// buckets, atomic family replacement, and concurrent updates.
#include "serve/metrics.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace deepshard::serve {
namespace {

TEST(MetricsTest, RendersSmallRegistryExactly) {
  Metrics m;
  m.Describe("b_requests_total", MetricType::kCounter, "Requests.\nSecond line \\ here.");
  m.Describe("a_in_flight", MetricType::kGauge, "In flight.");
  m.Describe("c_latency_seconds", MetricType::kHistogram, "Latency.", {0.5, 0.1, 1.0});
  m.Add("b_requests_total", {{"status", "200"}, {"endpoint", "/v1/completions"}});
  m.Add("b_requests_total", {{"endpoint", "/v1/completions"}, {"status", "200"}}, 2);
  m.Add("b_requests_total", {{"endpoint", "/health"}, {"status", "503"}});
  m.Set("a_in_flight", {}, 3);
  m.Add("a_in_flight", {}, -1);
  m.Observe("c_latency_seconds", {}, 0.05);
  m.Observe("c_latency_seconds", {}, 0.1);   // le is inclusive
  m.Observe("c_latency_seconds", {}, 0.75);
  m.Observe("c_latency_seconds", {}, 7);
  const std::string expected =
      "# HELP a_in_flight In flight.\n"
      "# TYPE a_in_flight gauge\n"
      "a_in_flight 2\n"
      "# HELP b_requests_total Requests.\\nSecond line \\\\ here.\n"
      "# TYPE b_requests_total counter\n"
      "b_requests_total{endpoint=\"/health\",status=\"503\"} 1\n"
      "b_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 3\n"
      "# HELP c_latency_seconds Latency.\n"
      "# TYPE c_latency_seconds histogram\n"
      "c_latency_seconds_bucket{le=\"0.1\"} 2\n"
      "c_latency_seconds_bucket{le=\"0.5\"} 2\n"
      "c_latency_seconds_bucket{le=\"1\"} 3\n"
      "c_latency_seconds_bucket{le=\"+Inf\"} 4\n"
      "c_latency_seconds_sum 7.9\n"
      "c_latency_seconds_count 4\n";
  EXPECT_EQ(m.Render(), expected);
  EXPECT_EQ(m.Value("b_requests_total", {{"status", "200"}, {"endpoint", "/v1/completions"}}), 3);
  EXPECT_EQ(m.Value("c_latency_seconds"), 4);
  EXPECT_EQ(m.Value("missing"), 0);
}

TEST(MetricsTest, HistogramWithLabelsPutsLeLast) {
  Metrics m;
  m.Describe("h", MetricType::kHistogram, "H.", {1});
  m.Observe("h", {{"model", "x"}}, 0.5);
  EXPECT_EQ(m.Render(),
            "# HELP h H.\n# TYPE h histogram\n"
            "h_bucket{model=\"x\",le=\"1\"} 1\n"
            "h_bucket{model=\"x\",le=\"+Inf\"} 1\n"
            "h_sum{model=\"x\"} 0.5\n"
            "h_count{model=\"x\"} 1\n");
}

TEST(MetricsTest, EscapesLabelValues) {
  EXPECT_EQ(RenderLabels({{"b", "a\"q\\\nz"}, {"a", ""}}), "{a=\"\",b=\"a\\\"q\\\\\\nz\"}");
  EXPECT_EQ(RenderLabels({}), "");
}

TEST(MetricsTest, FormatsValues) {
  EXPECT_EQ(FormatMetricValue(3), "3");
  EXPECT_EQ(FormatMetricValue(-2), "-2");
  EXPECT_EQ(FormatMetricValue(0.25), "0.25");
  EXPECT_EQ(FormatMetricValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatMetricValue(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatMetricValue(0.0 / 0.0), "NaN");
}

TEST(MetricsTest, SetFamilyReplacesAllSeries) {
  Metrics m;
  m.Describe("slot_tokens", MetricType::kGauge, "Tokens per slot.");
  m.SetFamily("slot_tokens", {{{{"slot", "0"}}, 5}, {{{"slot", "1"}}, 7}});
  m.SetFamily("slot_tokens", {{{{"slot", "1"}}, 9}});
  EXPECT_EQ(m.Render(), "# HELP slot_tokens Tokens per slot.\n# TYPE slot_tokens gauge\nslot_tokens{slot=\"1\"} 9\n");
  m.SetFamily("slot_tokens", {});
  EXPECT_EQ(m.Render(), "# HELP slot_tokens Tokens per slot.\n# TYPE slot_tokens gauge\n");
}

TEST(MetricsTest, DescribeTwiceIsANoOp) {
  Metrics m;
  m.Describe("x_total", MetricType::kCounter, "X.");
  m.Add("x_total");
  m.Describe("x_total", MetricType::kCounter, "Other help.");
  EXPECT_EQ(m.Render(), "# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n");
}

TEST(MetricsTest, ConcurrentUpdatesSum) {
  Metrics m;
  m.Describe("n_total", MetricType::kCounter, "N.");
  m.Describe("h_seconds", MetricType::kHistogram, "H.", LatencyBuckets());
  m.Describe("g", MetricType::kGauge, "G.");
  constexpr int kThreads = 8, kIters = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIters; ++i) {
        m.Add("n_total", {{"t", std::to_string(t % 2)}});
        m.Observe("h_seconds", {}, 0.002);
        m.Add("g", {}, 1);
        m.Add("g", {}, -1);
        if (i % 500 == 0) (void)m.Render();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(m.Value("n_total", {{"t", "0"}}) + m.Value("n_total", {{"t", "1"}}), kThreads * kIters);
  EXPECT_EQ(m.Value("h_seconds"), kThreads * kIters);
  EXPECT_EQ(m.Value("g"), 0);
  EXPECT_NE(m.Render().find("h_seconds_bucket{le=\"0.0025\"} 40000\n"), std::string::npos);
}

}  // namespace
}  // namespace deepshard::serve
