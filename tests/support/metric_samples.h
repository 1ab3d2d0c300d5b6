#pragma once

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace carbon::testing {

// The sum of the samples of `metric` in a Prometheus text exposition whose line contains every one
// of `labels` (e.g. code="OK").
inline double SumSamples(const std::string& exposition, const std::string& metric,
                         const std::vector<std::string>& labels = {}) {
  double sum = 0;
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (!absl::StartsWith(line, metric + "{") && !absl::StartsWith(line, metric + " ")) continue;
    bool all = true;
    for (const std::string& l : labels) all = all && absl::StrContains(line, l);
    if (!all) continue;
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) sum += v;
  }
  return sum;
}

// The paper's ResNet pool as inline YAML `variants:` of a route (six-space indent).
inline constexpr char kResnetVariantsYaml[] =
    "    variants:\n"
    "      - { name: resnet34, energy_mj: 359.9, error_percent: 8.58 }\n"
    "      - { name: resnet50, energy_mj: 420.6, error_percent: 7.138 }\n"
    "      - { name: resnet101, energy_mj: 803.1, error_percent: 6.454 }\n"
    "      - { name: resnet152, energy_mj: 1238.1, error_percent: 5.954 }\n";

}  // namespace carbon::testing
