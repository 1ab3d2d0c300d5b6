#include "selector/latency_guard.h"

#include <algorithm>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace carbon::selector {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::Field;

auto Weight(size_t variant, double weight) {
  return ::testing::AllOf(Field(&VariantWeight::variant, variant), Field(&VariantWeight::weight, DoubleNear(weight, 1e-12)));
}

TEST(CappedWeightsTest, OnlyTheExcessGoesDownToTheNextReadyVariant) {
  // The policy wants everything on variant 3, whose cap is 0.25: the rest goes to 2; 2's own cap
  // of 0.5 passes 0.25 on to 1 (0 is not needed).
  EXPECT_THAT(CappedWeights({{3, 1.0}}, {1, 1, 0.5, 0.25}, 0b1111), ElementsAre(Weight(1, 0.25), Weight(2, 0.5), Weight(3, 0.25)));
  // Variant 2 not ready: the excess skips it.
  EXPECT_THAT(CappedWeights({{3, 1.0}}, {1, 1, 1, 0.25}, 0b1011), ElementsAre(Weight(1, 0.75), Weight(3, 0.25)));
  // The cheapest ready variant takes whatever reaches it, over its own cap.
  EXPECT_THAT(CappedWeights({{3, 1.0}}, {0.1, 0.1, 0.1, 0.1}, 0b1111),
              ElementsAre(Weight(0, 0.7), Weight(1, 0.1), Weight(2, 0.1), Weight(3, 0.1)));
  // A mix under its caps is left alone.
  EXPECT_THAT(CappedWeights({{1, 0.6}, {2, 0.4}}, {1, 1, 0.5, 1}, 0b1111), ElementsAre(Weight(1, 0.6), Weight(2, 0.4)));
  // Nothing ready: the policy's rule stands.
  EXPECT_THAT(CappedWeights({{2, 1.0}}, {1, 1, 0.1, 1}, 0), ElementsAre(Weight(2, 1.0)));
}

VariantLoad Load(double p99_ms, uint64_t overloads = 0) {
  return {100, absl::Milliseconds(p99_ms), overloads, 0, absl::ZeroDuration()};
}

// `in_flight` calls on average over a 10 s window, with that p99.
VariantLoad Busy(double in_flight, double p99_ms, uint64_t overloads = 0) {
  return {100, absl::Milliseconds(p99_ms), overloads, in_flight * 10, absl::Seconds(10)};
}

TEST(LatencyGuardTest, HalvesTheShareOverTheObjectiveAndGrowsItBackWellInside) {
  const LatencySlo slo{absl::Milliseconds(100), absl::Seconds(10)};
  GuardCaps caps{{1, 1}, {false, false}};
  // Variant 1 serves everything and is slow: its cap halves from its share.
  caps = LatencyGuard::Next(caps, {Load(5), Load(400)}, {0, 1}, slo);
  EXPECT_THAT(caps.cap, ElementsAre(1, 0.5));
  EXPECT_THAT(caps.over, ElementsAre(false, true));
  caps = LatencyGuard::Next(caps, {Load(5), Load(200)}, {0.5, 0.5}, slo);
  EXPECT_THAT(caps.cap, ElementsAre(1, 0.25));
  // Overload answers count as over, whatever the latency.
  caps = LatencyGuard::Next(caps, {Load(5), Load(10, 3)}, {0.75, 0.25}, slo);
  EXPECT_DOUBLE_EQ(caps.cap[1], 0.125);
  // Between 80 % of the objective and the objective: held, not grown, not cut.
  caps = LatencyGuard::Next(caps, {Load(5), Load(90)}, {0.875, 0.125}, slo);
  EXPECT_DOUBLE_EQ(caps.cap[1], 0.125);
  EXPECT_FALSE(caps.over[1]);
  // Well inside: back up by a step a tick, to 1.
  for (int tick = 0; tick < 30; ++tick) caps = LatencyGuard::Next(caps, {Load(5), Load(20)}, {0, 0}, slo);
  EXPECT_DOUBLE_EQ(caps.cap[1], 1);
  // Never below the floor, so the variant keeps being measured.
  for (int tick = 0; tick < 30; ++tick) caps = LatencyGuard::Next(caps, {Load(5), Load(900)}, {1 - caps.cap[1], caps.cap[1]}, slo);
  EXPECT_DOUBLE_EQ(caps.cap[1], LatencyGuard::kFloor);
}

// A variant whose latency crosses the objective when its share passes 0.6: the guard settles
// below that share instead of swinging between full and nothing.
TEST(LatencyGuardTest, SettlesNearTheLimitWithoutFlapping) {
  const LatencySlo slo{absl::Milliseconds(100), absl::Seconds(10)};
  const auto latency_at = [](double share) { return share > 0.6 ? 300.0 : share > 0.5 ? 90.0 : 40.0; };
  GuardCaps caps{{1, 1}, {false, false}};
  std::vector<double> shares;
  for (int tick = 0; tick < 200; ++tick) {
    const std::vector<VariantWeight> served = CappedWeights({{1, 1.0}}, caps.cap, 0b11);
    const double share = served.back().variant == 1 ? served.back().weight : 0;
    shares.push_back(share);
    caps = LatencyGuard::Next(caps, {Load(5), Load(latency_at(share))}, {1 - share, share}, slo);
  }
  // Over the last 100 ticks: never over the limit's share for more than one tick in a row, and
  // never down to the floor.
  int over_in_a_row = 0, max_over_in_a_row = 0;
  double lowest = 1;
  for (size_t t = 100; t < shares.size(); ++t) {
    over_in_a_row = shares[t] > 0.6 ? over_in_a_row + 1 : 0;
    max_over_in_a_row = std::max(max_over_in_a_row, over_in_a_row);
    lowest = std::min(lowest, shares[t]);
  }
  EXPECT_LE(max_over_in_a_row, 1);
  EXPECT_GE(lowest, 0.25);
}

TEST(LearnedLimitTest, StartsFromTheCallsInFlightWhenFirstOverAndScalesByTheObjective) {
  const LatencySlo slo{absl::Milliseconds(100), absl::Seconds(10)};
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  LearnedLimit limit;
  // Inside the objective, nothing is learned, however busy.
  limit = NextLearnedLimit(limit, Busy(40, 50), /*limit_reached=*/false, slo, t0);
  EXPECT_FALSE(limit.limit);
  // Over it at 125 ms with 20 calls in flight on average: 20 × 100/125 = 16.
  limit = NextLearnedLimit(limit, Busy(20, 125), false, slo, t0);
  EXPECT_EQ(limit.limit, 16);
  // Still over a tick later: the window still holds the calls that made it slow; no second cut.
  limit = NextLearnedLimit(limit, Busy(16, 400), true, slo, t0 + absl::Seconds(2.5));
  EXPECT_EQ(limit.limit, 16);
  // A window later: cut again, by at most half (400 ms would say a quarter).
  limit = NextLearnedLimit(limit, Busy(16, 400), true, slo, t0 + absl::Seconds(10));
  EXPECT_EQ(limit.limit, 8);
  // From the calls in flight when fewer than the limit: 4 × 100/200.
  limit = NextLearnedLimit(limit, Busy(4, 200), false, slo, t0 + absl::Seconds(20));
  EXPECT_EQ(limit.limit, 2);
  // Overload answers cut by half, and never below one call.
  for (int k = 3; k < 6; ++k) limit = NextLearnedLimit(limit, Busy(2, 10, 5), true, slo, t0 + absl::Seconds(10 * k));
  EXPECT_EQ(limit.limit, 1);
}

TEST(LearnedLimitTest, GrowsOnlyWhileReachedAndWellInsideTheObjective) {
  const LatencySlo slo{absl::Milliseconds(100), absl::Seconds(10)};
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  LearnedLimit limit{30, t0};
  // Not reached: the limit says nothing about what more calls would do; held.
  limit = NextLearnedLimit(limit, Busy(10, 20), false, slo, t0 + absl::Seconds(1));
  EXPECT_EQ(limit.limit, 30);
  // Reached, between 80 % of the objective and the objective: held.
  limit = NextLearnedLimit(limit, Busy(30, 90), true, slo, t0 + absl::Seconds(2));
  EXPECT_EQ(limit.limit, 30);
  // Reached and well inside: a tenth more a tick, at least one.
  limit = NextLearnedLimit(limit, Busy(30, 20), true, slo, t0 + absl::Seconds(3));
  EXPECT_EQ(limit.limit, 33);
  limit = LearnedLimit{3, t0};
  limit = NextLearnedLimit(limit, Busy(3, 20), true, slo, t0 + absl::Seconds(3));
  EXPECT_EQ(limit.limit, 4);
  // Too few calls to tell a p99: held.
  limit = NextLearnedLimit(limit, {2, std::nullopt, 0, 0.2, absl::Seconds(10)}, true, slo, t0 + absl::Seconds(4));
  EXPECT_EQ(limit.limit, 4);
}

// A server that queues past 8 concurrent calls: latency 50 ms up to 8 in flight, and then grows
// with the queue. Offered 20 calls, the learned limit settles where the server is inside the
// objective, and does not swing back to the offered load.
TEST(LearnedLimitTest, SettlesBelowWhereTheServerQueues) {
  const LatencySlo slo{absl::Milliseconds(100), absl::Seconds(10)};
  const auto p99_at = [](double in_flight) { return in_flight <= 8 ? 50.0 : 50.0 * in_flight / 8; };
  absl::Time now = absl::FromUnixSeconds(1000);
  LearnedLimit limit;
  std::vector<int64_t> seen;
  for (int tick = 0; tick < 200; ++tick, now += absl::Seconds(2.5)) {
    const double in_flight = std::min<double>(20, limit.limit.value_or(20));
    limit = NextLearnedLimit(limit, Busy(in_flight, p99_at(in_flight)), in_flight < 20, slo, now);
    if (tick >= 100) seen.push_back(*limit.limit);
  }
  // 16 in flight would double the latency to the objective; the limit stays within [8, 16].
  EXPECT_GE(*std::min_element(seen.begin(), seen.end()), 8);
  EXPECT_LE(*std::max_element(seen.begin(), seen.end()), 16);
}

TEST(RampedWeightsTest, MovesEachVariantsShareInProportion) {
  const std::vector<VariantWeight> from = {{1, 1.0}};
  const std::vector<VariantWeight> to = {{2, 0.5}, {3, 0.5}};
  EXPECT_THAT(RampedWeights(from, to, 0), ElementsAre(Weight(1, 1.0)));
  EXPECT_THAT(RampedWeights(from, to, 0.25), ElementsAre(Weight(1, 0.75), Weight(2, 0.125), Weight(3, 0.125)));
  EXPECT_THAT(RampedWeights(from, to, 1), ElementsAre(Weight(2, 0.5), Weight(3, 0.5)));
  EXPECT_THAT(RampedWeights(from, to, 7), ElementsAre(Weight(2, 0.5), Weight(3, 0.5)));  // held to [0, 1]
  EXPECT_TRUE(SameWeights(to, {{2, 0.5}, {3, 0.5000001}}));
  EXPECT_FALSE(SameWeights(to, {{2, 0.5}, {1, 0.5}}));
  EXPECT_FALSE(SameWeights(to, from));
}

}  // namespace
}  // namespace carbon::selector
