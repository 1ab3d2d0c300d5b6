#include "absl/strings/str_cat.h"
#include "telemetry/providers/kinds.h"

namespace carbon::telemetry {

std::unique_ptr<ProviderSpec> ReadUkCarbonIntensityProvider(ConfigBlock& block, const std::string&) {
  auto spec = std::make_unique<UkCarbonIntensitySpec>();
  spec->web.Read(block, /*base_url_required=*/false);
  int64_t id = 0;
  if (block.Integer("region_id", &id) && (id < 1 || id > 17)) {
    block.Fail("region_id",
               absl::StrCat(block.Path("region_id"), " must be a region of the API, 1 to 17 (11: South West England)"));
  }
  spec->region_id = static_cast<int>(id);
  block.String("postcode", &spec->postcode);
  if (block.ok() && spec->region_id != 0 && !spec->postcode.empty()) {
    block.Fail("postcode", absl::StrCat(block.Path("postcode"), " and region_id exclude each other"));
  }
  return spec;
}

nlohmann::json UkCarbonIntensitySpec::Render() const {
  nlohmann::json j;
  web.Render(j);
  if (region_id != 0) j["region_id"] = region_id;
  if (!postcode.empty()) j["postcode"] = postcode;
  return j;
}

absl::StatusOr<std::unique_ptr<IntensityProvider>> UkCarbonIntensitySpec::Build(const ProviderContext& context) const {
  return MakeUkCarbonIntensityProvider(web.Options(context), {region_id, postcode});
}

}  // namespace carbon::telemetry
