#include "absl/strings/str_cat.h"
#include "telemetry/providers/kinds.h"
#include "telemetry/providers/web_provider.h"

namespace carbon::telemetry {
namespace {

using nlohmann::json;

class UkCarbonIntensityProvider final : public WebProvider {
 public:
  UkCarbonIntensityProvider(WebProviderOptions web, UkCarbonIntensityOptions uk)
      : WebProvider(std::move(web)), uk_(std::move(uk)) {}
  std::string_view kind() const override { return "uk-carbon-intensity"; }

  absl::StatusOr<IntensityReading> Latest() override {
    const std::string path = regional() ? RegionalPath("/regional") : "/intensity";
    auto doc = GetJson(path, {});
    if (!doc.ok()) return doc.status();
    auto points = Points(*doc, kind_name(path), regional());
    if (!points.ok()) return points.status();
    if (points->empty()) return absl::UnavailableError(absl::StrCat(kind_name(path), ": no half-hour in the reply"));
    return Checked(points->back(), kind_name(path));
  }

  absl::StatusOr<std::vector<IntensityReading>> History(absl::Time from, absl::Time to) override {
    const std::string range = absl::StrCat("/", Iso(from, "%Y-%m-%dT%H:%MZ"), "/", Iso(to, "%Y-%m-%dT%H:%MZ"));
    const std::string path =
        regional() ? absl::StrCat("/regional/intensity", range, RegionalPath("")) : absl::StrCat("/intensity", range);
    auto doc = GetJson(path, {});
    if (!doc.ok()) return doc.status();
    auto points = Points(*doc, kind_name(path), regional());
    if (!points.ok()) return points.status();
    return Plausible(*std::move(points), to - from + absl::Hours(1));
  }

  absl::StatusOr<std::vector<IntensityReading>> Forecast(absl::Time from, absl::Time to) override {
    // fw48h covers any horizon up to two days; points past `to` are dropped.
    const std::string start = absl::StrCat("/", Iso(from, "%Y-%m-%dT%H:%MZ"), "/fw48h");
    const std::string path =
        regional() ? absl::StrCat("/regional/intensity", start, RegionalPath("")) : absl::StrCat("/intensity", start);
    auto doc = GetJson(path, {});
    if (!doc.ok()) return doc.status();
    auto points = Points(*doc, kind_name(path), regional(), /*forecast=*/true);
    if (!points.ok()) return points.status();
    return PlausibleForecast(*std::move(points), from - absl::Minutes(30), to);
  }

 private:
  bool regional() const { return uk_.region_id != 0 || !uk_.postcode.empty(); }
  std::string RegionalPath(const std::string& prefix) const {
    return uk_.postcode.empty() ? absl::StrCat(prefix, "/regionid/", uk_.region_id)
                                : absl::StrCat(prefix, "/postcode/", UrlEscape(uk_.postcode));
  }
  std::string kind_name(const std::string& path) const { return absl::StrCat(ToAbsl(kind()), " ", path); }

 public:
  // Half-hours of a national reply ({"data":[{from,to,intensity}]}) or a regional one
  // ({"data":[{regionid,…,"data":[…]}]}, where the outer data is sometimes an object).
  static absl::StatusOr<std::vector<IntensityReading>> Points(const json& doc, const std::string& what,
                                                              bool regional, bool forecast = false) {
    if (!doc.is_object() || !doc.contains("data")) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": reply has no \"data\""));
    }
    json data = doc["data"];
    if (regional) {
      const json region = data.is_array() ? (data.empty() ? json() : data[0]) : data;
      if (!region.is_object() || !region.contains("data")) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": regional reply has no region data"));
      }
      data = region["data"];
    }
    if (!data.is_array()) return absl::InvalidArgumentError(absl::StrCat(what, ": \"data\" is not a list"));
    std::vector<IntensityReading> out;
    for (const json& period : data) {
      if (!period.is_object() || !period.contains("from") || !period["from"].is_string() ||
          !period.contains("intensity") || !period["intensity"].is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": a half-hour lacks \"from\" or \"intensity\""));
      }
      const auto at = ParseTimestamp(period["from"].get<std::string>());
      if (!at) return absl::InvalidArgumentError(absl::StrCat(what, ": cannot read time ", period["from"].dump()));
      const json& intensity = period["intensity"];
      // National periods carry `actual` once measured; until then (and always, regionally) the forecast.
      std::optional<double> value =
          !forecast && intensity.contains("actual") ? NumberAt(intensity["actual"]) : std::nullopt;
      if (!value && intensity.contains("forecast")) value = NumberAt(intensity["forecast"]);
      if (!value) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": half-hour ", period["from"].dump(),
                                                       " has neither actual nor forecast as a number"));
      }
      out.push_back({*value, *at});
    }
    return out;
  }

 private:
  UkCarbonIntensityOptions uk_;
};

}  // namespace

std::unique_ptr<IntensityProvider> MakeUkCarbonIntensityProvider(WebProviderOptions web,
                                                                 UkCarbonIntensityOptions uk) {
  if (web.base_url.empty()) web.base_url = "https://api.carbonintensity.org.uk";
  return std::make_unique<UkCarbonIntensityProvider>(std::move(web), std::move(uk));
}

absl::Status ParseUkCarbonIntensityReply(const nlohmann::json& doc) {
  absl::Status last;
  for (bool regional : {false, true}) {
    for (bool forecast : {false, true}) {
      last.Update(UkCarbonIntensityProvider::Points(doc, "uk-carbon-intensity", regional, forecast).status());
    }
  }
  return last;
}

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
