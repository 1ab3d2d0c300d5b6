#include "telemetry/provider_json.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace carbon::telemetry {

absl::StatusOr<nlohmann::json> ParseJsonBody(const std::string& body, const std::string& what) {
  nlohmann::json doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    std::string start = body.substr(0, 40);
    for (char& c : start) {
      if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    }
    return absl::InvalidArgumentError(absl::StrCat(what, ": response is not JSON (starts with \"", start, "\")"));
  }
  return doc;
}

std::optional<double> NumberAt(const nlohmann::json& v) {
  if (!v.is_number()) return std::nullopt;
  return v.get<double>();
}

absl::Status CheckReading(const selector::IntensityReading& r, absl::Time now, absl::Duration max_age,
                          const std::string& what) {
  if (!IsPlausibleIntensity(r.gco2_per_kwh)) {
    return absl::OutOfRangeError(absl::StrCat(what, ": intensity ", r.gco2_per_kwh,
                                              " gCO2/kWh is not plausible (expected 0 to ",
                                              kMaxPlausibleGco2PerKwh, ")"));
  }
  if (r.at > now + absl::Hours(1)) {
    return absl::OutOfRangeError(absl::StrCat(what, ": reading time ", absl::FormatTime(r.at),
                                              " lies in the future"));
  }
  if (r.at < now - max_age) {
    return absl::OutOfRangeError(absl::StrCat(what, ": reading time ", absl::FormatTime(r.at), " is older than ",
                                              absl::FormatDuration(max_age)));
  }
  return absl::OkStatus();
}

}  // namespace carbon::telemetry
