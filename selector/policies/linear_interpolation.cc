#include "selector/policies/linear_interpolation.h"
#include "selector/policies/kinds.h"

#include <algorithm>

namespace carbon::selector {

double InterpolationWeight(double c, const WindowBounds& bounds) {
  return std::clamp((bounds.high - c) / (bounds.high - bounds.low), 0.0, 1.0);
}

Decision LinearInterpolationPolicy::Decide(const PolicyInputs& inputs) const {
  const uint64_t ready = inputs.ready & pool_.all_variants_mask();
  std::optional<std::string_view> unusable = UnusableInputs(inputs, settings_, kMinimumSpread);
  if (!unusable && ready == 0) unusable = reasons::kNoReadyVariant;
  Decision d;
  if (unusable) {
    d = Decision::OneVariant(pool_, settings_.default_variant, *unusable);
  } else {
    const double t = InterpolationWeight(inputs.intensity->gco2_per_kwh, *inputs.bounds);
    const double target = pool_.min_energy_mj() + t * (pool_.max_energy_mj() - pool_.min_energy_mj());
    d = Decision::OneVariant(pool_, *NearestByEnergy(pool_, target, ready), kReason);
    d.aim_energy_mj = target;
    d.explanation = {{"t", t}, {"target_energy_mj", target}};
  }
  d.intensity = inputs.intensity;
  d.bounds = inputs.bounds;
  ApplyMinimumDwell(pool_, inputs, settings_.min_dwell, kReason, &d);
  // Without a target a quality floor stays nearest the variant actually held.
  if (unusable) d.aim_energy_mj = pool_[d.primary].energy_mj;
  return d;
}

namespace {

// The heuristic has no options of its own: `default`, `min_dwell` and the intensity's
// `stale_after` come to every policy in PolicySettings.
class LinearInterpolationSpec final : public PolicySpec {
 public:
  std::string_view kind() const override { return LinearInterpolationPolicy::kKind; }
  std::unique_ptr<const RoutingPolicy> Build(const Pool& pool, const PolicySettings& settings) const override {
    return std::make_unique<LinearInterpolationPolicy>(pool, settings);
  }
};

}  // namespace

std::unique_ptr<PolicySpec> MakeLinearInterpolationSpec() { return std::make_unique<LinearInterpolationSpec>(); }

std::unique_ptr<PolicySpec> ReadLinearInterpolationPolicy(ConfigBlock&, const PolicyContext&) { return MakeLinearInterpolationSpec(); }

}  // namespace carbon::selector
