#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "telemetry/http_client.h"
#include "telemetry/intensity_provider.h"

namespace carbon::telemetry {

// What every web provider shares.
struct WebProviderOptions {
  std::string base_url;  // the service's root, e.g. https://api.carbonintensity.org.uk
  HttpOptions http;
  absl::Duration max_age = absl::Hours(2);  // readings older than this are refused
  std::function<absl::Time()> clock = absl::Now;
};

// The National Grid ESO Carbon Intensity API (no key). National when region_id is 0 and no postcode
// is given: the `actual` value, or the forecast while actual is null. Regional (region_id 1-17, or an
// outward postcode such as BS1): the forecast, the only value the regional API publishes.
struct UkCarbonIntensityOptions {
  int region_id = 0;
  std::string postcode;
};
std::unique_ptr<IntensityProvider> MakeUkCarbonIntensityProvider(WebProviderOptions web,
                                                                 UkCarbonIntensityOptions uk);

// Electricity Maps API v3: latest and history of one zone, with the `auth-token` header.
std::unique_ptr<IntensityProvider> MakeElectricityMapsProvider(WebProviderOptions web, std::string zone,
                                                               std::string token);

// WattTime API v3: logs in with HTTP Basic for a bearer token (again on expiry or 401) and reads the
// co2_moer signal of a region from /v3/forecast?horizon_hours=0 (history from /v3/historical, which
// WattTime offers to subscribers only). WattTime speaks lbs CO2/MWh; the provider converts to
// gCO2/kWh (× 0.45359237).
inline constexpr double kGramsPerKwhPerLbsPerMwh = 0.45359237;
std::unique_ptr<IntensityProvider> MakeWattTimeProvider(WebProviderOptions web, std::string region,
                                                        std::string username, std::string password);

// The Green Software Foundation Carbon Aware SDK Web API: /emissions/bylocation for a location.
std::unique_ptr<IntensityProvider> MakeCarbonAwareSdkProvider(WebProviderOptions web, std::string location);

// Runs `body` through every provider's reply parser (for the fuzz harness); the first error, if any.
absl::Status ParseEveryProviderReply(const std::string& body);

// Tries providers in order and answers from the first that answers; the last good value stays in
// the sidecar's window whatever happens. `active()` says which answered last.
class FallbackProvider final : public IntensityProvider {
 public:
  explicit FallbackProvider(std::vector<std::unique_ptr<IntensityProvider>> chain);
  std::string_view kind() const override { return "fallback"; }
  std::string_view source() const override;
  absl::Time Now() const override;
  absl::StatusOr<IntensityReading> Latest() override;
  absl::StatusOr<std::vector<IntensityReading>> History(absl::Time from, absl::Time to) override;
  absl::StatusOr<std::vector<IntensityReading>> Forecast(absl::Time from, absl::Time to) override;

 private:
  std::vector<std::unique_ptr<IntensityProvider>> chain_;
  size_t active_ = 0;
};

}  // namespace carbon::telemetry
