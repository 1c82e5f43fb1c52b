// Metrics: a thread-safe registry of Prometheus counters, gauges and
// histograms, rendered in the text exposition format 0.0.4 for GET /metrics.
//
// A metric family is declared once with Describe(name, type, help[, buckets]);
// its series are then created on first use by Add / Set / Observe with a label
// set. Render() writes every family sorted by name, its "# HELP" and "# TYPE"
// lines once, then its series sorted by their rendered label text, so the
// output is deterministic (tests compare it byte for byte).
//
// Design:
//   - one mutex for the whole registry: updates are a map lookup and an add,
//     far cheaper than the HTTP request or the model step that causes them;
//   - a series is keyed by its labels rendered canonically (sorted by label
//     name, values escaped), which is also the text Render() prints;
//   - SetFamily() replaces all series of a gauge/counter family at once, so a
//     per-step publisher (the engine's per-slot and per-expert gauges) never
//     leaves a scrape with half-old, half-new values or series of slots that
//     no longer exist;
//   - histograms keep per-bucket counts and render them cumulatively, with
//     the implicit le="+Inf" bucket, _sum and _count.
// Using a name that was not described, or with the wrong type, is a
// programmer error (DS_CHECK), not a runtime condition.
//
// Example:
//   Metrics m;
//   m.Describe("deepshard_http_requests_total", MetricType::kCounter, "HTTP requests.");
//   m.Add("deepshard_http_requests_total", {{"endpoint", "/v1/completions"}, {"status", "200"}});
//   std::string text = m.Render();
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace deepshard::serve {

enum class MetricType { kCounter, kGauge, kHistogram };

// Label name -> value pairs, in any order (they are sorted by name when stored).
using Labels = std::vector<std::pair<std::string, std::string>>;

// Default histogram buckets for latencies in seconds: 1 ms .. 60 s.
std::vector<double> LatencyBuckets();

class Metrics {
 public:
  // Declares a family. Describing the same name again with the same type is a
  // no-op (several components may declare what they share); another type is a
  // programmer error. `buckets` (histograms only) are upper bounds; they are
  // sorted and de-duplicated, and +Inf is implicit.
  void Describe(const std::string& name, MetricType type, const std::string& help,
                std::vector<double> buckets = {});

  // Counter or gauge: adds `value` (counters: must be >= 0).
  void Add(std::string_view name, const Labels& labels = {}, double value = 1.0);
  // Gauge: sets the value.
  void Set(std::string_view name, const Labels& labels, double value);
  // Histogram: records one observation.
  void Observe(std::string_view name, const Labels& labels, double value);
  // Counter or gauge: replaces every series of the family by `series`, atomically
  // with respect to Render() and other updates.
  void SetFamily(std::string_view name, const std::vector<std::pair<Labels, double>>& series);

  // The current value of a counter/gauge series, or the count of a histogram
  // series; 0 when the series does not exist. For tests and diagnostics.
  double Value(std::string_view name, const Labels& labels = {}) const;

  // The whole registry in the Prometheus text format 0.0.4.
  std::string Render() const;

 private:
  struct Series {
    double value = 0;                 // counter / gauge
    std::vector<uint64_t> buckets;    // histogram: per-bucket (not cumulative) counts, +Inf last
    double sum = 0;
    uint64_t count = 0;
  };
  struct Family {
    MetricType type = MetricType::kCounter;
    std::string help;
    std::vector<double> bounds;            // histogram upper bounds, ascending, without +Inf
    std::map<std::string, Series> series;  // key: rendered label text, e.g. {a="x",b="y"}
  };

  Family& FamilyOrDie(std::string_view name, MetricType t1, MetricType t2);

  mutable std::mutex mu_;
  std::map<std::string, Family, std::less<>> families_;
};

// `{a="x",b="y"}` for labels sorted by name, with values escaped as Prometheus
// requires (backslash, double quote, newline); "" for no labels.
std::string RenderLabels(Labels labels);

// A sample value as Prometheus text: integers without a fraction ("3"),
// others in the shortest round-trip form, "+Inf", "-Inf", "NaN".
std::string FormatMetricValue(double v);

}  // namespace deepshard::serve
