#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/time/time.h"
#include "selector/horizon_plan.h"
#include "selector/policy_spec.h"
#include "selector/routing_policy.h"

namespace carbon::selector {

// What a target is kept over: horizons of `length`, one after another from `anchor` (24h from the
// Unix epoch: UTC days).
struct Horizon {
  absl::Duration length = absl::Hours(24);
  absl::Time anchor = absl::UnixEpoch();
  // Inferences the operator expects over a whole horizon (0: not known). When given, the outlook
  // keeps the shape of the traffic seen and is scaled to this total.
  double expected_inferences = 0;
  // The horizon that holds `t`: [start, start + length).
  absl::Time StartOf(absl::Time t) const;
};

// A value per half-hour over the last week, by half-hour number since the Unix epoch.
class WeekOfHalfHours {
 public:
  static constexpr absl::Duration kSlot = absl::Minutes(30);
  static constexpr int64_t kSlotsPerDay = 48;
  static constexpr int64_t kSlots = 7 * kSlotsPerDay;

  WeekOfHalfHours() { slot_.fill(-1); }
  void Set(int64_t slot, double value);
  std::optional<double> At(int64_t slot) const;
  // What half-hour `slot` (ahead of `now`) is expected to bring: within a day, the same half-hour
  // yesterday; further ahead, the same half-hour and weekday last week, so that a long horizon is
  // planned over the whole week's variety. nullopt when that half-hour was not seen.
  std::optional<double> Expected(int64_t slot, int64_t now) const;
  // The mean of the half-hours seen; nullopt when none was.
  std::optional<double> Mean() const;

 private:
  std::array<int64_t, kSlots> slot_;  // -1: empty
  std::array<double, kSlots> value_{};
};

// What a target policy carries from one decision to the next: the horizon in progress, what the
// ledger said when counting began, and the route's traffic and intensity per half-hour over the
// last week, as the sidecar has seen them (the outlook for the rest of the horizon).
class HorizonMemory final : public PolicyMemory {
 public:
  static constexpr absl::Duration kSlot = WeekOfHalfHours::kSlot;

  Horizon horizon;
  absl::Time start, end;        // the horizon in progress
  absl::Time counted_from;      // start, or later when the policy began in the middle of it
  ServedTotals at_start;        // the ledger when counting began
  ServedTotals last_seen;       // the ledger at the last decision
  absl::Time last_seen_at = absl::InfinitePast();
  // Inferences in each whole half-hour seen (scaled up from a part seen), and the intensity then.
  WeekOfHalfHours items;
  WeekOfHalfHours intensity;
  // The half-hour being seen now: its number since the epoch, inferences so far, time observed.
  int64_t open_slot = -1;
  double open_items = 0;
  absl::Duration open_observed;

  // The half-hour that holds `t`, numbered from the Unix epoch.
  static int64_t SlotAt(absl::Time t);
};

// Keeps a limit over each horizon at the least cost in the other currency, by the plan of
// horizon_plan.h, re-planned at every decision from what the ledger has counted in the horizon so
// far (feedback: requests pinned or raised by a quality floor count too) and an outlook for the
// rest: the provider's forecast where it has one, else the same half-hour on the last day seen,
// else the intensity now; traffic from the same half-hour on the last day seen, else the horizon's
// mean rate so far. The decision for now is the plan's first slot: one hull vertex, or a mix of two
// neighbours when the margin falls in it.
//   accuracy-target: traffic-weighted mean top-1 error over the horizon ≤ target, least grams.
//   carbon-budget:   grams over the horizon ≤ budget, least mean error; once the budget is spent,
//                    the cheapest ready variant (reason budget_exhausted).
// Immutable: its memory travels in the decisions it makes.
class HorizonTargetPolicy final : public RoutingPolicy {
 public:
  static constexpr std::string_view kAccuracyTarget = "accuracy-target";
  static constexpr std::string_view kCarbonBudget = "carbon-budget";
  static constexpr std::string_view kAccuracyReason = "accuracy_target";
  static constexpr std::string_view kBudgetReason = "carbon_budget";
  // Even the most accurate ready variant cannot bring the horizon's mean error to the target.
  static constexpr std::string_view kTargetUnreachable = "target_unreachable";
  // The horizon's grams have reached the budget.
  static constexpr std::string_view kBudgetExhausted = "budget_exhausted";
  // Not spent yet, but the cheapest variant for the rest of the horizon is projected to overspend.
  static constexpr std::string_view kBudgetShort = "budget_short";

  // `pool` must outlive the policy.
  HorizonTargetPolicy(const Pool& pool, PolicySettings settings, PlanLimit limit, Horizon horizon)
      : pool_(pool), settings_(settings), limit_(limit), horizon_(horizon) {}

  // The `kind` of the policy that keeps a limit of this kind.
  static std::string_view KindOf(PlanLimit::Kind limit);

  std::string_view kind() const override { return KindOf(limit_.kind); }
  Decision Decide(const PolicyInputs& inputs) const override;

 private:
  const Pool& pool_;
  PolicySettings settings_;
  PlanLimit limit_;
  Horizon horizon_;
};

// The spec of either target policy, for code that builds one without a config file (the replay).
std::unique_ptr<PolicySpec> MakeHorizonTargetSpec(PlanLimit limit, Horizon horizon);

}  // namespace carbon::selector
