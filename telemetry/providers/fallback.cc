#include "absl/strings/str_cat.h"
#include "telemetry/providers/kinds.h"

namespace carbon::telemetry {

std::unique_ptr<ProviderSpec> ReadFallbackProvider(ConfigBlock& block, const std::string&) {
  auto spec = std::make_unique<FallbackSpec>();
  std::vector<std::unique_ptr<ConfigBlock>> members;
  if (!block.Blocks("providers", &members, /*required=*/true)) return spec;
  for (auto& member : members) {
    std::unique_ptr<ProviderSpec> p = ReadProviderSpec(*member, /*nested=*/true);
    if (absl::Status s = member->Finish(); !s.ok()) {
      block.FailWith(s);
      return spec;
    }
    spec->members.push_back(std::move(p));
  }
  return spec;
}

nlohmann::json FallbackSpec::Render() const {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& m : members) {
    nlohmann::json j = m->Render();
    j["provider"] = m->kind();
    if (!m->region.empty()) j["region"] = m->region;
    list.push_back(std::move(j));
  }
  return {{"providers", list}};
}

absl::StatusOr<std::unique_ptr<IntensityProvider>> FallbackSpec::Build(const ProviderContext& context) const {
  std::vector<std::unique_ptr<IntensityProvider>> chain;
  for (const auto& m : members) {
    auto p = m->Build(context);
    if (!p.ok()) return p.status();
    chain.push_back(*std::move(p));
  }
  return std::unique_ptr<IntensityProvider>(std::make_unique<FallbackProvider>(std::move(chain)));
}

}  // namespace carbon::telemetry
