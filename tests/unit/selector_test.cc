#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "selector/intensity_window.h"
#include "selector/linear_interpolation_policy.h"
#include "selector/pool.h"
#include "selector/snapshot_cell.h"

namespace carbon::selector {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1685577600);  // 2023-06-01T00:00Z

// The paper's Table 1 (docs/design.md §1).
Pool ResnetPool() {
  return *Pool::Create({{"resnet152", 1238.147188, 5.954},
                        {"resnet34", 359.9321833, 8.58},
                        {"resnet101", 803.0948846, 6.454},
                        {"resnet50", 420.6213298, 7.138}});
}

class PolicyTest : public ::testing::Test {
 protected:
  Selection SelectAt(double c, WindowBounds bounds = {100, 300}) {
    return policy_.Select(IntensityReading{c, kNow}, bounds, kNow, pool_.all_variants_mask(),
                          nullptr);
  }
  std::string NameAt(double c) { return pool_[SelectAt(c).variant].name; }

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
  Selection mid = SelectAt(200);
  EXPECT_EQ(mid.reason, SelectionReason::kHeuristic);
  EXPECT_NEAR(*mid.t, 0.5, 1e-12);
  EXPECT_NEAR(*mid.target_energy_mj, 799.04, 0.01);
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
    const double energy = pool_[SelectAt(c).variant].energy_mj;
    EXPECT_LE(energy, previous_energy) << "at C=" << c;
    previous_energy = energy;
  }
}

TEST_F(PolicyTest, ClampsOutsideTheWindow) {
  EXPECT_EQ(NameAt(20), "resnet152");
  EXPECT_DOUBLE_EQ(*SelectAt(20).t, 1.0);
  EXPECT_EQ(NameAt(900), "resnet34");
  EXPECT_DOUBLE_EQ(*SelectAt(900).t, 0.0);
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
  Selection s = policy.Select(IntensityReading{250, kNow}, WindowBounds{100, 300}, kNow,
                              pool.all_variants_mask(), nullptr);
  EXPECT_EQ(pool[s.variant].name, "small");
}

TEST_F(PolicyTest, DegenerateWindowUsesDefault) {
  Selection s = SelectAt(200, {200, 200.5});
  EXPECT_EQ(s.reason, SelectionReason::kDegenerateWindow);
  EXPECT_EQ(pool_[s.variant].name, "resnet50");
  EXPECT_EQ(SelectAt(200, {200, 201}).reason, SelectionReason::kHeuristic);
}

TEST_F(PolicyTest, NoOrStaleIntensityUsesDefault) {
  Selection none = policy_.Select(std::nullopt, WindowBounds{100, 300}, kNow, 0b1111, nullptr);
  EXPECT_EQ(none.reason, SelectionReason::kNoIntensity);
  EXPECT_EQ(pool_[none.variant].name, "resnet50");
  Selection stale = policy_.Select(IntensityReading{100, kNow - absl::Hours(2) - absl::Seconds(1)},
                                   WindowBounds{100, 300}, kNow, 0b1111, nullptr);
  EXPECT_EQ(stale.reason, SelectionReason::kStaleIntensity);
  EXPECT_EQ(pool_[stale.variant].name, "resnet50");
  Selection fresh = policy_.Select(IntensityReading{100, kNow - absl::Hours(2)},
                                   WindowBounds{100, 300}, kNow, 0b1111, nullptr);
  EXPECT_EQ(pool_[fresh.variant].name, "resnet152");
}

TEST_F(PolicyTest, NotReadyVariantsAreLeftOut) {
  const uint64_t without_152 = pool_.all_variants_mask() & ~(uint64_t{1} << 3);
  Selection s = policy_.Select(IntensityReading{100, kNow}, WindowBounds{100, 300}, kNow,
                               without_152, nullptr);
  EXPECT_EQ(pool_[s.variant].name, "resnet101");
  Selection none = policy_.Select(IntensityReading{100, kNow}, WindowBounds{100, 300}, kNow, 0,
                                  nullptr);
  EXPECT_EQ(none.reason, SelectionReason::kNoReadyVariant);
  EXPECT_EQ(pool_[none.variant].name, "resnet50");
}

TEST_F(PolicyTest, QualityFloor) {
  const uint64_t all = pool_.all_variants_mask();
  Selection dirty = SelectAt(300);  // resnet34, error 8.58
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty, 9.0, all)].name, "resnet34");
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty, 7.5, all)].name, "resnet50");
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty, 7.0, all)].name, "resnet101");
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty, 5.954, all)].name, "resnet152");
  // Nothing qualifies: the most accurate.
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty, 1.0, all)].name, "resnet152");
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, dirty, 1.0, 0b0111)].name, "resnet101");
  // A clean grid already exceeds the floor.
  EXPECT_EQ(pool_[ApplyQualityFloor(pool_, SelectAt(100), 7.0, all)].name, "resnet152");
}

TEST_F(PolicyTest, MinimumDwellHoldsTheVariant) {
  LinearInterpolationPolicy dwelling(
      pool_, PolicySettings{*pool_.IndexOf("resnet50"), absl::Hours(2), absl::Minutes(30)});
  const uint64_t all = pool_.all_variants_mask();
  const WindowBounds bounds{100, 300};
  Selection first = dwelling.Select(IntensityReading{100, kNow}, bounds, kNow, all, nullptr);
  EXPECT_EQ(pool_[first.variant].name, "resnet152");
  EXPECT_EQ(first.since, kNow);

  const absl::Time t1 = kNow + absl::Minutes(10);
  Selection held = dwelling.Select(IntensityReading{300, t1}, bounds, t1, all, &first);
  EXPECT_EQ(pool_[held.variant].name, "resnet152");
  EXPECT_EQ(held.reason, SelectionReason::kMinimumDwell);
  EXPECT_EQ(held.since, kNow);

  const absl::Time t2 = kNow + absl::Minutes(30);
  Selection moved = dwelling.Select(IntensityReading{300, t2}, bounds, t2, all, &held);
  EXPECT_EQ(pool_[moved.variant].name, "resnet34");
  EXPECT_EQ(moved.reason, SelectionReason::kHeuristic);
  EXPECT_EQ(moved.since, t2);
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
