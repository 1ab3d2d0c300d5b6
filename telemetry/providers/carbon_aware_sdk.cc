#include "telemetry/providers/kinds.h"

namespace carbon::telemetry {

std::unique_ptr<ProviderSpec> ReadCarbonAwareSdkProvider(ConfigBlock& block, const std::string&) {
  auto spec = std::make_unique<CarbonAwareSdkSpec>();
  // Self-hosted: there is no public address to default to.
  spec->web.Read(block, /*base_url_required=*/true);
  block.String("location", &spec->location, /*required=*/true);
  return spec;
}

nlohmann::json CarbonAwareSdkSpec::Render() const {
  nlohmann::json j;
  web.Render(j);
  j["location"] = location;
  return j;
}

absl::StatusOr<std::unique_ptr<IntensityProvider>> CarbonAwareSdkSpec::Build(const ProviderContext& context) const {
  return MakeCarbonAwareSdkProvider(web.Options(context), location);
}

}  // namespace carbon::telemetry
