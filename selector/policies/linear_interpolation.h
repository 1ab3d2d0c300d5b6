#pragma once

#include "selector/routing_policy.h"

namespace carbon::selector {

// Jung's heuristic (docs/design.md §1), following the paper's text rather than its printed
// equation: a clean grid (low C) picks the high-energy, accurate variant; a dirty grid the frugal one.
//   t = clamp((C_high - C) / (C_high - C_low), 0, 1);  E_target = E_low + t (E_high - E_low)
//   choice = the ready variant whose energy is nearest E_target; a tie goes to the lower energy.
// Always one variant at weight 1. Explains itself with `t` and `target_energy_mj`.
// Immutable: safe to call from any thread.
class LinearInterpolationPolicy final : public RoutingPolicy {
 public:
  static constexpr std::string_view kKind = "linear-interpolation";
  static constexpr std::string_view kReason = "heuristic";
  // Below this spread (g/kWh) the window says nothing about where C stands.
  static constexpr double kMinimumSpread = 1.0;

  // `pool` must outlive the policy.
  LinearInterpolationPolicy(const Pool& pool, PolicySettings settings) : pool_(pool), settings_(settings) {}

  std::string_view kind() const override { return kKind; }
  Decision Decide(const PolicyInputs& inputs) const override;

 private:
  const Pool& pool_;
  PolicySettings settings_;
};

// The interpolation weight t for intensity c in the window (no degenerate-window check).
double InterpolationWeight(double c, const WindowBounds& bounds);

}  // namespace carbon::selector
