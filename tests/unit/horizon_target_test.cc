#include "selector/policies/horizon_target.h"

#include <cmath>
#include <numbers>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "selector/horizon_plan.h"

namespace carbon::selector {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;

// Two variants whose optimum is worked out by hand below: A cheap and poor, B dear and good.
Pool TwoVariants() { return *Pool::Create({{"a", 100, 10}, {"b", 300, 6}}); }

TEST(LowerHullTest, KeepsOnlyVariantsNoMixBeats) {
  // "dominated" costs more than "mid" and is worse; "bent" lies above the line from mid to top.
  const Pool pool = *Pool::Create({{"low", 100, 10},
                                   {"mid", 200, 7},
                                   {"dominated", 250, 8},
                                   {"bent", 300, 6.8},
                                   {"top", 400, 5},
                                   {"waste", 500, 5}});
  EXPECT_THAT(LowerHull(pool, pool.all_variants_mask()), ElementsAre(0, 1, 4));
  // Without mid, bent still lies above the line from low to top; without top as well, it is on
  // the hull of what is left (and dominated still is not).
  EXPECT_THAT(LowerHull(pool, pool.all_variants_mask() & ~uint64_t{0b10}), ElementsAre(0, 4));
  EXPECT_THAT(LowerHull(pool, pool.all_variants_mask() & ~uint64_t{0b10010}), ElementsAre(0, 3, 5));
  EXPECT_THAT(LowerHull(pool, 0b100), ElementsAre(2));
  EXPECT_TRUE(LowerHull(pool, 0).empty());
}

// Two slots of 100 inferences, one clean (100 g/kWh) and one dirty (400 g/kWh). All on A, the
// error sum is 2000; each slot moved to B removes 400 of it, and the clean one does so at a quarter
// of the grams. So a mean error of 8 (sum 1600) is met by the clean slot on B, the dirty on A.
TEST(PlanHorizonTest, MeetsAnErrorTargetWhereTheGridIsCleanest) {
  const Pool pool = TwoVariants();
  const std::vector<size_t> hull = {0, 1};
  const PlanSlot slots[] = {{100, 400}, {100, 100}};
  HorizonPlan plan = PlanHorizon(pool, hull, slots, {}, {PlanLimit::Kind::kMeanErrorPercent, 8});
  EXPECT_TRUE(plan.feasible);
  EXPECT_THAT(plan.level, ElementsAre(0, 1));
  EXPECT_DOUBLE_EQ(plan.mean_error_percent(), 8);
  EXPECT_DOUBLE_EQ(plan.grams, 100 * GramsPerInference(100, 400) + 100 * GramsPerInference(300, 100));
  EXPECT_DOUBLE_EQ(plan.lambda, GramsPerInference(200, 100) / 4);

  // Mean error 9: half the clean slot is enough.
  plan = PlanHorizon(pool, hull, slots, {}, {PlanLimit::Kind::kMeanErrorPercent, 9});
  EXPECT_THAT(plan.level, ElementsAre(0, DoubleNear(0.5, 1e-12)));
  // What is served already counts: 100 inferences on A at error 10 leave less room (300 of the
  // error sum to remove: three quarters of the clean slot).
  plan = PlanHorizon(pool, hull, slots, {100, 1000, 0}, {PlanLimit::Kind::kMeanErrorPercent, 9});
  EXPECT_THAT(plan.level, ElementsAre(0, DoubleNear(0.75, 1e-12)));
  EXPECT_DOUBLE_EQ(plan.mean_error_percent(), 9);
  // A target at or above A's error costs nothing extra.
  plan = PlanHorizon(pool, hull, slots, {}, {PlanLimit::Kind::kMeanErrorPercent, 10});
  EXPECT_THAT(plan.level, ElementsAre(0, 0));
  EXPECT_EQ(plan.lambda, 0);
  // Below B's error nothing will do: everything on B, and the plan says it fails.
  plan = PlanHorizon(pool, hull, slots, {}, {PlanLimit::Kind::kMeanErrorPercent, 5.9});
  EXPECT_FALSE(plan.feasible);
  EXPECT_THAT(plan.level, ElementsAre(1, 1));
}

TEST(PlanHorizonTest, SpendsABudgetWhereAGramBuysTheMostAccuracy) {
  const Pool pool = TwoVariants();
  const std::vector<size_t> hull = {0, 1};
  const PlanSlot slots[] = {{100, 400}, {100, 100}};
  const double all_a = 100 * GramsPerInference(100, 400) + 100 * GramsPerInference(100, 100);
  const double clean_upgrade = 100 * GramsPerInference(200, 100);
  HorizonPlan plan =
      PlanHorizon(pool, hull, slots, {}, {PlanLimit::Kind::kGrams, all_a + clean_upgrade / 2});
  EXPECT_THAT(plan.level, ElementsAre(0, DoubleNear(0.5, 1e-12)));
  EXPECT_NEAR(plan.grams, all_a + clean_upgrade / 2, 1e-12);
  EXPECT_DOUBLE_EQ(plan.mean_error_percent(), 9);
  // Enough for everything: all on B.
  plan = PlanHorizon(pool, hull, slots, {}, {PlanLimit::Kind::kGrams, 1});
  EXPECT_THAT(plan.level, ElementsAre(1, 1));
  // Already spent: all on A, and not feasible.
  plan = PlanHorizon(pool, hull, slots, {10, 100, all_a}, {PlanLimit::Kind::kGrams, all_a});
  EXPECT_FALSE(plan.feasible);
  EXPECT_THAT(plan.level, ElementsAre(0, 0));
}

TEST(PlanHorizonTest, EqualSlotsGetEqualMixes) {
  const Pool pool = TwoVariants();
  const std::vector<size_t> hull = {0, 1};
  const std::vector<PlanSlot> slots(4, PlanSlot{50, 250});
  const HorizonPlan plan = PlanHorizon(pool, hull, slots, {}, {PlanLimit::Kind::kMeanErrorPercent, 8});
  EXPECT_THAT(plan.level, ElementsAre(DoubleNear(0.5, 1e-12), DoubleNear(0.5, 1e-12), DoubleNear(0.5, 1e-12),
                                      DoubleNear(0.5, 1e-12)));
}

// Feeds a policy a periodic day (intensity a sine between 100 and 400 g/kWh, a traffic peak in the
// evening) one half-hour at a time, charging what it decides as the ledger would.
class PeriodicDay {
 public:
  static double Intensity(int slot) { return 250 + 150 * std::sin(2 * std::numbers::pi * (slot % 48) / 48.0); }
  static double Items(int slot) { return 100 + 80 * std::cos(2 * std::numbers::pi * ((slot % 48) - 38) / 48.0); }

  explicit PeriodicDay(const Pool& pool) : pool_(pool) {}

  Decision Step(const RoutingPolicy& policy, int slot) {
    const absl::Time now = absl::FromUnixSeconds(1685577600) + slot * absl::Minutes(30);  // 2023-06-01
    const IntensityReading reading{Intensity(slot), now};
    Decision d = policy.Decide({reading, WindowBounds{100, 400}, now, pool_.all_variants_mask(),
                                previous_ ? &*previous_ : nullptr, served_, {}});
    const double items = Items(slot);
    for (const VariantWeight& w : d.weights) {
      const Variant& v = pool_[w.variant];
      served_.items += w.weight * items;
      served_.error_percent_sum += w.weight * items * v.error_percent;
      served_.grams += w.weight * items * GramsPerInference(v.energy_mj, reading.gco2_per_kwh);
    }
    previous_ = d;
    return d;
  }
  const ServedTotals& served() const { return served_; }

 private:
  const Pool& pool_;
  std::optional<Decision> previous_;
  ServedTotals served_;
};

Pool PaperPool() {
  return *Pool::Create({{"resnet34", 359.9321833, 8.58},
                        {"resnet50", 420.6213298, 7.138},
                        {"resnet101", 803.0948846, 6.454},
                        {"resnet152", 1238.147188, 5.954}});
}

TEST(HorizonTargetPolicyTest, FindsTheMultiplierOnAPeriodicDayAndMeetsTheTargetEachDay) {
  const Pool pool = PaperPool();
  const HorizonTargetPolicy policy(pool, {1, absl::Hours(2), absl::ZeroDuration()},
                                   {PlanLimit::Kind::kMeanErrorPercent, 6.9}, Horizon{});
  // The best any policy could do on that day, knowing it.
  std::vector<PlanSlot> day;
  for (int s = 0; s < 48; ++s) day.push_back({PeriodicDay::Items(s), PeriodicDay::Intensity(s)});
  const HorizonPlan best =
      PlanHorizon(pool, LowerHull(pool, pool.all_variants_mask()), day, {}, {PlanLimit::Kind::kMeanErrorPercent, 6.9});

  PeriodicDay feed(pool);
  std::vector<double> lambda_at_noon;
  for (int d = 0; d < 5; ++d) {
    const ServedTotals before = feed.served();
    for (int s = 0; s < 48; ++s) {
      const Decision decision = feed.Step(policy, d * 48 + s);
      EXPECT_EQ(decision.reason, HorizonTargetPolicy::kAccuracyReason);
      if (s == 24) lambda_at_noon.push_back(*decision.Explained("lambda_grams_per_error_percent"));
    }
    const double items = feed.served().items - before.items;
    const double mean_error = (feed.served().error_percent_sum - before.error_percent_sum) / items;
    const double grams = feed.served().grams - before.grams;
    // Day one knows no profile yet; from then on each day meets its target, near the optimum.
    EXPECT_LE(mean_error, 6.9 + 1e-6) << "day " << d;
    if (d >= 1) {
      EXPECT_LE(grams, best.grams * 1.02) << "day " << d;
    }
  }
  // The multiplier settles: from the second day on, the same half-hour gets the same price.
  ASSERT_EQ(lambda_at_noon.size(), 5u);
  EXPECT_NEAR(lambda_at_noon[4], lambda_at_noon[3], 1e-3 * lambda_at_noon[3]);
  EXPECT_NEAR(lambda_at_noon[3], lambda_at_noon[2], 1e-3 * lambda_at_noon[2]);
  EXPECT_GT(lambda_at_noon[4], 0);
}

TEST(HorizonTargetPolicyTest, CountsEachHorizonFromItsStart) {
  const Pool pool = PaperPool();
  const HorizonTargetPolicy policy(pool, {1, absl::Hours(2), absl::ZeroDuration()},
                                   {PlanLimit::Kind::kMeanErrorPercent, 7}, Horizon{absl::Hours(6), absl::UnixEpoch()});
  PeriodicDay feed(pool);
  double counted_before = 0;
  for (int s = 0; s < 14; ++s) {
    const Decision d = feed.Step(policy, s);
    const double counted = *d.Explained("horizon_inferences");
    const double left = *d.Explained("horizon_left_seconds");
    EXPECT_DOUBLE_EQ(left, (12 - s % 12) * 1800.0) << s;
    if (s % 12 == 0) {
      // A new horizon: nothing of the last one is counted in it.
      EXPECT_EQ(counted, 0) << s;
    } else {
      EXPECT_NEAR(counted, counted_before + PeriodicDay::Items(s - 1), 1e-9) << s;
    }
    counted_before = counted;
  }
}

TEST(HorizonTargetPolicyTest, ASpentBudgetFallsToTheCheapestVariantAndSaysSo) {
  const Pool pool = PaperPool();
  const HorizonTargetPolicy policy(pool, {1, absl::Hours(2), absl::ZeroDuration()},
                                   {PlanLimit::Kind::kGrams, 0.5}, Horizon{});
  const absl::Time now = absl::FromUnixSeconds(1685577600) + absl::Hours(3);
  const IntensityReading reading{200, now};
  Decision first = policy.Decide({reading, std::nullopt, now, pool.all_variants_mask(), nullptr,
                                  ServedTotals{1000, 8000, 0.1}, {}});
  EXPECT_EQ(first.reason, HorizonTargetPolicy::kBudgetReason);
  EXPECT_EQ(*first.Explained("budget_grams"), 0.5);
  // 0.6 g served since: over the budget.
  Decision spent = policy.Decide({reading, std::nullopt, now + absl::Minutes(5), pool.all_variants_mask(), &first,
                                  ServedTotals{3000, 24000, 0.7}, {}});
  EXPECT_EQ(spent.reason, HorizonTargetPolicy::kBudgetExhausted);
  EXPECT_THAT(spent.weights, ElementsAre(::testing::Field(&VariantWeight::variant, 0u)));
  EXPECT_NEAR(*spent.Explained("achieved_grams"), 0.6, 1e-12);
}

TEST(HorizonTargetPolicyTest, ANewPolicyForTheSameRouteCarriesOnWithTheMemory) {
  const Pool pool = PaperPool();
  const HorizonTargetPolicy before(pool, {1, absl::Hours(2), absl::ZeroDuration()},
                                   {PlanLimit::Kind::kMeanErrorPercent, 7}, Horizon{});
  const HorizonTargetPolicy after(pool, {1, absl::Hours(2), absl::ZeroDuration()},
                                  {PlanLimit::Kind::kMeanErrorPercent, 6.5}, Horizon{});
  const absl::Time now = absl::FromUnixSeconds(1685577600) + absl::Hours(3);
  Decision d1 = before.Decide({IntensityReading{200, now}, std::nullopt, now, pool.all_variants_mask(), nullptr,
                               ServedTotals{500, 500 * 8.58, 0.01}, {}});
  EXPECT_EQ(*d1.Explained("horizon_inferences"), 0);  // counting begins at the first decision
  Decision d2 = after.Decide({IntensityReading{200, now}, std::nullopt, now + absl::Minutes(5),
                              pool.all_variants_mask(), &d1, ServedTotals{700, 500 * 8.58 + 200 * 5.954, 0.02}, {}});
  EXPECT_EQ(*d2.Explained("horizon_inferences"), 200);
  EXPECT_DOUBLE_EQ(*d2.Explained("achieved_error_percent"), 5.954);
  EXPECT_EQ(*d2.Explained("target_error_percent"), 6.5);
  // A quarter-day horizon instead: a different horizon, counted afresh.
  const HorizonTargetPolicy shorter(pool, {1, absl::Hours(2), absl::ZeroDuration()},
                                    {PlanLimit::Kind::kMeanErrorPercent, 6.5}, Horizon{absl::Hours(6), absl::UnixEpoch()});
  Decision d3 = shorter.Decide({IntensityReading{200, now}, std::nullopt, now + absl::Minutes(10),
                                pool.all_variants_mask(), &d2, ServedTotals{900, 0, 0.03}, {}});
  EXPECT_EQ(*d3.Explained("horizon_inferences"), 0);
}

TEST(HorizonTargetPolicyTest, WithoutAFreshReadingTheDefaultServes) {
  const Pool pool = PaperPool();
  const HorizonTargetPolicy policy(pool, {1, absl::Hours(2), absl::ZeroDuration()},
                                   {PlanLimit::Kind::kMeanErrorPercent, 7}, Horizon{});
  const absl::Time now = absl::FromUnixSeconds(1685577600);
  Decision none = policy.Decide({std::nullopt, std::nullopt, now, pool.all_variants_mask(), nullptr, std::nullopt, {}});
  EXPECT_EQ(none.reason, reasons::kNoIntensity);
  EXPECT_EQ(none.primary, 1u);
  Decision stale = policy.Decide({IntensityReading{200, now - absl::Hours(3)}, std::nullopt, now,
                                  pool.all_variants_mask(), &none, std::nullopt, {}});
  EXPECT_EQ(stale.reason, reasons::kStaleIntensity);
  Decision unready = policy.Decide({IntensityReading{200, now}, std::nullopt, now, 0, &stale, std::nullopt, {}});
  EXPECT_EQ(unready.reason, reasons::kNoReadyVariant);
  // Only the two cheapest ready: the target is out of reach, the better of them serves.
  Decision short_of = policy.Decide({IntensityReading{200, now}, std::nullopt, now, 0b0011, &unready, std::nullopt, {}});
  EXPECT_EQ(short_of.reason, HorizonTargetPolicy::kTargetUnreachable);
  EXPECT_EQ(short_of.primary, 1u);
}

TEST(HorizonTargetPolicyTest, AnExpectedVolumeScalesTheOutlook) {
  const Pool pool = TwoVariants();
  const absl::Time start = absl::FromUnixSeconds(1685577600);
  // Enough for four inferences on B: with nothing seen yet, the outlook is one a half-hour.
  const double budget = 4 * GramsPerInference(300, 200);
  const HorizonTargetPolicy unknown(pool, {0, absl::Hours(2), absl::ZeroDuration()}, {PlanLimit::Kind::kGrams, budget},
                                    Horizon{absl::Hours(2), absl::UnixEpoch()});
  Decision d = unknown.Decide({IntensityReading{200, start}, std::nullopt, start, 0b11, nullptr, std::nullopt, {}});
  EXPECT_EQ(d.primary, 1u);
  EXPECT_EQ(d.reason, HorizonTargetPolicy::kBudgetReason);
  // 400 expected: the budget does not even cover A for all of them.
  const HorizonTargetPolicy told(pool, {0, absl::Hours(2), absl::ZeroDuration()}, {PlanLimit::Kind::kGrams, budget},
                                 Horizon{absl::Hours(2), absl::UnixEpoch(), 400});
  d = told.Decide({IntensityReading{200, start}, std::nullopt, start, 0b11, nullptr, std::nullopt, {}});
  EXPECT_EQ(d.primary, 0u);
  EXPECT_EQ(d.reason, HorizonTargetPolicy::kBudgetShort);
  EXPECT_NEAR(*d.Explained("projected_grams"), 400 * GramsPerInference(100, 200), 1e-12);
}

TEST(HorizonTargetPolicyTest, AForecastShapesThePlan) {
  const Pool pool = TwoVariants();
  const HorizonTargetPolicy policy(pool, {0, absl::Hours(2), absl::ZeroDuration()},
                                   {PlanLimit::Kind::kMeanErrorPercent, 8}, Horizon{absl::Hours(2), absl::UnixEpoch()});
  const absl::Time start = absl::FromUnixSeconds(1685577600);
  // Now is dirty; the forecast says the next three half-hours are clean: wait for them.
  const std::vector<IntensityReading> clean = {{50, start + absl::Minutes(30)},
                                               {50, start + absl::Minutes(60)},
                                               {50, start + absl::Minutes(90)}};
  Decision waits = policy.Decide({IntensityReading{400, start}, std::nullopt, start, 0b11, nullptr, std::nullopt, clean});
  EXPECT_EQ(waits.primary, 0u);
  // The forecast says dirtier still: now is the time.
  const std::vector<IntensityReading> dirty = {{800, start + absl::Minutes(30)},
                                               {800, start + absl::Minutes(60)},
                                               {800, start + absl::Minutes(90)}};
  Decision now = policy.Decide({IntensityReading{400, start}, std::nullopt, start, 0b11, nullptr, std::nullopt, dirty});
  EXPECT_EQ(now.primary, 1u);
}

}  // namespace
}  // namespace carbon::selector
