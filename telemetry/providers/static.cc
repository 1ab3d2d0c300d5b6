#include "absl/strings/str_cat.h"
#include "telemetry/providers/kinds.h"
#include "telemetry/static_provider.h"

namespace carbon::telemetry {

std::unique_ptr<ProviderSpec> ReadStaticProvider(ConfigBlock& block, const std::string&) {
  auto spec = std::make_unique<StaticSpec>();
  if (block.Number("gco2_per_kwh", &spec->gco2_per_kwh, /*required=*/true) && spec->gco2_per_kwh < 0) {
    block.Fail("gco2_per_kwh", absl::StrCat(block.Path("gco2_per_kwh"), " must not be negative"));
  }
  return spec;
}

std::shared_ptr<const ProviderSpec> StaticIntensity(double gco2_per_kwh, std::string region) {
  auto spec = std::make_shared<StaticSpec>();
  spec->gco2_per_kwh = gco2_per_kwh;
  spec->region = std::move(region);
  return spec;
}

nlohmann::json StaticSpec::Render() const { return {{"gco2_per_kwh", gco2_per_kwh}}; }

absl::StatusOr<std::unique_ptr<IntensityProvider>> StaticSpec::Build(const ProviderContext&) const {
  return std::unique_ptr<IntensityProvider>(std::make_unique<StaticProvider>(gco2_per_kwh));
}

}  // namespace carbon::telemetry
