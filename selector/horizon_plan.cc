#include "selector/horizon_plan.h"

#include <algorithm>
#include <cmath>

namespace carbon::selector {

std::vector<size_t> LowerHull(const Pool& pool, uint64_t candidates) {
  std::vector<size_t> hull;
  // The pool is sorted by energy; of equal energies only the most accurate can be on the hull.
  std::vector<size_t> points;
  for (size_t i = 0; i < pool.size(); ++i) {
    if ((candidates >> i & 1) == 0) continue;
    if (!points.empty() && pool[points.back()].energy_mj == pool[i].energy_mj) {
      if (pool[i].error_percent < pool[points.back()].error_percent) points.back() = i;
      continue;
    }
    points.push_back(i);
  }
  // Andrew's monotone chain, lower half: drop a point that lies on or above the segment joining
  // its neighbours.
  const auto cross = [&](size_t o, size_t a, size_t b) {
    return (pool[a].energy_mj - pool[o].energy_mj) * (pool[b].error_percent - pool[o].error_percent) -
           (pool[a].error_percent - pool[o].error_percent) * (pool[b].energy_mj - pool[o].energy_mj);
  };
  for (size_t p : points) {
    while (hull.size() >= 2 && cross(hull[hull.size() - 2], hull.back(), p) <= 0) hull.pop_back();
    hull.push_back(p);
  }
  // Past the most accurate vertex the hull climbs again: more energy for more error.
  size_t best = 0;
  for (size_t k = 1; k < hull.size(); ++k) {
    if (pool[hull[k]].error_percent < pool[hull[best]].error_percent) best = k;
  }
  if (!hull.empty()) hull.resize(best + 1);
  return hull;
}

namespace {

// One step up the hull in one slot.
struct Step {
  double price;    // grams per inference per percentage point of error
  double benefit;  // error-percent sum it removes
  double cost;     // grams it adds
  size_t slot;
};

// Prices this close count as one: a horizon of equal slots must not be served in an arbitrary order.
bool SamePrice(double a, double b) { return std::abs(a - b) <= 1e-9 * std::max(std::abs(a), std::abs(b)); }

}  // namespace

HorizonPlan PlanHorizon(const Pool& pool, std::span<const size_t> hull, std::span<const PlanSlot> slots,
                        const PlanServed& served, const PlanLimit& limit) {
  HorizonPlan plan;
  plan.level.assign(slots.size(), 0.0);
  if (hull.empty()) {
    plan.feasible = false;
    return plan;
  }
  const auto energy = [&](size_t h) { return pool[hull[h]].energy_mj; };
  const auto error = [&](size_t h) { return pool[hull[h]].error_percent; };
  const auto price = [&](size_t edge, double c) {
    return GramsPerInference(energy(edge + 1) - energy(edge), c) / (error(edge) - error(edge + 1));
  };

  // Everything at the cheapest vertex first.
  double items = served.items, error_sum = served.error_percent_sum, grams = served.grams;
  std::vector<Step> steps;
  for (size_t s = 0; s < slots.size(); ++s) {
    const PlanSlot& slot = slots[s];
    items += slot.items;
    error_sum += slot.items * error(0);
    grams += slot.items * GramsPerInference(energy(0), slot.gco2_per_kwh);
    if (slot.items <= 0) continue;
    for (size_t edge = 0; edge + 1 < hull.size(); ++edge) {
      steps.push_back({price(edge, slot.gco2_per_kwh), slot.items * (error(edge) - error(edge + 1)),
                       slot.items * GramsPerInference(energy(edge + 1) - energy(edge), slot.gco2_per_kwh), s});
    }
  }
  std::stable_sort(steps.begin(), steps.end(), [](const Step& a, const Step& b) { return a.price < b.price; });

  const bool by_error = limit.kind == PlanLimit::Kind::kMeanErrorPercent;
  // What is still to be bought (error to remove) or still to spend (grams).
  double remaining = by_error ? error_sum - limit.value * items : limit.value - grams;
  double marginal_share = 0;  // of the steps priced exactly lambda
  if (by_error ? remaining > 0 : remaining >= 0) {
    marginal_share = 1;
    size_t a = 0;
    while (a < steps.size()) {
      size_t b = a;
      double benefit = 0, cost = 0;
      for (; b < steps.size() && SamePrice(steps[b].price, steps[a].price); ++b) {
        benefit += steps[b].benefit;
        cost += steps[b].cost;
      }
      plan.lambda = steps[a].price;
      const double group = by_error ? benefit : cost;
      if (group >= remaining) {
        marginal_share = group > 0 ? remaining / group : 1;
        remaining = 0;
        break;
      }
      remaining -= group;
      a = b;
    }
    if (by_error && remaining > 0) plan.feasible = false;
  } else if (!by_error) {
    plan.feasible = false;  // the cheapest vertex alone overspends: nothing left to buy with
  }

  // Each slot's level from the price: steps below lambda taken, steps at it in the marginal share.
  if (plan.lambda > 0) {
    for (size_t s = 0; s < slots.size(); ++s) {
      double level = 0;
      for (size_t edge = 0; edge + 1 < hull.size(); ++edge) {
        const double p = price(edge, slots[s].gco2_per_kwh);
        if (SamePrice(p, plan.lambda)) {
          level += marginal_share;
          break;
        }
        if (p > plan.lambda) break;
        level += 1;
      }
      plan.level[s] = level;
    }
  }

  plan.items = served.items;
  plan.error_percent_sum = served.error_percent_sum;
  plan.grams = served.grams;
  for (size_t s = 0; s < slots.size(); ++s) {
    const size_t low = static_cast<size_t>(plan.level[s]);
    const double up = plan.level[s] - static_cast<double>(low);
    const size_t high = std::min(low + 1, hull.size() - 1);
    const double n = slots[s].items;
    plan.items += n;
    plan.error_percent_sum += n * ((1 - up) * error(low) + up * error(high));
    plan.grams += n * ((1 - up) * GramsPerInference(energy(low), slots[s].gco2_per_kwh) +
                       up * GramsPerInference(energy(high), slots[s].gco2_per_kwh));
  }
  return plan;
}

}  // namespace carbon::selector
