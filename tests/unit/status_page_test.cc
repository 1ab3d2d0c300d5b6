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

TEST(StatusPageTest, NamesFromTheConfigAreEscapedAndFiguresCarryTheirExactValue) {
  SidecarConfig config = carbon::testing::StaticSidecarConfig(1, 200);
  config.routes[0].name = "<script>alert(1)</script>";
  auto publisher = SelectionPublisher::Create(config);
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  const std::string html = RenderStatusPage({*(*publisher)->snapshots().Load(), absl::Now()});
  EXPECT_THAT(html, Not(HasSubstr("<script>alert(1)</script>")));
  EXPECT_THAT(html, HasSubstr("&lt;script&gt;alert(1)&lt;/script&gt;"));
  EXPECT_THAT(html, HasSubstr("data-field=\"model\" data-value=\"resnet101\""));
  EXPECT_THAT(html, HasSubstr("data-field=\"intensity\" data-value=\"200\""));
  // Self-contained: nothing fetched from elsewhere.
  EXPECT_THAT(html, Not(HasSubstr("http://")));
  EXPECT_THAT(html, Not(HasSubstr("https://")));
}

}  // namespace
}  // namespace carbon::sidecar
