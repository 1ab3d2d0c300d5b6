#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "selector/pool.h"

namespace carbon::selector {

// Grams of CO2 for one inference of `energy_mj` at `gco2_per_kwh` (1 mJ = 1e-3 J; 1 kWh = 3.6e6 J).
inline double GramsPerInference(double energy_mj, double gco2_per_kwh) {
  return gco2_per_kwh * energy_mj * 1e-3 / 3.6e6;
}

// The variants among `candidates` (bit i: variant i) on the lower convex hull of error against
// energy, cheapest first: each one more accurate than the last, and each step buying error at a
// higher energy price than the step before. Any mix of variants is matched or beaten, in both
// energy and error, by a mix of two neighbours of this hull, so the plans below use only those.
std::vector<size_t> LowerHull(const Pool& pool, uint64_t candidates);

// One stretch of time a plan decides for: the inferences expected in it and the intensity then.
struct PlanSlot {
  double items = 0;
  double gco2_per_kwh = 0;
};

// What a plan must keep within, over the whole horizon (what is already served included).
struct PlanLimit {
  enum class Kind {
    kMeanErrorPercent,  // Σ items × error ≤ value × Σ items: least grams
    kGrams,             // Σ grams ≤ value: least mean error
  } kind = Kind::kMeanErrorPercent;
  double value = 0;
};

// What has been served in the horizon already: fixed, but counted against the limit.
struct PlanServed {
  double items = 0;
  double error_percent_sum = 0;
  double grams = 0;
};

// The optimum over a horizon. Each slot sits at a `level` on the hull: the integer part is the
// hull vertex, the fraction the share of the slot's inferences on the next vertex.
struct HorizonPlan {
  std::vector<double> level;  // per slot, in [0, hull.size() - 1]
  // The multiplier at the margin, in grams per inference per percentage point of error: each slot
  // takes the hull vertex minimising grams + lambda × error. 0 when the cheapest vertex everywhere
  // already keeps within the limit.
  double lambda = 0;
  bool feasible = true;  // false: even the best the hull can do breaks the limit
  // Totals of the whole horizon (served included) under the plan.
  double items = 0;
  double error_percent_sum = 0;
  double grams = 0;
  double mean_error_percent() const { return items > 0 ? error_percent_sum / items : 0; }
};

// Minimises grams (kMeanErrorPercent) or mean error (kGrams) over the slots, given what is served.
// The problem is a fractional knapsack over the hull's steps: a step of a slot buys
// items × Δerror for items × grams/inference × Δenergy, and the cheapest error per gram goes
// first; one marginal price (lambda) separates the steps taken from those not. Steps at exactly the
// marginal price are taken in the same fraction in every slot they occur, so a horizon of equal
// slots gets equal mixes. A slot with no expected items still gets the level lambda gives it.
// Exact, O(S·H log(S·H)) for S slots and a hull of H vertices.
HorizonPlan PlanHorizon(const Pool& pool, std::span<const size_t> hull, std::span<const PlanSlot> slots,
                        const PlanServed& served, const PlanLimit& limit);

}  // namespace carbon::selector
