#include "absl/strings/str_cat.h"
#include "telemetry/providers/kinds.h"

namespace carbon::telemetry {

std::unique_ptr<ProviderSpec> ReadWattTimeProvider(ConfigBlock& block, const std::string& region) {
  auto spec = std::make_unique<WattTimeSpec>();
  spec->web.Read(block, /*base_url_required=*/false);
  if (block.ok() && region.empty()) {
    block.Fail("", absl::StrCat(block.Path("region"), " (the WattTime region, e.g. CAISO_NORTH) is required"));
  }
  block.String("username", &spec->username, /*required=*/true);
  ReadSecretSource(block, "password", "password_env", "password_file", &spec->password_env, &spec->password_file);
  return spec;
}

nlohmann::json WattTimeSpec::Render() const {
  nlohmann::json j;
  web.Render(j);
  j["username"] = username;
  if (!password_env.empty()) j["password_env"] = password_env;
  if (!password_file.empty()) j["password_file"] = password_file;
  return j;
}

absl::StatusOr<std::unique_ptr<IntensityProvider>> WattTimeSpec::Build(const ProviderContext& context) const {
  auto password = ReadSecret(password_env, password_file);
  if (!password.ok()) return password.status();
  return MakeWattTimeProvider(web.Options(context), region, username, *std::move(password));
}

}  // namespace carbon::telemetry
