#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "telemetry/intensity_provider.h"

namespace carbon::telemetry {

// Reads an intensity trace: CSV with a header row, one reading per line, '#' lines ignored.
// Times may be "YYYY-MM-DD HH:MM:SS" (UTC), "YYYY-MM-DDTHH:MMZ" or RFC 3339. Columns are chosen by
// name; by default the first column is the time and the second the value. Rows must be in time
// order. Errors name file:line.
struct TraceColumns {
  std::string time;   // empty: first column
  std::string value;  // empty: second column
};
absl::StatusOr<std::vector<IntensityReading>> ParseIntensityCsv(std::string_view text,
                                                                const std::string& file,
                                                                const TraceColumns& columns);

// Reads a CSV file, or every *.csv file of a directory in name order (daily files that tile).
absl::StatusOr<std::vector<IntensityReading>> LoadIntensityTrace(const std::string& path,
                                                                 const TraceColumns& columns);

// Replays a recorded trace as if it were live: simulated time starts at `start` (default: the
// first reading) when the provider is made and runs `speedup` times faster than the wall clock.
// With `loop`, the trace repeats, shifted by whole periods so time keeps moving forward;
// without, the last reading stays current (and eventually goes stale).
class TraceProvider final : public IntensityProvider {
 public:
  using Clock = std::function<absl::Time()>;

  static absl::StatusOr<std::unique_ptr<TraceProvider>> Create(
      std::vector<IntensityReading> readings, double speedup, bool loop,
      std::optional<absl::Time> start, Clock wall_clock = absl::Now);

  std::string_view kind() const override { return "trace"; }
  absl::Time Now() const override;
  absl::StatusOr<IntensityReading> Latest() override;
  absl::StatusOr<std::vector<IntensityReading>> History(absl::Time from, absl::Time to) override;
  // A recorded trace knows its future: the readings ahead, as a perfect forecast.
  absl::StatusOr<std::vector<IntensityReading>> Forecast(absl::Time from, absl::Time to) override {
    return History(from, to);
  }

 private:
  TraceProvider(std::vector<IntensityReading> readings, double speedup, bool loop, absl::Time start,
                Clock wall_clock);
  // How far t's period of a looping trace lies after the recorded one.
  absl::Duration PeriodShift(absl::Time t) const;
  // The reading in force at simulated time t (shifted into t's period when looping).
  std::optional<IntensityReading> At(absl::Time t) const;

  std::vector<IntensityReading> readings_;
  double speedup_;
  bool loop_;
  absl::Time start_;
  absl::Duration period_;  // last - first + one step
  Clock wall_clock_;
  absl::Time wall_start_;
};

}  // namespace carbon::telemetry
