#include "telemetry/http_providers.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/string_view_compat.h"
#include "spdlog/spdlog.h"
#include "telemetry/provider_json.h"

namespace carbon::telemetry {
namespace {

using nlohmann::json;

std::string TrimSlash(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

std::string Iso(absl::Time t, const char* format = "%Y-%m-%dT%H:%M:%SZ") {
  return absl::FormatTime(format, t, absl::UTCTimeZone());
}

// Shared plumbing: GET a JSON document, with status and JSON errors turned into statuses.
class WebProvider : public IntensityProvider {
 public:
  explicit WebProvider(WebProviderOptions web)
      : web_(std::move(web)), base_(TrimSlash(web_.base_url)), http_(web_.http) {}
  absl::Time Now() const override { return web_.clock(); }

 protected:
  // The body of a 2xx response; `response_out` (optional) sees the response either way.
  absl::StatusOr<json> GetJson(const std::string& path, const std::vector<std::pair<std::string, std::string>>& headers,
                               HttpResponse* response_out = nullptr, const std::string& basic_auth = "") {
    HttpRequest request{base_ + path, headers, basic_auth};
    request.headers.emplace_back("Accept", "application/json");
    auto json = GetJsonUnredacted(request, response_out);
    if (!json.ok()) return RedactSecrets(json.status(), request);
    return json;
  }

  absl::StatusOr<json> GetJsonUnredacted(const HttpRequest& request, HttpResponse* response_out) {
    auto response = http_.Get(request);
    const std::string what = absl::StrCat(ToAbsl(kind()), " ", RedactUrl(request.url));
    if (!response.ok()) return absl::Status(response.status().code(), absl::StrCat(ToAbsl(kind()), ": ", response.status().message()));
    if (response_out != nullptr) *response_out = *response;
    if (response->status < 200 || response->status > 299) return HttpError(what, *response);
    if (response->status == 204 || response->body.empty()) {
      return absl::UnavailableError(absl::StrCat(what, ": no data (HTTP ", response->status, ")"));
    }
    return ParseJsonBody(response->body, what);
  }

  absl::StatusOr<IntensityReading> Checked(IntensityReading r, const std::string& what) const {
    if (absl::Status s = CheckReading(r, Now(), web_.max_age, what); !s.ok()) return s;
    return r;
  }

  // Keeps the readings of a history that pass the checks, oldest first; a bad point is skipped,
  // not fatal, since the rest still fills the window.
  std::vector<IntensityReading> Plausible(std::vector<IntensityReading> in, absl::Duration max_age) const {
    std::vector<IntensityReading> out;
    for (const auto& r : in) {
      if (CheckReading(r, Now(), max_age, "history").ok()) out.push_back(r);
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.at < b.at; });
    return out;
  }

  // Forecast points inside [from, to] with plausible values, oldest first.
  static std::vector<IntensityReading> PlausibleForecast(std::vector<IntensityReading> in, absl::Time from,
                                                         absl::Time to) {
    std::vector<IntensityReading> out;
    for (const auto& r : in) {
      if (r.at >= from && r.at <= to && IsPlausibleIntensity(r.gco2_per_kwh)) {
        out.push_back(r);
      }
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.at < b.at; });
    return out;
  }

  WebProviderOptions web_;
  std::string base_;
  HttpClient http_;
};

// --- UK Carbon Intensity API ---------------------------------------------------------------------

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

// --- Electricity Maps -----------------------------------------------------------------------------

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

// --- WattTime -------------------------------------------------------------------------------------

class WattTimeProvider final : public WebProvider {
 public:
  // WattTime tokens last 30 minutes; renewing a little early avoids a failed call.
  static constexpr absl::Duration kTokenLifetime = absl::Minutes(25);

  WattTimeProvider(WebProviderOptions web, std::string region, std::string username, std::string password)
      : WebProvider(std::move(web)),
        region_(std::move(region)),
        credentials_(absl::StrCat(username, ":", password)) {}
  std::string_view kind() const override { return "watttime"; }

  absl::StatusOr<IntensityReading> Latest() override {
    const std::string what = absl::StrCat(ToAbsl(kind()), " forecast");
    auto doc = Authorized(absl::StrCat("/v3/forecast?region=", UrlEscape(region_),
                                       "&signal_type=co2_moer&horizon_hours=0"));
    if (!doc.ok()) return doc.status();
    auto points = Points(*doc, what);
    if (!points.ok()) return points.status();
    if (points->empty()) return absl::UnavailableError(absl::StrCat(what, ": no data points"));
    return Checked(points->front(), what);
  }

  absl::StatusOr<std::vector<IntensityReading>> History(absl::Time from, absl::Time to) override {
    const std::string what = absl::StrCat(ToAbsl(kind()), " historical");
    auto doc = Authorized(absl::StrCat("/v3/historical?region=", UrlEscape(region_), "&signal_type=co2_moer&start=",
                                       UrlEscape(Iso(from)), "&end=", UrlEscape(Iso(to))));
    if (!doc.ok()) return doc.status();
    auto points = Points(*doc, what);
    if (!points.ok()) return points.status();
    return Plausible(*std::move(points), to - from + absl::Hours(1));
  }

  absl::StatusOr<std::vector<IntensityReading>> Forecast(absl::Time from, absl::Time to) override {
    const int hours = static_cast<int>(std::clamp<int64_t>(absl::ToInt64Hours(to - from) + 1, 1, 72));
    auto doc = Authorized(absl::StrCat("/v3/forecast?region=", UrlEscape(region_),
                                       "&signal_type=co2_moer&horizon_hours=", hours));
    if (!doc.ok()) return doc.status();
    auto points = Points(*doc, absl::StrCat(ToAbsl(kind()), " forecast"));
    if (!points.ok()) return points.status();
    return PlausibleForecast(*std::move(points), from - absl::Minutes(5), to);
  }

 private:
  absl::Status Login() {
    auto doc = GetJson("/login", {}, nullptr, credentials_);
    if (!doc.ok()) return absl::Status(doc.status().code(), absl::StrCat("login failed: ", doc.status().message()));
    if (!doc->is_object() || !doc->contains("token") || !(*doc)["token"].is_string()) {
      return absl::InvalidArgumentError("watttime login: reply has no token");
    }
    token_ = (*doc)["token"].get<std::string>();
    token_since_ = Now();
    return absl::OkStatus();
  }

  // A GET with the bearer token; logs in first when there is none or it is old, and once more
  // when the service says 401.
  absl::StatusOr<json> Authorized(const std::string& path) {
    if (token_.empty() || Now() - token_since_ > kTokenLifetime) {
      if (absl::Status s = Login(); !s.ok()) return s;
    }
    auto doc = GetJson(path, {{"Authorization", absl::StrCat("Bearer ", token_)}});
    if (doc.status().code() == absl::StatusCode::kUnauthenticated) {
      spdlog::info("event=provider_relogin provider=watttime reason=\"HTTP 401\"");
      token_.clear();
      if (absl::Status s = Login(); !s.ok()) return s;
      doc = GetJson(path, {{"Authorization", absl::StrCat("Bearer ", token_)}});
    }
    return doc;
  }

 public:
  static absl::StatusOr<std::vector<IntensityReading>> Points(const json& doc, const std::string& what) {
    if (!doc.is_object() || !doc.contains("data") || !doc["data"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": reply has no \"data\" list"));
    }
    if (doc.contains("meta") && doc["meta"].is_object() && doc["meta"].contains("units") &&
        doc["meta"]["units"] != "lbs_co2_per_mwh") {
      return absl::InvalidArgumentError(absl::StrCat(what, ": units are ", doc["meta"]["units"].dump(),
                                                     ", expected \"lbs_co2_per_mwh\""));
    }
    std::vector<IntensityReading> out;
    for (const json& p : doc["data"]) {
      const auto value = p.is_object() && p.contains("value") ? NumberAt(p["value"]) : std::nullopt;
      const auto at = p.is_object() && p.contains("point_time") && p["point_time"].is_string()
                          ? ParseTimestamp(p["point_time"].get<std::string>())
                          : std::nullopt;
      if (!value || !at) return absl::InvalidArgumentError(absl::StrCat(what, ": a data point lacks value or point_time"));
      out.push_back({*value * kGramsPerKwhPerLbsPerMwh, *at});
    }
    return out;
  }

 private:
  std::string region_;
  std::string credentials_;
  std::string token_;
  absl::Time token_since_;
};

// --- Carbon Aware SDK -----------------------------------------------------------------------------

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

absl::Status ParseEveryProviderReply(const std::string& body) {
  auto doc = ParseJsonBody(body, "fuzz");
  if (!doc.ok()) return doc.status();
  absl::Status last;
  for (bool regional : {false, true}) {
    for (bool forecast : {false, true}) {
      last.Update(UkCarbonIntensityProvider::Points(*doc, "uk", regional, forecast).status());
    }
  }
  last.Update(ElectricityMapsProvider::Point(*doc, "electricity-maps").status());
  last.Update(ElectricityMapsProvider::PointsIn(*doc, "history", "electricity-maps").status());
  last.Update(ElectricityMapsProvider::PointsIn(*doc, "forecast", "electricity-maps").status());
  last.Update(WattTimeProvider::Points(*doc, "watttime").status());
  last.Update(CarbonAwareSdkProvider::ByLocationPoints(*doc, "carbon-aware-sdk").status());
  last.Update(CarbonAwareSdkProvider::ForecastPoints(*doc, "carbon-aware-sdk").status());
  return last;
}

std::unique_ptr<IntensityProvider> MakeUkCarbonIntensityProvider(WebProviderOptions web,
                                                                 UkCarbonIntensityOptions uk) {
  if (web.base_url.empty()) web.base_url = "https://api.carbonintensity.org.uk";
  return std::make_unique<UkCarbonIntensityProvider>(std::move(web), std::move(uk));
}

std::unique_ptr<IntensityProvider> MakeElectricityMapsProvider(WebProviderOptions web, std::string zone,
                                                               std::string token) {
  if (web.base_url.empty()) web.base_url = "https://api.electricitymap.org";
  return std::make_unique<ElectricityMapsProvider>(std::move(web), std::move(zone), std::move(token));
}

std::unique_ptr<IntensityProvider> MakeWattTimeProvider(WebProviderOptions web, std::string region,
                                                        std::string username, std::string password) {
  if (web.base_url.empty()) web.base_url = "https://api.watttime.org";
  return std::make_unique<WattTimeProvider>(std::move(web), std::move(region), std::move(username),
                                            std::move(password));
}

std::unique_ptr<IntensityProvider> MakeCarbonAwareSdkProvider(WebProviderOptions web, std::string location) {
  return std::make_unique<CarbonAwareSdkProvider>(std::move(web), std::move(location));
}

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

}  // namespace carbon::telemetry
