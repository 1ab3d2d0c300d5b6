#include "telemetry/providers/kinds.h"

namespace carbon::telemetry {

std::unique_ptr<ProviderSpec> ReadElectricityMapsProvider(ConfigBlock& block, const std::string&) {
  auto spec = std::make_unique<ElectricityMapsSpec>();
  spec->web.Read(block, /*base_url_required=*/false);
  block.String("zone", &spec->zone, /*required=*/true);
  ReadSecretSource(block, "token", "token_env", "token_file", &spec->token_env, &spec->token_file);
  return spec;
}

nlohmann::json ElectricityMapsSpec::Render() const {
  nlohmann::json j;
  web.Render(j);
  j["zone"] = zone;
  if (!token_env.empty()) j["token_env"] = token_env;
  if (!token_file.empty()) j["token_file"] = token_file;
  return j;
}

absl::StatusOr<std::unique_ptr<IntensityProvider>> ElectricityMapsSpec::Build(const ProviderContext& context) const {
  auto token = ReadSecret(token_env, token_file);
  if (!token.ok()) return token.status();
  return MakeElectricityMapsProvider(web.Options(context), zone, *std::move(token));
}

}  // namespace carbon::telemetry
