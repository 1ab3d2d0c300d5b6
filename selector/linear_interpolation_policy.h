#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/time/time.h"
#include "selector/intensity_window.h"
#include "selector/pool.h"

namespace carbon::selector {

// Why a variant was chosen. Reported on /v1/selection-style outputs and in logs.
enum class SelectionReason {
  kHeuristic,         // linear interpolation over the window
  kNoIntensity,       // no reading yet: the route's default
  kStaleIntensity,    // newest reading older than stale_after: the route's default
  kDegenerateWindow,  // C_high - C_low below 1 g/kWh: the route's default
  kMinimumDwell,      // the heuristic wants another variant but the current one has not dwelt long enough
  kNoReadyVariant,    // nothing in the pool is ready: the route's default, for the upstream to judge
};

std::string_view SelectionReasonName(SelectionReason reason);

// What the policy decided for a route at one instant. A plain value: copied into snapshots.
struct Selection {
  size_t variant = 0;  // index into the Pool
  SelectionReason reason = SelectionReason::kNoIntensity;
  std::optional<IntensityReading> intensity;
  std::optional<WindowBounds> bounds;
  // Set for kHeuristic and kMinimumDwell: 1 = cleanest grid of the window, 0 = dirtiest.
  std::optional<double> t;
  std::optional<double> target_energy_mj;
  absl::Time since = absl::InfinitePast();  // when `variant` became the selection
};

struct PolicySettings {
  size_t default_variant = 0;
  absl::Duration stale_after = absl::Hours(2);
  absl::Duration min_dwell = absl::ZeroDuration();
};

// docs/design.md §1, following the paper's text rather than its printed equation: a clean grid (low C)
// picks the high-energy, accurate variant; a dirty grid the frugal one.
//   t = clamp((C_high - C) / (C_high - C_low), 0, 1);  E_target = E_low + t (E_high - E_low)
//   choice = the variant whose energy is nearest E_target; a tie goes to the lower energy.
// Stateless and immutable: safe to call from any thread.
class LinearInterpolationPolicy {
 public:
  // Below this spread (g/kWh) the window says nothing about where C stands.
  static constexpr double kMinimumSpread = 1.0;

  LinearInterpolationPolicy(const Pool& pool, PolicySettings settings)
      : pool_(pool), settings_(settings) {}

  // `ready` masks out variants the upstream reports not ready. `previous` is the route's last
  // selection (for minimum dwell), or null.
  Selection Select(std::optional<IntensityReading> reading, std::optional<WindowBounds> bounds,
                   absl::Time now, uint64_t ready, const Selection* previous) const;

  const Pool& pool() const { return pool_; }
  const PolicySettings& settings() const { return settings_; }

 private:
  const Pool& pool_;
  PolicySettings settings_;
};

// The interpolation weight t for intensity c in the window (no degenerate-window check).
double InterpolationWeight(double c, const WindowBounds& bounds);

// The candidate (bit set in `candidates`) whose energy is nearest `target_mj`; ties to the lower
// energy. nullopt when `candidates` is empty.
std::optional<size_t> NearestByEnergy(const Pool& pool, double target_mj, uint64_t candidates);

// Applies a per-request quality floor to a route's selection: keeps the selected variant when its
// error is at most `max_error_percent`, otherwise picks, among the ready variants that qualify, the
// one nearest the selection's target energy; when none qualifies, the most accurate ready variant.
size_t ApplyQualityFloor(const Pool& pool, const Selection& selection, double max_error_percent,
                         uint64_t ready);

}  // namespace carbon::selector
