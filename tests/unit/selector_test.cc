#include <map>
#include <numeric>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "selector/intensity_window.h"
#include "selector/policies/linear_interpolation.h"
#include "selector/routing_policy.h"
#include "selector/weighted_draw.h"
#include "selector/pool.h"
#include "selector/snapshot_cell.h"

namespace carbon::selector {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1685577600);  // 2023-06-01T00:00Z

// One decision of `policy` from these inputs.
Decision Decide(const RoutingPolicy& policy, std::optional<IntensityReading> reading,
                std::optional<WindowBounds> bounds, absl::Time now, uint64_t ready, const Decision* previous) {
  return policy.Decide({reading, bounds, now, ready, previous, std::nullopt, {}});
}

// The paper's Table 1 (docs/design.md §1).
Pool ResnetPool() {
  return *Pool::Create({{"resnet152", 1238.147188, 5.954},
                        {"resnet34", 359.9321833, 8.58},
                        {"resnet101", 803.0948846, 6.454},
                        {"resnet50", 420.6213298, 7.138}});
}

class PolicyTest : public ::testing::Test {
 protected:
  Decision SelectAt(double c, WindowBounds bounds = {100, 300}) {
    return Decide(policy_, IntensityReading{c, kNow}, bounds, kNow, pool_.all_variants_mask(),
                          nullptr);
  }
  std::string NameAt(double c) { return pool_[SelectAt(c).primary].name; }

  Pool pool_ = ResnetPool();
  LinearInterpolationPolicy policy_{pool_, PolicySettings{*pool_.IndexOf("resnet50"),
                                                          absl::Hours(2), absl::ZeroDuration()}};
};

TEST(PoolTest, SortsByEnergyAndFindsMostAccurate) {
  Pool pool = ResnetPool();
  ASSERT_EQ(pool.size(), 4u);
  EXPECT_EQ(pool[0].name, "resnet34");
  EXPECT_EQ(pool[3].name, "resnet152");
  EXPECT_EQ(pool[pool.most_accurate()].name, "resnet152");
  EXPECT_EQ(pool.IndexOf("resnet101"), 2u);
  EXPECT_EQ(pool.IndexOf("vgg16"), std::nullopt);
  EXPECT_EQ(pool.all_variants_mask(), 0b1111u);
}

TEST(PoolTest, RejectsInvalidVariants) {
  EXPECT_FALSE(Pool::Create({}).ok());
  auto dup = Pool::Create({{"a", 1, 1}, {"a", 2, 2}});
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("'a' appears twice"), std::string::npos);
  EXPECT_FALSE(Pool::Create({{"a", 0, 1}}).ok());
  EXPECT_FALSE(Pool::Create({{"a", -3, 1}}).ok());
  EXPECT_FALSE(Pool::Create({{"a", std::nan(""), 1}}).ok());
  EXPECT_FALSE(Pool::Create({{"a", 1, 101}}).ok());
  EXPECT_FALSE(Pool::Create({{"", 1, 1}}).ok());
  std::vector<Variant> many(65);
  for (size_t i = 0; i < many.size(); ++i) many[i] = {"v" + std::to_string(i), 1.0 + i, 1};
  EXPECT_FALSE(Pool::Create(many).ok());
}

TEST_F(PolicyTest, DesignTestVectors) {
  EXPECT_EQ(NameAt(100), "resnet152");
  EXPECT_EQ(NameAt(300), "resnet34");
  EXPECT_EQ(NameAt(200), "resnet101");
  EXPECT_EQ(NameAt(250), "resnet50");
  EXPECT_EQ(NameAt(150), "resnet101");
  Decision mid = SelectAt(200);
  EXPECT_EQ(mid.reason, LinearInterpolationPolicy::kReason);
  EXPECT_NEAR(*mid.Explained("t"), 0.5, 1e-12);
  EXPECT_NEAR(*mid.Explained("target_energy_mj"), 799.04, 0.01);
}

TEST_F(PolicyTest, Resnet101To152BoundaryNear149_54) {
  EXPECT_EQ(NameAt(149.50), "resnet152");
  EXPECT_EQ(NameAt(149.58), "resnet101");
}

TEST_F(PolicyTest, Resnet34WinsOnlyBelowT0345) {
  // t = (300 - C) / 200, so t = 0.0345 at C = 293.1.
  EXPECT_EQ(NameAt(293.2), "resnet34");
  EXPECT_EQ(NameAt(292.9), "resnet50");
}

TEST_F(PolicyTest, HigherIntensityNeverPicksHigherEnergy) {
  double previous_energy = 1e300;
  for (double c = 50; c <= 350; c += 0.25) {
    const double energy = pool_[SelectAt(c).primary].energy_mj;
    EXPECT_LE(energy, previous_energy) << "at C=" << c;
    previous_energy = energy;
  }
}

TEST_F(PolicyTest, ClampsOutsideTheWindow) {
  EXPECT_EQ(NameAt(20), "resnet152");
  EXPECT_DOUBLE_EQ(*SelectAt(20).Explained("t"), 1.0);
  EXPECT_EQ(NameAt(900), "resnet34");
  EXPECT_DOUBLE_EQ(*SelectAt(900).Explained("t"), 0.0);
}

TEST_F(PolicyTest, TieGoesToLowerEnergy) {
  Pool pool = *Pool::Create({{"small", 100, 9}, {"mid", 200, 8}, {"large", 300, 7}});
  LinearInterpolationPolicy policy(pool, PolicySettings{});
  EXPECT_EQ(NearestByEnergy(pool, 150, pool.all_variants_mask()), 0u);
  EXPECT_EQ(NearestByEnergy(pool, 250, pool.all_variants_mask()), 1u);
  EXPECT_EQ(NearestByEnergy(pool, 200, 0b101), 0u);  // 100 from both: the lower wins
  EXPECT_EQ(NearestByEnergy(pool, 250, 0b101), 2u);
  EXPECT_EQ(NearestByEnergy(pool, 250, 0), std::nullopt);
  // t = 0.25 puts the target exactly between small and mid.
  Decision s = Decide(policy, IntensityReading{250, kNow}, WindowBounds{100, 300}, kNow,
                              pool.all_variants_mask(), nullptr);
  EXPECT_EQ(pool[s.primary].name, "small");
}

TEST_F(PolicyTest, DegenerateWindowUsesDefault) {
  Decision s = SelectAt(200, {200, 200.5});
  EXPECT_EQ(s.reason, reasons::kDegenerateWindow);
  EXPECT_EQ(pool_[s.primary].name, "resnet50");
  EXPECT_EQ(SelectAt(200, {200, 201}).reason, LinearInterpolationPolicy::kReason);
}

TEST_F(PolicyTest, NoOrStaleIntensityUsesDefault) {
  Decision none = Decide(policy_, std::nullopt, WindowBounds{100, 300}, kNow, 0b1111, nullptr);
  EXPECT_EQ(none.reason, reasons::kNoIntensity);
  EXPECT_EQ(pool_[none.primary].name, "resnet50");
  Decision stale = Decide(policy_, IntensityReading{100, kNow - absl::Hours(2) - absl::Seconds(1)},
                                   WindowBounds{100, 300}, kNow, 0b1111, nullptr);
  EXPECT_EQ(stale.reason, reasons::kStaleIntensity);
  EXPECT_EQ(pool_[stale.primary].name, "resnet50");
  Decision fresh = Decide(policy_, IntensityReading{100, kNow - absl::Hours(2)},
                                   WindowBounds{100, 300}, kNow, 0b1111, nullptr);
  EXPECT_EQ(pool_[fresh.primary].name, "resnet152");
}

TEST_F(PolicyTest, NotReadyVariantsAreLeftOut) {
  const uint64_t without_152 = pool_.all_variants_mask() & ~(uint64_t{1} << 3);
  Decision s = Decide(policy_, IntensityReading{100, kNow}, WindowBounds{100, 300}, kNow,
                               without_152, nullptr);
  EXPECT_EQ(pool_[s.primary].name, "resnet101");
  Decision none = Decide(policy_, IntensityReading{100, kNow}, WindowBounds{100, 300}, kNow, 0,
                                  nullptr);
  EXPECT_EQ(none.reason, reasons::kNoReadyVariant);
  EXPECT_EQ(pool_[none.primary].name, "resnet50");
}

TEST_F(PolicyTest, QualityFloor) {
  const uint64_t all = pool_.all_variants_mask();
  Decision dirty = SelectAt(300);  // resnet34, error 8.58
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty.primary, dirty.aim_energy_mj, 9.0, all)].name, "resnet34");
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty.primary, dirty.aim_energy_mj, 7.5, all)].name, "resnet50");
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty.primary, dirty.aim_energy_mj, 7.0, all)].name, "resnet101");
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty.primary, dirty.aim_energy_mj, 5.954, all)].name, "resnet152");
  // Nothing qualifies: the most accurate.
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty.primary, dirty.aim_energy_mj, 1.0, all)].name, "resnet152");
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty.primary, dirty.aim_energy_mj, 1.0, 0b0111)].name, "resnet101");
  // A clean grid already exceeds the floor.
  const Decision clean = SelectAt(100);
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, clean.primary, clean.aim_energy_mj, 7.0, all)].name, "resnet152");
}

TEST_F(PolicyTest, MinimumDwellHoldsTheVariant) {
  LinearInterpolationPolicy dwelling(
      pool_, PolicySettings{*pool_.IndexOf("resnet50"), absl::Hours(2), absl::Minutes(30)});
  const uint64_t all = pool_.all_variants_mask();
  const WindowBounds bounds{100, 300};
  Decision first = Decide(dwelling, IntensityReading{100, kNow}, bounds, kNow, all, nullptr);
  EXPECT_EQ(pool_[first.primary].name, "resnet152");
  EXPECT_EQ(first.since, kNow);

  const absl::Time t1 = kNow + absl::Minutes(10);
  Decision held = Decide(dwelling, IntensityReading{300, t1}, bounds, t1, all, &first);
  EXPECT_EQ(pool_[held.primary].name, "resnet152");
  EXPECT_EQ(held.reason, reasons::kMinimumDwell);
  EXPECT_EQ(held.since, kNow);

  const absl::Time t2 = kNow + absl::Minutes(30);
  Decision moved = Decide(dwelling, IntensityReading{300, t2}, bounds, t2, all, &held);
  EXPECT_EQ(pool_[moved.primary].name, "resnet34");
  EXPECT_EQ(moved.reason, LinearInterpolationPolicy::kReason);
  EXPECT_EQ(moved.since, t2);
}

// Counts what `draw` serves over n requests, by variant.
std::vector<int64_t> Drawn(const WeightedDraw& draw, size_t variants, int n) {
  std::vector<int64_t> counts(variants, 0);
  for (int i = 0; i < n; ++i) ++counts[draw.Next()];
  return counts;
}

TEST(WeightedDrawTest, OneVariantTakesEverything) {
  WeightedDraw draw({{2, 1.0}});
  EXPECT_EQ(Drawn(draw, 4, 100), (std::vector<int64_t>{0, 0, 100, 0}));
}

TEST(WeightedDrawTest, EveryPrefixIsWithinOneRequestOfTheWeights) {
  // Random weight sets of 2 to 6 variants, rounded to thousandths as the draw does.
  uint32_t state = 2024;
  const auto next = [&state] { return state = state * 1103515245u + 12345u, (state >> 8) % 1000 + 1; };
  for (int round = 0; round < 200; ++round) {
    const size_t k = 2 + round % 5;
    std::vector<VariantWeight> weights;
    uint32_t total = 0;
    for (size_t v = 0; v < k; ++v) total += static_cast<uint32_t>(weights.emplace_back(VariantWeight{v, double(next())}).weight);
    for (auto& w : weights) w.weight /= total;
    WeightedDraw draw(weights);
    std::vector<double> share(k, 0);
    for (const auto& [variant, thousandths] : draw.shares()) share[variant] = thousandths / 1000.0;
    std::vector<int64_t> counts(k, 0);
    for (int n = 1; n <= 2500; ++n) {
      ++counts[draw.Next()];
      for (size_t v = 0; v < k; ++v) {
        ASSERT_LT(std::abs(static_cast<double>(counts[v]) - n * share[v]), 1.0)
            << "round " << round << ", variant " << v << " after " << n << " requests";
      }
    }
    for (size_t v = 0; v < k; ++v) EXPECT_NEAR(share[v], weights[v].weight, 0.0015) << round;
  }
}

TEST(WeightedDrawTest, ThreadsDrawingTogetherStillMatchTheWeights) {
  WeightedDraw draw({{0, 0.25}, {3, 0.75}});
  constexpr int kThreads = 4, kEach = 10'000;
  std::vector<std::vector<int64_t>> per_thread(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] { per_thread[t] = Drawn(draw, 4, kEach); });
  }
  for (auto& t : threads) t.join();
  std::vector<int64_t> total(4, 0);
  for (const auto& c : per_thread) {
    for (size_t v = 0; v < 4; ++v) total[v] += c[v];
  }
  // Each thread walks the sequence with a cursor of its own (or shares one, where threads outnumber
  // cursors): within one request of the weights per thread, so within kThreads for the route.
  // (Four threads numbered one after another take four different cursors.)
  for (const auto& c : per_thread) {
    EXPECT_NEAR(c[0], kEach / 4, 1);
    EXPECT_NEAR(c[3], kEach * 3 / 4, 1);
  }
  EXPECT_NEAR(total[0], 10'000, kThreads);
  EXPECT_NEAR(total[3], 30'000, kThreads);
  EXPECT_EQ(total[1] + total[2], 0);
}

TEST(WeightedDrawTest, WeightsThatSumToNothingGoToTheFirstVariant) {
  WeightedDraw draw({{1, 0.0}, {2, 0.0}});
  EXPECT_EQ(Drawn(draw, 3, 10), (std::vector<int64_t>{0, 10, 0}));
}

TEST(WeightedDrawTest, ATinyWeightIsRoundedAwayAndTheRestSumsToAPeriod) {
  WeightedDraw draw({{0, 0.0001}, {1, 0.4999}, {2, 0.5}});
  uint32_t sum = 0;
  for (const auto& s : draw.shares()) sum += s.second;
  EXPECT_EQ(sum, WeightedDraw::kPeriod);
  EXPECT_EQ(Drawn(draw, 3, 1000)[0], 0);
}

// Each moved request counted once, from where the policy would have sent it to where it went.
std::map<std::pair<size_t, size_t>, int> Moves(const WeightedDraw& draw, int n) {
  std::map<std::pair<size_t, size_t>, int> moves;
  for (int i = 0; i < n; ++i) {
    const WeightedDraw::Pick pick = draw.NextPick();
    ++moves[{pick.origin, pick.variant}];
  }
  return moves;
}

TEST(WeightedDrawTest, SaysWhichVariantTheOriginWeightsWouldHaveServed) {
  using Moved = std::map<std::pair<size_t, size_t>, int>;
  // The guard holds variant 2 to 0.6 of a route the policy gives wholly to it: 400 in 1000 moved
  // down to variant 1, and the draw still serves 0.4 / 0.6.
  EXPECT_EQ(Moves(WeightedDraw({{1, 0.4}, {2, 0.6}}, {{2, 1.0}}), 1000), (Moved{{{2, 1}, 400}, {{2, 2}, 600}}));
  // A policy mix of 0.5 / 0.5 served as 0.7 / 0.3: only the 0.2 the guard took moves.
  EXPECT_EQ(Moves(WeightedDraw({{0, 0.7}, {2, 0.3}}, {{0, 0.5}, {2, 0.5}}), 1000), (Moved{{{0, 0}, 500}, {{2, 0}, 200}, {{2, 2}, 300}}));
  // A ramp from variant 0 to 2 a quarter of the way: three in four still on 0, counted as moved
  // from 2, where the policy now sends everything.
  EXPECT_EQ(Moves(WeightedDraw({{0, 0.75}, {2, 0.25}}, {{2, 1.0}}), 1000), (Moved{{{2, 0}, 750}, {{2, 2}, 250}}));
  // One variant served, another wanted: every request is a move.
  EXPECT_EQ(Moves(WeightedDraw({{0, 1.0}}, {{1, 1.0}}), 10), (Moved{{{1, 0}, 10}}));
  // Without origin weights, every request is its own origin.
  EXPECT_EQ(Moves(WeightedDraw({{0, 0.5}, {1, 0.5}}), 10), (Moved{{{0, 0}, 5}, {{1, 1}, 5}}));
  // Moves are spread over the period, not bunched: any 100 consecutive requests hold 40 ± 1 moves.
  WeightedDraw spread({{1, 0.4}, {2, 0.6}}, {{2, 1.0}});
  std::vector<int> moved;
  for (int i = 0; i < 1000; ++i) {
    const WeightedDraw::Pick pick = spread.NextPick();
    moved.push_back(pick.origin != pick.variant);
  }
  for (size_t start = 0; start + 100 <= moved.size(); start += 50) {
    EXPECT_NEAR(std::accumulate(moved.begin() + start, moved.begin() + start + 100, 0), 40, 1) << start;
  }
}

TEST(IntensityWindowTest, TrailingMinMax) {
  IntensityWindow window(absl::Hours(24));
  EXPECT_EQ(window.Bounds(kNow), std::nullopt);
  const double values[] = {250, 120, 300, 180, 90, 200};
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(window.Add({values[i], kNow + absl::Hours(4 * i)}));
  }
  auto b = window.Bounds(kNow + absl::Hours(20));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->low, 90);
  EXPECT_EQ(b->high, 300);
  // At +28h the readings at 0h and 4h have left the window; 300 at 8h is still in.
  b = window.Bounds(kNow + absl::Hours(28));
  EXPECT_EQ(b->low, 90);
  EXPECT_EQ(b->high, 300);
  // At +33h only 16h (90) and 20h (200) remain.
  b = window.Bounds(kNow + absl::Hours(33));
  EXPECT_EQ(b->low, 90);
  EXPECT_EQ(b->high, 200);
  EXPECT_EQ(window.latest()->gco2_per_kwh, 200);
}

TEST(IntensityWindowTest, MatchesBruteForceOnASweep) {
  IntensityWindow window(absl::Hours(3));
  std::vector<IntensityReading> all;
  uint32_t state = 12345;
  for (int i = 0; i < 500; ++i) {
    state = state * 1103515245u + 12345u;
    IntensityReading r{static_cast<double>(state % 500), kNow + absl::Minutes(30 * i)};
    all.push_back(r);
    window.Add(r);
    double lo = 1e9, hi = -1e9;
    for (const auto& x : all) {
      if (x.at > r.at - absl::Hours(3)) {
        lo = std::min(lo, x.gco2_per_kwh);
        hi = std::max(hi, x.gco2_per_kwh);
      }
    }
    auto b = window.Bounds(r.at);
    ASSERT_TRUE(b);
    ASSERT_EQ(b->low, lo) << i;
    ASSERT_EQ(b->high, hi) << i;
  }
}

TEST(IntensityWindowTest, RevisionsAndOutOfOrder) {
  IntensityWindow window(absl::Hours(24));
  window.Add({300, kNow});
  window.Add({100, kNow + absl::Minutes(30)});
  EXPECT_FALSE(window.Add({500, kNow}));
  EXPECT_TRUE(window.Add({150, kNow + absl::Minutes(30)}));  // revised value
  auto b = window.Bounds(kNow + absl::Hours(1));
  EXPECT_EQ(b->low, 150);
  EXPECT_EQ(b->high, 300);
}

TEST(IntensityWindowTest, FixedBoundsOverride) {
  IntensityWindow window(absl::Hours(24));
  window.SetFixedBounds(WindowBounds{100, 300});
  EXPECT_EQ(window.Bounds(kNow)->high, 300);
  window.Add({50, kNow});
  EXPECT_EQ(window.Bounds(kNow)->low, 100);
  window.SetFixedBounds(std::nullopt);
  EXPECT_EQ(window.Bounds(kNow)->low, 50);
}

TEST(SnapshotCellTest, ReadersSeeEveryPublishedValueInOrder) {
  SnapshotCell<int> cell(std::make_shared<const int>(0));
  constexpr int kLast = 2000;
  std::atomic<bool> failed{false};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      int seen = 0;
      while (seen < kLast) {
        const int v = *cell.Load();
        if (v < seen) failed = true;
        seen = v;
      }
    });
  }
  for (int i = 1; i <= kLast; ++i) cell.Publish(std::make_shared<const int>(i));
  for (auto& t : readers) t.join();
  EXPECT_FALSE(failed);
  EXPECT_EQ(*cell.Load(), kLast);
}

}  // namespace
}  // namespace carbon::selector
