#pragma once

#include <optional>
#include <string_view>

#include "absl/time/time.h"

namespace carbon::telemetry {

// Times as the intensity sources write them, in UTC unless they say otherwise: RFC 3339 with or
// without fractions or offset (the web APIs), the UK API's minute precision "2018-01-20T12:00Z",
// and "2023-06-01 00:00:00" (recorded CSV traces).
std::optional<absl::Time> ParseTimestamp(std::string_view text);

}  // namespace carbon::telemetry
