#include "telemetry/providers/kinds.h"
#include "telemetry/providers/web_provider.h"

namespace carbon::telemetry {
namespace {

using nlohmann::json;

class CarbonAwareSdkProvider final : public WebProvider {
 public:
  CarbonAwareSdkProvider(WebProviderOptions web, std::string location)
      : WebProvider(std::move(web)), location_(std::move(location)) {}
  std::string_view kind() const override { return "carbon-aware-sdk"; }

  absl::StatusOr<IntensityReading> Latest() override {
    auto points = ByLocation(Now() - absl::Hours(1), Now());
    if (!points.ok()) return points.status();
    if (points->empty()) return absl::UnavailableError(absl::StrCat(ToAbsl(kind()), ": no emissions data in the last hour"));
    return Checked(points->back(), absl::StrCat(ToAbsl(kind()), " bylocation"));
  }

  absl::StatusOr<std::vector<IntensityReading>> History(absl::Time from, absl::Time to) override {
    auto points = ByLocation(from, to);
    if (!points.ok()) return points.status();
    return Plausible(*std::move(points), to - from + absl::Hours(1));
  }

  absl::StatusOr<std::vector<IntensityReading>> Forecast(absl::Time from, absl::Time to) override {
    const std::string what = absl::StrCat(ToAbsl(kind()), " forecasts/current");
    auto doc = GetJson(absl::StrCat("/emissions/forecasts/current?location=", UrlEscape(location_),
                                    "&dataStartAt=", UrlEscape(Iso(from)), "&dataEndAt=", UrlEscape(Iso(to))),
                       {});
    if (!doc.ok()) return doc.status();
    auto points = ForecastPoints(*doc, what);
    if (!points.ok()) return points.status();
    return PlausibleForecast(*std::move(points), from, to);
  }

  // The forecast points of a /emissions/forecasts/current reply ([{"forecastData": [{timestamp,
  // value}, …]}]); points without a readable time or value are skipped.
  static absl::StatusOr<std::vector<IntensityReading>> ForecastPoints(const json& doc, const std::string& what) {
    if (!doc.is_array() || doc.empty() || !doc[0].is_object() || !doc[0].contains("forecastData") ||
        !doc[0]["forecastData"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": reply has no forecastData"));
    }
    std::vector<IntensityReading> out;
    for (const json& p : doc[0]["forecastData"]) {
      const auto value = p.is_object() && p.contains("value") ? NumberAt(p["value"]) : std::nullopt;
      const auto at = p.is_object() && p.contains("timestamp") && p["timestamp"].is_string()
                          ? ParseTimestamp(p["timestamp"].get<std::string>())
                          : std::nullopt;
      if (value && at) out.push_back({*value, *at});
    }
    return out;
  }

  // The entries of a /emissions/bylocation reply ([{location, time, rating, duration}, …]), oldest first.
  static absl::StatusOr<std::vector<IntensityReading>> ByLocationPoints(const json& doc, const std::string& what) {
    if (!doc.is_array()) return absl::InvalidArgumentError(absl::StrCat(what, ": reply is not a list"));
    std::vector<IntensityReading> out;
    for (const json& p : doc) {
      const auto value = p.is_object() && p.contains("rating") ? NumberAt(p["rating"]) : std::nullopt;
      const auto at = p.is_object() && p.contains("time") && p["time"].is_string()
                          ? ParseTimestamp(p["time"].get<std::string>())
                          : std::nullopt;
      if (!value || !at) return absl::InvalidArgumentError(absl::StrCat(what, ": an entry lacks rating or time"));
      out.push_back({*value, *at});
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.at < b.at; });
    return out;
  }

 private:
  absl::StatusOr<std::vector<IntensityReading>> ByLocation(absl::Time from, absl::Time to) {
    const std::string what = absl::StrCat(ToAbsl(kind()), " bylocation");
    auto doc = GetJson(absl::StrCat("/emissions/bylocation?location=", UrlEscape(location_), "&time=",
                                    UrlEscape(Iso(from)), "&toTime=", UrlEscape(Iso(to))),
                       {});
    if (!doc.ok()) return doc.status();
    return ByLocationPoints(*doc, what);
  }

  std::string location_;
};

}  // namespace

std::unique_ptr<IntensityProvider> MakeCarbonAwareSdkProvider(WebProviderOptions web, std::string location) {
  return std::make_unique<CarbonAwareSdkProvider>(std::move(web), std::move(location));
}

absl::Status ParseCarbonAwareSdkReply(const nlohmann::json& doc) {
  absl::Status last = CarbonAwareSdkProvider::ByLocationPoints(doc, "carbon-aware-sdk").status();
  last.Update(CarbonAwareSdkProvider::ForecastPoints(doc, "carbon-aware-sdk").status());
  return last;
}

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
