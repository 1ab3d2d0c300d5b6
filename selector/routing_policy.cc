#include "selector/routing_policy.h"

#include <cmath>

namespace carbon::selector {

Decision Decision::OneVariant(const Pool& pool, size_t variant, std::string_view reason) {
  Decision d;
  d.weights = {{variant, 1.0}};
  d.primary = variant;
  d.reason = reason;
  d.aim_energy_mj = pool[variant].energy_mj;
  return d;
}

std::optional<double> Decision::Explained(std::string_view name) const {
  for (const ExplanationTerm& term : explanation) {
    if (term.name == name) return term.value;
  }
  return std::nullopt;
}

double Decision::WeightOf(size_t variant) const {
  for (const VariantWeight& w : weights) {
    if (w.variant == variant) return w.weight;
  }
  return 0;
}

std::optional<std::string_view> UnusableInputs(const PolicyInputs& inputs, const PolicySettings& settings,
                                               double minimum_spread) {
  if (!inputs.intensity) return reasons::kNoIntensity;
  if (inputs.now - inputs.intensity->at > settings.stale_after) return reasons::kStaleIntensity;
  if (!inputs.bounds || !(inputs.bounds->high - inputs.bounds->low >= minimum_spread)) {
    return reasons::kDegenerateWindow;
  }
  return std::nullopt;
}

void ApplyMinimumDwell(const Pool& pool, const PolicyInputs& inputs, absl::Duration min_dwell,
                       std::string_view free_reason, Decision* decision) {
  const Decision* previous = inputs.previous;
  if (previous == nullptr || previous->primary >= pool.size()) {
    decision->since = inputs.now;
    return;
  }
  const uint64_t ready = inputs.ready & pool.all_variants_mask();
  if (previous->primary == decision->primary) {
    decision->since = previous->since;
  } else if (inputs.now - previous->since < min_dwell && (ready >> previous->primary & 1) != 0) {
    decision->weights = {{previous->primary, 1.0}};
    decision->primary = previous->primary;
    decision->since = previous->since;
    if (decision->reason == free_reason) decision->reason = reasons::kMinimumDwell;
  } else {
    decision->since = inputs.now;
  }
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

size_t ApplyQualityFloor(const Pool& pool, size_t drawn, double aim_energy_mj, double max_error_percent,
                         uint64_t ready) {
  ready &= pool.all_variants_mask();
  if (drawn < pool.size() && pool[drawn].error_percent <= max_error_percent) return drawn;
  uint64_t qualifying = 0;
  for (size_t i = 0; i < pool.size(); ++i) {
    if ((ready >> i & 1) != 0 && pool[i].error_percent <= max_error_percent) qualifying |= uint64_t{1} << i;
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
  return *NearestByEnergy(pool, aim_energy_mj, qualifying);
}

}  // namespace carbon::selector
