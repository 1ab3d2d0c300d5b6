#include "sidecar/config.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sidecar/routing.h"
#include "telemetry/providers/kinds.h"

namespace carbon::sidecar {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// The provider the config names, as the spec of its kind (throws std::bad_cast otherwise).
template <typename SpecType>
const SpecType& Spec(const SidecarConfig& config) {
  return dynamic_cast<const SpecType&>(*config.intensity.provider);
}

// A fresh directory per test, holding the config and the files it names.
class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("config_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(dir_ / "pools");
    Write("pools/resnet.yaml", R"(name: resnet-v100
source: test
variants:
  - { name: resnet34,  energy_mj: 359.9321833, error_percent: 8.58 }
  - { name: resnet50,  energy_mj: 420.6213298, error_percent: 7.138 }
  - { name: resnet101, energy_mj: 803.0948846, error_percent: 6.454 }
  - { name: resnet152, energy_mj: 1238.147188, error_percent: 5.954 }
)");
    Write("trace.csv", "Time,Carbon Intensity\n2023-06-01 00:00:00,100\n2023-06-01 00:30:00,300\n");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }

  // Loads `text` as sidecar.yaml and returns the error message (empty when it loaded).
  std::string ErrorOf(const std::string& text) {
    auto config = LoadConfig(Write("sidecar.yaml", text));
    if (config.ok()) return "";
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
    return std::string(config.status().message());
  }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

constexpr char kValid[] = R"(listen: 127.0.0.1:9001
upstream:
  target: 127.0.0.1:9011
  max_message_bytes: 1048576
drain_timeout: 5s
intensity:
  provider: trace
  region: GB-SW
  file: trace.csv
  speedup: 60
  loop: false
  start: 2023-06-01T00:10:00Z
  refresh: 10s
  stale_after: 1h
  window: 12h
  window_bounds: { low: 100, high: 300 }
routes:
  - name: resnet
    pool: pools/resnet.yaml
    baseline: resnet50
    default: resnet101
    min_dwell: 15m
    batch_dimension: true
  - name: vgg
    variants:
      - { name: alexnet, energy_mj: 125.00, error_percent: 20.934 }
      - { name: vgg16,   energy_mj: 668.97, error_percent: 9.618 }
    baseline: vgg16
    default: alexnet
admin:
  listen: 127.0.0.1:0
)";

TEST_F(ConfigTest, ReadsEveryField) {
  auto config = LoadConfig(Write("sidecar.yaml", kValid));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "127.0.0.1:9001");
  EXPECT_EQ(config->admin_listen, "127.0.0.1:0");
  EXPECT_EQ(config->upstream.target, "127.0.0.1:9011");
  EXPECT_EQ(config->upstream.max_message_bytes, 1048576);
  EXPECT_EQ(config->drain_timeout, absl::Seconds(5));
  const IntensityConfig& i = config->intensity;
  EXPECT_EQ(i.provider_kind(), "trace");
  EXPECT_EQ(i.region(), "GB-SW");
  const auto& trace = Spec<telemetry::TraceSpec>(*config);
  EXPECT_EQ(trace.path, Path("trace.csv"));  // relative to the config's directory
  EXPECT_EQ(trace.speedup, 60);
  EXPECT_FALSE(trace.loop);
  ASSERT_TRUE(trace.start.has_value());
  EXPECT_EQ(*trace.start, absl::FromUnixSeconds(1685578200));
  EXPECT_EQ(i.refresh, absl::Seconds(10));
  EXPECT_EQ(i.stale_after, absl::Hours(1));
  EXPECT_EQ(i.window, absl::Hours(12));
  ASSERT_TRUE(i.fixed_bounds.has_value());
  EXPECT_EQ(i.fixed_bounds->low, 100);
  EXPECT_EQ(i.fixed_bounds->high, 300);

  ASSERT_EQ(config->routes.size(), 2u);
  const RouteConfig& resnet = config->routes[0];
  EXPECT_EQ(resnet.name, "resnet");
  EXPECT_EQ(resnet.pool_source, Path("pools/resnet.yaml"));
  ASSERT_EQ(resnet.pool->variants().size(), 4u);
  EXPECT_EQ((*resnet.pool)[3].name, "resnet152");
  EXPECT_DOUBLE_EQ((*resnet.pool)[3].energy_mj, 1238.147188);
  EXPECT_DOUBLE_EQ((*resnet.pool)[1].error_percent, 7.138);
  EXPECT_EQ(resnet.baseline, 1u);
  EXPECT_EQ(resnet.default_variant, 2u);
  EXPECT_EQ(resnet.min_dwell, absl::Minutes(15));
  EXPECT_TRUE(resnet.batch_dimension);
  const RouteConfig& vgg = config->routes[1];
  EXPECT_EQ(vgg.pool_source, "inline");
  EXPECT_EQ(vgg.pool->variants().size(), 2u);
  EXPECT_EQ(vgg.default_variant, 0u);
  EXPECT_FALSE(vgg.batch_dimension);
}

TEST_F(ConfigTest, DefaultsWhereOptionalKeysAreAbsent) {
  auto config = LoadConfig(Write("sidecar.yaml", R"(upstream: { target: "127.0.0.1:1" }
intensity: { provider: static, gco2_per_kwh: 200 }
routes:
  - { name: resnet, pool: pools/resnet.yaml, baseline: resnet50, default: resnet50 }
)"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "0.0.0.0:8001");
  EXPECT_EQ(config->admin_listen, "127.0.0.1:9464");  // loopback unless chosen otherwise
  EXPECT_EQ(config->history_interval, absl::Seconds(10));  // two hours of status-page history
  EXPECT_EQ(config->history_points, 720);
  EXPECT_EQ(config->upstream.readiness_interval, absl::Seconds(10));
  EXPECT_EQ(config->upstream.max_message_bytes, 64 * 1024 * 1024);
  EXPECT_EQ(config->memory_limit_bytes, 512 * 1024 * 1024);
  EXPECT_EQ(config->intensity.refresh, absl::Minutes(5));
  EXPECT_EQ(config->intensity.stale_after, absl::Hours(2));
  EXPECT_EQ(config->intensity.window, absl::Hours(24));
  EXPECT_FALSE(config->intensity.fixed_bounds.has_value());
  EXPECT_EQ(Spec<telemetry::StaticSpec>(*config).gco2_per_kwh, 200);
  EXPECT_EQ(config->routes[0].policy->kind(), "linear-interpolation");  // the default
  EXPECT_EQ(config->routes[0].min_dwell, absl::ZeroDuration());
}

TEST_F(ConfigTest, TheShippedDemoConfigLoads) {
  const std::string path = std::string(CARBON_SOURCE_DIR) + "/config/sidecar.yaml";
  auto config = LoadConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_GE(config->routes.size(), 1u);
  EXPECT_EQ(config->routes[0].name, "resnet");
  // docs/design.md §1: the pool must carry the paper's numbers exactly.
  const selector::Pool& pool = *config->routes[0].pool;
  ASSERT_EQ(pool.variants().size(), 4u);
  EXPECT_EQ(pool[0].energy_mj, 359.9321833);
  EXPECT_EQ(pool[1].energy_mj, 420.6213298);
  EXPECT_EQ(pool[2].energy_mj, 803.0948846);
  EXPECT_EQ(pool[3].energy_mj, 1238.147188);
  EXPECT_EQ(pool[0].error_percent, 8.58);
  EXPECT_EQ(pool[1].error_percent, 7.138);
  EXPECT_EQ(pool[2].error_percent, 6.454);
  EXPECT_EQ(pool[3].error_percent, 5.954);
}

TEST_F(ConfigTest, TheShippedClustersConfigLoads) {
  auto config = LoadConfig(std::string(CARBON_SOURCE_DIR) + "/config/sidecar-clusters.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->clusters.size(), 3u);
  EXPECT_EQ(config->clusters[1].name, "fr");
  EXPECT_EQ(config->clusters[1].intensity.region(), "FR");
  EXPECT_EQ(config->clusters[0].intensity.region(), "GB");
  EXPECT_EQ(config->clusters[1].max_in_flight, 64);
  EXPECT_EQ(config->routes[0].latency_budget, absl::Milliseconds(15));
  // Its grids load and give readings: a publisher over them chooses the cleanest within the budget.
  auto publisher = SelectionPublisher::Create(*config);
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  const auto snapshot = (*publisher)->snapshots().Load();
  ASSERT_EQ(snapshot->clusters().size(), 3u);
  for (const ClusterStatus& c : snapshot->clusters()) EXPECT_TRUE(c.source.latest.has_value()) << c.upstream->name;
  const RouteView& route = snapshot->routes()[0];
  EXPECT_NE(snapshot->clusters()[route.clusters.front().index].upstream->name, "de");
  EXPECT_EQ(route.clusters.back().rank, selector::PlaceRank::kOverBudget);
}

struct BadConfig {
  const char* what;
  std::string replace;  // a line of kValid
  std::string with;
  std::string expected;  // the message, after "<path>:"
};

TEST_F(ConfigTest, EveryMistakeNamesFileLineAndColumn) {
  const std::vector<BadConfig> cases = {
      {"unknown key", "drain_timeout: 5s", "drain_timeout: 5s\nlisten_port: 1",
       "6:1: unknown key 'listen_port' in the config (known keys: listen, drain_timeout, "
       "memory_limit_bytes, data_plane, data_plane_threads, data_plane_stream_window_bytes, "
       "data_plane_connection_window_bytes, data_plane_upstream_max_concurrent_streams, "
       "data_plane_upstream_idle_timeout, admin, tls, upstream, intensity, routes, accounting, clusters)"},
      {"unknown data plane", "drain_timeout: 5s", "drain_timeout: 5s\ndata_plane: quic",
       "6:13: data_plane must be grpc or h2, got 'quic'"},
      {"data plane threads", "drain_timeout: 5s", "drain_timeout: 5s\ndata_plane_threads: -1",
       "6:21: data_plane_threads must lie between 0 (one per core) and 256"},
      {"small stream window", "drain_timeout: 5s", "drain_timeout: 5s\ndata_plane_stream_window_bytes: 1024",
       "6:33: data_plane_stream_window_bytes must lie between 65535 and 2147483647"},
      {"connection window under the stream's", "drain_timeout: 5s",
       "drain_timeout: 5s\ndata_plane_stream_window_bytes: 1048576\ndata_plane_connection_window_bytes: 524288",
       "7:37: data_plane_connection_window_bytes must lie between the stream window (1048576) and 2147483647"},
      {"negative upstream stream limit", "drain_timeout: 5s",
       "drain_timeout: 5s\ndata_plane_upstream_max_concurrent_streams: -2",
       "6:45: data_plane_upstream_max_concurrent_streams must lie between 0 (no limit) and 2147483647"},
      {"negative upstream idle timeout", "drain_timeout: 5s", "drain_timeout: 5s\ndata_plane_upstream_idle_timeout: -1s",
       "6:35: data_plane_upstream_idle_timeout"},
      {"small memory limit", "drain_timeout: 5s", "drain_timeout: 5s\nmemory_limit_bytes: 65536",
       "6:21: memory_limit_bytes must be 0 (no limit) or at least 16777216"},
      {"misspelt nested key", "  refresh: 10s", "  refesh: 10s",
       "13:3: unknown key 'refesh' in intensity"},
      {"duplicate key", "  region: GB-SW", "  region: GB-SW\n  region: GB-N",
       "9:3: duplicate key 'region' in intensity"},
      {"bad duration", "  refresh: 10s", "  refresh: often",
       "13:12: intensity.refresh must be a positive duration such as 30s, 5m or 24h, got 'often'"},
      {"zero refresh", "  refresh: 10s", "  refresh: 0s", "13:12: intensity.refresh must be a positive"},
      {"unknown provider", "  provider: trace", "  provider: crystal-ball",
       "7:13: intensity.provider 'crystal-ball' is not known"},
      {"negative speedup", "  speedup: 60", "  speedup: -2", "10:12: intensity.speedup must be positive"},
      {"bad start", "  start: 2023-06-01T00:10:00Z", "  start: yesterday",
       "12:10: intensity.start must be an RFC 3339 time"},
      {"inverted bounds", "  window_bounds: { low: 100, high: 300 }",
       "  window_bounds: { low: 300, high: 100 }", "16:18: intensity.window_bounds: high must exceed low"},
      {"baseline outside pool", "    baseline: resnet50", "    baseline: resnet18",
       "20:15: routes[0].baseline 'resnet18' is not a variant of the pool (resnet34, resnet50, "
       "resnet101, resnet152)"},
      {"default outside pool", "    default: alexnet", "    default: vgg19",
       "29:14: routes[1].default 'vgg19' is not a variant of the pool (alexnet, vgg16)"},
      {"missing default", "    default: resnet101", "",
       "18:5: routes[0] is missing required key 'default'"},
      {"non-positive energy", "      - { name: alexnet, energy_mj: 125.00, error_percent: 20.934 }",
       "      - { name: alexnet, energy_mj: 0, error_percent: 20.934 }", "26:7: "},
      {"duplicate variant", "      - { name: vgg16,   energy_mj: 668.97, error_percent: 9.618 }",
       "      - { name: alexnet,   energy_mj: 668.97, error_percent: 9.618 }", "26:7: "},
      {"energy not a number", "      - { name: vgg16,   energy_mj: 668.97, error_percent: 9.618 }",
       "      - { name: vgg16,   energy_mj: lots, error_percent: 9.618 }",
       "27:37: routes[1].variants[1].energy_mj must be a finite number, got 'lots'"},
      {"pool and variants", "    pool: pools/resnet.yaml",
       "    pool: pools/resnet.yaml\n    variants: [{ name: a, energy_mj: 1, error_percent: 1 }]",
       "18:5: routes[0] needs exactly one of 'pool' (a file) or 'variants' (inline)"},
      {"duplicate route", "  - name: vgg", "  - name: resnet", "24:11: route name 'resnet' is used twice"},
      {"max message too big", "  max_message_bytes: 1048576", "  max_message_bytes: 99999999999",
       "4:22: upstream.max_message_bytes must lie between 1 and 2147483647"},
      {"admin address", "  listen: 127.0.0.1:0", "  listen: everywhere",
       "31:11: admin.listen must be host:port, such as 127.0.0.1:9464, got 'everywhere'"},
      {"admin unknown key", "  listen: 127.0.0.1:0", "  listen: 127.0.0.1:0\n  tls: on",
       "32:3: unknown key 'tls' in admin"},
      {"history too often", "  listen: 127.0.0.1:0", "  listen: 127.0.0.1:0\n  history_interval: 50ms",
       "32:21: admin.history_interval must be at least 100ms"},
      {"history points", "  listen: 127.0.0.1:0", "  listen: 127.0.0.1:0\n  history_points: 0",
       "32:19: admin.history_points must lie between 1 and 100000"},
      {"readiness interval", "  max_message_bytes: 1048576", "  max_message_bytes: 1048576\n  readiness_interval: -1s",
       "5:23: upstream.readiness_interval must be a duration"},
      {"broken YAML", "  target: 127.0.0.1:9011", "  target: [127.0.0.1:9011", "invalid YAML"},
  };
  for (const BadConfig& c : cases) {
    std::string text = kValid;
    const size_t at = text.find(c.replace + "\n");
    ASSERT_NE(at, std::string::npos) << c.what;
    text.replace(at, c.replace.size() + 1, c.with.empty() ? "" : c.with + "\n");
    const std::string error = ErrorOf(text);
    EXPECT_THAT(error, StartsWith(Path("sidecar.yaml") + ":")) << c.what;
    EXPECT_THAT(error, HasSubstr(c.expected)) << c.what << ": " << error;
  }
}

TEST_F(ConfigTest, TheH2DataPlaneIsRestartOnly) {
  std::string h2 = kValid;
  h2.replace(h2.find("drain_timeout: 5s\n"), 18,
             "drain_timeout: 5s\ndata_plane: h2\ndata_plane_threads: 3\ndata_plane_stream_window_bytes: 1048576\n"
             "data_plane_connection_window_bytes: 16777216\ndata_plane_upstream_max_concurrent_streams: 8\n"
             "data_plane_upstream_idle_timeout: 5m\n");
  auto config = LoadConfig(Write("sidecar.yaml", h2));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->data_plane, SidecarConfig::DataPlane::kH2);
  EXPECT_EQ(config->data_plane_threads, 3);
  EXPECT_EQ(config->data_plane_stream_window_bytes, 1048576);
  EXPECT_EQ(config->data_plane_connection_window_bytes, 16777216);
  EXPECT_EQ(config->data_plane_upstream_max_concurrent_streams, 8);
  EXPECT_EQ(config->data_plane_upstream_idle_timeout, absl::Minutes(5));
  EXPECT_EQ(LoadConfig(Write("grpc.yaml", kValid))->data_plane, SidecarConfig::DataPlane::kGrpc);

  std::vector<std::string> changed;
  SidecarConfig grpc = *LoadConfig(Write("grpc.yaml", kValid));
  const SidecarConfig applied = ConfigForReload(grpc, *config, &changed);
  EXPECT_EQ(applied.data_plane, SidecarConfig::DataPlane::kGrpc);
  EXPECT_THAT(changed, ::testing::IsSupersetOf({"data_plane", "data_plane_threads", "data_plane_stream_window_bytes",
                                                "data_plane_connection_window_bytes",
                                                "data_plane_upstream_max_concurrent_streams",
                                                "data_plane_upstream_idle_timeout"}));
}

// The keys a mapping accepts, as the unknown-key error lists them.
std::vector<std::string> KnownKeys(const std::string& error) {
  const size_t open = error.find("(known keys: ");
  if (open == std::string::npos) return {};
  const std::string list = error.substr(open + 13, error.rfind(')') - open - 13);
  std::vector<std::string> keys;
  for (size_t at = 0; at <= list.size();) {
    const size_t comma = std::min(list.find(", ", at), list.size());
    keys.push_back(list.substr(at, comma - at));
    at = comma + 2;
  }
  return keys;
}

TEST_F(ConfigTest, EveryKeyIsDeclaredReloadableOrRestartOnly) {
  std::string valid = kValid;
  const auto declared = [](const std::string& key) {
    int lists = 0;
    for (std::string_view k : kReloadableKeys) lists += k == key;
    for (const RestartOnlySetting& s : kRestartOnlySettings) lists += s.key == key;
    return lists;
  };
  const std::vector<std::string> top = KnownKeys(ErrorOf(valid + "zzz: 1\n"));
  ASSERT_GE(top.size(), 8u) << ErrorOf(valid + "zzz: 1\n");
  for (const std::string& key : top) {
    if (key == "upstream") continue;
    EXPECT_EQ(declared(key), 1) << key;
  }
  std::string bad_upstream = valid;
  bad_upstream.replace(bad_upstream.find("  target: 127.0.0.1:9011"), 0, "  zzz: 1\n");
  const std::vector<std::string> upstream = KnownKeys(ErrorOf(bad_upstream));
  ASSERT_GE(upstream.size(), 4u) << ErrorOf(bad_upstream);
  for (const std::string& key : upstream) EXPECT_EQ(declared("upstream." + key), 1) << key;
}

TEST_F(ConfigTest, AReloadKeepsRestartOnlySettingsAndAppliesTheRest) {
  auto running = LoadConfig(Write("sidecar.yaml", kValid));
  ASSERT_TRUE(running.ok()) << running.status();
  SidecarConfig next = *running;
  next.listen = "127.0.0.1:9999";
  next.memory_limit_bytes = 0;
  next.drain_timeout = absl::Seconds(1);
  next.routes[0].min_dwell = absl::Minutes(3);
  std::vector<std::string> changed;
  const SidecarConfig applied = ConfigForReload(*running, next, &changed);
  EXPECT_EQ(changed, (std::vector<std::string>{"listen", "memory_limit_bytes"}));
  EXPECT_EQ(applied.listen, running->listen);
  EXPECT_EQ(applied.memory_limit_bytes, running->memory_limit_bytes);
  EXPECT_EQ(applied.drain_timeout, absl::Seconds(1));
  EXPECT_EQ(applied.routes[0].min_dwell, absl::Minutes(3));
}

TEST_F(ConfigTest, RoutesNameTheirPolicyByKind) {
  const std::string head = "upstream: { target: a }\nintensity: { provider: static, gco2_per_kwh: 1 }\nroutes:\n";
  const std::string route = "  - name: r\n    pool: pools/resnet.yaml\n    baseline: resnet50\n    default: resnet50\n";
  auto named = LoadConfig(Write("named.yaml", head + route + "    policy: { kind: linear-interpolation }\n"));
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(named->routes[0].policy->kind(), "linear-interpolation");
  EXPECT_EQ(ErrorOf(head + route + "    policy: { kind: crystal-ball }\n"),
            Path("sidecar.yaml") + ":8:21: routes[0].policy.kind 'crystal-ball' is not known (known policies: "
                                   "linear-interpolation, accuracy-target, carbon-budget)");
  EXPECT_EQ(ErrorOf(head + route + "    policy: { kind: linear-interpolation, horizon: 24h }\n"),
            Path("sidecar.yaml") + ":8:43: unknown key 'horizon' in routes[0].policy (known keys: kind)");
  EXPECT_THAT(ErrorOf(head + route + "    policy: {}\n"), HasSubstr(":8:13: routes[0].policy is missing required key 'kind'"));
}

TEST_F(ConfigTest, TargetPoliciesAreCheckedAgainstThePoolAndTheRefresh) {
  const std::string head = "upstream: { target: a }\nintensity: { provider: static, gco2_per_kwh: 1, refresh: 10m }\n"
                           "routes:\n";
  const std::string route = "  - name: r\n    pool: pools/resnet.yaml\n    baseline: resnet50\n    default: resnet50\n";
  auto aimed = LoadConfig(Write("aimed.yaml", head + route +
                                                  "    policy: { kind: accuracy-target, max_mean_error_percent: 6.7, "
                                                  "horizon: 12h, horizon_anchor: 2023-06-01T06:00:00Z }\n"));
  ASSERT_TRUE(aimed.ok()) << aimed.status();
  EXPECT_EQ(aimed->routes[0].policy->kind(), "accuracy-target");
  EXPECT_EQ(aimed->routes[0].policy->Render().dump(),
            R"({"horizon":"12h","horizon_anchor":"2023-06-01T06:00:00Z","max_mean_error_percent":6.7})");
  auto budget = LoadConfig(Write("budget.yaml", head + route + "    policy: { kind: carbon-budget, grams_per_horizon: 40000, "
                                                                "expected_inferences_per_horizon: 2e6 }\n"));
  ASSERT_TRUE(budget.ok()) << budget.status();
  EXPECT_EQ(budget->routes[0].policy->Render().dump(),
            R"({"expected_inferences_per_horizon":2000000.0,"grams_per_horizon":40000.0,"horizon":"24h",)"
            R"("horizon_anchor":"1970-01-01T00:00:00Z"})");
  EXPECT_THAT(ErrorOf(head + route + "    policy: { kind: carbon-budget, grams_per_horizon: 9, "
                                     "expected_inferences_per_horizon: 0 }\n"),
              HasSubstr("routes[0].policy.expected_inferences_per_horizon must be a positive number, got 0"));

  // resnet152, the most accurate, has 5.954 % error: no mix of the pool averages below it.
  EXPECT_EQ(ErrorOf(head + route + "    policy: { kind: accuracy-target, max_mean_error_percent: 5.5 }\n"),
            Path("sidecar.yaml") + ":8:62: routes[0].policy.max_mean_error_percent 5.5 cannot be met: the most "
                                   "accurate variant, resnet152, has 5.954 % top-1 error (the target must lie between "
                                   "5.954 and 100)");
  EXPECT_THAT(ErrorOf(head + route + "    policy: { kind: accuracy-target }\n"),
              HasSubstr("routes[0].policy is missing required key 'max_mean_error_percent'"));
  EXPECT_EQ(ErrorOf(head + route + "    policy: { kind: carbon-budget, grams_per_horizon: 0 }\n"),
            Path("sidecar.yaml") + ":8:55: routes[0].policy.grams_per_horizon must be a positive number of grams, got 0");
  EXPECT_THAT(ErrorOf(head + route + "    policy: { kind: carbon-budget, grams_per_horizon: -3 }\n"),
              HasSubstr(":8:55: routes[0].policy.grams_per_horizon must be a positive number of grams, got -3"));
  EXPECT_EQ(ErrorOf(head + route + "    policy: { kind: carbon-budget, grams_per_horizon: 9, horizon: 5m }\n"),
            Path("sidecar.yaml") + ":8:67: routes[0].policy.horizon (5m) is shorter than intensity.refresh (10m): "
                                   "the target could not be steered within it");
  EXPECT_THAT(ErrorOf(head + route + "    policy: { kind: carbon-budget, grams_per_horizon: 9, horizon: 2400h }\n"),
              HasSubstr(":8:67: routes[0].policy.horizon must be at most 2208h (92 days)"));
  EXPECT_THAT(ErrorOf(head + route + "    policy: { kind: carbon-budget, grams_per_horizon: 9, max_mean_error_percent: 7 }\n"),
              HasSubstr("unknown key 'max_mean_error_percent' in routes[0].policy"));
}

TEST_F(ConfigTest, ClustersEachHaveATargetAndAGridAndRoutesNameThem) {
  const std::string head =
      "upstream: { readiness_interval: 5s }\nintensity: { provider: static, gco2_per_kwh: 300 }\n";
  const std::string clusters =
      "clusters:\n"
      "  - { name: fr, target: \"10.0.0.1:8001\", rtt: 20ms, intensity: { provider: static, gco2_per_kwh: 60 } }\n"
      "  - { name: de, target: \"10.0.0.2:8001\", stale_intensity: 450 }\n";
  const std::string route = "routes:\n  - name: r\n    pool: pools/resnet.yaml\n    baseline: resnet50\n    default: resnet50\n";
  auto config = LoadConfig(Write("clusters.yaml", head + clusters + route + "    clusters: [de, fr]\n    latency_budget: 50ms\n    failover: false\n"));
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->clusters.size(), 2u);
  EXPECT_TRUE(config->clusters_listed);
  EXPECT_EQ(config->clusters[0].name, "fr");
  EXPECT_EQ(config->clusters[0].target, "10.0.0.1:8001");
  EXPECT_EQ(config->clusters[0].rtt, absl::Milliseconds(20));
  EXPECT_EQ(config->clusters[0].intensity.provider->Render()["gco2_per_kwh"], 60);
  // A cluster without its own intensity takes the top-level one.
  EXPECT_EQ(config->clusters[1].intensity.provider->Render()["gco2_per_kwh"], 300);
  EXPECT_EQ(config->clusters[1].stale_intensity, 450);
  EXPECT_FALSE(config->clusters[1].rtt.has_value());
  EXPECT_THAT(config->routes[0].clusters, ::testing::ElementsAre(1, 0));  // de is its home
  EXPECT_EQ(config->routes[0].latency_budget, absl::Milliseconds(50));
  EXPECT_FALSE(config->routes[0].failover);
  // A route naming none may use them all, home first as listed.
  auto all = LoadConfig(Write("all.yaml", head + clusters + route));
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(all->routes[0].clusters, ::testing::ElementsAre(0, 1));
  EXPECT_TRUE(all->routes[0].failover);
  // `upstream.target` alone is one cluster, "default", on the top-level grid.
  auto single = LoadConfig(Write("single.yaml", "upstream: { target: \"h:1\" }\n" + head.substr(head.find('\n') + 1) + route));
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_EQ(single->clusters.size(), 1u);
  EXPECT_EQ(single->clusters[0].name, "default");
  EXPECT_EQ(single->clusters[0].target, "h:1");
  EXPECT_FALSE(single->clusters_listed);

  const std::string file = Path("sidecar.yaml");
  EXPECT_EQ(ErrorOf(head + clusters + route + "    clusters: [fr, es]\n"),
            file + ":11:20: routes[0].clusters: 'es' is not a cluster (fr, de)");
  EXPECT_EQ(ErrorOf(head + clusters + route + "    clusters: [fr, fr]\n"),
            file + ":11:20: routes[0].clusters: cluster 'fr' is listed twice");
  EXPECT_EQ(ErrorOf(head + clusters + "  - { name: fr, target: \"10.0.0.3:8001\" }\n" + route),
            file + ":6:13: cluster name 'fr' is used twice");
  EXPECT_EQ(ErrorOf(head + "clusters:\n  - { name: es, target: \"e:1\", intensity: { region: ES } }\n" + route),
            file + ":4:43: clusters[0].intensity is missing required key 'provider'");
  EXPECT_EQ(ErrorOf(head + "clusters:\n  - { name: es, intensity: { provider: static, gco2_per_kwh: 1 } }\n" + route),
            file + ":4:5: clusters[0] is missing required key 'target'");
  EXPECT_EQ(ErrorOf(head + "clusters:\n  - { name: es, target: nowhere }\n" + route),
            file + ":4:25: clusters[0].target must be host:port, got 'nowhere'");
  EXPECT_THAT(ErrorOf(head + "clusters:\n  - { name: es, target: \"e:1\", max_in_flight: 0 }\n" + route),
              HasSubstr("sidecar.yaml:4:47: clusters[0].max_in_flight must be a whole number of calls, at least 1"));
  EXPECT_EQ(ErrorOf(head + "clusters: []\n" + route), file + ":3:11: clusters must be a non-empty list of clusters (name, target, intensity)");
  EXPECT_EQ(ErrorOf("upstream: { target: \"h:1\" }\n" + head.substr(head.find('\n') + 1) + clusters + route),
            file + ":1:21: upstream.target and clusters: name the targets in one place (each cluster has its own)");
  EXPECT_EQ(ErrorOf("upstream: { target: \"h:1\" }\n" + head.substr(head.find('\n') + 1) + route + "    clusters: [x]\n"),
            file + ":8:15: routes[0].clusters names clusters, but the config lists none (top-level 'clusters:')");
  EXPECT_EQ(ErrorOf(head + clusters + route + "    latency_budget: 0s\n"),
            file + ":11:21: routes[0].latency_budget must be a positive duration such as 30s, 5m or 24h, got '0s'");
}

TEST_F(ConfigTest, InFlightLimitsNameVariantsOfThePool) {
  const std::string head = "upstream: { target: a }\nintensity: { provider: static, gco2_per_kwh: 1 }\nroutes:\n";
  const std::string route = "  - name: r\n    pool: pools/resnet.yaml\n    baseline: resnet50\n    default: resnet50\n";
  auto limited = LoadConfig(Write("limited.yaml", head + route + "    max_in_flight: { resnet152: 8, resnet101: 16 }\n"));
  ASSERT_TRUE(limited.ok()) << limited.status();
  EXPECT_THAT(limited->routes[0].max_in_flight, ::testing::ElementsAre(0, 0, 16, 8));
  auto unlimited = LoadConfig(Write("unlimited.yaml", head + route));
  ASSERT_TRUE(unlimited.ok());
  EXPECT_TRUE(unlimited->routes[0].max_in_flight.empty());

  EXPECT_EQ(ErrorOf(head + route + "    max_in_flight: { vgg16: 8 }\n"),
            Path("sidecar.yaml") + ":8:22: routes[0].max_in_flight: 'vgg16' is not a variant of the pool "
                                   "(resnet34, resnet50, resnet101, resnet152)");
  EXPECT_EQ(ErrorOf(head + route + "    max_in_flight: { resnet152: 0 }\n"),
            Path("sidecar.yaml") + ":8:33: routes[0].max_in_flight.resnet152 must be a whole number of calls, "
                                   "at least 1");
  EXPECT_THAT(ErrorOf(head + route + "    max_in_flight: { resnet152: 2.5 }\n"),
              HasSubstr("routes[0].max_in_flight.resnet152 must be a whole number of calls, at least 1"));
  EXPECT_EQ(ErrorOf(head + route + "    max_in_flight: 8\n"),
            Path("sidecar.yaml") + ":8:20: routes[0].max_in_flight must map variant names to call limits, e.g. "
                                   "{ resnet152: 8 }");
}

TEST_F(ConfigTest, ALatencyObjectiveNeedsItsPercentileAndAWindowOfASecondOrMore) {
  const std::string head = "upstream: { target: a }\nintensity: { provider: static, gco2_per_kwh: 1 }\nroutes:\n";
  const std::string route = "  - name: r\n    pool: pools/resnet.yaml\n    baseline: resnet50\n    default: resnet50\n";
  auto guarded = LoadConfig(Write("guarded.yaml", head + route + "    slo: { latency_p99: 250ms, window: 10s }\n"));
  ASSERT_TRUE(guarded.ok()) << guarded.status();
  ASSERT_TRUE(guarded->routes[0].slo.has_value());
  EXPECT_EQ(guarded->routes[0].slo->latency_p99, absl::Milliseconds(250));
  EXPECT_EQ(guarded->routes[0].slo->window, absl::Seconds(10));
  EXPECT_EQ(ErrorOf(head + route + "    slo: { window: 10s }\n"),
            Path("sidecar.yaml") + ":8:10: routes[0].slo is missing required key 'latency_p99'");
  EXPECT_EQ(ErrorOf(head + route + "    slo: { latency_p99: 250ms, window: 500ms }\n"),
            Path("sidecar.yaml") + ":8:40: routes[0].slo.window must be at least 1s: a shorter one holds too few "
                                   "calls for a 99th percentile");
  EXPECT_THAT(ErrorOf(head + route + "    slo: { latency_p99: fast }\n"),
              HasSubstr("routes[0].slo.latency_p99 must be a positive duration"));
  EXPECT_THAT(ErrorOf(head + route + "    slo: { latency_p99: 1s, p95: 1s }\n"), HasSubstr("unknown key 'p95'"));
  auto ramped = LoadConfig(Write("ramped.yaml", head + route + "    ramp: 60s\n"));
  ASSERT_TRUE(ramped.ok()) << ramped.status();
  EXPECT_EQ(ramped->routes[0].ramp, absl::Seconds(60));
  EXPECT_THAT(ErrorOf(head + route + "    ramp: soon\n"), HasSubstr("routes[0].ramp must be a duration"));
}

TEST_F(ConfigTest, AnEnergySourceNamesAKnownMeterWithItsOwnKeys) {
  const std::string head = "upstream: { target: a }\nintensity: { provider: static, gco2_per_kwh: 1 }\nroutes:\n";
  const std::string route = "  - name: r\n    pool: pools/resnet.yaml\n    baseline: resnet50\n    default: resnet50\n";
  auto triton = LoadConfig(Write("triton.yaml", head + route +
                                                    "    energy:\n      source: triton-metrics\n"
                                                    "      url: http://triton:8002/metrics\n      interval: 30s\n"
                                                    "      half_life: 2h\n      devices: [GPU-1, GPU-2]\n"));
  ASSERT_TRUE(triton.ok()) << triton.status();
  const telemetry::EnergyCalibration& e = triton->routes[0].energy;
  ASSERT_NE(e.meter, nullptr);
  EXPECT_EQ(e.meter->kind(), "triton-metrics");
  EXPECT_EQ(e.interval, absl::Seconds(30));
  EXPECT_EQ(e.half_life, absl::Hours(2));
  EXPECT_THAT(e.devices, ::testing::ElementsAre("GPU-1", "GPU-2"));
  auto prometheus = LoadConfig(Write("prometheus.yaml", head + route +
                                                            "    energy: { source: prometheus, url: http://prom:9090, "
                                                            "query: 'sum(kepler_container_joules_total)' }\n"));
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();
  EXPECT_EQ(prometheus->routes[0].energy.meter->Render()["query"], "sum(kepler_container_joules_total)");
  auto table = LoadConfig(Write("table.yaml", head + route + "    energy: { source: table }\n"));
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->routes[0].energy.meter, nullptr);

  EXPECT_EQ(ErrorOf(head + route + "    energy: { source: wattmeter }\n"),
            Path("sidecar.yaml") + ":8:23: routes[0].energy.source 'wattmeter' is not known (known sources: table, "
                                   "triton-metrics, dcgm-exporter, prometheus)");
  EXPECT_EQ(ErrorOf(head + route + "    energy: { source: dcgm-exporter }\n"),
            Path("sidecar.yaml") + ":8:13: routes[0].energy is missing required key 'url'");
  EXPECT_EQ(ErrorOf(head + route + "    energy: { source: triton-metrics, url: triton:8002 }\n"),
            Path("sidecar.yaml") + ":8:44: routes[0].energy.url must be an http:// or https:// URL");
  EXPECT_EQ(ErrorOf(head + route + "    energy: { source: prometheus, url: http://p:9090 }\n"),
            Path("sidecar.yaml") + ":8:13: routes[0].energy is missing required key 'query'");
  EXPECT_THAT(ErrorOf(head + route + "    energy: { source: triton-metrics, url: http://t, max_intervals: 2 }\n"),
              HasSubstr("routes[0].energy.max_intervals must be at least 3"));
  EXPECT_THAT(ErrorOf(head + route + "    energy: { source: triton-metrics, url: http://t, devices: GPU-1 }\n"),
              HasSubstr("routes[0].energy.devices must be a non-empty list of device ids"));
  EXPECT_THAT(ErrorOf(head + route + "    energy: { interval: 10s }\n"),
              HasSubstr("routes[0].energy: source 'table' reads no meter"));
  EXPECT_THAT(ErrorOf(head + route + "    energy: { source: triton-metrics, url: http://t, query: x }\n"),
              HasSubstr("unknown key 'query'"));
}

TEST_F(ConfigTest, AccountingTakesAPueAndTheHardwaresEmbodiedEmissions) {
  const std::string head = "upstream: { target: a }\nintensity: { provider: static, gco2_per_kwh: 1 }\nroutes:\n";
  const std::string route = "  - name: r\n    pool: pools/resnet.yaml\n    baseline: resnet50\n    default: resnet50\n";
  auto defaults = LoadConfig(Write("defaults.yaml", head + route));
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->accounting.pue, 1.0);
  EXPECT_EQ(defaults->accounting.embodied_kg, 763.23);
  EXPECT_EQ(defaults->accounting.lifespan, absl::Hours(6 * 8760));
  auto set = LoadConfig(Write("set.yaml", head + route +
                                              "accounting: { pue: 1.4, embodied_kg: 3000, lifespan: 35040h, share: 0.25 }\n"));
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->accounting.pue, 1.4);
  EXPECT_EQ(set->accounting.embodied_kg, 3000);
  EXPECT_EQ(set->accounting.lifespan, absl::Hours(35040));
  EXPECT_EQ(set->accounting.share, 0.25);
  EXPECT_EQ(ErrorOf(head + route + "accounting: { pue: 0.9 }\n"),
            Path("sidecar.yaml") + ":8:20: accounting.pue must be at least 1 (facility energy over IT energy)");
  EXPECT_THAT(ErrorOf(head + route + "accounting: { share: 2 }\n"), HasSubstr("accounting.share must be in (0, 1]"));
  EXPECT_THAT(ErrorOf(head + route + "accounting: { embodied_kg: -1 }\n"), HasSubstr("must not be negative"));
  EXPECT_THAT(ErrorOf(head + route + "accounting: { lifespan: 0s }\n"), HasSubstr("accounting.lifespan must be a positive"));
  EXPECT_THAT(ErrorOf(head + route + "accounting: { scope: 3 }\n"), HasSubstr("unknown key 'scope'"));
}

TEST_F(ConfigTest, ErrorsInAPoolFileNameThePoolFile) {
  Write("pools/resnet.yaml", "variants:\n  - { name: resnet34, energy_mj: -1, error_percent: 8 }\n");
  const std::string error = ErrorOf(kValid);
  EXPECT_THAT(error, StartsWith(Path("sidecar.yaml") + ":19:11: routes[0].pool: "));
  EXPECT_THAT(error, HasSubstr(Path("pools/resnet.yaml") + ":2:"));

  std::filesystem::remove(dir_ / "pools/resnet.yaml");
  EXPECT_THAT(ErrorOf(kValid), HasSubstr("cannot open file"));
}

TEST_F(ConfigTest, MissingTraceFileIsReportedAtLoad) {
  std::filesystem::remove(dir_ / "trace.csv");
  // The trace is read when the provider is made, not by LoadConfig; the path is still resolved.
  auto config = LoadConfig(Write("sidecar.yaml", kValid));
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(Spec<telemetry::TraceSpec>(*config).path, Path("trace.csv"));
}

TEST_F(ConfigTest, WebProvidersAndTheirSecrets) {
  setenv("CARBON_CONFIG_TEST_TOKEN", "abc", 1);
  Write("token.txt", "from-a-file\n");
  const std::string head = "upstream: { target: a }\nroutes:\n  - { name: r, pool: pools/resnet.yaml, "
                           "baseline: resnet50, default: resnet50 }\nintensity:\n";
  auto uk = LoadConfig(Write("uk.yaml", head + "  provider: uk-carbon-intensity\n  region_id: 11\n"
                                               "  timeout: 3s\n  max_response_bytes: 100000\n"));
  ASSERT_TRUE(uk.ok()) << uk.status();
  EXPECT_EQ(Spec<telemetry::UkCarbonIntensitySpec>(*uk).region_id, 11);
  EXPECT_EQ(Spec<telemetry::UkCarbonIntensitySpec>(*uk).web.timeout, absl::Seconds(3));
  EXPECT_EQ(Spec<telemetry::UkCarbonIntensitySpec>(*uk).web.max_response_bytes, 100000);
  auto em = LoadConfig(Write("em.yaml", head + "  provider: electricity-maps\n  zone: GB\n  token_file: token.txt\n"));
  ASSERT_TRUE(em.ok()) << em.status();
  EXPECT_EQ(Spec<telemetry::ElectricityMapsSpec>(*em).token_file, Path("token.txt"));
  auto secret = telemetry::ReadSecret("", Spec<telemetry::ElectricityMapsSpec>(*em).token_file);
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ(*secret, "from-a-file");
  auto chain = LoadConfig(Write("chain.yaml", head + "  provider: fallback\n  providers:\n"
                                                     "    - { provider: uk-carbon-intensity, postcode: BS1 }\n"
                                                     "    - { provider: electricity-maps, zone: GB, token_env: CARBON_CONFIG_TEST_TOKEN }\n"
                                                     "    - { provider: static, gco2_per_kwh: 250 }\n"));
  ASSERT_TRUE(chain.ok()) << chain.status();
  const auto& members = Spec<telemetry::FallbackSpec>(*chain).members;
  ASSERT_EQ(members.size(), 3u);
  EXPECT_EQ(dynamic_cast<const telemetry::UkCarbonIntensitySpec&>(*members[0]).postcode, "BS1");
  EXPECT_EQ(dynamic_cast<const telemetry::StaticSpec&>(*members[2]).gco2_per_kwh, 250);

  const struct {
    std::string intensity;
    std::string expected;
  } bad[] = {
      {"  provider: electricity-maps\n  token_env: CARBON_CONFIG_TEST_TOKEN\n",
       "sidecar.yaml:5:3: intensity is missing required key 'zone'"},
      {"  provider: electricity-maps\n  zone: GB\n",
       "sidecar.yaml:5:3: intensity.token needs exactly one of 'token_env' (an environment variable) or 'token_file'"},
      {"  provider: electricity-maps\n  zone: GB\n  token_file: missing.txt\n",
       "sidecar.yaml:7:15: secret file '" + Path("missing.txt") + "' cannot be read"},
      {"  provider: electricity-maps\n  zone: GB\n  token_env: CARBON_CONFIG_TEST_UNSET\n",
       "sidecar.yaml:7:14: environment variable CARBON_CONFIG_TEST_UNSET is not set"},
      {"  provider: watttime\n  username: u\n  password_env: CARBON_CONFIG_TEST_TOKEN\n",
       "intensity.region (the WattTime region, e.g. CAISO_NORTH) is required"},
      {"  provider: uk-carbon-intensity\n  region_id: 42\n",
       "sidecar.yaml:6:14: intensity.region_id must be a region of the API, 1 to 17"},
      {"  provider: carbon-aware-sdk\n  location: eastus\n", "intensity is missing required key 'base_url'"},
      {"  provider: co2signal\n",
       "sidecar.yaml:5:13: intensity.provider 'co2signal' is not known (known providers: static, trace, "
       "uk-carbon-intensity, electricity-maps, watttime, carbon-aware-sdk, fallback)"},
      {"  provider: fallback\n  providers: []\n", "sidecar.yaml:6:14: intensity.providers must be a non-empty list"},
      {"  provider: fallback\n  providers:\n    - { provider: fallback }\n",
       "sidecar.yaml:7:19: intensity.providers[0].provider 'fallback' is not known"},
      {"  provider: uk-carbon-intensity\n  zone: GB\n", "sidecar.yaml:6:3: unknown key 'zone' in intensity"},
  };
  for (const auto& c : bad) {
    const std::string error = ErrorOf(head + c.intensity);
    EXPECT_THAT(error, HasSubstr(c.expected)) << c.intensity;
    EXPECT_THAT(error, ::testing::Not(HasSubstr("abc")));  // the secret itself never shows
  }
}

TEST_F(ConfigTest, UnreadableOrEmptyFiles) {
  auto missing = LoadConfig(Path("nope.yaml"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(ErrorOf(""), HasSubstr("the config must be a mapping"));
  EXPECT_THAT(ErrorOf("- a\n- b\n"), HasSubstr("the config must be a mapping, got a list"));
  EXPECT_THAT(ErrorOf("upstream: { target: a }\nintensity: { provider: static, gco2_per_kwh: 1 }\n"
                      "routes: []\n"),
              HasSubstr("sidecar.yaml:3:9: routes must be a non-empty list"));
}

}  // namespace
}  // namespace carbon::sidecar
