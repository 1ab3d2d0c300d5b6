#include "telemetry/providers/kinds.h"
#include "telemetry/providers/web_provider.h"

namespace carbon::telemetry {
namespace {

using nlohmann::json;

class ElectricityMapsProvider final : public WebProvider {
 public:
  ElectricityMapsProvider(WebProviderOptions web, std::string zone, std::string token)
      : WebProvider(std::move(web)), zone_(std::move(zone)), token_(std::move(token)) {}
  std::string_view kind() const override { return "electricity-maps"; }

  absl::StatusOr<IntensityReading> Latest() override {
    const std::string what = absl::StrCat(ToAbsl(kind()), " latest");
    auto doc = GetJson(absl::StrCat("/v3/carbon-intensity/latest?zone=", UrlEscape(zone_)), Auth());
    if (!doc.ok()) return doc.status();
    auto r = Point(*doc, what);
    if (!r.ok()) return r.status();
    return Checked(*r, what);
  }

  absl::StatusOr<std::vector<IntensityReading>> History(absl::Time from, absl::Time to) override {
    const std::string what = absl::StrCat(ToAbsl(kind()), " history");
    auto doc = GetJson(absl::StrCat("/v3/carbon-intensity/history?zone=", UrlEscape(zone_)), Auth());
    if (!doc.ok()) return doc.status();
    auto points = PointsIn(*doc, "history", what);
    if (!points.ok()) return points.status();
    std::erase_if(*points, [&](const IntensityReading& r) { return r.at < from || r.at > to; });
    return Plausible(*std::move(points), to - from + absl::Hours(1));
  }

  absl::StatusOr<std::vector<IntensityReading>> Forecast(absl::Time from, absl::Time to) override {
    const std::string what = absl::StrCat(ToAbsl(kind()), " forecast");
    auto doc = GetJson(absl::StrCat("/v3/carbon-intensity/forecast?zone=", UrlEscape(zone_)), Auth());
    if (!doc.ok()) return doc.status();
    auto points = PointsIn(*doc, "forecast", what);
    if (!points.ok()) return points.status();
    return PlausibleForecast(*std::move(points), from, to);
  }

 private:
  std::vector<std::pair<std::string, std::string>> Auth() const { return {{"auth-token", token_}}; }

 public:
  // The readable points of the list under `key` ("history", "forecast"); points whose intensity is
  // null (the service has none for that hour) or whose time cannot be read are skipped.
  static absl::StatusOr<std::vector<IntensityReading>> PointsIn(const json& doc, const char* key,
                                                                const std::string& what) {
    if (!doc.is_object() || !doc.contains(key) || !doc[key].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": reply has no \"", key, "\" list"));
    }
    std::vector<IntensityReading> out;
    for (const json& point : doc[key]) {
      if (auto r = Point(point, what); r.ok()) out.push_back(*r);
    }
    return out;
  }

  static absl::StatusOr<IntensityReading> Point(const json& p, const std::string& what) {
    if (!p.is_object()) return absl::InvalidArgumentError(absl::StrCat(what, ": reply is not an object"));
    const auto value = p.contains("carbonIntensity") ? NumberAt(p["carbonIntensity"]) : std::nullopt;
    if (!value) return absl::UnavailableError(absl::StrCat(what, ": carbonIntensity is missing or not a number"));
    const auto at = p.contains("datetime") && p["datetime"].is_string() ? ParseTimestamp(p["datetime"].get<std::string>())
                                                                        : std::nullopt;
    if (!at) return absl::InvalidArgumentError(absl::StrCat(what, ": datetime is missing or unreadable"));
    return IntensityReading{*value, *at};
  }

 private:
  std::string zone_;
  std::string token_;
};

}  // namespace

std::unique_ptr<IntensityProvider> MakeElectricityMapsProvider(WebProviderOptions web, std::string zone,
                                                               std::string token) {
  if (web.base_url.empty()) web.base_url = "https://api.electricitymap.org";
  return std::make_unique<ElectricityMapsProvider>(std::move(web), std::move(zone), std::move(token));
}

absl::Status ParseElectricityMapsReply(const nlohmann::json& doc) {
  absl::Status last = ElectricityMapsProvider::Point(doc, "electricity-maps").status();
  last.Update(ElectricityMapsProvider::PointsIn(doc, "history", "electricity-maps").status());
  last.Update(ElectricityMapsProvider::PointsIn(doc, "forecast", "electricity-maps").status());
  return last;
}

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
