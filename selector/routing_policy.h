#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "selector/intensity_window.h"
#include "selector/pool.h"

namespace carbon::selector {

// Why a decision is what it is: names shared by every policy for the cases none can decide in, and
// those of the policies. A reason points at a string literal, so decisions copy it freely.
namespace reasons {
inline constexpr std::string_view kNoIntensity = "no_intensity";          // no reading yet: the route's default
inline constexpr std::string_view kStaleIntensity = "stale_intensity";    // newest reading older than stale_after
inline constexpr std::string_view kDegenerateWindow = "degenerate_window";  // C_high - C_low below 1 g/kWh
inline constexpr std::string_view kNoReadyVariant = "no_ready_variant";   // nothing ready: the default, for the upstream to judge
inline constexpr std::string_view kMinimumDwell = "minimum_dwell";        // the policy wants another variant too soon
}  // namespace reasons

// What a policy remembers from one decision to the next (a target policy's horizon and traffic
// profile). Policies are immutable, so their memory travels in the decisions they make: the
// publisher hands the last decision back as PolicyInputs::previous, a reload of the same route
// carries it over, and a restart loses it. Immutable once made.
class PolicyMemory {
 public:
  virtual ~PolicyMemory() = default;
};

// One variant of a decision and the share of the route's requests it gets.
struct VariantWeight {
  size_t variant = 0;  // index into the Pool
  double weight = 0;   // in (0, 1]
};

// A number a policy reports about its decision, e.g. the heuristic's t. `name` points at a string
// literal; /v1/selection, logs and the probe print the terms without knowing the policy.
struct ExplanationTerm {
  std::string_view name;
  double value = 0;
};

// What a policy decided for a route at one instant: a distribution over the pool's variants.
// A plain value, copied into snapshots.
struct Decision {
  // Weights sum to 1, ascending by variant, none zero; usually one variant at weight 1.
  std::vector<VariantWeight> weights;
  // The variant with the largest weight: the one a route is said to use now.
  size_t primary = 0;
  std::string_view reason = reasons::kNoIntensity;
  // What the decision was made from.
  std::optional<IntensityReading> intensity;
  std::optional<WindowBounds> bounds;
  // The energy per inference the decision aims at (mJ); a per-request quality floor stays nearest it.
  double aim_energy_mj = 0;
  std::vector<ExplanationTerm> explanation;
  absl::Time since = absl::InfinitePast();  // when `primary` became the route's variant
  // The policy's memory after this decision; null for policies without one.
  std::shared_ptr<const PolicyMemory> memory;

  // The whole route to `variant`, aiming at its own energy.
  static Decision OneVariant(const Pool& pool, size_t variant, std::string_view reason);
  // The value of the explanation term `name`, if the policy gave one.
  std::optional<double> Explained(std::string_view name) const;
  // The weight of `variant` (0 when it has none).
  double WeightOf(size_t variant) const;
};

// Settings every policy of a route receives.
struct PolicySettings {
  size_t default_variant = 0;
  absl::Duration stale_after = absl::Hours(2);
  absl::Duration min_dwell = absl::ZeroDuration();
};

// What a route has served since the sidecar started, as its ledger counts it: every request,
// whichever way it was routed (policy, pin or quality floor). Only ever grows while the pool keeps
// its variants.
struct ServedTotals {
  double items = 0;              // inferences
  double error_percent_sum = 0;  // Σ items × top-1 error of the variant that served them
  double grams = 0;              // CO2 charged for them
};

// Everything a policy decides from. Policies read no clock and do no I/O: the publisher passes
// what it knows, and the offline replay passes recorded data to the same code.
struct PolicyInputs {
  std::optional<IntensityReading> intensity;
  std::optional<WindowBounds> bounds;
  absl::Time now;
  uint64_t ready = 0;                  // variants the upstream can serve (bit i: variant i)
  const Decision* previous = nullptr;  // the route's last decision, or null
  std::optional<ServedTotals> served;  // the route's ledger; nullopt where nothing is counted
  // The provider's forecast from now on, oldest first (empty without one). Points into storage
  // the caller keeps alive for the call.
  std::span<const IntensityReading> forecast;
};

// Decides, for one route's pool, which variants serve its requests. Implementations are
// immutable once built and safe to call from any thread.
class RoutingPolicy {
 public:
  virtual ~RoutingPolicy() = default;
  // The `policy.kind` that selects it, e.g. "linear-interpolation".
  virtual std::string_view kind() const = 0;
  virtual Decision Decide(const PolicyInputs& inputs) const = 0;
};

// The reason a policy that cannot decide from its inputs gives, with the route's default: no
// reading, a stale one, or a window under `minimum_spread`; nullopt when the inputs are usable.
std::optional<std::string_view> UnusableInputs(const PolicyInputs& inputs, const PolicySettings& settings,
                                               double minimum_spread);

// Keeps the previous decision's primary variant while it has served for less than `min_dwell` and
// is still ready (reason kMinimumDwell when the policy had decided freely), and carries `since`.
void ApplyMinimumDwell(const Pool& pool, const PolicyInputs& inputs, absl::Duration min_dwell,
                       std::string_view free_reason, Decision* decision);

// The candidate (bit set in `candidates`) whose energy is nearest `target_mj`; ties to the lower
// energy. nullopt when `candidates` is empty.
std::optional<size_t> NearestByEnergy(const Pool& pool, double target_mj, uint64_t candidates);

// Applies a per-request quality floor to the variant a request drew: keeps it when its error is at
// most `max_error_percent`, otherwise picks, among the ready variants that qualify, the one nearest
// `aim_energy_mj`; when none qualifies, the most accurate ready variant.
size_t ApplyQualityFloor(const Pool& pool, size_t drawn, double aim_energy_mj, double max_error_percent,
                         uint64_t ready);

}  // namespace carbon::selector
