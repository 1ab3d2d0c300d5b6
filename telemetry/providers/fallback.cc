#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/string_view_compat.h"
#include "spdlog/spdlog.h"
#include "telemetry/http_providers.h"
#include "telemetry/providers/kinds.h"

namespace carbon::telemetry {

FallbackProvider::FallbackProvider(std::vector<std::unique_ptr<IntensityProvider>> chain)
    : chain_(std::move(chain)) {}

std::string_view FallbackProvider::source() const { return chain_[active_]->source(); }

absl::Time FallbackProvider::Now() const { return chain_[active_]->Now(); }

absl::StatusOr<IntensityReading> FallbackProvider::Latest() {
  std::vector<std::string> errors;
  for (size_t i = 0; i < chain_.size(); ++i) {
    auto r = chain_[i]->Latest();
    if (r.ok()) {
      if (i != active_) {
        spdlog::warn("event=provider_switch from={} to={}", chain_[active_]->source(), chain_[i]->source());
        active_ = i;
      }
      return r;
    }
    errors.push_back(absl::StrCat(ToAbsl(chain_[i]->kind()), ": ", r.status().message()));
  }
  return absl::UnavailableError(absl::StrCat("every provider failed: ", absl::StrJoin(errors, "; ")));
}

absl::StatusOr<std::vector<IntensityReading>> FallbackProvider::Forecast(absl::Time from, absl::Time to) {
  return chain_[active_]->Forecast(from, to);
}

absl::StatusOr<std::vector<IntensityReading>> FallbackProvider::History(absl::Time from, absl::Time to) {
  absl::Status last;
  for (auto& p : chain_) {
    auto h = p->History(from, to);
    if (h.ok() && !h->empty()) return h;
    if (!h.ok()) last = h.status();
  }
  if (!last.ok()) return last;
  return std::vector<IntensityReading>{};
}

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
