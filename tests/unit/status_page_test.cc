#include "sidecar/status_history.h"
#include "sidecar/status_page.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "sidecar/routing.h"
#include "telemetry/providers/kinds.h"
#include "tests/support/static_sidecar_config.h"

namespace carbon::sidecar {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(StatusHistoryTest, KeepsOnlyTheLastCapacityPoints) {
  auto publisher = SelectionPublisher::Create(carbon::testing::StaticSidecarConfig(1, 200));
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  StatusHistory history(3);
  const absl::Time t0 = absl::FromUnixSeconds(1700000000);
  for (int i = 0; i < 10; ++i) history.Record(*(*publisher)->snapshots().Load(), t0 + absl::Seconds(i));
  const std::vector<HistoryPoint> points = history.Points();
  ASSERT_EQ(points.size(), 3u);
  EXPECT_EQ(points.front().at, t0 + absl::Seconds(7));  // the oldest kept
  EXPECT_EQ(points.back().at, t0 + absl::Seconds(9));
  ASSERT_EQ(points.back().routes.size(), 1u);
  EXPECT_EQ(points.back().routes[0].route, "resnet");
  EXPECT_EQ(points.back().routes[0].model, "resnet101");  // 200 in 100..300
  EXPECT_EQ(points.back().routes[0].intensity, 200);
  const nlohmann::json doc = nlohmann::json::parse(RenderHistoryJson(points, 3, absl::Seconds(1)));
  EXPECT_EQ(doc["capacity"], 3);
  EXPECT_EQ(doc["points"].size(), 3u);
  EXPECT_EQ(doc["points"][2]["routes"][0]["model"], "resnet101");
}

TEST(StatusPageTest, EscapesEveryCharacterThatMeansSomethingInHtml) {
  EXPECT_EQ(HtmlEscape("<a href=\"x\">Tom & 'Jerry'</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;");
  EXPECT_EQ(HtmlEscape("resnet50"), "resnet50");
}

StatusPageInputs Inputs(const RoutingSnapshot& snapshot) {
  return {snapshot, absl::FromUnixSeconds(1700000000), absl::FromUnixSeconds(1699990000), 0, 0, std::nullopt};
}

TEST(StatusPageTest, EveryStringFromTheConfigOrAProviderIsEscaped) {
  SidecarConfig config = carbon::testing::StaticSidecarConfig(1, 200);
  config.routes[0].name = "<script>alert(1)</script>";
  std::vector<selector::Variant> variants = config.routes[0].pool->variants();
  variants[3].name = "<img src=x onerror=alert(2)>";
  config.routes[0].pool = std::make_shared<const selector::Pool>(*selector::Pool::Create(variants));
  auto publisher = SelectionPublisher::Create(config);
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  StatusPageInputs in = Inputs(*(*publisher)->snapshots().Load());
  in.reloads_failed = 1;
  in.last_reload_error = RejectedReload{absl::FromUnixSeconds(1699995000), "bad.yaml:3:7: unknown key '<b>'"};
  const std::string html = RenderStatusPage(in);
  EXPECT_THAT(html, Not(HasSubstr("<script>alert(1)</script>")));
  EXPECT_THAT(html, HasSubstr("&lt;script&gt;alert(1)&lt;/script&gt;"));
  EXPECT_THAT(html, Not(HasSubstr("<img")));
  EXPECT_THAT(html, HasSubstr("&lt;img src=x onerror=alert(2)&gt;"));
  // The chart's legend is JSON inside an attribute: escaped too.
  EXPECT_THAT(html, HasSubstr("data-models=\"[&quot;resnet34&quot;,"));
  EXPECT_THAT(html, HasSubstr("unknown key &#39;&lt;b&gt;&#39;"));
  EXPECT_THAT(html, HasSubstr("1 rejected"));
  // Self-contained: nothing fetched from elsewhere.
  EXPECT_THAT(html, Not(HasSubstr("http://")));
  EXPECT_THAT(html, Not(HasSubstr("https://")));
  EXPECT_THAT(html, Not(HasSubstr("src=\"")));
}

TEST(StatusPageTest, FiguresCarryTheirExactValueBesideTheRoundedOne) {
  auto publisher = SelectionPublisher::Create(carbon::testing::StaticSidecarConfig(1, 200));
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  const std::string html = RenderStatusPage(Inputs(*(*publisher)->snapshots().Load()));
  EXPECT_THAT(html, HasSubstr("data-field=\"model\" data-value=\"resnet101\">resnet101<"));
  EXPECT_THAT(html, HasSubstr("data-field=\"intensity\" data-value=\"200\">200<small> gCO2/kWh"));
  EXPECT_THAT(html, HasSubstr("data-field=\"weight_percent:resnet101\" data-value=\"100\">100.0"));
  EXPECT_THAT(html, HasSubstr("data-field=\"weight_percent:resnet34\" data-value=\"0\">0.0"));
  EXPECT_THAT(html, HasSubstr("data-field=\"served:resnet101\" data-value=\"0\">0<"));
  // Nothing served yet: no mean error to show, and the page says so rather than 0.
  EXPECT_THAT(html, HasSubstr("data-field=\"mean_error\" data-value=\"\">—"));
  // Where 200 sits in the fixed window 100..300.
  EXPECT_THAT(html, HasSubstr("window 100 – 300 gCO2/kWh"));
  EXPECT_THAT(html, HasSubstr("aria-label=\"50 % of the way"));
  EXPECT_THAT(html, HasSubstr("Config loaded 2023-11-14T19:26:40+00:00"));
}

TEST(StatusPageTest, ARouteAcrossClustersShowsWhereItsCallsGoAndWhy) {
  SidecarConfig config = carbon::testing::StaticSidecarConfig(1, 200);
  config.clusters_listed = true;
  const auto cluster = [&](const char* name, const char* target, double intensity, const char* region,
                           absl::Duration rtt) {
    ClusterConfig c;
    c.name = name;
    c.target = target;
    c.intensity = config.intensity;
    c.intensity.provider = telemetry::StaticIntensity(intensity, region);
    c.rtt = rtt;
    return c;
  };
  config.clusters = {cluster("near", "127.0.0.1:1", 300, "GB", absl::Milliseconds(2)),
                     cluster("far", "127.0.0.1:2", 100, "FR", absl::Milliseconds(12))};
  auto publisher = SelectionPublisher::Create(config);
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  const std::string html = RenderStatusPage(Inputs(*(*publisher)->snapshots().Load()));
  // The cleaner grid serves, with the variant its intensity gives (100 is the window's low).
  EXPECT_THAT(html, HasSubstr("data-field=\"cluster\" data-value=\"far\""));
  EXPECT_THAT(html, HasSubstr("data-field=\"intensity\" data-value=\"100\""));
  EXPECT_THAT(html, HasSubstr("data-field=\"model\" data-value=\"resnet152\""));
  EXPECT_THAT(html, HasSubstr("Clusters in order: far (cleanest, 100 gCO2/kWh) → near ("));
  EXPECT_THAT(html, HasSubstr("12.0 ms (configured)"));
}

}  // namespace
}  // namespace carbon::sidecar
