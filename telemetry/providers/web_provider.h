#pragma once

// What the web providers share: a GET of a JSON document with HTTP and JSON errors turned into
// statuses, secrets redacted from messages, and the plausibility checks of readings. Each web
// provider is one file in this folder, deriving from WebProvider.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/string_view_compat.h"
#include "telemetry/http_client.h"
#include "telemetry/http_providers.h"
#include "telemetry/provider_json.h"

namespace carbon::telemetry {

// `t` as the services want it in URLs.
inline std::string Iso(absl::Time t, const char* format = "%Y-%m-%dT%H:%M:%SZ") {
  return absl::FormatTime(format, t, absl::UTCTimeZone());
}

// Shared plumbing: GET a JSON document, with status and JSON errors turned into statuses.
class WebProvider : public IntensityProvider {
 public:
  explicit WebProvider(WebProviderOptions web);
  absl::Time Now() const override { return web_.clock(); }

 protected:
  // The body of a 2xx response; `response_out` (optional) sees the response either way.
  absl::StatusOr<nlohmann::json> GetJson(const std::string& path, const std::vector<std::pair<std::string, std::string>>& headers,
                               HttpResponse* response_out = nullptr, const std::string& basic_auth = "") {
    HttpRequest request{base_ + path, headers, basic_auth};
    request.headers.emplace_back("Accept", "application/json");
    auto json = GetJsonUnredacted(request, response_out);
    if (!json.ok()) return RedactSecrets(json.status(), request);
    return json;
  }

  absl::StatusOr<nlohmann::json> GetJsonUnredacted(const HttpRequest& request, HttpResponse* response_out) {
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

}  // namespace carbon::telemetry
