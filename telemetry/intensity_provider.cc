#include "telemetry/intensity_provider.h"

namespace carbon::telemetry {

absl::StatusOr<std::vector<IntensityReading>> IntensityProvider::History(absl::Time, absl::Time) {
  return std::vector<IntensityReading>{};
}

absl::StatusOr<std::vector<IntensityReading>> IntensityProvider::Forecast(absl::Time, absl::Time) {
  return std::vector<IntensityReading>{};
}

}  // namespace carbon::telemetry
