#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "selector/policy_spec.h"
#include "selector/pool.h"
#include "selector/routing_policy.h"

namespace carbon::selector {

// A route's policy deciding on other energies than its pool's (measured ones), while everything
// else of the route keeps the pool's variant order: the policy is built over a pool of the same
// variants with those energies (which may order them otherwise), and its inputs and decisions are
// translated between the two orders. Immutable; safe to call from any thread.
class EnergyOverlay {
 public:
  // `energies_mj` per variant of `route_pool`, in its order.
  static absl::StatusOr<EnergyOverlay> Create(const Pool& route_pool, const std::vector<double>& energies_mj,
                                              const PolicySpec& spec, const PolicySettings& settings);

  // Inputs and decision in the route pool's order.
  Decision Decide(const PolicyInputs& inputs) const;
  // The energies it decides on, in the route pool's order.
  const std::vector<double>& energies_mj() const { return energies_mj_; }

 private:
  EnergyOverlay() = default;
  std::vector<double> energies_mj_;
  std::shared_ptr<const Pool> pool_;  // the overlay's own order
  std::shared_ptr<const RoutingPolicy> policy_;
  std::vector<size_t> to_overlay_, to_route_;
};

}  // namespace carbon::selector
