#include "selector/placement.h"

#include <gtest/gtest.h>

namespace carbon::selector {
namespace {

std::vector<size_t> Order(const std::vector<RankedPlace>& ranked) {
  std::vector<size_t> out;
  for (const RankedPlace& r : ranked) out.push_back(r.place);
  return out;
}

TEST(PlacementTest, TheCleanestPlaceThatCanServeWithinTheBudgetComesFirst) {
  const std::vector<PlaceState> places = {
      {true, true, absl::Milliseconds(1), 300},   // home
      {true, true, absl::Milliseconds(80), 40},   // cleanest, too far
      {true, true, absl::Milliseconds(10), 120},  // within the budget
      {true, true, std::nullopt, 200},            // cost unknown yet: not held against it
  };
  const auto ranked = RankPlaces(places, absl::Milliseconds(20));
  EXPECT_EQ(Order(ranked), (std::vector<size_t>{2, 3, 0, 1}));
  EXPECT_EQ(ranked[0].rank, PlaceRank::kCleanest);
  EXPECT_EQ(ranked[1].rank, PlaceRank::kHigherIntensity);
  EXPECT_EQ(ranked[3].rank, PlaceRank::kOverBudget);
  // Without a budget the far one is cleanest.
  EXPECT_EQ(RankPlaces(places, std::nullopt)[0].place, 1u);
}

TEST(PlacementTest, TiesKeepTheRoutesOrderAndTheUnservableComeLast) {
  const std::vector<PlaceState> places = {
      {std::nullopt, true, std::nullopt, 100},   // home, never asked: may serve
      {false, true, std::nullopt, 10},           // unreachable
      {true, false, std::nullopt, 20},           // answered, nothing ready
      {true, true, std::nullopt, 100},           // ties home
      {true, true, std::nullopt, std::nullopt},  // stale with nothing assumed
  };
  const auto ranked = RankPlaces(places, std::nullopt);
  EXPECT_EQ(Order(ranked), (std::vector<size_t>{0, 3, 4, 1, 2}));
  EXPECT_EQ(ranked[2].rank, PlaceRank::kIntensityUnknown);
  EXPECT_EQ(ranked[3].rank, PlaceRank::kUnreachable);
  EXPECT_EQ(ranked[4].rank, PlaceRank::kNoVariantReady);
  EXPECT_EQ(PlaceRankName(ranked[4].rank), "no_variant_ready");
}

TEST(PlacementTest, WhenNothingCanServeTheFirstOfTheBestRankIsStillChosen) {
  const std::vector<PlaceState> places = {{false, true, std::nullopt, 50}, {false, true, std::nullopt, 20}};
  const auto ranked = RankPlaces(places, std::nullopt);
  EXPECT_EQ(Order(ranked), (std::vector<size_t>{0, 1}));
  EXPECT_EQ(ranked[0].rank, PlaceRank::kUnreachable);
}

}  // namespace
}  // namespace carbon::selector
