#include "telemetry/static_provider.h"

namespace carbon::telemetry {

absl::StatusOr<IntensityReading> StaticProvider::Latest() {
  return IntensityReading{gco2_per_kwh_, Now()};
}

}  // namespace carbon::telemetry
