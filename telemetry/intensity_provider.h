#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "selector/intensity_window.h"

namespace carbon::telemetry {

using selector::IntensityReading;

// A source of grid carbon intensity in gCO2/kWh. The sidecar polls it from one background thread
// (never from the request path), so implementations may block on I/O; they need not be
// thread-safe.
class IntensityProvider {
 public:
  virtual ~IntensityProvider() = default;

  // "static", "trace", …: the `intensity.provider` value that selects it.
  virtual std::string_view kind() const = 0;
  // The source that gave the latest reading: kind(), or for a fallback chain the member that
  // answered.
  virtual std::string_view source() const { return kind(); }

  // The provider's clock. Wall time for live sources; simulated time for a replayed trace, so
  // that windows, staleness and dwell all run on the timeline the readings come from.
  virtual absl::Time Now() const = 0;

  // The newest reading at Now().
  virtual absl::StatusOr<IntensityReading> Latest() = 0;

  // Readings in [from, to], oldest first, to fill the window at start. Sources without history
  // return an empty list.
  virtual absl::StatusOr<std::vector<IntensityReading>> History(absl::Time from, absl::Time to);
  // Forecast readings in [from, to], oldest first, for a window widened by what is coming.
  // Sources without a forecast return an empty list.
  virtual absl::StatusOr<std::vector<IntensityReading>> Forecast(absl::Time from, absl::Time to);
};

}  // namespace carbon::telemetry
