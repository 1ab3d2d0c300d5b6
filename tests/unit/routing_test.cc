#include "telemetry/providers/kinds.h"
#include "sidecar/routing.h"

#include <atomic>
#include <filesystem>
#include <thread>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "inference/grpc_service.pb.h"
#include "selector/policies/horizon_target.h"
#include "tests/support/paper_pool.h"

namespace carbon::sidecar {
namespace {

SidecarConfig BaseConfig() {
  SidecarConfig c;
  c.upstream.target = "127.0.0.1:1";
  c.intensity.provider = telemetry::StaticIntensity(200);
  c.intensity.refresh = absl::Hours(1);
  c.intensity.fixed_bounds = selector::WindowBounds{100, 300};
  RouteConfig route;
  route.name = "resnet";
  route.pool = testing::PaperResnetPool();
  route.baseline = 1;
  route.default_variant = 1;
  c.routes.push_back(route);
  return c;
}

std::string VariantOf(const SelectionPublisher& publisher, const std::string& route_name) {
  const RouteView* route = publisher.snapshots().Load()->Find(route_name);
  return route == nullptr ? "<no route>" : route->pool()[route->decision.primary].name;
}

TEST(RoutingSnapshotTest, FindsRoutesByNameOnly) {
  auto publisher = SelectionPublisher::Create(BaseConfig());
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  const auto snapshot = (*publisher)->snapshots().Load();
  ASSERT_NE(snapshot->Find("resnet"), nullptr);
  EXPECT_EQ(snapshot->Find("resnet50"), nullptr);
  EXPECT_EQ(snapshot->Find("Resnet"), nullptr);
  EXPECT_EQ(snapshot->Find(""), nullptr);
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "resnet101");
}

TEST(CompiledRouteTest, OverridesAreTheEncodedVariantNames) {
  SidecarConfig config = BaseConfig();
  CompiledRoute route(config.routes[0], absl::Hours(2), nullptr);
  ASSERT_EQ(route.overrides.size(), 4u);
  inference::ModelInferRequest parsed;
  const grpc::Slice& s = route.overrides[3];
  ASSERT_TRUE(parsed.ParseFromString(std::string(reinterpret_cast<const char*>(s.begin()), s.size())));
  EXPECT_EQ(parsed.model_name(), "resnet152");
}

TEST(SelectionPublisherTest, ReadinessAnswersShapeTheChoice) {
  SidecarConfig config = BaseConfig();
  config.intensity.provider = telemetry::StaticIntensity(100);  // cleanest: resnet152 when it is ready
  std::vector<std::optional<bool>> answers = {true, true, false, false};
  auto publisher = SelectionPublisher::Create(
      config, [&](const UpstreamCluster&, const std::vector<std::string>& names) {
        EXPECT_EQ(names, (std::vector<std::string>{"resnet34", "resnet50", "resnet101", "resnet152"}));
        return answers;
      });
  ASSERT_TRUE(publisher.ok());
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "resnet50");
  // No answer (upstream unreachable) keeps what was known.
  answers = {std::nullopt, std::nullopt, std::nullopt, std::nullopt};
  (*publisher)->RefreshNow();
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "resnet50");
  answers = {true, true, true, true};
  (*publisher)->RefreshNow();
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "resnet152");
  // Nothing ready: the route's default, saying why.
  answers = {false, false, false, false};
  (*publisher)->RefreshNow();
  const RouteView* route = (*publisher)->snapshots().Load()->Find("resnet");
  EXPECT_EQ(route->decision.reason, selector::reasons::kNoReadyVariant);
}

TEST(SelectionPublisherTest, ZeroReadinessIntervalNeverAsks) {
  SidecarConfig config = BaseConfig();
  config.upstream.readiness_interval = absl::ZeroDuration();
  int asked = 0;
  auto publisher = SelectionPublisher::Create(config, [&](const UpstreamCluster&, const std::vector<std::string>& names) {
    ++asked;
    return std::vector<std::optional<bool>>(names.size(), false);
  });
  ASSERT_TRUE(publisher.ok());
  (*publisher)->RefreshNow();
  EXPECT_EQ(asked, 0);
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "resnet101");
}

TEST(SelectionPublisherTest, AnEndedTraceGoesStaleAndTheDefaultTakesOver) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / ("routing_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "trace.csv") << "t,v\n2023-06-01 00:00:00,100\n2023-06-01 00:30:00,300\n";
  SidecarConfig config = BaseConfig();
  {
    auto trace = std::make_shared<telemetry::TraceSpec>();
    trace->path = (dir / "trace.csv").string();
    trace->loop = false;
    trace->speedup = 1e6;  // a simulated hour every 3.6 ms
    config.intensity.provider = trace;
  }
  config.intensity.stale_after = absl::Hours(1);
  auto publisher = SelectionPublisher::Create(config);
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  const auto reason = [&] {
    (*publisher)->RefreshNow();
    return (*publisher)->snapshots().Load()->Find("resnet")->decision.reason;
  };
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (reason() != selector::reasons::kStaleIntensity && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(reason(), selector::reasons::kStaleIntensity);
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "resnet50");  // the default
  std::filesystem::remove_all(dir);
}

TEST(SelectionPublisherTest, AForecastWidensTheWindow) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / ("routing_fc_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  // At the start only 200 has been seen: a flat window, so the default. Ahead lie 300 and 100.
  std::ofstream(dir / "trace.csv") << "t,v\n2023-06-01 00:00:00,200\n2023-06-01 00:30:00,300\n"
                                      "2023-06-01 01:00:00,100\n";
  SidecarConfig config = BaseConfig();
  {
    auto trace = std::make_shared<telemetry::TraceSpec>();
    trace->path = (dir / "trace.csv").string();
    trace->loop = false;
    config.intensity.provider = trace;
  }
  config.intensity.fixed_bounds.reset();
  auto flat = SelectionPublisher::Create(config);
  ASSERT_TRUE(flat.ok());
  EXPECT_EQ((*flat)->snapshots().Load()->Find("resnet")->decision.reason,
            selector::reasons::kDegenerateWindow);

  config.intensity.include_forecast = true;
  config.intensity.forecast_horizon = absl::Hours(2);
  auto widened = SelectionPublisher::Create(config);
  ASSERT_TRUE(widened.ok());
  const RouteView* route = (*widened)->snapshots().Load()->Find("resnet");
  ASSERT_TRUE(route->decision.bounds.has_value());
  EXPECT_EQ(route->decision.bounds->low, 100);
  EXPECT_EQ(route->decision.bounds->high, 300);
  EXPECT_EQ(VariantOf(**widened, "resnet"), "resnet101");  // t = 0.5
  std::filesystem::remove_all(dir);
}

TEST(SelectionPublisherTest, AFailedReloadChangesNothing) {
  auto publisher = SelectionPublisher::Create(BaseConfig());
  ASSERT_TRUE(publisher.ok());
  const auto before = (*publisher)->snapshots().Load();
  SidecarConfig broken = BaseConfig();
  {
    auto trace = std::make_shared<telemetry::TraceSpec>();
    trace->path = "/nonexistent.csv";
    broken.intensity.provider = trace;
  }
  EXPECT_EQ((*publisher)->Reload(broken).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*publisher)->snapshots().Load(), before);
}

TEST(SelectionPublisherTest, BackgroundPollingPublishesWithoutBeingAsked) {
  SidecarConfig config = BaseConfig();
  const auto dir = std::filesystem::path(::testing::TempDir()) / ("routing_bg_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "trace.csv") << "t,v\n2023-06-01 00:00:00,100\n2023-06-01 00:30:00,300\n";
  {
    auto trace = std::make_shared<telemetry::TraceSpec>();
    trace->path = (dir / "trace.csv").string();
    trace->speedup = 3600;  // 30 simulated minutes in half a second
    config.intensity.provider = trace;
  }
  config.intensity.refresh = absl::Milliseconds(20);
  auto publisher = SelectionPublisher::Create(config);
  ASSERT_TRUE(publisher.ok());
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "resnet152");  // C = 100, the window's low
  (*publisher)->Start();
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (VariantOf(**publisher, "resnet") != "resnet34" && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "resnet34");  // C = 300, the high
  (*publisher)->Stop();
  std::filesystem::remove_all(dir);
}

TEST(SelectionPublisherTest, AReorderedPoolKeepsDwellAndReadinessByVariantName) {
  // Three variants; C = 100 at the window's low: the largest energy wins. "mid" is not ready.
  const auto pool = [](double small, double mid, double large) {
    return std::make_shared<const selector::Pool>(
        *selector::Pool::Create({{"small", small, 9}, {"mid", mid, 8}, {"large", large, 7}}));
  };
  SidecarConfig config = BaseConfig();
  config.intensity.provider = telemetry::StaticIntensity(100);
  config.routes[0].pool = pool(100, 200, 300);
  config.routes[0].baseline = config.routes[0].default_variant = 0;
  config.routes[0].min_dwell = absl::Hours(1);
  bool answer = true;  // then: the upstream cannot be asked, so what was known must carry over
  auto publisher = SelectionPublisher::Create(config, [&](const UpstreamCluster&, const std::vector<std::string>& names) {
    std::vector<std::optional<bool>> out;
    for (const auto& n : names) out.push_back(answer ? std::optional<bool>(n != "mid") : std::nullopt);
    return out;
  });
  ASSERT_TRUE(publisher.ok());
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "large");

  // New energies re-sort the pool: large is now the cheapest (index 0) and mid the dearest
  // (index 2), which the heuristic now wants. Dwell must keep "large", by name.
  answer = false;
  config.routes[0].pool = pool(200, 400, 50);
  std::atomic<bool> reloading{true};
  std::atomic<int> bad_names{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      while (reloading) {
        const auto& snapshot = (*publisher)->snapshots().Load();
        const RouteView* route = snapshot->Find("resnet");
        const std::string& name = route->pool()[route->Draw().variant].name;
        if (name != "small" && name != "mid" && name != "large") ++bad_names;
      }
    });
  }
  ASSERT_TRUE((*publisher)->Reload(config).ok());
  reloading = false;
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad_names, 0);
  const RouteView* route = (*publisher)->snapshots().Load()->Find("resnet");
  EXPECT_EQ(route->pool()[route->decision.primary].name, "large");
  EXPECT_EQ(route->decision.reason, selector::reasons::kMinimumDwell);
  // Readiness followed the names: mid (now index 2) is still not ready, the others are.
  EXPECT_EQ(route->ready, 0b011u);
  EXPECT_EQ(route->pool()[2].name, "mid");
}

TEST(SelectionPublisherTest, AVariantGoneFromThePoolStartsTheRouteAfresh) {
  SidecarConfig config = BaseConfig();
  config.intensity.provider = telemetry::StaticIntensity(100);
  config.routes[0].min_dwell = absl::Hours(1);
  auto publisher = SelectionPublisher::Create(config);
  ASSERT_TRUE(publisher.ok());
  EXPECT_EQ(VariantOf(**publisher, "resnet"), "resnet152");
  config.routes[0].pool = std::make_shared<const selector::Pool>(
      *selector::Pool::Create({{"resnet34", 359.9, 8.58}, {"resnet50", 420.6, 7.138}, {"resnet101", 803.1, 6.454}}));
  ASSERT_TRUE((*publisher)->Reload(config).ok());
  const RouteView* route = (*publisher)->snapshots().Load()->Find("resnet");
  EXPECT_EQ(route->pool()[route->decision.primary].name, "resnet101");
  EXPECT_EQ(route->decision.reason, "heuristic");
}

TEST(SelectionPublisherTest, AnAimedRouteKeepsItsHorizonAcrossAReloadButARestartBeginsAgain) {
  using Kind = selector::PlanLimit::Kind;
  SidecarConfig config = BaseConfig();
  config.routes[0].policy = selector::MakeHorizonTargetSpec({Kind::kMeanErrorPercent, 7}, {});
  telemetry::CarbonLedger ledger;
  auto publisher = SelectionPublisher::Create(config, nullptr, &ledger);
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  // 100 inferences served on resnet34 (8.58 % error) since the first decision.
  ledger.Route("resnet", config.routes[0].pool, 1)->variant(0).RecordServed(100, 100, 200);
  (*publisher)->RefreshNow();
  const auto explained = [&](const SelectionPublisher& p, std::string_view term) {
    return p.snapshots().Load()->Find("resnet")->decision.Explained(term).value_or(-1);
  };
  EXPECT_EQ(explained(**publisher, "horizon_inferences"), 100);
  EXPECT_DOUBLE_EQ(explained(**publisher, "achieved_error_percent"), 8.58);
  // Running over its target, the route buys accuracy for the rest of the day.
  EXPECT_GT(explained(**publisher, "lambda_grams_per_error_percent"), 0);

  // A tighter target, reloaded: the horizon goes on with what it has counted.
  config.routes[0].policy = selector::MakeHorizonTargetSpec({Kind::kMeanErrorPercent, 6.5}, {});
  ASSERT_TRUE((*publisher)->Reload(config).ok());
  EXPECT_EQ(explained(**publisher, "horizon_inferences"), 100);
  EXPECT_EQ(explained(**publisher, "target_error_percent"), 6.5);
  EXPECT_EQ((*publisher)->snapshots().Load()->Find("resnet")->route->policy->kind(), "accuracy-target");

  // A restart has a new ledger and no memory: counting begins at its first decision.
  telemetry::CarbonLedger after_restart;
  auto restarted = SelectionPublisher::Create(config, nullptr, &after_restart);
  ASSERT_TRUE(restarted.ok());
  EXPECT_EQ(explained(**restarted, "horizon_inferences"), 0);
}

}  // namespace
}  // namespace carbon::sidecar
