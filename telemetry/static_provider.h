#pragma once

#include "telemetry/intensity_provider.h"

namespace carbon::telemetry {

// A fixed intensity, for tests and for sites that set it by hand. Each poll reads it anew at the
// current time, so it never goes stale.
class StaticProvider final : public IntensityProvider {
 public:
  explicit StaticProvider(double gco2_per_kwh) : gco2_per_kwh_(gco2_per_kwh) {}
  std::string_view kind() const override { return "static"; }
  absl::Time Now() const override { return absl::Now(); }
  absl::StatusOr<IntensityReading> Latest() override;

 private:
  double gco2_per_kwh_;
};

}  // namespace carbon::telemetry
