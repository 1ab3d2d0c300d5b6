#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "selector/intensity_window.h"

namespace carbon::telemetry {

// Helpers the HTTP providers share to read their JSON without exceptions and to refuse values no
// grid produces. `what` names the provider and endpoint in messages.

// Parses a response body; INVALID_ARGUMENT ("… is not JSON: …") for anything else, HTML included.
absl::StatusOr<nlohmann::json> ParseJsonBody(const std::string& body, const std::string& what);

// Times as the services write them: RFC 3339 with or without fractions or offset, and the UK API's
// minute-precision "2018-01-20T12:00Z".
std::optional<absl::Time> ParseApiTime(std::string_view text);

// The number at `v` if it is one (not a string, not null).
std::optional<double> NumberAt(const nlohmann::json& v);

// Highest intensity accepted, gCO2/kWh: the dirtiest grids average well under 1,200.
inline constexpr double kMaxPlausibleGco2PerKwh = 3000;

// Refuses a reading that is not finite, negative, implausibly high, more than an hour in the future,
// or older than `max_age` at `now`.
absl::Status CheckReading(const selector::IntensityReading& r, absl::Time now, absl::Duration max_age,
                          const std::string& what);

}  // namespace carbon::telemetry
