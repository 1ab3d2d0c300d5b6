#pragma once

// The provider kinds registry.cc lists: per kind, its reader, the spec it reads (public, so that
// code and tests can also configure a provider without YAML) and, for web providers, the reply
// parsers the fuzz harness runs.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "telemetry/http_providers.h"
#include "telemetry/providers/provider_spec.h"
#include "telemetry/providers/web_spec.h"

namespace carbon::telemetry {

// static: one fixed value.
struct StaticSpec final : ProviderSpec {
  double gco2_per_kwh = 0;
  std::string_view kind() const override { return "static"; }
  nlohmann::json Render() const override;
  absl::StatusOr<std::unique_ptr<IntensityProvider>> Build(const ProviderContext&) const override;
};
std::unique_ptr<ProviderSpec> ReadStaticProvider(ConfigBlock& block, const std::string& region);
// A static provider of `gco2_per_kwh`, as code and tests configure one.
std::shared_ptr<const ProviderSpec> StaticIntensity(double gco2_per_kwh, std::string region = "");

// trace: a recorded CSV (or a directory of them) replayed on a clock of its own.
struct TraceSpec final : ProviderSpec {
  std::string path;  // a CSV file, or a directory whose *.csv files are read in name order
  std::string time_column, value_column;
  double speedup = 1;
  bool loop = true;
  std::optional<absl::Time> start;
  std::string_view kind() const override { return "trace"; }
  nlohmann::json Render() const override;
  absl::StatusOr<std::unique_ptr<IntensityProvider>> Build(const ProviderContext&) const override;
};
std::unique_ptr<ProviderSpec> ReadTraceProvider(ConfigBlock& block, const std::string& region);

// uk-carbon-intensity: the National Grid ESO Carbon Intensity API, national or one region.
struct UkCarbonIntensitySpec final : ProviderSpec {
  WebSpec web;
  int region_id = 0;     // 1-17, or 0 for national (or with postcode)
  std::string postcode;  // outward postcode, e.g. BS1
  std::string_view kind() const override { return "uk-carbon-intensity"; }
  nlohmann::json Render() const override;
  absl::StatusOr<std::unique_ptr<IntensityProvider>> Build(const ProviderContext&) const override;
};
std::unique_ptr<ProviderSpec> ReadUkCarbonIntensityProvider(ConfigBlock& block, const std::string& region);
absl::Status ParseUkCarbonIntensityReply(const nlohmann::json& doc);

// electricity-maps: Electricity Maps API v3 for one zone, with a token.
struct ElectricityMapsSpec final : ProviderSpec {
  WebSpec web;
  std::string zone;
  std::string token_env, token_file;
  std::string_view kind() const override { return "electricity-maps"; }
  nlohmann::json Render() const override;
  absl::StatusOr<std::unique_ptr<IntensityProvider>> Build(const ProviderContext&) const override;
};
std::unique_ptr<ProviderSpec> ReadElectricityMapsProvider(ConfigBlock& block, const std::string& region);
absl::Status ParseElectricityMapsReply(const nlohmann::json& doc);

// watttime: WattTime API v3 for `region`, logged in with a user name and password.
struct WattTimeSpec final : ProviderSpec {
  WebSpec web;
  std::string username;
  std::string password_env, password_file;
  std::string_view kind() const override { return "watttime"; }
  nlohmann::json Render() const override;
  absl::StatusOr<std::unique_ptr<IntensityProvider>> Build(const ProviderContext&) const override;
};
std::unique_ptr<ProviderSpec> ReadWattTimeProvider(ConfigBlock& block, const std::string& region);
absl::Status ParseWattTimeReply(const nlohmann::json& doc);

// carbon-aware-sdk: a Green Software Foundation Carbon Aware SDK Web API for one location.
struct CarbonAwareSdkSpec final : ProviderSpec {
  WebSpec web;
  std::string location;
  std::string_view kind() const override { return "carbon-aware-sdk"; }
  nlohmann::json Render() const override;
  absl::StatusOr<std::unique_ptr<IntensityProvider>> Build(const ProviderContext&) const override;
};
std::unique_ptr<ProviderSpec> ReadCarbonAwareSdkProvider(ConfigBlock& block, const std::string& region);
absl::Status ParseCarbonAwareSdkReply(const nlohmann::json& doc);

// fallback: members tried in order (none of them a fallback itself).
struct FallbackSpec final : ProviderSpec {
  std::vector<std::shared_ptr<const ProviderSpec>> members;
  std::string_view kind() const override { return "fallback"; }
  nlohmann::json Render() const override;
  absl::StatusOr<std::unique_ptr<IntensityProvider>> Build(const ProviderContext&) const override;
};
std::unique_ptr<ProviderSpec> ReadFallbackProvider(ConfigBlock& block, const std::string& region);

}  // namespace carbon::telemetry
