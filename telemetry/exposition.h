#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace carbon::telemetry {

// The content types of the two exposition formats.
inline constexpr char kPrometheusTextType[] = "text/plain; version=0.0.4; charset=utf-8";
inline constexpr char kOpenMetricsType[] = "application/openmetrics-text; version=1.0.0; charset=utf-8";

enum class MetricType { kCounter, kGauge, kHistogram };

using Label = std::pair<std::string_view, std::string_view>;

// Writes metric families in the Prometheus text format 0.0.4 or in OpenMetrics 1.0: HELP and TYPE
// once per family before its samples, escaped label values, shortest round-trip numbers, +Inf,
// -Inf and NaN spelled out. Counter families are named with their `_total` suffix; in OpenMetrics
// the family (HELP/TYPE) drops it, as that format requires. Not thread-safe; one per scrape.
class ExpositionWriter {
 public:
  explicit ExpositionWriter(bool open_metrics = false) : open_metrics_(open_metrics) {}

  // Starts a family; the samples that follow belong to it until the next Family call.
  void Family(std::string_view name, MetricType type, std::string_view help);
  // A sample of the current counter or gauge family.
  void Sample(std::initializer_list<Label> labels, double value);
  // A sample with labels given as a span (for label sets built at run time).
  void Sample(std::span<const Label> labels, double value);
  // One histogram series of the current histogram family: cumulative counts per upper bound
  // (ascending, without +Inf), the total count and the sum.
  void Histogram(std::span<const Label> labels, std::span<const double> bounds,
                 std::span<const uint64_t> cumulative, uint64_t count, double sum);

  // The text so far, terminated as the format requires.
  std::string Finish();

  const char* content_type() const { return open_metrics_ ? kOpenMetricsType : kPrometheusTextType; }

 private:
  void Line(std::string_view name, std::span<const Label> labels, const Label* extra, double value);

  bool open_metrics_;
  std::string family_;
  std::string out_;
};

// Appends the shortest text that reads back as exactly `v` ("+Inf", "-Inf", "NaN" for those).
void AppendNumber(std::string* out, double v);

// Whether an HTTP Accept header asks for OpenMetrics.
bool WantsOpenMetrics(std::string_view accept);

}  // namespace carbon::telemetry
