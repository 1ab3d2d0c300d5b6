#include "selector/policies/horizon_target.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/number_text.h"
#include "selector/policies/kinds.h"

namespace carbon::selector {

namespace {

// How many whole `step`s from `origin` to `t`, rounded down (IDivDuration truncates towards zero).
int64_t StepsSince(absl::Time origin, absl::Duration step, absl::Time t) {
  absl::Duration rest;
  int64_t n = absl::IDivDuration(t - origin, step, &rest);
  if (origin + n * step > t) --n;
  return n;
}

size_t RingIndex(int64_t slot) {
  return static_cast<size_t>(((slot % WeekOfHalfHours::kSlots) + WeekOfHalfHours::kSlots) % WeekOfHalfHours::kSlots);
}
}  // namespace

absl::Time Horizon::StartOf(absl::Time t) const { return anchor + StepsSince(anchor, length, t) * length; }

void WeekOfHalfHours::Set(int64_t slot, double value) {
  slot_[RingIndex(slot)] = slot;
  value_[RingIndex(slot)] = value;
}

std::optional<double> WeekOfHalfHours::At(int64_t slot) const {
  if (slot_[RingIndex(slot)] != slot) return std::nullopt;
  return value_[RingIndex(slot)];
}

std::optional<double> WeekOfHalfHours::Expected(int64_t slot, int64_t now) const {
  if (slot - now <= kSlotsPerDay) return At(slot - kSlotsPerDay);
  const int64_t weeks = (slot - now + kSlots - 1) / kSlots;
  return At(slot - weeks * kSlots);
}

std::optional<double> WeekOfHalfHours::Mean() const {
  double sum = 0;
  int seen = 0;
  for (size_t i = 0; i < slot_.size(); ++i) {
    if (slot_[i] < 0) continue;
    sum += value_[i];
    ++seen;
  }
  if (seen == 0) return std::nullopt;
  return sum / seen;
}

int64_t HorizonMemory::SlotAt(absl::Time t) { return StepsSince(absl::UnixEpoch(), kSlot, t); }

namespace {

absl::Time SlotStart(int64_t slot) { return absl::UnixEpoch() + slot * HorizonMemory::kSlot; }

// The open half-hour becomes the day's figure for it, scaled to a whole half-hour when it was seen
// only in part (a start or a reload in the middle); under five minutes seen says too little.
void CloseOpenSlot(HorizonMemory& m) {
  if (m.open_slot >= 0 && m.open_observed >= HorizonMemory::kSlot / 6) {
    m.items.Set(m.open_slot, m.open_items * absl::FDivDuration(HorizonMemory::kSlot, m.open_observed));
  }
  m.open_slot = -1;
  m.open_items = 0;
  m.open_observed = absl::ZeroDuration();
}

// Spreads `items` served over [from, to) evenly across the half-hours it covers.
void SpreadTraffic(HorizonMemory& m, double items, absl::Time from, absl::Time to) {
  const double total = absl::ToDoubleSeconds(to - from);
  // After a gap of days the oldest part says nothing about now.
  if (total <= 0 || to - from > absl::Hours(24 * 7)) return;
  for (absl::Time t = from; t < to;) {
    const int64_t slot = HorizonMemory::SlotAt(t);
    const absl::Time until = std::min(SlotStart(slot + 1), to);
    if (slot != m.open_slot) {
      CloseOpenSlot(m);
      m.open_slot = slot;
    }
    m.open_items += items * absl::ToDoubleSeconds(until - t) / total;
    m.open_observed += until - t;
    t = until;
  }
}

// The memory after this decision: traffic and intensity noted, the horizon rolled over or begun.
std::shared_ptr<HorizonMemory> Remember(const HorizonMemory* previous, const Horizon& horizon,
                                        const PolicyInputs& inputs) {
  const ServedTotals served = inputs.served.value_or(ServedTotals{});
  const absl::Time now = inputs.now;
  auto m = previous ? std::make_shared<HorizonMemory>(*previous) : std::make_shared<HorizonMemory>();
  // The ledger counts less than before when a reload took a variant out of the pool: what was
  // counted cannot be told apart any more, so counting begins again here.
  const bool continues = previous != nullptr && served.items >= previous->last_seen.items &&
                         previous->horizon.length == horizon.length && previous->horizon.anchor == horizon.anchor &&
                         previous->last_seen_at <= now;
  if (continues) {
    const double items = served.items - previous->last_seen.items;
    SpreadTraffic(*m, items, previous->last_seen_at, now);
    if (now >= previous->end) {
      // The horizon ended since the last decision: what came after its end belongs to the next,
      // in proportion to time.
      m->start = horizon.StartOf(now);
      m->end = m->start + horizon.length;
      m->counted_from = m->start;
      const double span = absl::ToDoubleSeconds(now - previous->last_seen_at);
      const double before = span > 0 ? std::clamp(absl::ToDoubleSeconds(m->start - previous->last_seen_at) / span, 0.0, 1.0) : 1.0;
      const auto at = [&](double a, double b) { return a + (b - a) * before; };
      m->at_start = {at(previous->last_seen.items, served.items),
                     at(previous->last_seen.error_percent_sum, served.error_percent_sum),
                     at(previous->last_seen.grams, served.grams)};
    }
  } else {
    m->horizon = horizon;
    m->start = horizon.StartOf(now);
    m->end = m->start + horizon.length;
    m->counted_from = now;
    m->at_start = served;
    CloseOpenSlot(*m);
  }
  if (m->open_slot < 0) m->open_slot = HorizonMemory::SlotAt(now);
  if (inputs.intensity) {
    m->intensity.Set(HorizonMemory::SlotAt(inputs.intensity->at), inputs.intensity->gco2_per_kwh);
  }
  m->last_seen = served;
  m->last_seen_at = now;
  return m;
}

// How traffic grew over the last day against the day before (1 when either is not known in full),
// held between 1 and 2: a budget spent on a rising day must not run out before its end.
double Trend(const HorizonMemory& m, int64_t now) {
  double last = 0, before = 0;
  // From two half-hours back: the last one may still be open.
  for (int64_t k = 2; k < 2 + WeekOfHalfHours::kSlotsPerDay; ++k) {
    auto a = m.items.At(now - k);
    auto b = m.items.At(now - k - WeekOfHalfHours::kSlotsPerDay);
    if (!a || !b) return 1;
    last += *a;
    before += *b;
  }
  return before > 0 ? std::clamp(last / before, 1.0, 2.0) : 1.0;
}

// Inferences expected in a whole half-hour at `slot`: as seen at that time on an earlier day
// (WeekOfHalfHours::Expected); else the mean of the half-hours seen; else the horizon's rate so
// far; else one (nothing known: every half-hour alike).
double ExpectedItems(const HorizonMemory& m, int64_t slot, const ServedTotals& served, absl::Time now) {
  const int64_t now_slot = HorizonMemory::SlotAt(now);
  if (auto seen = m.items.Expected(slot, now_slot)) return *seen * Trend(m, now_slot);
  if (auto mean = m.items.Mean()) return *mean;
  const double elapsed = absl::ToDoubleSeconds(now - m.counted_from);
  const double items = served.items - m.at_start.items;
  if (elapsed >= 60 && items > 0) return items * absl::ToDoubleSeconds(HorizonMemory::kSlot) / elapsed;
  return 1;
}

// Intensity expected from `t`: the forecast point in force then (one at most an hour old), else
// as seen at that time on an earlier day, else `now_value`.
double ExpectedIntensity(const HorizonMemory& m, absl::Time t, absl::Time now,
                         std::span<const IntensityReading> forecast, double now_value) {
  auto after = std::upper_bound(forecast.begin(), forecast.end(), t,
                                [](absl::Time when, const IntensityReading& r) { return when < r.at; });
  if (after != forecast.begin() && t - std::prev(after)->at < absl::Hours(1)) return std::prev(after)->gco2_per_kwh;
  return m.intensity.Expected(HorizonMemory::SlotAt(t), HorizonMemory::SlotAt(now)).value_or(now_value);
}

// The rest of the horizon in half-hours (the first and last cut at now and at its end).
std::vector<PlanSlot> Outlook(const HorizonMemory& m, const PolicyInputs& inputs, const ServedTotals& served) {
  std::vector<PlanSlot> slots;
  const double now_value = inputs.intensity->gco2_per_kwh;
  for (absl::Time t = inputs.now; t < m.end;) {
    const int64_t slot = HorizonMemory::SlotAt(t);
    const absl::Time until = std::min(SlotStart(slot + 1), m.end);
    const double share = absl::FDivDuration(until - t, HorizonMemory::kSlot);
    slots.push_back({ExpectedItems(m, slot, served, inputs.now) * share,
                     t == inputs.now ? now_value : ExpectedIntensity(m, t, inputs.now, inputs.forecast, now_value)});
    t = until;
  }
  return slots;
}

}  // namespace

std::string_view HorizonTargetPolicy::KindOf(PlanLimit::Kind limit) {
  return limit == PlanLimit::Kind::kMeanErrorPercent ? kAccuracyTarget : kCarbonBudget;
}

Decision HorizonTargetPolicy::Decide(const PolicyInputs& inputs) const {
  const HorizonMemory* previous =
      inputs.previous ? dynamic_cast<const HorizonMemory*>(inputs.previous->memory.get()) : nullptr;
  std::shared_ptr<HorizonMemory> memory = Remember(previous, horizon_, inputs);
  const bool by_error = limit_.kind == PlanLimit::Kind::kMeanErrorPercent;
  const std::string_view free_reason = by_error ? kAccuracyReason : kBudgetReason;
  const uint64_t ready = inputs.ready & pool_.all_variants_mask();

  std::optional<std::string_view> unusable;
  if (!inputs.intensity) {
    unusable = reasons::kNoIntensity;
  } else if (inputs.now - inputs.intensity->at > settings_.stale_after) {
    unusable = reasons::kStaleIntensity;
  } else if (ready == 0) {
    unusable = reasons::kNoReadyVariant;
  }

  Decision d;
  if (unusable) {
    d = Decision::OneVariant(pool_, settings_.default_variant, *unusable);
  } else {
    const ServedTotals served = inputs.served.value_or(ServedTotals{});
    const PlanServed in_horizon{served.items - memory->at_start.items,
                                served.error_percent_sum - memory->at_start.error_percent_sum,
                                served.grams - memory->at_start.grams};
    const std::vector<size_t> hull = LowerHull(pool_, ready);
    std::vector<PlanSlot> slots = Outlook(*memory, inputs, served);
    if (horizon_.expected_inferences > 0) {
      // The operator knows the volume (a budget cannot be paced without it when traffic grows
      // through the horizon): the outlook's shape, scaled to what is still to come.
      double outlook = 0;
      for (const PlanSlot& slot : slots) outlook += slot.items;
      const double still = std::max(0.0, horizon_.expected_inferences - in_horizon.items);
      if (outlook > 0) {
        for (PlanSlot& slot : slots) slot.items *= still / outlook;
      }
    }
    const HorizonPlan plan = PlanHorizon(pool_, hull, slots, in_horizon, limit_);

    const double level = slots.empty() ? 0 : plan.level[0];
    const size_t low = static_cast<size_t>(level);
    const double up = level - static_cast<double>(low);
    // The draw has 1,000 positions: a share below one of them is no share.
    if (up < 1e-3 || low + 1 >= hull.size()) {
      d = Decision::OneVariant(pool_, hull[std::min(low, hull.size() - 1)], free_reason);
    } else if (up > 1 - 1e-3) {
      d = Decision::OneVariant(pool_, hull[low + 1], free_reason);
    } else {
      d.weights = {{hull[low], 1 - up}, {hull[low + 1], up}};  // ascending: the hull is sorted by energy
      d.primary = up > 0.5 ? hull[low + 1] : hull[low];
      d.reason = free_reason;
      d.aim_energy_mj = (1 - up) * pool_[hull[low]].energy_mj + up * pool_[hull[low + 1]].energy_mj;
    }
    if (!by_error && in_horizon.grams >= limit_.value) {
      d = Decision::OneVariant(pool_, hull.front(), kBudgetExhausted);
    } else if (!plan.feasible) {
      d.reason = by_error ? kTargetUnreachable : kBudgetShort;
    }

    const double left = std::max(0.0, absl::ToDoubleSeconds(memory->end - inputs.now));
    d.explanation = {{by_error ? "target_error_percent" : "budget_grams", limit_.value},
                     {"lambda_grams_per_error_percent", plan.lambda},
                     {"achieved_grams", in_horizon.grams},
                     {"projected_grams", plan.grams},
                     {"projected_error_percent", plan.mean_error_percent()},
                     {"horizon_inferences", in_horizon.items},
                     {"horizon_left_seconds", left}};
    if (in_horizon.items > 0) {
      d.explanation.push_back({"achieved_error_percent", in_horizon.error_percent_sum / in_horizon.items});
    }
  }
  d.intensity = inputs.intensity;
  d.bounds = inputs.bounds;
  const std::string_view decided = d.reason;
  ApplyMinimumDwell(pool_, inputs, settings_.min_dwell, decided, &d);
  if (unusable) d.aim_energy_mj = pool_[d.primary].energy_mj;
  d.memory = std::move(memory);
  return d;
}

namespace {

// The options of both target policies: the limit and the horizon it is kept over.
class HorizonTargetSpec final : public PolicySpec {
 public:
  HorizonTargetSpec(PlanLimit limit, Horizon horizon) : limit_(limit), horizon_(horizon) {}

  std::string_view kind() const override { return HorizonTargetPolicy::KindOf(limit_.kind); }
  nlohmann::json Render() const override {
    nlohmann::json out = nlohmann::json::object();
    out[limit_.kind == PlanLimit::Kind::kMeanErrorPercent ? "max_mean_error_percent" : "grams_per_horizon"] =
        limit_.value;
    out["horizon"] = absl::FormatDuration(horizon_.length);
    out["horizon_anchor"] = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", horizon_.anchor, absl::UTCTimeZone());
    if (horizon_.expected_inferences > 0) out["expected_inferences_per_horizon"] = horizon_.expected_inferences;
    return out;
  }
  std::unique_ptr<const RoutingPolicy> Build(const Pool& pool, const PolicySettings& settings) const override {
    return std::make_unique<HorizonTargetPolicy>(pool, settings, limit_, horizon_);
  }

 private:
  PlanLimit limit_;
  Horizon horizon_;
};

// A horizon longer than this would be planned in more half-hours than a decision should take.
constexpr absl::Duration kLongestHorizon = absl::Hours(24 * 92);

// Reads `horizon` and `horizon_anchor`, checked against the provider's refresh.
bool ReadHorizon(ConfigBlock& block, const PolicyContext& context, Horizon* out) {
  block.Duration("horizon", &out->length, /*allow_zero=*/false);
  std::optional<absl::Time> anchor;
  if (block.Time("horizon_anchor", &anchor) && anchor) out->anchor = *anchor;
  if (block.Number("expected_inferences_per_horizon", &out->expected_inferences) &&
      !(out->expected_inferences > 0 && std::isfinite(out->expected_inferences))) {
    return block.Fail("expected_inferences_per_horizon",
                      absl::StrCat(block.Path("expected_inferences_per_horizon"), " must be a positive number, got ",
                                   ShortestDecimal(out->expected_inferences)));
  }
  if (!block.ok()) return false;
  if (out->length < context.intensity_refresh) {
    return block.Fail("horizon", absl::StrCat(block.Path("horizon"), " (", absl::FormatDuration(out->length),
                                              ") is shorter than intensity.refresh (",
                                              absl::FormatDuration(context.intensity_refresh),
                                              "): the target could not be steered within it"));
  }
  if (out->length > kLongestHorizon) {
    return block.Fail("horizon", absl::StrCat(block.Path("horizon"), " must be at most ",
                                              absl::FormatDuration(kLongestHorizon), " (92 days)"));
  }
  return true;
}

}  // namespace

std::unique_ptr<PolicySpec> ReadAccuracyTargetPolicy(ConfigBlock& block, const PolicyContext& context) {
  PlanLimit limit{PlanLimit::Kind::kMeanErrorPercent, 0};
  if (!block.Number("max_mean_error_percent", &limit.value, /*required=*/true)) return nullptr;
  const Pool& pool = context.pool;
  const Variant& best = pool[pool.most_accurate()];
  if (!(limit.value >= best.error_percent) || !(limit.value <= 100)) {
    block.Fail("max_mean_error_percent",
               absl::StrCat(block.Path("max_mean_error_percent"), " ", ShortestDecimal(limit.value),
                            " cannot be met: the most accurate variant, ", best.name, ", has ",
                            ShortestDecimal(best.error_percent), " % top-1 error (the target must lie between ",
                            ShortestDecimal(best.error_percent), " and 100)"));
    return nullptr;
  }
  Horizon horizon;
  if (!ReadHorizon(block, context, &horizon)) return nullptr;
  return std::make_unique<HorizonTargetSpec>(limit, horizon);
}

std::unique_ptr<PolicySpec> ReadCarbonBudgetPolicy(ConfigBlock& block, const PolicyContext& context) {
  PlanLimit limit{PlanLimit::Kind::kGrams, 0};
  if (!block.Number("grams_per_horizon", &limit.value, /*required=*/true)) return nullptr;
  if (!(limit.value > 0) || !std::isfinite(limit.value)) {
    block.Fail("grams_per_horizon", absl::StrCat(block.Path("grams_per_horizon"), " must be a positive number of "
                                                 "grams, got ", ShortestDecimal(limit.value)));
    return nullptr;
  }
  Horizon horizon;
  if (!ReadHorizon(block, context, &horizon)) return nullptr;
  return std::make_unique<HorizonTargetSpec>(limit, horizon);
}

std::unique_ptr<PolicySpec> MakeHorizonTargetSpec(PlanLimit limit, Horizon horizon) {
  return std::make_unique<HorizonTargetSpec>(limit, horizon);
}

}  // namespace carbon::selector
