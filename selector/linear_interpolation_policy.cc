#include "selector/linear_interpolation_policy.h"

#include <algorithm>
#include <cmath>

namespace carbon::selector {

std::string_view SelectionReasonName(SelectionReason reason) {
  switch (reason) {
    case SelectionReason::kHeuristic: return "heuristic";
    case SelectionReason::kNoIntensity: return "no_intensity";
    case SelectionReason::kStaleIntensity: return "stale_intensity";
    case SelectionReason::kDegenerateWindow: return "degenerate_window";
    case SelectionReason::kMinimumDwell: return "minimum_dwell";
    case SelectionReason::kNoReadyVariant: return "no_ready_variant";
  }
  return "unknown";
}

double InterpolationWeight(double c, const WindowBounds& bounds) {
  return std::clamp((bounds.high - c) / (bounds.high - bounds.low), 0.0, 1.0);
}

std::optional<size_t> NearestByEnergy(const Pool& pool, double target_mj, uint64_t candidates) {
  std::optional<size_t> best;
  double best_distance = 0;
  // Variants are sorted by energy, so a strict `<` keeps the lower-energy one of a tie.
  for (size_t i = 0; i < pool.size(); ++i) {
    if ((candidates >> i & 1) == 0) continue;
    const double distance = std::abs(pool[i].energy_mj - target_mj);
    if (!best || distance < best_distance) {
      best = i;
      best_distance = distance;
    }
  }
  return best;
}

Selection LinearInterpolationPolicy::Select(std::optional<IntensityReading> reading,
                                            std::optional<WindowBounds> bounds, absl::Time now,
                                            uint64_t ready, const Selection* previous) const {
  Selection s;
  s.intensity = reading;
  s.bounds = bounds;
  s.variant = settings_.default_variant;
  ready &= pool_.all_variants_mask();

  if (!reading) {
    s.reason = SelectionReason::kNoIntensity;
  } else if (now - reading->at > settings_.stale_after) {
    s.reason = SelectionReason::kStaleIntensity;
  } else if (!bounds || !(bounds->high - bounds->low >= kMinimumSpread)) {
    s.reason = SelectionReason::kDegenerateWindow;
  } else if (ready == 0) {
    s.reason = SelectionReason::kNoReadyVariant;
  } else {
    s.reason = SelectionReason::kHeuristic;
    s.t = InterpolationWeight(reading->gco2_per_kwh, *bounds);
    s.target_energy_mj =
        pool_.min_energy_mj() + *s.t * (pool_.max_energy_mj() - pool_.min_energy_mj());
    s.variant = *NearestByEnergy(pool_, *s.target_energy_mj, ready);
  }

  if (previous != nullptr && previous->variant < pool_.size()) {
    if (previous->variant == s.variant) {
      s.since = previous->since;
    } else if (now - previous->since < settings_.min_dwell &&
               (ready >> previous->variant & 1) != 0) {
      s.variant = previous->variant;
      s.since = previous->since;
      if (s.reason == SelectionReason::kHeuristic) s.reason = SelectionReason::kMinimumDwell;
    } else {
      s.since = now;
    }
  } else {
    s.since = now;
  }
  return s;
}

size_t ApplyQualityFloor(const Pool& pool, const Selection& selection, double max_error_percent,
                         uint64_t ready) {
  ready &= pool.all_variants_mask();
  if (selection.variant < pool.size() && pool[selection.variant].error_percent <= max_error_percent) {
    return selection.variant;
  }
  uint64_t qualifying = 0;
  for (size_t i = 0; i < pool.size(); ++i) {
    if ((ready >> i & 1) != 0 && pool[i].error_percent <= max_error_percent) {
      qualifying |= uint64_t{1} << i;
    }
  }
  if (qualifying == 0) {
    // None is good enough: give the most accurate one that can serve.
    std::optional<size_t> best;
    for (size_t i = 0; i < pool.size(); ++i) {
      if ((ready >> i & 1) == 0) continue;
      if (!best || pool[i].error_percent < pool[*best].error_percent) best = i;
    }
    return best.value_or(pool.most_accurate());
  }
  const double target = selection.target_energy_mj.value_or(pool[selection.variant].energy_mj);
  return *NearestByEnergy(pool, target, qualifying);
}

}  // namespace carbon::selector
