// The web intensity providers against a real HTTP server on loopback serving recorded responses
// (tests/fixtures/) and every kind of bad reply, then the publisher built on them.
#include <httplib.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "telemetry/providers/kinds.h"
#include "sidecar/admin_endpoints.h"
#include "sidecar/routing.h"
#include "telemetry/http_providers.h"
#include "telemetry/provider_json.h"

namespace carbon {
namespace {

using ::testing::HasSubstr;
using telemetry::IntensityProvider;
using telemetry::WebProviderOptions;

std::string Fixture(const std::string& name) {
  std::ifstream in(std::string(CARBON_SOURCE_DIR) + "/tests/fixtures/" + name);
  EXPECT_TRUE(in) << name;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::Time At(const char* rfc3339) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << err;
  return t;
}

struct Reply {
  Reply(int status_code = 200, std::string body_text = "", std::string type = "application/json",
        std::vector<std::pair<std::string, std::string>> extra_headers = {},
        absl::Duration delay_before = absl::ZeroDuration())
      : status(status_code),
        body(std::move(body_text)),
        content_type(std::move(type)),
        headers(std::move(extra_headers)),
        delay(delay_before) {}
  int status;
  std::string body;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;
  absl::Duration delay;
};

// A real HTTP server whose replies the test sets per path prefix; it records each request.
class FixtureServer {
 public:
  using Handler = std::function<Reply(const httplib::Request&)>;

  FixtureServer() {
    server_.Get(".*", [this](const httplib::Request& req, httplib::Response& res) {
      Handler handler;
      {
        absl::MutexLock lock(&mu_);
        requests_.push_back({req.path, req.get_header_value("Authorization"), req.get_header_value("auth-token"),
                             req.get_param_value("zone")});
        size_t best = 0;
        for (const auto& [prefix, h] : handlers_) {
          if (req.path.rfind(prefix, 0) == 0 && prefix.size() >= best) {
            best = prefix.size();
            handler = h;
          }
        }
      }
      Reply reply = handler ? handler(req) : Reply{404, "{\"error\":\"no fixture\"}"};
      if (reply.delay > absl::ZeroDuration()) absl::SleepFor(reply.delay);
      res.status = reply.status;
      for (const auto& [k, v] : reply.headers) res.set_header(k, v);
      res.set_content(reply.body, reply.content_type.c_str());
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FixtureServer() {
    server_.stop();
    thread_.join();
  }

  void On(const std::string& prefix, Handler handler) {
    absl::MutexLock lock(&mu_);
    handlers_[prefix] = std::move(handler);
  }
  void On(const std::string& prefix, Reply reply) {
    On(prefix, [reply](const httplib::Request&) { return reply; });
  }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }

  struct Seen {
    std::string path, authorization, auth_token, zone;
  };
  std::vector<Seen> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  absl::Mutex mu_;
  std::map<std::string, Handler> handlers_ ABSL_GUARDED_BY(mu_);
  std::vector<Seen> requests_ ABSL_GUARDED_BY(mu_);
};

class ProviderTest : public ::testing::Test {
 protected:
  WebProviderOptions Web(const char* now) {
    WebProviderOptions web;
    web.base_url = server_.url();
    web.http.timeout = absl::Milliseconds(500);
    web.http.connect_timeout = absl::Milliseconds(500);
    const absl::Time t = At(now);
    web.clock = [t] { return t; };
    return web;
  }
  std::unique_ptr<IntensityProvider> Uk(telemetry::UkCarbonIntensityOptions uk = {},
                                        const char* now = "2018-01-20T12:10:00Z") {
    return telemetry::MakeUkCarbonIntensityProvider(Web(now), uk);
  }

  FixtureServer server_;
};

TEST_F(ProviderTest, UkNationalReadsActual) {
  server_.On("/intensity", Reply{200, Fixture("uk-carbon-intensity/intensity.json")});
  auto r = Uk()->Latest();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->gco2_per_kwh, 263);
  EXPECT_EQ(r->at, At("2018-01-20T12:00:00Z"));
  EXPECT_EQ(server_.requests().back().path, "/intensity");
}

TEST_F(ProviderTest, UkNationalNullActualFallsBackToForecast) {
  server_.On("/intensity", Reply{200, Fixture("uk-carbon-intensity/intensity-actual-null.json")});
  auto r = Uk()->Latest();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->gco2_per_kwh, 148);
}

TEST_F(ProviderTest, UkRegionalByIdAndByPostcode) {
  server_.On("/regional/regionid/11", Reply{200, Fixture("uk-carbon-intensity/regional-11.json")});
  server_.On("/regional/postcode/BS1", Reply{200, Fixture("uk-carbon-intensity/regional-11.json")});
  auto by_id = Uk({11, ""})->Latest();
  ASSERT_TRUE(by_id.ok()) << by_id.status();
  EXPECT_EQ(by_id->gco2_per_kwh, 265);
  auto by_postcode = Uk({0, "BS1"})->Latest();
  ASSERT_TRUE(by_postcode.ok()) << by_postcode.status();
  EXPECT_EQ(by_postcode->gco2_per_kwh, 265);
}

TEST_F(ProviderTest, UkHistoryFillsTheWindowNationallyAndRegionally) {
  server_.On("/intensity/", Reply{200, Fixture("uk-carbon-intensity/intensity-range.json")});
  auto national = Uk()->History(At("2018-01-20T10:10:00Z"), At("2018-01-20T12:10:00Z"));
  ASSERT_TRUE(national.ok()) << national.status();
  ASSERT_EQ(national->size(), 3u);
  EXPECT_EQ((*national)[0].gco2_per_kwh, 317);
  EXPECT_EQ((*national)[2].gco2_per_kwh, 41);  // actual null: the forecast
  EXPECT_EQ(server_.requests().back().path, "/intensity/2018-01-20T10:10Z/2018-01-20T12:10Z");

  server_.On("/regional/intensity/", Reply{200, Fixture("uk-carbon-intensity/regional-range-11.json")});
  auto regional = Uk({11, ""})->History(At("2018-01-20T10:10:00Z"), At("2018-01-20T12:10:00Z"));
  ASSERT_TRUE(regional.ok()) << regional.status();
  ASSERT_EQ(regional->size(), 2u);
  EXPECT_EQ((*regional)[1].gco2_per_kwh, 90);
  EXPECT_EQ(server_.requests().back().path,
            "/regional/intensity/2018-01-20T10:10Z/2018-01-20T12:10Z/regionid/11");
}

TEST_F(ProviderTest, ElectricityMapsSendsTheTokenAndSkipsNullHistory) {
  const auto authorized = [](const std::string& fixture) {
    return [fixture](const httplib::Request& req) {
      if (req.get_header_value("auth-token") != "secret-token") return Reply{401, "{\"error\":\"bad token\"}"};
      return Reply{200, Fixture(fixture)};
    };
  };
  server_.On("/v3/carbon-intensity/latest", authorized("electricity-maps/latest.json"));
  server_.On("/v3/carbon-intensity/history", authorized("electricity-maps/history.json"));
  auto provider = telemetry::MakeElectricityMapsProvider(Web("2019-05-21T00:20:00Z"), "DE", "secret-token");
  auto r = provider->Latest();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->gco2_per_kwh, 322);
  EXPECT_EQ(server_.requests().back().zone, "DE");
  auto history = provider->History(At("2019-05-20T00:20:00Z"), At("2019-05-21T00:20:00Z"));
  ASSERT_TRUE(history.ok()) << history.status();
  ASSERT_EQ(history->size(), 2u);  // the null point is left out
  EXPECT_EQ((*history)[0].gco2_per_kwh, 340);

  auto wrong = telemetry::MakeElectricityMapsProvider(Web("2019-05-21T00:20:00Z"), "DE", "other");
  auto denied = wrong->Latest();
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(denied.status().message()), HasSubstr("HTTP 401"));
  EXPECT_THAT(std::string(denied.status().message()), ::testing::Not(HasSubstr("other")));  // no token in messages
}

TEST_F(ProviderTest, AServerThatEchoesTheTokenDoesNotPutItInTheError) {
  server_.On("/v3/carbon-intensity/latest", [](const httplib::Request& req) {
    return Reply{401, absl::StrCat("{\"error\":\"token ", req.get_header_value("auth-token"), " is not valid\"}")};
  });
  server_.On("/login", [](const httplib::Request& req) {
    return Reply{403, absl::StrCat("credentials ", req.get_header_value("Authorization"), " refused")};
  });
  auto maps = telemetry::MakeElectricityMapsProvider(Web("2019-05-21T00:20:00Z"), "DE", "leaky-token-123");
  auto denied = maps->Latest();
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(denied.status().message()), HasSubstr("token [redacted] is not valid"));
  EXPECT_THAT(std::string(denied.status().message()), ::testing::Not(HasSubstr("leaky")));

  auto watttime = telemetry::MakeWattTimeProvider(Web("2022-07-15T00:02:00Z"), "CAISO_NORTH", "user", "hunter22");
  auto refused = watttime->Latest();
  EXPECT_FALSE(refused.ok());
  // "Basic dXNlcjpodW50ZXIyMg==" is base64 of user:hunter22: the whole header value is a secret.
  EXPECT_THAT(std::string(refused.status().message()), ::testing::Not(HasSubstr("dXNlcjpodW50ZXIyMg")));
  EXPECT_THAT(std::string(refused.status().message()), ::testing::Not(HasSubstr("hunter22")));
}

TEST_F(ProviderTest, WattTimeLogsInConvertsUnitsAndLogsInAgainOn401) {
  int logins = 0;
  std::string current_token;
  absl::Mutex mu;
  server_.On("/login", [&](const httplib::Request& req) {
    absl::MutexLock lock(&mu);
    // Basic base64("user:pass")
    if (req.get_header_value("Authorization") != "Basic dXNlcjpwYXNz") return Reply{401, "{}"};
    ++logins;
    current_token = absl::StrCat("token-", logins);
    return Reply{200, absl::StrCat("{\"token\": \"", current_token, "\"}")};
  });
  server_.On("/v3/forecast", [&](const httplib::Request& req) {
    absl::MutexLock lock(&mu);
    if (req.get_header_value("Authorization") != "Bearer " + current_token) return Reply{401, "{}"};
    return Reply{200, Fixture("watttime/forecast.json")};
  });
  server_.On("/v3/historical", Reply{200, Fixture("watttime/historical.json")});
  auto provider = telemetry::MakeWattTimeProvider(Web("2022-07-15T00:02:00Z"), "CAISO_NORTH", "user", "pass");
  auto r = provider->Latest();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->gco2_per_kwh, 870 * 0.45359237);  // lbs CO2/MWh → g/kWh
  EXPECT_EQ(logins, 1);
  {
    absl::MutexLock lock(&mu);
    current_token = "rotated-by-the-server";  // the next call with the old token gets 401
  }
  r = provider->Latest();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(logins, 2);
  auto history = provider->History(At("2022-07-14T23:00:00Z"), At("2022-07-15T00:02:00Z"));
  ASSERT_TRUE(history.ok()) << history.status();
  ASSERT_EQ(history->size(), 2u);
  EXPECT_DOUBLE_EQ((*history)[0].gco2_per_kwh, 900 * 0.45359237);

  auto bad_login = telemetry::MakeWattTimeProvider(Web("2022-07-15T00:02:00Z"), "CAISO_NORTH", "user", "wrong");
  auto refused = bad_login->Latest();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("login failed"));
  EXPECT_THAT(std::string(refused.status().message()), ::testing::Not(HasSubstr("wrong")));
}

TEST_F(ProviderTest, WattTimeRefusesOtherUnits) {
  server_.On("/login", Reply{200, Fixture("watttime/login.json")});
  std::string percentile = Fixture("watttime/forecast.json");
  percentile.replace(percentile.find("lbs_co2_per_mwh"), 15, "percentile");
  server_.On("/v3/forecast", Reply{200, percentile});
  auto r = telemetry::MakeWattTimeProvider(Web("2022-07-15T00:02:00Z"), "CAISO_NORTH", "u", "p")->Latest();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("expected \"lbs_co2_per_mwh\""));
}

TEST_F(ProviderTest, CarbonAwareSdkTakesTheNewestEntry) {
  server_.On("/emissions/bylocation", Reply{200, Fixture("carbon-aware-sdk/bylocation.json")});
  auto provider = telemetry::MakeCarbonAwareSdkProvider(Web("2022-05-17T20:50:00Z"), "eastus");
  auto r = provider->Latest();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->gco2_per_kwh, 70);
  auto history = provider->History(At("2022-05-17T00:00:00Z"), At("2022-05-17T20:50:00Z"));
  ASSERT_TRUE(history.ok());
  EXPECT_EQ(history->size(), 2u);
  server_.On("/emissions/bylocation", Reply{204, ""});
  EXPECT_EQ(provider->Latest().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ProviderTest, ForecastsFromEveryWebProvider) {
  server_.On("/intensity/", Reply{200, Fixture("uk-carbon-intensity/forecast-fw48h.json")});
  auto uk = Uk()->Forecast(At("2018-01-20T12:10:00Z"), At("2018-01-21T12:10:00Z"));
  ASSERT_TRUE(uk.ok()) << uk.status();
  std::vector<double> values;
  for (const auto& r : *uk) values.push_back(r.gco2_per_kwh);
  // The current half-hour's forecast (not its actual), the next two, not the point past the horizon.
  EXPECT_THAT(values, ::testing::ElementsAre(266, 146, 148));
  EXPECT_EQ(server_.requests().back().path, "/intensity/2018-01-20T12:10Z/fw48h");

  server_.On("/v3/carbon-intensity/forecast", Reply{200, Fixture("electricity-maps/forecast.json")});
  auto em = telemetry::MakeElectricityMapsProvider(Web("2019-05-21T00:20:00Z"), "DE", "t")
                ->Forecast(At("2019-05-21T00:20:00Z"), At("2019-05-22T00:20:00Z"));
  ASSERT_TRUE(em.ok()) << em.status();
  EXPECT_EQ(em->size(), 2u);

  server_.On("/login", Reply{200, Fixture("watttime/login.json")});
  server_.On("/v3/forecast", Reply{200, Fixture("watttime/forecast.json")});
  auto wt = telemetry::MakeWattTimeProvider(Web("2022-07-15T00:00:00Z"), "CAISO_NORTH", "u", "p")
                ->Forecast(At("2022-07-15T00:00:00Z"), At("2022-07-16T00:00:00Z"));
  ASSERT_TRUE(wt.ok()) << wt.status();
  ASSERT_EQ(wt->size(), 2u);
  EXPECT_DOUBLE_EQ((*wt)[1].gco2_per_kwh, 860 * 0.45359237);

  server_.On("/emissions/forecasts/current", Reply{200, Fixture("carbon-aware-sdk/forecasts-current.json")});
  auto sdk = telemetry::MakeCarbonAwareSdkProvider(Web("2022-07-19T13:40:00Z"), "northeurope")
                 ->Forecast(At("2022-07-19T13:40:00Z"), At("2022-07-20T13:40:00Z"));
  ASSERT_TRUE(sdk.ok()) << sdk.status();
  ASSERT_EQ(sdk->size(), 2u);
  EXPECT_DOUBLE_EQ((*sdk)[0].gco2_per_kwh, 532.02293146);
}

struct BadReply {
  const char* what;
  Reply reply;
  absl::StatusCode code;
  const char* message;
};

TEST_F(ProviderTest, EveryBadReplyIsAClearStatus) {
  const std::string good = Fixture("uk-carbon-intensity/intensity.json");
  std::string negative = good, huge = good, wrong_type = good, future = good, infinite = good;
  negative.replace(negative.find("263"), 3, "-12");
  huge.replace(huge.find("263"), 3, "1e9");
  infinite.replace(infinite.find("263"), 3, "1e999");
  wrong_type = "{\"data\":[{\"from\":\"2018-01-20T12:00Z\",\"intensity\":{\"forecast\":\"266\",\"actual\":\"263\"}}]}";
  future.replace(future.find("2018-01-20T12:00Z"), 17, "2018-01-20T18:00Z");
  const std::vector<BadReply> cases = {
      {"server error", {500, "{\"error\":{\"code\":\"500 Internal Server Error\",\"message\":\"oops\"}}"},
       absl::StatusCode::kUnavailable, "HTTP 500"},
      {"rate limited", {429, "slow down", "text/plain", {{"Retry-After", "120"}}}, absl::StatusCode::kResourceExhausted,
       "HTTP 429"},
      // An HTTP date an hour ahead (libcurl reads it against the wall clock).
      {"rate limited until", {429, "slow down", "text/plain",
                              {{"Retry-After", absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT",
                                                                absl::Now() + absl::Hours(1), absl::UTCTimeZone())}}},
       absl::StatusCode::kResourceExhausted, "HTTP 429"},
      {"truncated JSON", {200, good.substr(0, good.size() / 2)}, absl::StatusCode::kInvalidArgument, "is not JSON"},
      {"HTML", {200, "<!DOCTYPE html><html><body>Maintenance</body></html>", "text/html"},
       absl::StatusCode::kInvalidArgument, "is not JSON (starts with \"<!DOCTYPE html>"},
      {"wrong shape", {200, "{\"data\": \"soon\"}"}, absl::StatusCode::kInvalidArgument, "\"data\" is not a list"},
      {"wrong types", {200, wrong_type}, absl::StatusCode::kInvalidArgument, "neither actual nor forecast as a number"},
      {"no data", {200, "{\"data\": []}"}, absl::StatusCode::kUnavailable, "no half-hour"},
      {"negative", {200, negative}, absl::StatusCode::kOutOfRange, "-12 gCO2/kWh is not plausible"},
      {"huge", {200, huge}, absl::StatusCode::kOutOfRange, "is not plausible"},
      {"future", {200, future}, absl::StatusCode::kOutOfRange, "lies in the future"},
      {"too slow", {200, good, "application/json", {}, absl::Seconds(2)}, absl::StatusCode::kDeadlineExceeded,
       "uk-carbon-intensity: http://127.0.0.1:"},
      // (Not JSON-typed, so the test server sends it as is instead of spending seconds compressing it.)
      {"8 MB", {200, std::string(8 << 20, ' '), "application/octet-stream"}, absl::StatusCode::kResourceExhausted,
       "larger than 4194304 bytes"},
  };
  for (const BadReply& c : cases) {
    server_.On("/intensity", c.reply);
    auto r = Uk()->Latest();
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.message)) << c.what;
    if (std::string(c.what) == "rate limited") {
      EXPECT_EQ(telemetry::RetryAfter(r.status()), absl::Seconds(120));
    }
    if (std::string(c.what) == "rate limited until") {
      ASSERT_TRUE(telemetry::RetryAfter(r.status()).has_value());
      EXPECT_GT(*telemetry::RetryAfter(r.status()), absl::Minutes(58));
      EXPECT_LE(*telemetry::RetryAfter(r.status()), absl::Hours(1));
    }
  }
  // An infinite value either does not parse or is refused; it never becomes a reading.
  server_.On("/intensity", Reply{200, infinite});
  EXPECT_FALSE(Uk()->Latest().ok());
  // A reading older than the provider accepts.
  server_.On("/intensity", Reply{200, good});
  auto old = Uk({}, "2018-01-20T18:00:00Z")->Latest();
  EXPECT_EQ(old.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(old.status().message()), HasSubstr("is older than 2h"));
}

TEST_F(ProviderTest, ConnectionRefusedIsUnavailable) {
  WebProviderOptions web = Web("2018-01-20T12:10:00Z");
  web.base_url = "http://127.0.0.1:1";
  auto r = telemetry::MakeUkCarbonIntensityProvider(web, {})->Latest();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("Couldn't connect"));
}

TEST(RedactUrlTest, DropsQueryAndUserInfo) {
  EXPECT_EQ(telemetry::RedactUrl("https://user:pw@api.example/v3/x?token=abc#f"), "https://api.example/v3/x");
  EXPECT_EQ(telemetry::RedactUrl("http://127.0.0.1:8/intensity"), "http://127.0.0.1:8/intensity");
}

// --- The publisher on a live provider ---------------------------------------------------------------

// Electricity Maps replies stamped with the real time, so staleness runs on the wall clock.
Reply LiveLatest(double value) {
  return Reply{200, absl::StrCat("{\"zone\":\"GB\",\"carbonIntensity\":", value, ",\"datetime\":\"",
                                 absl::FormatTime(absl::RFC3339_full, absl::Now(), absl::UTCTimeZone()), "\"}")};
}

sidecar::SidecarConfig ConfigFor(const std::string& base_url) {
  sidecar::SidecarConfig c;
  c.upstream.target = "127.0.0.1:1";
  auto em = std::make_shared<telemetry::ElectricityMapsSpec>();
  em->web.base_url = base_url;
  em->zone = "GB";
  em->token_env = "CARBON_TEST_TOKEN";
  c.intensity.provider = em;
  c.intensity.refresh = absl::Hours(1);
  c.intensity.fixed_bounds = selector::WindowBounds{100, 300};
  sidecar::RouteConfig route;
  route.name = "resnet";
  route.pool = std::make_shared<const selector::Pool>(*selector::Pool::Create(
      {{"resnet34", 359.9321833, 8.58}, {"resnet50", 420.6213298, 7.138}, {"resnet152", 1238.147188, 5.954}}));
  route.baseline = 1;
  route.default_variant = 1;
  c.routes.push_back(route);
  return c;
}

TEST_F(ProviderTest, PublisherKeepsTheLastGoodValueThenGoesStaleThenRecovers) {
  setenv("CARBON_TEST_TOKEN", "t", 1);
  server_.On("/v3/carbon-intensity/latest", [](const httplib::Request&) { return LiveLatest(100); });
  server_.On("/v3/carbon-intensity/history", Reply{200, "{\"zone\":\"GB\",\"history\":[]}"});
  sidecar::SidecarConfig config = ConfigFor(server_.url());
  config.intensity.stale_after = absl::Seconds(1);
  auto publisher = sidecar::SelectionPublisher::Create(config);
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  const auto status = [&] { return (*publisher)->snapshots().Load()->source(); };
  const auto model = [&] {
    const auto& route = (*publisher)->snapshots().Load()->routes()[0];
    return route.pool()[route.decision.primary].name;
  };
  EXPECT_EQ(model(), "resnet152");
  EXPECT_EQ(status().counters.state, sidecar::SourceState::kOk);

  server_.On("/v3/carbon-intensity/latest", Reply{503, "down for maintenance"});
  (*publisher)->RefreshNow();
  EXPECT_EQ(status().counters.state, sidecar::SourceState::kFailing);
  EXPECT_EQ(status().counters.fetch_failures, 1u);
  ASSERT_TRUE(status().latest.has_value());
  EXPECT_EQ(status().latest->gco2_per_kwh, 100);  // the last good value stays
  EXPECT_THAT(status().last_error, HasSubstr("HTTP 503"));
  EXPECT_EQ(model(), "resnet152");

  // Once the last value is older than stale_after, the route uses its default.
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (status().counters.state != sidecar::SourceState::kStale && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(50));
    (*publisher)->RefreshNow();
  }
  EXPECT_EQ(status().counters.state, sidecar::SourceState::kStale);
  EXPECT_EQ(model(), "resnet50");

  server_.On("/v3/carbon-intensity/latest", [](const httplib::Request&) { return LiveLatest(300); });
  (*publisher)->RefreshNow();
  EXPECT_EQ(status().counters.state, sidecar::SourceState::kOk);
  EXPECT_EQ(model(), "resnet34");
  // Each state was entered once per change, not once per poll.
  EXPECT_EQ(status().counters.entered[static_cast<size_t>(sidecar::SourceState::kFailing)], 1u);
  EXPECT_EQ(status().counters.entered[static_cast<size_t>(sidecar::SourceState::kStale)], 1u);
  sidecar::ProxyCounters proxy;
  sidecar::ReloadCounters reloads;
  const std::string metrics = sidecar::RenderMetrics({*(*publisher)->snapshots().Load(), proxy, reloads}, false);
  EXPECT_THAT(metrics, HasSubstr("carbon_sidecar_intensity_state_changes_total{provider=\"electricity-maps\",state=\"stale\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("carbon_sidecar_intensity_state{provider=\"electricity-maps\",state=\"ok\"} 1"));
  EXPECT_THAT(metrics, ::testing::ContainsRegex("carbon_sidecar_intensity_fetches_total\\{provider=\"electricity-maps\",result=\"failure\"\\} [1-9]"));
}

TEST_F(ProviderTest, HistoryBackfillsTheWindowAtStart) {
  setenv("CARBON_TEST_TOKEN", "t", 1);
  const absl::Time now = absl::Now();
  std::string history = "{\"zone\":\"GB\",\"history\":[";
  for (int h = 5; h >= 1; --h) {
    absl::StrAppend(&history, h == 5 ? "" : ",", "{\"datetime\":\"",
                    absl::FormatTime(absl::RFC3339_full, now - absl::Hours(h), absl::UTCTimeZone()),
                    "\",\"carbonIntensity\":", 100 * h, "}");
  }
  history += "]}";
  server_.On("/v3/carbon-intensity/history", Reply{200, history});
  server_.On("/v3/carbon-intensity/latest", [](const httplib::Request&) { return LiveLatest(250); });
  sidecar::SidecarConfig config = ConfigFor(server_.url());
  config.intensity.fixed_bounds.reset();  // the trailing window, from history
  auto publisher = sidecar::SelectionPublisher::Create(config);
  ASSERT_TRUE(publisher.ok());
  const auto& source = (*publisher)->snapshots().Load()->source();
  ASSERT_TRUE(source.window.has_value());
  EXPECT_EQ(source.window->low, 100);
  EXPECT_EQ(source.window->high, 500);
  EXPECT_EQ(source.latest->gco2_per_kwh, 250);
}

TEST_F(ProviderTest, FallbackChainSwitchesAndSwitchesBack) {
  setenv("CARBON_TEST_TOKEN", "t", 1);
  server_.On("/v3/carbon-intensity/latest", Reply{500, "{}"});
  server_.On("/v3/carbon-intensity/history", Reply{500, "{}"});
  sidecar::SidecarConfig config = ConfigFor(server_.url());
  auto chain = std::make_shared<telemetry::FallbackSpec>();
  chain->members = {config.intensity.provider, telemetry::StaticIntensity(250)};
  config.intensity.provider = chain;
  auto publisher = sidecar::SelectionPublisher::Create(config);
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  const auto source = [&] { return (*publisher)->snapshots().Load()->source(); };
  EXPECT_EQ(source().source, "static");
  EXPECT_EQ(source().latest->gco2_per_kwh, 250);
  server_.On("/v3/carbon-intensity/latest", [](const httplib::Request&) { return LiveLatest(120); });
  (*publisher)->RefreshNow();
  EXPECT_EQ(source().source, "electricity-maps");
  EXPECT_EQ(source().latest->gco2_per_kwh, 120);
  server_.On("/v3/carbon-intensity/latest", Reply{500, "{}"});
  (*publisher)->RefreshNow();
  EXPECT_EQ(source().source, "static");
}

}  // namespace
}  // namespace carbon
