#include "telemetry/carbon_ledger.h"

#include "tests/support/paper_pool.h"

#include <cmath>
#include <thread>

#include <gtest/gtest.h>

namespace carbon::telemetry {
namespace {

using carbon::testing::PaperResnetPool;

constexpr size_t kR34 = 0, kR50 = 1, kR101 = 2, kR152 = 3;

// A constructed case worked by hand: resnet50 serves 10 inferences at the table's 0.4206 J and
// 200 g/kWh; then resnet152's energy is measured at 1.5 J (the table says 1.238) and it serves 4 at
// 100 g/kWh and 6 at 300; PUE 1.5; the hardware embodies 1,000 kg over 1,000 h, half of it reserved,
// and was in use 36 minutes.
TEST(CarbonLedgerTest, MeasuredEnergyPueAndTheSoftwareCarbonIntensityByHand) {
  CarbonLedger ledger;
  auto route = ledger.Route("resnet", PaperResnetPool(), kR50);
  route->variant(kR50).RecordServed(10, 10, 200);
  route->variant(kR152).RecordServed(4, 4, 100, 1.5);
  route->variant(kR152).RecordServed(6, 6, 300, 1.5);
  const RouteReport r = Report(*route, {1.5, {0, 0, 0, 1.5}});
  // resnet50, table: 10 × 0.4206213298 J = 4.206213298 J; × 200 g/kWh ÷ 3.6e6 J/kWh × 1.5.
  EXPECT_NEAR(r.variant_joules[kR50][0], 4.206213298, 1e-12);
  EXPECT_EQ(r.variant_joules[kR50][1], 0);
  EXPECT_NEAR(r.variant_grams[kR50][0], 4.206213298 * 200 / 3.6e6 * 1.5, 1e-15);
  // resnet152, measured: 10 × 1.5 = 15 J; grams (4 × 1.5 × 100 + 6 × 1.5 × 300) / 3.6e6 × 1.5 = 3300 / 3.6e6 × 1.5.
  EXPECT_EQ(r.variant_joules[kR152][0], 0);
  EXPECT_NEAR(r.variant_joules[kR152][1], 15, 1e-12);
  EXPECT_NEAR(r.variant_grams[kR152][1], 3300 / 3.6e6 * 1.5, 1e-15);
  EXPECT_EQ(r.variant_grams[kR152][0], 0);
  const double grams = 4.206213298 * 200 / 3.6e6 * 1.5 + 3300 / 3.6e6 * 1.5;
  EXPECT_NEAR(r.grams, grams, 1e-15);
  EXPECT_NEAR(r.joules, 19.206213298, 1e-12);
  // Counterfactuals: Σ items × C = 2000 + 400 + 1800 = 4200; resnet152 at its measured 1.5 J, the
  // others at the table.
  EXPECT_NEAR(r.counterfactual_grams[kR152], 4200 * 1.5 / 3.6e6 * 1.5, 1e-15);
  EXPECT_NEAR(r.counterfactual_grams[kR50], 4200 * 0.4206213298 / 3.6e6 * 1.5, 1e-15);
  // M = 1,000,000 g × 0.6 h / 1,000 h × 0.5 = 300 g.
  const double m = EmbodiedGrams(1e6, absl::Minutes(36), absl::Hours(1000), 0.5);
  EXPECT_NEAR(m, 300, 1e-9);
  // SCI of the route: (grams + 300) / 20 inferences; of resnet152 with M shared by energy, 15/19.206….
  EXPECT_NEAR(SciPerInference(r.grams, m, r.items), (grams + 300) / 20, 1e-12);
  EXPECT_NEAR(SciPerInference(r.variant_grams[kR152][1], m * 15 / 19.206213298, 10),
              (3300 / 3.6e6 * 1.5 + 300 * 15 / 19.206213298) / 10, 1e-12);
  EXPECT_TRUE(std::isnan(SciPerInference(1, 1, 0)));
  EXPECT_EQ(EmbodiedGrams(1e6, absl::Hours(1), absl::ZeroDuration(), 1), 0);
}

TEST(CarbonLedgerTest, GramsAndCounterfactualsForASequenceOfIntensities) {
  CarbonLedger ledger;
  auto route = ledger.Route("resnet", PaperResnetPool(), kR50);
  route->variant(kR101).RecordServed(1, 2, 200);  // a batch of two at 200 g/kWh
  route->variant(kR34).RecordServed(1, 1, 300);
  route->variant(kR152).RecordServed(1, 1, 100);
  route->variant(kR152).RecordServed(1, 3, -1);   // no intensity known: counted, not charged

  const RouteReport r = Report(*route);
  EXPECT_EQ(r.requests, 4u);
  EXPECT_EQ(r.items, 7u);
  // By hand: grams = E[mJ] × 1e-3 J/mJ ÷ 3.6e6 J/kWh × C × items.
  const double g101 = 803.0948846e-3 / 3.6e6 * 200 * 2;
  const double g34 = 359.9321833e-3 / 3.6e6 * 300 * 1;
  const double g152 = 1238.147188e-3 / 3.6e6 * 100 * 1;
  EXPECT_NEAR(r.grams, g101 + g34 + g152, 1e-15);
  EXPECT_NEAR(r.joules, 2 * 0.8030948846 + 0.3599321833 + 4 * 1.238147188, 1e-12);
  // Had all items served with an intensity (2 @ 200, 1 @ 300, 1 @ 100 → Σ items·C = 800) gone to v:
  for (size_t v = 0; v < 4; ++v) {
    EXPECT_NEAR(r.counterfactual_grams[v], route->pool()[v].energy_mj * 1e-3 / 3.6e6 * 800, 1e-15) << v;
  }
  EXPECT_EQ(r.variants[kR152].items, 4u);
  EXPECT_EQ(r.variants[kR152].items_with_intensity, 1u);
  EXPECT_DOUBLE_EQ(r.error_percent_sum, 2 * 6.454 + 8.58 + 4 * 5.954);
}

TEST(CarbonLedgerTest, EfficiencyIsThePapersDefinition) {
  // Three items: resnet101 at 100 g/kWh, resnet152 at 50, resnet34 at 400.
  CarbonLedger ledger;
  auto route = ledger.Route("resnet", PaperResnetPool(), kR50);
  route->variant(kR101).RecordServed(1, 1, 100);
  route->variant(kR152).RecordServed(1, 1, 50);
  route->variant(kR34).RecordServed(1, 1, 400);
  const RouteReport r = Report(*route);

  const double mean_error = (6.454 + 5.954 + 8.58) / 3;
  const double rqi = (7.138 - mean_error) / 7.138 * 100;
  const double actual = (803.0948846 * 100 + 1238.147188 * 50 + 359.9321833 * 400) * 1e-3 / 3.6e6;
  const double baseline = 420.6213298 * (100 + 50 + 400) * 1e-3 / 3.6e6;
  EXPECT_NEAR(r.mean_error_percent, mean_error, 1e-12);
  EXPECT_NEAR(r.relative_quality_improvement_percent, rqi, 1e-10);
  EXPECT_NEAR(r.extra_grams, actual - baseline, 1e-15);
  EXPECT_NEAR(r.efficiency, rqi / (actual - baseline), std::abs(rqi / (actual - baseline)) * 1e-9);
}

TEST(CarbonLedgerTest, OnlyTheBaselineGivesNoEfficiency) {
  CarbonLedger ledger;
  auto route = ledger.Route("resnet", PaperResnetPool(), kR50);
  route->variant(kR50).RecordServed(1, 5, 250);
  const RouteReport r = Report(*route);
  EXPECT_DOUBLE_EQ(r.relative_quality_improvement_percent, 0);
  EXPECT_DOUBLE_EQ(r.extra_grams, 0);
  EXPECT_TRUE(std::isnan(r.efficiency));
}

TEST(CarbonLedgerTest, NoEfficiencyWithoutExtraCarbonAndBeatingTheBaselineIsSaidApart) {
  CarbonLedger ledger;
  // The large models at clean hours, resnet34 at a dirty one: a lower mean error than resnet50's,
  // and fewer grams than resnet50 would have emitted at the same hours.
  auto route = ledger.Route("both", PaperResnetPool(), kR50);
  route->variant(kR101).RecordServed(1, 1, 10);
  route->variant(kR34).RecordServed(1, 1, 500);
  route->variant(kR152).RecordServed(1, 1, 10);
  const RouteReport better = Report(*route);
  ASSERT_LT(better.extra_grams, 0);
  ASSERT_GT(better.relative_quality_improvement_percent, 0);
  EXPECT_TRUE(std::isnan(better.efficiency));  // the paper's ratio would be negative
  EXPECT_TRUE(better.beats_baseline);

  // Worse and cleaner (resnet34 only): a loss over a saving would read as a positive efficiency.
  auto frugal = ledger.Route("frugal", PaperResnetPool(), kR50);
  frugal->variant(kR34).RecordServed(1, 1, 300);
  const RouteReport worse = Report(*frugal);
  ASSERT_LT(worse.extra_grams, 0);
  ASSERT_LT(worse.relative_quality_improvement_percent, 0);
  EXPECT_TRUE(std::isnan(worse.efficiency));
  EXPECT_FALSE(worse.beats_baseline);

  // A gain bought with extra carbon has an efficiency and does not beat the baseline on carbon.
  auto large = ledger.Route("large", PaperResnetPool(), kR50);
  large->variant(kR152).RecordServed(1, 1, 300);
  const RouteReport bought = Report(*large);
  EXPECT_GT(bought.efficiency, 0);
  EXPECT_FALSE(bought.beats_baseline);
}

TEST(CarbonLedgerTest, FailuresAreCountedByCodeAndNotCharged) {
  CarbonLedger ledger;
  auto route = ledger.Route("resnet", PaperResnetPool(), kR50);
  route->variant(kR101).RecordFailed(14);
  route->variant(kR101).RecordFailed(14);
  route->variant(kR101).RecordFailed(4);
  route->variant(kR101).RecordFailed(99);  // not a gRPC code: UNKNOWN
  const RouteReport r = Report(*route);
  EXPECT_EQ(r.requests, 0u);
  EXPECT_EQ(r.grams, 0);
  EXPECT_EQ(r.variants[kR101].failed[14], 2u);
  EXPECT_EQ(r.variants[kR101].failed[4], 1u);
  EXPECT_EQ(r.variants[kR101].failed[2], 1u);
}

TEST(CarbonLedgerTest, CountsAreExactWhenManyThreadsRecordAtOnce) {
  CarbonLedger ledger;
  auto route = ledger.Route("resnet", PaperResnetPool(), kR50);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        // Whole-number intensities: every partial sum is exact in a double, whatever the order.
        route->variant(static_cast<size_t>(i % 4)).RecordServed(1, static_cast<uint64_t>(1 + t % 3), 100 + i % 7);
      }
    });
  }
  for (auto& th : threads) th.join();
  const RouteReport r = Report(*route);
  uint64_t expected_items = 0;
  double expected_item_intensity = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      expected_items += static_cast<uint64_t>(1 + t % 3);
      expected_item_intensity += static_cast<double>(1 + t % 3) * (100 + i % 7);
    }
  }
  EXPECT_EQ(r.requests, static_cast<uint64_t>(kThreads) * kPerThread);
  EXPECT_EQ(r.items, expected_items);
  double item_intensity = 0;
  for (const auto& v : r.variants) item_intensity += v.item_intensity;
  EXPECT_EQ(item_intensity, expected_item_intensity);
  for (const auto& v : r.variants) EXPECT_EQ(v.requests, static_cast<uint64_t>(kThreads) * kPerThread / 4);
}

TEST(CarbonLedgerTest, AReloadKeepsCountingWhereItWas) {
  CarbonLedger ledger;
  auto before = ledger.Route("resnet", PaperResnetPool(), kR50);
  before->variant(kR101).RecordServed(1, 1, 200);
  // The same route with a pool that drops resnet34 and adds resnet18.
  auto pool = selector::Pool::Create({{"resnet18", 300, 10.0},
                                      {"resnet50", 420.6213298, 7.138},
                                      {"resnet101", 803.0948846, 6.454}});
  auto after = ledger.Route("resnet", std::make_shared<const selector::Pool>(*pool), 1);
  EXPECT_EQ(after->variant(2).Totals().requests, 1u);  // resnet101 carried over
  EXPECT_EQ(after->variant(0).Totals().requests, 0u);  // resnet18 is new
  EXPECT_EQ(&after->variant(2), &before->variant(kR101));
  // Another route never shares cells with this one.
  auto other = ledger.Route("resnet-b", PaperResnetPool(), kR50);
  EXPECT_EQ(other->variant(kR101).Totals().requests, 0u);
}

}  // namespace
}  // namespace carbon::telemetry
