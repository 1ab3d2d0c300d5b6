#include "telemetry/timestamp.h"

#include <string>

namespace carbon::telemetry {

std::optional<absl::Time> ParseTimestamp(std::string_view text) {
  const std::string s(text);
  absl::Time t;
  std::string err;
  for (const char* format : {absl::RFC3339_full, "%Y-%m-%dT%H:%M%Ez", "%Y-%m-%dT%H:%MZ", "%Y-%m-%d %H:%M:%S"}) {
    if (absl::ParseTime(format, s, absl::UTCTimeZone(), &t, &err)) return t;
  }
  return std::nullopt;
}

}  // namespace carbon::telemetry
