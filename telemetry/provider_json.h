#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "selector/intensity_window.h"
#include "telemetry/timestamp.h"

namespace carbon::telemetry {

// Helpers the HTTP providers share to read their JSON without exceptions and to refuse values no
// grid produces. `what` names the provider and endpoint in messages.

// Parses a response body; INVALID_ARGUMENT ("… is not JSON: …") for anything else, HTML included.
absl::StatusOr<nlohmann::json> ParseJsonBody(const std::string& body, const std::string& what);

// The number at `v` if it is one (not a string, not null).
std::optional<double> NumberAt(const nlohmann::json& v);

// Highest intensity accepted, gCO2/kWh: the dirtiest grids average well under 1,200.
inline constexpr double kMaxPlausibleGco2PerKwh = 3000;

// Whether a grid could have this intensity: finite, not negative, at most kMaxPlausibleGco2PerKwh.
inline bool IsPlausibleIntensity(double gco2_per_kwh) {
  return std::isfinite(gco2_per_kwh) && gco2_per_kwh >= 0 && gco2_per_kwh <= kMaxPlausibleGco2PerKwh;
}

// Refuses a reading that is not finite, negative, implausibly high, more than an hour in the future,
// or older than `max_age` at `now`.
absl::Status CheckReading(const selector::IntensityReading& r, absl::Time now, absl::Duration max_age,
                          const std::string& what);

}  // namespace carbon::telemetry
