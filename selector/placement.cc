#include "selector/placement.h"

#include <algorithm>

namespace carbon::selector {

std::string_view PlaceRankName(PlaceRank rank) {
  switch (rank) {
    case PlaceRank::kCleanest: return "cleanest";
    case PlaceRank::kHigherIntensity: return "higher_intensity";
    case PlaceRank::kIntensityUnknown: return "intensity_unknown";
    case PlaceRank::kOverBudget: return "over_latency_budget";
    case PlaceRank::kUnreachable: return "unreachable";
    case PlaceRank::kNoVariantReady: return "no_variant_ready";
  }
  return "unknown";
}

std::vector<RankedPlace> RankPlaces(const std::vector<PlaceState>& places, std::optional<absl::Duration> latency_budget) {
  std::vector<RankedPlace> ranked;
  for (size_t p = 0; p < places.size(); ++p) {
    const PlaceState& s = places[p];
    PlaceRank rank = PlaceRank::kHigherIntensity;
    if (s.reachable == false) {
      rank = PlaceRank::kUnreachable;
    } else if (!s.any_variant_ready) {
      rank = PlaceRank::kNoVariantReady;
    } else if (latency_budget && s.rtt && *s.rtt > *latency_budget) {
      rank = PlaceRank::kOverBudget;
    } else if (!s.intensity) {
      rank = PlaceRank::kIntensityUnknown;
    }
    ranked.push_back({p, rank});
  }
  std::stable_sort(ranked.begin(), ranked.end(), [&](const RankedPlace& a, const RankedPlace& b) {
    if (a.rank != b.rank) return a.rank < b.rank;
    if (a.rank != PlaceRank::kHigherIntensity) return false;
    return *places[a.place].intensity < *places[b.place].intensity;
  });
  if (!ranked.empty() && ranked.front().rank == PlaceRank::kHigherIntensity) ranked.front().rank = PlaceRank::kCleanest;
  return ranked;
}

}  // namespace carbon::selector
