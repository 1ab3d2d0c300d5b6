#pragma once

#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "sidecar/config.h"

namespace carbon::sidecar {

// What `carbon-sidecar --calibrate ROUTE` measures and how hard it drives each variant.
struct CalibrationRunOptions {
  std::string route;                          // the route whose pool is measured
  std::string out_path;                       // the pool file written
  absl::Duration idle = absl::Seconds(10);    // of nothing, for the idle power
  absl::Duration per_variant = absl::Seconds(30);
  int slices = 5;                             // each variant's run, read in this many slices
  int64_t batch = 1;                          // inferences per request
  int concurrency = 4;                        // calls in flight per variant
};

// Measures the energy per inference of each variant of `options.route` on the upstream the config
// names, with the meter the route's `energy` names: the meter read over `idle` with no calls from
// here (the idle power), then, variant by variant, closed-loop calls straight to the upstream (model
// name = the variant; inputs of zeros shaped as the variant's ModelMetadata says, the batch
// dimension set to `batch`) for `per_variant`, the meter read at each of `slices` slices. Each
// slice gives (joules − idle power × seconds) / inferences; the estimate is their mean and its
// uncertainty their standard error. Writes a pool file to `out_path` with the measured energy per
// inference, the top-1 errors of the current pool (the sidecar cannot measure accuracy), and the
// conditions as comments; prints the table to `report`. Nothing is written when a variant fails.
absl::Status RunCalibration(const SidecarConfig& config, const CalibrationRunOptions& options, std::FILE* report);

}  // namespace carbon::sidecar
