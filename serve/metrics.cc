// Prometheus registry: see metrics.h.
#include "serve/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "base/status_macros.h"

namespace deepshard::serve {

namespace {

const char* TypeName(MetricType t) {
  switch (t) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
  }
  return "untyped";
}

// HELP text escapes backslash and newline; label values also escape '"'.
std::string Escape(std::string_view s, bool quote) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

// `key` is "" or "{...}"; returns it with one more label appended (for le="...").
std::string WithLabel(const std::string& key, std::string_view name, std::string_view value) {
  std::string extra = std::string(name) + "=\"" + Escape(value, true) + "\"";
  if (key.empty()) return "{" + extra + "}";
  return key.substr(0, key.size() - 1) + "," + extra + "}";
}

}  // namespace

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::string RenderLabels(Labels labels) {
  if (labels.empty()) return "";
  std::sort(labels.begin(), labels.end());
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i) out += ',';
    out += labels[i].first;
    out += "=\"";
    out += Escape(labels[i].second, true);
    out += '"';
  }
  out += '}';
  return out;
}

std::string FormatMetricValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return std::to_string(static_cast<int64_t>(v));
  }
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

void Metrics::Describe(const std::string& name, MetricType type, const std::string& help,
                       std::vector<double> buckets) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  if (it != families_.end()) {
    DS_CHECK(it->second.type == type);
    return;
  }
  Family f;
  f.type = type;
  f.help = help;
  if (type == MetricType::kHistogram) {
    std::sort(buckets.begin(), buckets.end());
    buckets.erase(std::unique(buckets.begin(), buckets.end()), buckets.end());
    while (!buckets.empty() && std::isinf(buckets.back())) buckets.pop_back();
    f.bounds = std::move(buckets);
  }
  families_.emplace(name, std::move(f));
}

Metrics::Family& Metrics::FamilyOrDie(std::string_view name, MetricType t1, MetricType t2) {
  auto it = families_.find(name);
  DS_CHECK(it != families_.end());  // Describe() the family first
  DS_CHECK(it->second.type == t1 || it->second.type == t2);
  return it->second;
}

void Metrics::Add(std::string_view name, const Labels& labels, double value) {
  std::string key = RenderLabels(labels);
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = FamilyOrDie(name, MetricType::kCounter, MetricType::kGauge);
  if (f.type == MetricType::kCounter && value < 0) return;  // counters only go up
  f.series[key].value += value;
}

void Metrics::Set(std::string_view name, const Labels& labels, double value) {
  std::string key = RenderLabels(labels);
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = FamilyOrDie(name, MetricType::kGauge, MetricType::kGauge);
  f.series[key].value = value;
}

void Metrics::Observe(std::string_view name, const Labels& labels, double value) {
  std::string key = RenderLabels(labels);
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = FamilyOrDie(name, MetricType::kHistogram, MetricType::kHistogram);
  Series& s = f.series[key];
  if (s.buckets.empty()) s.buckets.assign(f.bounds.size() + 1, 0);
  // The first bucket whose upper bound is >= value (le is inclusive).
  size_t b = std::lower_bound(f.bounds.begin(), f.bounds.end(), value) - f.bounds.begin();
  ++s.buckets[b];
  s.sum += value;
  ++s.count;
}

void Metrics::SetFamily(std::string_view name, const std::vector<std::pair<Labels, double>>& series) {
  std::map<std::string, Series> fresh;
  for (const auto& [labels, value] : series) fresh[RenderLabels(labels)].value = value;
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = FamilyOrDie(name, MetricType::kCounter, MetricType::kGauge);
  f.series.swap(fresh);
}

double Metrics::Value(std::string_view name, const Labels& labels) const {
  std::string key = RenderLabels(labels);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return 0;
  auto s = it->second.series.find(key);
  if (s == it->second.series.end()) return 0;
  return it->second.type == MetricType::kHistogram ? static_cast<double>(s->second.count) : s->second.value;
}

std::string Metrics::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + Escape(f.help, false) + "\n";
    out += "# TYPE " + name + " " + TypeName(f.type) + "\n";
    for (const auto& [key, s] : f.series) {
      if (f.type != MetricType::kHistogram) {
        out += name + key + " " + FormatMetricValue(s.value) + "\n";
        continue;
      }
      uint64_t cumulative = 0;
      for (size_t b = 0; b <= f.bounds.size(); ++b) {
        cumulative += b < s.buckets.size() ? s.buckets[b] : 0;
        const std::string le = b < f.bounds.size() ? FormatMetricValue(f.bounds[b]) : "+Inf";
        out += name + "_bucket" + WithLabel(key, "le", le) + " " + std::to_string(cumulative) + "\n";
      }
      out += name + "_sum" + key + " " + FormatMetricValue(s.sum) + "\n";
      out += name + "_count" + key + " " + std::to_string(s.count) + "\n";
    }
  }
  return out;
}

}  // namespace deepshard::serve
