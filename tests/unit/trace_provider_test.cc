#include "telemetry/trace_provider.h"

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "telemetry/static_provider.h"

namespace carbon::telemetry {
namespace {

using ::testing::HasSubstr;

absl::Time At(const char* rfc3339) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << err;
  return t;
}

constexpr char kLetsWaitAwhile[] =
    "Time,Carbon Intensity\n"
    "2020-01-01 00:00:00,200.5\n"
    "2020-01-01 00:30:00,100\n"
    "2020-01-01 01:00:00,300\n";

TEST(IntensityCsvTest, ReadsFirstTwoColumnsByDefault) {
  auto readings = ParseIntensityCsv(kLetsWaitAwhile, "gb.csv", {});
  ASSERT_TRUE(readings.ok()) << readings.status();
  ASSERT_EQ(readings->size(), 3u);
  EXPECT_EQ((*readings)[0].at, At("2020-01-01T00:00:00Z"));
  EXPECT_EQ((*readings)[0].gco2_per_kwh, 200.5);
  EXPECT_EQ((*readings)[2].at, At("2020-01-01T01:00:00Z"));
  EXPECT_EQ((*readings)[2].gco2_per_kwh, 300);
}

TEST(IntensityCsvTest, ChoosesColumnsByNameAndSkipsCommentsAndCarriageReturns) {
  const char text[] =
      "from,regions.regionid,regions.intensity.forecast,biomass\r\n"
      "2023-05-31T23:30Z,11,317,0.5\r\n"
      "2023-06-01T00:00Z,11,357,0.0\r\n"
      "# source: somewhere @ abc\n";
  auto readings = ParseIntensityCsv(text, "sw.csv", {"from", "regions.intensity.forecast"});
  ASSERT_TRUE(readings.ok()) << readings.status();
  ASSERT_EQ(readings->size(), 2u);
  EXPECT_EQ((*readings)[0].at, At("2023-05-31T23:30:00Z"));
  EXPECT_EQ((*readings)[0].gco2_per_kwh, 317);
  EXPECT_EQ((*readings)[1].gco2_per_kwh, 357);
}

TEST(IntensityCsvTest, BadRowsAreReportedWithFileAndLine) {
  const struct {
    std::string text;
    TraceColumns columns;
    std::string expected;
  } cases[] = {
      {"a,b\n", {"from", ""}, "t.csv:1: header has no column 'from'"},
      {"t,v\n2020-01-01 00:00:00\n", {}, "t.csv:2: expected at least 2 columns"},
      {"t,v\nyesterday,5\n", {}, "t.csv:2: cannot read time 'yesterday'"},
      {"t,v\n2020-01-01 00:00:00,-5\n", {}, "t.csv:2: intensity '-5' is not a non-negative number"},
      {"t,v\n2020-01-01 00:00:00,nan\n", {}, "t.csv:2: intensity 'nan'"},
      {"t,v\n2020-01-01 00:00:00,12abc\n", {}, "t.csv:2: intensity '12abc'"},
      {"t,v\n2020-01-01 01:00:00,5\n2020-01-01 00:30:00,5\n", {}, "t.csv:3: rows must be in strictly increasing time order"},
      {"t,v\n", {}, "t.csv: no readings"},
  };
  for (const auto& c : cases) {
    auto readings = ParseIntensityCsv(c.text, "t.csv", c.columns);
    ASSERT_FALSE(readings.ok()) << c.expected;
    EXPECT_EQ(readings.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(readings.status().message()), HasSubstr(c.expected));
  }
}

TEST(IntensityCsvTest, LoadsTheBundledJuneTraceAsOneSeries) {
  const std::string dir = std::string(CARBON_SOURCE_DIR) + "/data/carbon/sw_england_2023_06";
  auto readings = LoadIntensityTrace(dir, {"from", "regions.intensity.forecast"});
  ASSERT_TRUE(readings.ok()) << readings.status();
  // The whole month and 2023-07-01: 31 files of 48 half-hours, but for the one the source lacks
  // (2023-06-20T23:00Z, data/PROVENANCE.md).
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files += e.path().extension() == ".csv";
  EXPECT_EQ(files, 31u);
  EXPECT_EQ(readings->size(), files * 48 - 1);
  EXPECT_EQ(readings->front().at, At("2023-05-31T23:30:00Z"));
  EXPECT_EQ(readings->front().gco2_per_kwh, 317);
  EXPECT_EQ(readings->back().at, At("2023-07-01T23:00:00Z"));
  std::vector<absl::Time> gaps;
  for (size_t i = 1; i < readings->size(); ++i) {
    ASSERT_LT((*readings)[i - 1].at, (*readings)[i].at);
    ASSERT_GE((*readings)[i].gco2_per_kwh, 0);
    if ((*readings)[i].at - (*readings)[i - 1].at != absl::Minutes(30)) gaps.push_back((*readings)[i - 1].at);
  }
  EXPECT_EQ(gaps, (std::vector<absl::Time>{At("2023-06-20T22:30:00Z")}));
}

TEST(IntensityCsvTest, OverlappingFilesInADirectoryAreRejected) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / ("overlap_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "a.csv") << "t,v\n2020-01-01 00:00:00,1\n2020-01-01 01:00:00,2\n";
  std::ofstream(dir / "b.csv") << "t,v\n2020-01-01 00:30:00,3\n";
  auto readings = LoadIntensityTrace(dir.string(), {});
  EXPECT_THAT(std::string(readings.status().message()), HasSubstr("b.csv: overlaps the file before it"));
  EXPECT_EQ(LoadIntensityTrace((dir / "none.csv").string(), {}).status().code(),
            absl::StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

// A wall clock the test moves by hand.
struct ManualClock {
  absl::Time now = absl::FromUnixSeconds(1'000'000);
  TraceProvider::Clock AsFunction() {
    return [this] { return now; };
  }
};

std::vector<IntensityReading> ThreeReadings() {
  return {{200, At("2020-01-01T00:00:00Z")}, {100, At("2020-01-01T00:30:00Z")}, {300, At("2020-01-01T01:00:00Z")}};
}

TEST(TraceProviderTest, ReplaysAtTheConfiguredSpeed) {
  ManualClock clock;
  auto provider = TraceProvider::Create(ThreeReadings(), /*speedup=*/60, /*loop=*/false,
                                        std::nullopt, clock.AsFunction());
  ASSERT_TRUE(provider.ok()) << provider.status();
  TraceProvider& p = **provider;
  EXPECT_EQ(p.kind(), "trace");
  EXPECT_EQ(p.Now(), At("2020-01-01T00:00:00Z"));
  EXPECT_EQ(p.Latest()->gco2_per_kwh, 200);
  clock.now += absl::Seconds(29);  // 29 simulated minutes
  EXPECT_EQ(p.Latest()->gco2_per_kwh, 200);
  clock.now += absl::Seconds(1);
  EXPECT_EQ(p.Now(), At("2020-01-01T00:30:00Z"));
  EXPECT_EQ(p.Latest()->gco2_per_kwh, 100);
  EXPECT_EQ(p.Latest()->at, At("2020-01-01T00:30:00Z"));
  clock.now += absl::Hours(1);  // far past the end: the last reading stays, with its own time
  EXPECT_EQ(p.Latest()->gco2_per_kwh, 300);
  EXPECT_EQ(p.Latest()->at, At("2020-01-01T01:00:00Z"));
}

TEST(TraceProviderTest, LoopingShiftsWholePeriodsForward) {
  ManualClock clock;
  auto provider = TraceProvider::Create(ThreeReadings(), 60, /*loop=*/true,
                                        At("2020-01-01T01:00:00Z"), clock.AsFunction());
  ASSERT_TRUE(provider.ok());
  TraceProvider& p = **provider;
  EXPECT_EQ(p.Latest()->gco2_per_kwh, 300);
  clock.now += absl::Seconds(30);  // 01:30, one period (90 min) after 00:00
  EXPECT_EQ(p.Latest()->gco2_per_kwh, 200);
  EXPECT_EQ(p.Latest()->at, At("2020-01-01T01:30:00Z"));
  clock.now += absl::Seconds(90 * 10 + 30);  // ten periods later, at the 00:30 reading's repeat
  EXPECT_EQ(p.Latest()->gco2_per_kwh, 100);
  EXPECT_EQ(p.Latest()->at, At("2020-01-01T17:00:00Z"));

  auto history = p.History(At("2020-01-01T00:30:00Z"), At("2020-01-01T02:00:00Z"));
  ASSERT_TRUE(history.ok());
  std::vector<double> values;
  for (const auto& r : *history) values.push_back(r.gco2_per_kwh);
  EXPECT_THAT(values, ::testing::ElementsAre(100, 300, 200, 100));
  EXPECT_EQ(history->back().at, At("2020-01-01T02:00:00Z"));
}

TEST(TraceProviderTest, HistoryWithoutLoopStopsAtTheEnd) {
  ManualClock clock;
  auto provider = TraceProvider::Create(ThreeReadings(), 1, false, std::nullopt, clock.AsFunction());
  ASSERT_TRUE(provider.ok());
  auto history = (*provider)->History(At("2019-12-31T00:00:00Z"), At("2020-01-05T00:00:00Z"));
  ASSERT_TRUE(history.ok());
  EXPECT_EQ(history->size(), 3u);
}

TEST(TraceProviderTest, RejectsBadSettings) {
  EXPECT_FALSE(TraceProvider::Create({}, 1, false, std::nullopt).ok());
  EXPECT_FALSE(TraceProvider::Create(ThreeReadings(), 0, false, std::nullopt).ok());
  auto outside = TraceProvider::Create(ThreeReadings(), 1, false, At("2021-01-01T00:00:00Z"));
  EXPECT_THAT(std::string(outside.status().message()), HasSubstr("lies outside the trace"));
}

TEST(StaticProviderTest, AlwaysReadsFreshAtItsValue) {
  StaticProvider p(123.5);
  const absl::Time before = absl::Now();
  auto r = p.Latest();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->gco2_per_kwh, 123.5);
  EXPECT_GE(r->at, before);
  EXPECT_TRUE(p.History(before - absl::Hours(1), before)->empty());
}

}  // namespace
}  // namespace carbon::telemetry
