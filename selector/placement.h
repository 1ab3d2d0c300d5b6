#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/time/time.h"

namespace carbon::selector {

// Where a route's calls can be served: one place (an inference cluster) as the route sees it now.
struct PlaceState {
  std::optional<bool> reachable;       // answered the last readiness questions; nullopt: never asked
  bool any_variant_ready = true;       // reports at least one of the route's variants ready
  std::optional<absl::Duration> rtt;   // its latency cost; nullopt: not known
  // The grid intensity it is ranked at (gCO2/kWh); nullopt: stale with none assumed.
  std::optional<double> intensity;
};

// Why a place stands where it does in a route's order (the first reason that applies).
enum class PlaceRank : uint8_t {
  kCleanest,          // the lowest intensity of those that can serve within the budget
  kHigherIntensity,   // can serve, within the budget, at a higher intensity
  kIntensityUnknown,  // can serve within the budget, but its intensity is unknown
  kOverBudget,        // its latency cost exceeds the budget
  kUnreachable,       // did not answer the last readiness questions
  kNoVariantReady,    // answered, but reports none of the route's variants ready
};
std::string_view PlaceRankName(PlaceRank rank);

struct RankedPlace {
  size_t place = 0;  // index into the places ranked
  PlaceRank rank = PlaceRank::kCleanest;
};

// The places best first: those that can serve within `latency_budget` by intensity (ties keep the
// given order, so the first listed, the route's home, wins), then the rest by PlaceRank. The route's
// calls go to the first; the route's policy decides on its grid. Minimising C_place × E_v + λ × err_v
// over (place, variant) pairs takes the lowest C whatever v and λ are, so this order followed by the
// policy at the first place's intensity is the joint optimum of the aimed policies' Lagrangian.
std::vector<RankedPlace> RankPlaces(const std::vector<PlaceState>& places, std::optional<absl::Duration> latency_budget);

}  // namespace carbon::selector
