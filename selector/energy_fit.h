#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace carbon::selector {

// What an energy meter and the inference counters said over one interval between two readings.
struct EnergyInterval {
  double seconds = 0;
  double joules = 0;               // metered energy over the interval (all GPUs of the deployment)
  std::vector<double> inferences;  // per variant (indexed like the pool), over the interval
  double weight = 1;               // how much the interval counts (older ones less: forgetting)
};

// Per-variant energy per inference attributed from metered energy, with the idle power.
struct EnergyEstimate {
  double idle_watts = 0;
  double idle_watts_stderr = 0;
  std::vector<double> joules_per_inference;  // per variant; 0 where the fit bound it at zero
  // Standard error of each estimate; infinite where it cannot be told (no inferences of the variant
  // in the intervals, the estimate bound at zero, or too few intervals for the unknowns).
  std::vector<double> stderr_joules;
  double residual_rms_joules = 0;  // weighted root mean square of the intervals' residuals
  double explained = 0;            // R² of the metered joules (1: the model explains them all)
  size_t intervals = 0;
};

// Fits joules ≈ idle_watts × seconds + Σ_v e_v × inferences_v over the intervals by weighted
// non-negative least squares (Lawson and Hanson's active-set method: power and energies cannot be
// negative), on columns scaled to unit norm so seconds and counts of different magnitudes solve
// alike; standard errors from the weighted residual variance and (XᵀWX)⁻¹ over the unknowns the fit
// left free. Variants without a single inference in the intervals are left out of the fit (their
// estimate 0, error infinite). INVALID_ARGUMENT for intervals of the wrong width or a negative
// figure; FAILED_PRECONDITION with no interval.
absl::StatusOr<EnergyEstimate> FitEnergy(std::span<const EnergyInterval> intervals, size_t variants);

}  // namespace carbon::selector
