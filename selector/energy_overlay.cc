#include "selector/energy_overlay.h"

#include <algorithm>

namespace carbon::selector {
namespace {

uint64_t MapMask(uint64_t mask, const std::vector<size_t>& to) {
  uint64_t out = 0;
  for (size_t v = 0; v < to.size(); ++v) {
    if ((mask >> v & 1) != 0) out |= uint64_t{1} << to[v];
  }
  return out;
}

Decision MapDecision(Decision d, const std::vector<size_t>& to) {
  for (VariantWeight& w : d.weights) w.variant = to[w.variant];
  std::sort(d.weights.begin(), d.weights.end(), [](const auto& a, const auto& b) { return a.variant < b.variant; });
  d.primary = to[d.primary];
  return d;
}

}  // namespace

absl::StatusOr<EnergyOverlay> EnergyOverlay::Create(const Pool& route_pool, const std::vector<double>& energies_mj,
                                                    const PolicySpec& spec, const PolicySettings& settings) {
  if (energies_mj.size() != route_pool.size()) {
    return absl::InvalidArgumentError("one energy per variant of the pool is needed");
  }
  std::vector<Variant> variants = route_pool.variants();
  for (size_t v = 0; v < variants.size(); ++v) variants[v].energy_mj = energies_mj[v];
  auto pool = Pool::Create(std::move(variants));
  if (!pool.ok()) return pool.status();
  EnergyOverlay overlay;
  overlay.energies_mj_ = energies_mj;
  overlay.pool_ = std::make_shared<const Pool>(*std::move(pool));
  overlay.to_overlay_.resize(route_pool.size());
  overlay.to_route_.resize(route_pool.size());
  for (size_t v = 0; v < route_pool.size(); ++v) {
    const size_t o = *overlay.pool_->IndexOf(route_pool[v].name);
    overlay.to_overlay_[v] = o;
    overlay.to_route_[o] = v;
  }
  PolicySettings mapped = settings;
  mapped.default_variant = overlay.to_overlay_[settings.default_variant];
  overlay.policy_ = spec.Build(*overlay.pool_, mapped);
  return overlay;
}

Decision EnergyOverlay::Decide(const PolicyInputs& inputs) const {
  PolicyInputs mapped = inputs;
  mapped.ready = MapMask(inputs.ready, to_overlay_);
  std::optional<Decision> previous;
  if (inputs.previous != nullptr) {
    previous = MapDecision(*inputs.previous, to_overlay_);
    mapped.previous = &*previous;
  }
  return MapDecision(policy_->Decide(mapped), to_route_);
}

}  // namespace carbon::selector
