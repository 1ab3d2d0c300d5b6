#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace carbon::telemetry {

// One sample of a scrape in Prometheus's text exposition format.
struct TextSample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;  // in the order given, values unescaped
  double value = 0;

  // The value of label `key`, or nullptr when the sample has none.
  const std::string* Label(std::string_view key) const;
};

// Parses the text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/): comment lines (`# HELP`, `# TYPE`
// and any other) are skipped, each other non-blank line is `name{label="value",...} value
// [timestamp]`, label values with the \\, \" and \n escapes, values as Go's ParseFloat reads them
// (NaN, +Inf, -Inf included). The first malformed line is INVALID_ARGUMENT "line L, column C: what";
// more than `max_samples` samples is RESOURCE_EXHAUSTED. Never throws.
absl::StatusOr<std::vector<TextSample>> ParsePrometheusText(std::string_view text, size_t max_samples = 200'000);

}  // namespace carbon::telemetry
