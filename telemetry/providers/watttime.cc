#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "telemetry/providers/kinds.h"
#include "telemetry/providers/web_provider.h"

namespace carbon::telemetry {
namespace {

using nlohmann::json;

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

}  // namespace

std::unique_ptr<IntensityProvider> MakeWattTimeProvider(WebProviderOptions web, std::string region,
                                                        std::string username, std::string password) {
  if (web.base_url.empty()) web.base_url = "https://api.watttime.org";
  return std::make_unique<WattTimeProvider>(std::move(web), std::move(region), std::move(username),
                                            std::move(password));
}

absl::Status ParseWattTimeReply(const nlohmann::json& doc) { return WattTimeProvider::Points(doc, "watttime").status(); }

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
