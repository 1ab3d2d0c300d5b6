// The admin HTTP port of a running sidecar, read with a real HTTP client, against the carbon the
// test computes itself for the requests it sends.
#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <map>
#include <random>
#include <regex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/fake_upstream.h"
#include "inference/grpc_service.grpc.pb.h"
#include "selector/policies/horizon_target.h"
#include "telemetry/providers/kinds.h"
#include "sidecar/server.h"
#include "tests/support/paper_pool.h"
#include "tests/support/poll.h"
#include "tests/support/static_sidecar_config.h"

namespace carbon::sidecar {
namespace {

using ::testing::HasSubstr;
using testing::PollUntil;

constexpr double kE34 = testing::kResnetEnergyMj[0], kE50 = testing::kResnetEnergyMj[1],
                 kE101 = testing::kResnetEnergyMj[2];

SidecarConfig Config(int upstream_port, double intensity) {
  return testing::StaticSidecarConfig(upstream_port, intensity);
}

inference::ModelInferRequest Request(int64_t batch) {
  inference::ModelInferRequest req;
  req.set_model_name("resnet");
  auto* in = req.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  for (int64_t d : {batch, int64_t{3}, int64_t{4}, int64_t{4}}) in->add_shape(d);
  req.add_raw_input_contents(std::string(static_cast<size_t>(batch) * 48 * 4, '\1'));
  return req;
}

// Sample lines of a text exposition, keyed by name{labels} as written.
std::map<std::string, double> ParseSamples(const std::string& text) {
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    double v;
    const std::string value(line.substr(space + 1));
    if (value == "NaN") {
      v = std::nan("");
    } else {
      EXPECT_TRUE(absl::SimpleAtod(value, &v)) << line;
    }
    samples[std::string(line.substr(0, space))] = v;
  }
  return samples;
}

// Whether Prometheus's own linter accepts an exposition (promtool, installed by scripts/setup.sh).
void ExpectPromtoolAccepts(const std::string& exposition) {
  const std::string file = (std::filesystem::temp_directory_path() / absl::StrCat("scrape_", getpid(), ".txt")).string();
  std::ofstream(file) << exposition;
  const std::string check = absl::StrCat("promtool check metrics < ", file, " > ", file, ".out 2>&1");
  EXPECT_EQ(std::system(check.c_str()), 0) << std::ifstream(file + ".out").rdbuf();
  std::filesystem::remove(file);
  std::filesystem::remove(file + ".out");
}

// A client of a sidecar under test: gRPC to its listener, HTTP to its admin port.
struct SidecarClient {
  explicit SidecarClient(SidecarServer& sidecar)
      : stub(inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
            absl::StrCat("127.0.0.1:", sidecar.port()), grpc::InsecureChannelCredentials()))),
        http("127.0.0.1", sidecar.admin_port()) {
    http.set_read_timeout(5, 0);
  }
  // The first route of /v1/selection; null when the admin port did not answer.
  nlohmann::json Route() {
    auto res = http.Get("/v1/selection");
    return res && res->status == 200 ? nlohmann::json::parse(res->body)["routes"][0] : nlohmann::json();
  }
  // One sample of /metrics, named as written; -1 when absent or unanswered.
  double Sample(const std::string& name) {
    auto res = http.Get("/metrics");
    if (!res) return -1;
    const auto samples = ParseSamples(res->body);
    const auto it = samples.find(name);
    return it == samples.end() ? -1 : it->second;
  }

  std::unique_ptr<inference::GRPCInferenceService::Stub> stub;
  httplib::Client http;
};

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bench::FakeUpstreamOptions options;
    options.models = {"resnet34", "resnet50", "resnet101", "resnet152"};
    auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
    ASSERT_TRUE(upstream.ok());
    upstream_ = *std::move(upstream);
    auto sidecar = SidecarServer::Start(Config(upstream_->port(), 200));
    ASSERT_TRUE(sidecar.ok()) << sidecar.status();
    sidecar_ = *std::move(sidecar);
    stub_ = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", sidecar_->port()), grpc::InsecureChannelCredentials()));
    http_ = std::make_unique<httplib::Client>("127.0.0.1", sidecar_->admin_port());
    http_->set_read_timeout(5, 0);
  }

  grpc::Status Infer(int64_t batch) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    inference::ModelInferResponse resp;
    return stub_->ModelInfer(&ctx, Request(batch), &resp);
  }

  std::map<std::string, double> Scrape() {
    auto res = http_->Get("/metrics");
    EXPECT_TRUE(res);
    if (!res) return {};
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    return ParseSamples(res->body);
  }

  std::unique_ptr<bench::FakeUpstreamServer> upstream_;
  std::unique_ptr<SidecarServer> sidecar_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
  std::unique_ptr<httplib::Client> http_;
};

TEST_F(AdminTest, MetricsAddUpToWhatWasServed) {
  // 3 requests of batch 2 at 200 g/kWh go to resnet101; then, at 300, 2 requests of batch 1 to
  // resnet34.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Infer(2).ok());
  ASSERT_TRUE(sidecar_->Reload(Config(upstream_->port(), 300)).ok());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(Infer(1).ok());

  auto m = Scrape();
  const std::string r101 = "{route=\"resnet\",model=\"resnet101\"}";
  const std::string r34 = "{route=\"resnet\",model=\"resnet34\"}";
  EXPECT_EQ(m["carbon_sidecar_requests_total{route=\"resnet\",model=\"resnet101\",code=\"OK\"}"], 3);
  EXPECT_EQ(m["carbon_sidecar_requests_total{route=\"resnet\",model=\"resnet34\",code=\"OK\"}"], 2);
  EXPECT_EQ(m["carbon_sidecar_inferences_total" + r101], 6);
  EXPECT_EQ(m["carbon_sidecar_inferences_total" + r34], 2);
  const double g101 = 6 * kE101 * 1e-3 / 3.6e6 * 200;
  const double g34 = 2 * kE34 * 1e-3 / 3.6e6 * 300;
  const std::string table101 = "{route=\"resnet\",model=\"resnet101\",energy_source=\"table\"}";
  const std::string table34 = "{route=\"resnet\",model=\"resnet34\",energy_source=\"table\"}";
  EXPECT_NEAR(m["carbon_sidecar_emissions_grams_total" + table101], g101, 1e-15);
  EXPECT_NEAR(m["carbon_sidecar_emissions_grams_total" + table34], g34, 1e-15);
  EXPECT_NEAR(m["carbon_sidecar_energy_joules_total" + table101], 6 * kE101 * 1e-3, 1e-12);
  // No meter on this route: every gram is the table's, and said so.
  EXPECT_EQ(m.count("carbon_sidecar_emissions_grams_total{route=\"resnet\",model=\"resnet101\",energy_source=\"measured\"}"), 0u);
  // SCI per inference: resnet101's operational grams and its share, by energy, of the embodied
  // grams amortised so far, over its six inferences (PUE 1 by default).
  const double embodied = m["carbon_sidecar_embodied_emissions_grams"];
  EXPECT_GT(embodied, 0);
  const double j101 = 6 * kE101 * 1e-3, j34 = 2 * kE34 * 1e-3;
  EXPECT_NEAR(m["carbon_sidecar_sci_grams_per_inference" + r101], (g101 + embodied * j101 / (j101 + j34)) / 6,
              1e-6 * (g101 + embodied) / 6);
  EXPECT_EQ(m["carbon_sidecar_pue_ratio"], 1);
  // Σ items × C = 6 × 200 + 2 × 300 = 1800.
  const double baseline = kE50 * 1e-3 / 3.6e6 * 1800;
  EXPECT_NEAR(m["carbon_sidecar_counterfactual_emissions_grams_total{route=\"resnet\",model=\"resnet50\"}"],
              baseline, 1e-15);
  const double mean_error = (6 * 6.454 + 2 * 8.58) / 8;
  EXPECT_NEAR(m["carbon_sidecar_error_percent_sum_total{route=\"resnet\"}"], 6 * 6.454 + 2 * 8.58, 1e-9);
  const double rqi = (7.138 - mean_error) / 7.138 * 100;
  EXPECT_NEAR(m["carbon_sidecar_carbon_emission_efficiency{route=\"resnet\",baseline=\"resnet50\"}"],
              rqi / (g101 + g34 - baseline), 1e-6 * std::abs(rqi / (g101 + g34 - baseline)));
  EXPECT_EQ(m["carbon_sidecar_selected_model_info" + r34], 1);
  EXPECT_EQ(m["carbon_sidecar_selected_model_info" + r101], 0);
  EXPECT_EQ(m["carbon_sidecar_grid_intensity_gco2_per_kwh{source=\"static\",region=\"test-region\"}"], 300);
  EXPECT_EQ(m["carbon_sidecar_intensity_window_gco2_per_kwh{bound=\"low\"}"], 100);
  EXPECT_EQ(m["carbon_sidecar_request_duration_seconds_count" + r101], 3);
  EXPECT_EQ(m["carbon_sidecar_request_duration_seconds_bucket{route=\"resnet\",model=\"resnet101\",le=\"+Inf\"}"], 3);
  EXPECT_EQ(m["carbon_sidecar_config_reloads_total{result=\"success\"}"], 0);  // Reload() is not a file reload
}

TEST_F(AdminTest, FailuresAreCountedByCodeAndNotCharged) {
  upstream_.reset();  // nothing listens any more
  EXPECT_EQ(Infer(1).error_code(), grpc::StatusCode::UNAVAILABLE);
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-carbon-pin-model", "vgg16");
  inference::ModelInferResponse resp;
  EXPECT_EQ(stub_->ModelInfer(&ctx, Request(1), &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto m = Scrape();
  EXPECT_EQ(m["carbon_sidecar_requests_total{route=\"resnet\",model=\"resnet101\",code=\"UNAVAILABLE\"}"], 1);
  EXPECT_EQ(m["carbon_sidecar_requests_total{route=\"resnet\",model=\"resnet101\",code=\"OK\"}"], 0);
  EXPECT_EQ(m["carbon_sidecar_emissions_grams_total{route=\"resnet\",model=\"resnet101\"}"], 0);
  EXPECT_EQ(m["carbon_sidecar_invalid_requests_total{reason=\"bad_control\"}"], 1);
}

TEST_F(AdminTest, StreamMessagesAndPassthroughCallsAreCounted) {
  grpc::ClientContext ctx;
  auto stream = stub_->ModelStreamInfer(&ctx);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(stream->Write(Request(1)));
  inference::ModelInferRequest direct = Request(1);
  direct.set_model_name("resnet50");
  ASSERT_TRUE(stream->Write(direct));
  stream->WritesDone();
  inference::ModelStreamInferResponse resp;
  while (stream->Read(&resp)) {
  }
  ASSERT_TRUE(stream->Finish().ok());
  grpc::ClientContext live_ctx;
  inference::ServerLiveResponse live;
  ASSERT_TRUE(stub_->ServerLive(&live_ctx, inference::ServerLiveRequest(), &live).ok());

  auto m = Scrape();
  EXPECT_EQ(m["carbon_sidecar_requests_total{route=\"resnet\",model=\"resnet101\",code=\"OK\"}"], 4);
  EXPECT_EQ(m["carbon_sidecar_passthrough_requests_total{code=\"OK\"}"], 1);  // ServerLive
}

TEST_F(AdminTest, OpenMetricsOnRequest) {
  auto res = http_->Get("/metrics", {{"Accept", "application/openmetrics-text; version=1.0.0"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/openmetrics-text; version=1.0.0; charset=utf-8");
  EXPECT_THAT(res->body, HasSubstr("# TYPE carbon_sidecar_requests counter\n"));
  EXPECT_THAT(res->body, HasSubstr("carbon_sidecar_requests_total{"));
  EXPECT_TRUE(res->body.ends_with("# EOF\n"));
}

TEST_F(AdminTest, EveryFamilyHasHelpAndTypeOnceBeforeItsSamples) {
  auto res = http_->Get("/metrics");
  ASSERT_TRUE(res);
  std::map<std::string, int> types;
  std::string current;
  for (absl::string_view line : absl::StrSplit(res->body, '\n')) {
    if (absl::StartsWith(line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ');
      current = parts[2];
      ++types[current];
    } else if (!line.empty() && line[0] != '#') {
      const std::string name(line.substr(0, line.find_first_of("{ ")));
      EXPECT_TRUE(absl::StartsWith(name, current)) << name << " outside its family " << current;
    }
  }
  for (const auto& [name, count] : types) EXPECT_EQ(count, 1) << name;
  EXPECT_GE(types.size(), 20u);
  EXPECT_TRUE(std::regex_search(res->body, std::regex("carbon_sidecar_build_info\\{version=\"0\\.1\\.0\",revision=\"[0-9a-f]+|unknown\"\\} 1")));
}

// A fake upstream serving the four variants and, in front of it, a sidecar on the h2 plane at
// 200 g/kWh (`adjust_upstream` and `adjust` change their options first); shut down when this goes.
struct H2SidecarAt200 {
  std::unique_ptr<bench::FakeUpstreamServer> upstream;
  std::unique_ptr<SidecarServer> sidecar;

  void Start(const std::function<void(SidecarConfig&)>& adjust = {},
             const std::function<void(bench::FakeUpstreamOptions&)>& adjust_upstream = {}) {
    bench::FakeUpstreamOptions options;
    options.models = {"resnet34", "resnet50", "resnet101", "resnet152"};
    if (adjust_upstream) adjust_upstream(options);
    auto started_upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
    ASSERT_TRUE(started_upstream.ok()) << started_upstream.status();
    upstream = *std::move(started_upstream);
    SidecarConfig config = Config(upstream->port(), 200);
    config.data_plane = SidecarConfig::DataPlane::kH2;
    if (adjust) adjust(config);
    auto started_sidecar = SidecarServer::Start(config);
    ASSERT_TRUE(started_sidecar.ok()) << started_sidecar.status();
    sidecar = *std::move(started_sidecar);
  }
  ~H2SidecarAt200() {
    if (sidecar) sidecar->Shutdown(absl::ZeroDuration());
  }
};

// The h2 data plane's own families: connections both ways, calls in flight, bytes held.
TEST(H2PlaneMetricsTest, ConnectionsCallsAndHeldBytesAreExported) {
  H2SidecarAt200 h2;
  ASSERT_NO_FATAL_FAILURE(h2.Start());
  SidecarClient client(*h2.sidecar);
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    inference::ModelInferResponse response;
    ASSERT_TRUE(client.stub->ModelInfer(&ctx, Request(1), &response).ok());
  }
  // One client connection, carried by one worker, which dialled the upstream once.
  EXPECT_EQ(client.Sample("carbon_sidecar_h2_connections_total{side=\"client\"}"), 1);
  EXPECT_EQ(client.Sample("carbon_sidecar_h2_connections_total{side=\"upstream\"}"), 1);
  EXPECT_EQ(client.Sample("carbon_sidecar_h2_open_connections{side=\"client\"}"), 1);
  EXPECT_EQ(client.Sample("carbon_sidecar_h2_open_connections{side=\"upstream\"}"), 1);
  EXPECT_EQ(client.Sample("carbon_sidecar_h2_tls_handshake_failures_total{side=\"client\"}"), 0);
  EXPECT_TRUE(PollUntil([&] { return client.Sample("carbon_sidecar_h2_calls_in_flight") == 0; }));
  EXPECT_EQ(client.Sample("carbon_sidecar_h2_held_request_bytes"), 0);
  auto res = client.http.Get("/metrics");
  ASSERT_TRUE(res);
  ExpectPromtoolAccepts(res->body);
}

// With data_plane_upstream_max_concurrent_streams, a worker opens another upstream connection
// when each of its connections carries that many calls, gives a new call to the least busy one,
// and keeps them for the calls that follow.
TEST(H2PlaneMetricsTest, AWorkerSpreadsCallsOverUpstreamConnectionsOfAtMostTheLimit) {
  H2SidecarAt200 h2;
  ASSERT_NO_FATAL_FAILURE(h2.Start(
      [](SidecarConfig& config) {
        config.data_plane_threads = 1;  // every call on one worker
        config.data_plane_upstream_max_concurrent_streams = 2;
      },
      [](bench::FakeUpstreamOptions& options) {
        options.service_time["resnet101"] = absl::Milliseconds(400);  // the model chosen at 200 g/kWh
      }));
  SidecarClient client(*h2.sidecar);
  auto wave = [&](int calls) {
    std::vector<std::thread> threads;
    std::atomic<int> succeeded{0};
    for (int i = 0; i < calls; ++i) {
      threads.emplace_back([&] {
        grpc::ClientContext ctx;
        inference::ModelInferResponse response;
        if (client.stub->ModelInfer(&ctx, Request(1), &response).ok()) succeeded.fetch_add(1);
      });
    }
    // While the five calls are served: three connections (2 + 2 + 1 calls).
    const bool spread = PollUntil([&] { return client.Sample("carbon_sidecar_h2_calls_in_flight") == calls; });
    const double open = client.Sample("carbon_sidecar_h2_open_connections{side=\"upstream\"}");
    for (auto& t : threads) t.join();
    EXPECT_TRUE(spread);
    EXPECT_EQ(open, 3);
    EXPECT_EQ(succeeded.load(), calls);
  };
  wave(5);
  EXPECT_EQ(client.Sample("carbon_sidecar_h2_connections_total{side=\"upstream\"}"), 3);
  wave(5);  // the same three connections again
  EXPECT_EQ(client.Sample("carbon_sidecar_h2_connections_total{side=\"upstream\"}"), 3);
  EXPECT_EQ(client.Sample("carbon_sidecar_h2_open_connections{side=\"upstream\"}"), 3);
}

// An upstream connection idle for data_plane_upstream_idle_timeout is closed; the next call
// dials again.
TEST(H2PlaneMetricsTest, AnIdleUpstreamConnectionIsClosedAndTheNextCallDialsAgain) {
  H2SidecarAt200 h2;
  ASSERT_NO_FATAL_FAILURE(h2.Start([](SidecarConfig& config) {
    config.data_plane_threads = 1;
    config.data_plane_upstream_idle_timeout = absl::Milliseconds(300);
  }));
  SidecarClient client(*h2.sidecar);
  auto infer = [&] {
    grpc::ClientContext ctx;
    inference::ModelInferResponse response;
    return client.stub->ModelInfer(&ctx, Request(1), &response).ok();
  };
  const char* const kOpen = "carbon_sidecar_h2_open_connections{side=\"upstream\"}";
  const char* const kDialled = "carbon_sidecar_h2_connections_total{side=\"upstream\"}";
  ASSERT_TRUE(infer());
  EXPECT_EQ(client.Sample(kOpen), 1);
  // Calls in quick succession keep it open: none is idle for 300 ms.
  const absl::Time busy_until = absl::Now() + absl::Milliseconds(700);
  while (absl::Now() < busy_until) {
    ASSERT_TRUE(infer());
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(client.Sample(kOpen), 1);
  EXPECT_EQ(client.Sample(kDialled), 1);
  // Left idle, it is closed after the timeout (and within half of it more: the sweep interval).
  const absl::Time idle_from = absl::Now();
  EXPECT_TRUE(PollUntil([&] { return client.Sample(kOpen) == 0; }));
  EXPECT_LT(absl::Now() - idle_from, absl::Seconds(2));
  EXPECT_GE(absl::Now() - idle_from, absl::Milliseconds(150));
  ASSERT_TRUE(infer());
  EXPECT_EQ(client.Sample(kOpen), 1);
  EXPECT_EQ(client.Sample(kDialled), 2);
}

TEST_F(AdminTest, SelectionExplainsTheChoice) {
  auto res = http_->Get("/v1/selection");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  const auto doc = nlohmann::json::parse(res->body);
  ASSERT_EQ(doc["routes"].size(), 1u);
  const auto& route = doc["routes"][0];
  EXPECT_EQ(route["route"], "resnet");
  EXPECT_EQ(route["model"], "resnet101");
  EXPECT_EQ(route["reason"], "heuristic");
  EXPECT_EQ(route["policy"], "linear-interpolation");
  EXPECT_DOUBLE_EQ(route["explanation"]["t"].get<double>(), 0.5);
  EXPECT_NEAR(route["explanation"]["target_energy_mj"].get<double>(), 799.04, 0.01);
  EXPECT_EQ(route["window"]["low"], 100);
  EXPECT_EQ(route["window"]["high"], 300);
  EXPECT_EQ(route["candidates"].size(), 4u);
  EXPECT_EQ(route["candidates"][3]["model"], "resnet152");
  EXPECT_EQ(doc["intensity"]["provider"], "static");
  EXPECT_EQ(doc["intensity"]["gco2_per_kwh"], 200);
  EXPECT_GE(doc["intensity"]["age_seconds"].get<double>(), 0);
}

// A route aimed at 6.9 % mean error over 3-hour horizons, on a replayed trace 1,800 times faster
// than the clock (a half-hour a second) whose intensity swings between clean and dirty: the policy
// mixes variants to meet the target, and the ledger (the /metrics counters) agrees when the
// horizon ends.
TEST(AimedRouteTest, AnAccuracyTargetEndsItsHorizonAtOrUnderTheTargetAsTheLedgerCounts) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / absl::StrCat("aimed_", getpid());
  std::filesystem::create_directories(dir);
  {
    std::ofstream csv(dir / "swing.csv");
    csv << "from,intensity\n";
    const int swing[] = {120, 380, 90, 300, 420, 150, 110, 360, 250, 80, 400, 200};
    for (int i = 0; i < 48; ++i) {
      csv << absl::FormatTime("%Y-%m-%dT%H:%MZ", absl::FromUnixSeconds(1685577600) + i * absl::Minutes(30),
                              absl::UTCTimeZone())
          << "," << swing[i % 12] << "\n";
    }
  }
  bench::FakeUpstreamOptions options;
  options.models = {"resnet34", "resnet50", "resnet101", "resnet152"};
  auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
  ASSERT_TRUE(upstream.ok());
  SidecarConfig config = testing::StaticSidecarConfig((*upstream)->port(), 200);
  auto trace = std::make_shared<telemetry::TraceSpec>();
  trace->path = (dir / "swing.csv").string();
  trace->time_column = "from";
  trace->value_column = "intensity";
  trace->speedup = 1800;
  trace->start = absl::FromUnixSeconds(1685577600);  // a horizon boundary: 2023-06-01T00:00Z
  config.intensity.provider = trace;
  config.intensity.refresh = absl::Milliseconds(100);
  config.intensity.include_forecast = true;
  config.intensity.forecast_horizon = absl::Hours(4);
  config.intensity.fixed_bounds.reset();
  constexpr double kTarget = 6.9;
  config.routes[0].policy = selector::MakeHorizonTargetSpec({selector::PlanLimit::Kind::kMeanErrorPercent, kTarget},
                                                            {absl::Hours(3), absl::UnixEpoch()});
  auto sidecar = SidecarServer::Start(config);
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  SidecarClient client(**sidecar);
  auto& stub = client.stub;
  httplib::Client& http = client.http;
  const auto selection = [&] { return client.Route(); };

  // Steady traffic until the first horizon has ended (its time left jumps back up).
  // Every tenth call is pinned to resnet34 (8.58 % error) by its client: the ledger counts it, and
  // the policy must make up for it with the rest.
  std::atomic<bool> sending{true};
  std::atomic<int> failed{0}, pinned{0};
  std::thread sender([&] {
    for (int n = 0; sending; ++n) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      if (n % 10 == 9) ctx.AddMetadata("x-carbon-pin-model", "resnet34");
      inference::ModelInferResponse resp;
      if (!stub->ModelInfer(&ctx, Request(1), &resp).ok()) {
        ++failed;
      } else if (n % 10 == 9) {
        pinned += ctx.GetServerInitialMetadata().find("x-carbon-reason")->second == "pinned";
      }
      absl::SleepFor(absl::Milliseconds(1));  // a steady rate, not a flood
    }
  });
  std::set<std::string> models;
  double left_before = 3 * 3600, achieved = -1;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (absl::Now() < give_up) {
    const nlohmann::json route = selection();
    if (route.is_null() || !route["explanation"].contains("horizon_left_seconds")) continue;
    models.insert(route["model"].get<std::string>());
    const double left = route["explanation"]["horizon_left_seconds"].get<double>();
    if (left > left_before + 60) break;  // a new horizon
    left_before = left;
    if (route["explanation"].contains("achieved_error_percent")) {
      achieved = route["explanation"]["achieved_error_percent"].get<double>();
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  sending = false;
  sender.join();
  EXPECT_EQ(failed, 0);
  ASSERT_LT(absl::Now(), give_up) << "the horizon never ended";

  auto res = http.Get("/metrics");
  ASSERT_TRUE(res);
  const std::map<std::string, double> samples = ParseSamples(res->body);
  double inferences = 0;
  for (const char* model : {"resnet34", "resnet50", "resnet101", "resnet152"}) {
    inferences += samples.at(absl::StrCat(R"(carbon_sidecar_inferences_total{route="resnet",model=")", model, R"("})"));
  }
  const double mean_error = samples.at(R"(carbon_sidecar_error_percent_sum_total{route="resnet"})") / inferences;
  // The ledger's whole run is the first horizon and a few calls of the next (at most one poll of
  // this loop, ~1 % of the traffic), which may go to any variant: hence the small allowance (0.05:
  // under ThreadSanitizer the decisions lag the 1,800× trace more; CI saw 6.9307 once).
  constexpr double kAllowance = 0.05;
  EXPECT_LE(mean_error, kTarget + kAllowance) << "inferences " << inferences;
  // Not by sending everything to the best model: the target was met at less than its carbon.
  EXPECT_GT(mean_error, 6.2);
  EXPECT_GT(achieved, 0);
  EXPECT_LE(achieved, kTarget + kAllowance);
  EXPECT_GE(models.size(), 2u) << "the intensity swings: the decision must move";
  EXPECT_EQ(samples.count(R"(carbon_sidecar_horizon_error_percent{route="resnet",value="target"})"), 1u);
  EXPECT_DOUBLE_EQ(samples.at(R"(carbon_sidecar_horizon_error_percent{route="resnet",value="target"})"), kTarget);
  EXPECT_EQ(samples.count(R"(carbon_sidecar_policy_lambda_grams_per_error_percent{route="resnet"})"), 1u);
  EXPECT_EQ(samples.count(R"(carbon_sidecar_horizon_emissions_grams{route="resnet",value="achieved"})"), 1u);
  EXPECT_GT(pinned, 20);
  EXPECT_GE(samples.at(R"(carbon_sidecar_inferences_total{route="resnet",model="resnet34"})"), pinned.load());
  // The exposition with the aimed policy's families passes Prometheus's own linter.
  ExpectPromtoolAccepts(res->body);
  std::filesystem::remove_all(dir);
}

// resnet152 limited to two calls in flight, each held two seconds by the upstream: the excess
// goes to resnet101 (the next lower energy), pins and quality floors that only resnet152 meets are
// refused, and once the two calls end resnet152 takes calls again.
TEST(CapacityGuardTest, AVariantAtItsLimitSpillsTheExcessDownAndTakesCallsAgainOnceFree) {
  bench::FakeUpstreamOptions options;
  options.models = {"resnet34", "resnet50", "resnet101", "resnet152"};
  options.service_time["resnet152"] = absl::Seconds(2);
  auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
  ASSERT_TRUE(upstream.ok());
  SidecarConfig config = testing::StaticSidecarConfig((*upstream)->port(), 100);  // t = 1: resnet152
  config.routes[0].max_in_flight = {0, 0, 0, 2};
  auto sidecar = SidecarServer::Start(config);
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  SidecarClient client(**sidecar);
  auto& stub = client.stub;
  httplib::Client& http = client.http;
  struct Answer {
    grpc::Status status;
    std::string model, reason;
  };
  const auto infer = [&](std::vector<std::pair<std::string, std::string>> headers) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    for (const auto& [k, v] : headers) ctx.AddMetadata(k, v);
    inference::ModelInferResponse resp;
    Answer a{stub->ModelInfer(&ctx, Request(1), &resp), "", ""};
    const auto& md = ctx.GetServerInitialMetadata();
    if (auto it = md.find("x-carbon-model"); it != md.end()) a.model = std::string(it->second.data(), it->second.size());
    if (auto it = md.find("x-carbon-reason"); it != md.end()) a.reason = std::string(it->second.data(), it->second.size());
    return a;
  };
  const auto metric = [&](const std::string& sample) { return client.Sample(sample); };
  const std::string in_flight_152 = R"(carbon_sidecar_in_flight_requests{route="resnet",model="resnet152"})";

  Answer held[2];
  std::vector<std::thread> holders;
  for (int i = 0; i < 2; ++i) holders.emplace_back([&, i] { held[i] = infer({}); });
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (metric(in_flight_152) < 2 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(metric(in_flight_152), 2);

  const Answer spilled = infer({});
  EXPECT_TRUE(spilled.status.ok()) << spilled.status.error_message();
  EXPECT_EQ(spilled.model, "resnet101");
  EXPECT_EQ(spilled.reason, "in_flight_limit");
  // A floor of 6.5 % still admits resnet101 (6.454 %); one of 6.0 % only resnet152, which is full.
  const Answer floored = infer({{"x-carbon-max-error-percent", "6.5"}});
  EXPECT_EQ(floored.model, "resnet101");
  const Answer too_strict = infer({{"x-carbon-max-error-percent", "6.0"}});
  EXPECT_EQ(too_strict.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(too_strict.status.error_message(),
              HasSubstr("resnet152 and every ready variant of lower energy within the requested error are at their "
                        "in-flight limits"));
  const Answer pinned = infer({{"x-carbon-pin-model", "resnet152"}});
  EXPECT_EQ(pinned.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(pinned.status.error_message(), HasSubstr("x-carbon-pin-model 'resnet152' is at its limit of 2 calls"));
  const Answer pinned_elsewhere = infer({{"x-carbon-pin-model", "resnet50"}});
  EXPECT_EQ(pinned_elsewhere.model, "resnet50");
  EXPECT_EQ(metric(in_flight_152), 2);  // still held: the calls above were decided while it was full

  for (auto& t : holders) t.join();
  for (const Answer& a : held) {
    EXPECT_TRUE(a.status.ok());
    EXPECT_EQ(a.model, "resnet152");
  }
  EXPECT_EQ(metric(in_flight_152), 0);
  EXPECT_EQ(metric(R"(carbon_sidecar_in_flight_requests{route="resnet",model="resnet101"})"), 0);
  EXPECT_EQ(metric(R"(carbon_sidecar_spilled_requests_total{route="resnet",from="resnet152",to="resnet101",reason="in_flight_limit"})"), 2);
  EXPECT_EQ(metric(R"(carbon_sidecar_spilled_requests_total{route="resnet",from="resnet152",to="resnet34",reason="in_flight_limit"})"), 0);
  EXPECT_EQ(metric(R"(carbon_sidecar_max_in_flight_requests{route="resnet",model="resnet152",source="configured"})"), 2);
  EXPECT_EQ(metric(R"(carbon_sidecar_max_in_flight_requests{route="resnet",model="resnet101",source="configured"})"), -1);  // no limit
  EXPECT_EQ(metric(R"(carbon_sidecar_requests_total{route="resnet",model="resnet152",code="RESOURCE_EXHAUSTED"})"), 2);

  // Free again: the policy's choice serves (its two slots are used one call at a time here).
  const Answer again = infer({});
  EXPECT_EQ(again.model, "resnet152");
  EXPECT_EQ(again.reason, "heuristic");
  const auto selection = nlohmann::json::parse(http.Get("/v1/selection")->body)["routes"][0]["candidates"];
  EXPECT_EQ(selection[3]["max_in_flight"], 2);
  EXPECT_EQ(selection[3]["max_in_flight_source"], "configured");
  EXPECT_EQ(selection[3]["in_flight"], 0);
  EXPECT_TRUE(selection[2]["max_in_flight"].is_null());
  EXPECT_TRUE(selection[2]["max_in_flight_source"].is_null());  // no slo: nothing is learned
}

// resnet152 answers in 150 ms against an objective of 50 ms at the 99th percentile: under steady
// traffic the guard cuts its share and sends the rest to the next lower-energy variant, which
// answers at once; the policy's own weight stays where it was, and a reload with a looser
// objective keeps serving.
TEST(LatencyGuardRouteTest, AVariantOverTheObjectiveLosesTrafficDownTheEnergyLadder) {
  bench::FakeUpstreamOptions options;
  options.models = {"resnet34", "resnet50", "resnet101", "resnet152"};
  options.service_time["resnet152"] = absl::Milliseconds(150);
  auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
  ASSERT_TRUE(upstream.ok());
  SidecarConfig config = testing::StaticSidecarConfig((*upstream)->port(), 100);  // the policy: resnet152
  config.routes[0].slo = selector::LatencySlo{absl::Milliseconds(50), absl::Seconds(1)};
  auto sidecar = SidecarServer::Start(config);
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  SidecarClient client(**sidecar);
  auto& stub = client.stub;
  httplib::Client& http = client.http;

  std::atomic<bool> sending{true};
  std::atomic<int> failed{0}, to_101{0}, answered{0}, moved_by_guard{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      while (sending) {
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
        inference::ModelInferResponse resp;
        if (!stub->ModelInfer(&ctx, Request(1), &resp).ok()) {
          ++failed;
          continue;
        }
        ++answered;
        to_101 += ctx.GetServerInitialMetadata().find("x-carbon-model")->second == "resnet101";
        moved_by_guard += ctx.GetServerInitialMetadata().find("x-carbon-reason")->second == "latency_slo";
        absl::SleepFor(absl::Milliseconds(2));
      }
    });
  }
  nlohmann::json candidates;
  const absl::Time give_up = absl::Now() + absl::Seconds(15);
  while (absl::Now() < give_up) {
    auto res = http.Get("/v1/selection");
    if (res && res->status == 200) {
      candidates = nlohmann::json::parse(res->body)["routes"][0]["candidates"];
      if (candidates[3]["weight"].get<double>() <= 0.3 && to_101 > 20) break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_LE(candidates[3]["weight"].get<double>(), 0.3) << candidates.dump();
  EXPECT_EQ(candidates[3]["policy_weight"], 1);
  EXPECT_LT(candidates[3]["guard_cap"].get<double>(), 1);
  EXPECT_EQ(nlohmann::json::parse(http.Get("/v1/selection")->body)["routes"][0]["weights_moved_by"], "latency_slo");
  EXPECT_GE(candidates[3]["window_p99_seconds"].get<double>(), 0.1);
  // The share goes down the ladder, the next variant first: resnet101 takes it while it keeps the
  // objective (most of it here; under a sanitizer's slowness resnet101 can go over too and pass
  // part of it further down, so only that it takes some is asserted).
  EXPECT_GT(candidates[2]["weight"].get<double>(), 0) << candidates.dump();
  EXPECT_GT(to_101, 20);

  // A looser objective, reloaded under traffic: nothing fails, the caps carry over by name.
  config.routes[0].slo = selector::LatencySlo{absl::Milliseconds(500), absl::Seconds(1)};
  ASSERT_TRUE((*sidecar)->Reload(config).ok());
  auto res = http.Get("/metrics");
  sending = false;
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed, 0);
  ASSERT_TRUE(res);
  const std::map<std::string, double> samples = ParseSamples(res->body);
  EXPECT_EQ(samples.at(R"(carbon_sidecar_policy_weight_ratio{route="resnet",model="resnet152"})"), 1);
  EXPECT_LT(samples.at(R"(carbon_sidecar_guard_cap_ratio{route="resnet",model="resnet152"})"), 1);
  EXPECT_LT(samples.at(R"(carbon_sidecar_model_weight_ratio{route="resnet",model="resnet152"})"), 1);
  ExpectPromtoolAccepts(res->body);

  // Every call the policy gave resnet152 either went there or was counted as moved, by reason, and
  // each moved call said why in its x-carbon-reason.
  const std::map<std::string, double> after = ParseSamples(http.Get("/metrics")->body);
  const auto spilled = [&](const char* to, const char* reason) {
    return after.at(absl::StrCat(R"(carbon_sidecar_spilled_requests_total{route="resnet",from="resnet152",to=")", to,
                                 R"(",reason=")", reason, R"("})"));
  };
  double moved = 0, inferences = 0;
  for (const char* to : {"resnet34", "resnet50", "resnet101"}) {
    moved += spilled(to, "latency_slo") + spilled(to, "in_flight_limit");
  }
  for (const char* model : {"resnet34", "resnet50", "resnet101", "resnet152"}) {
    inferences += after.at(absl::StrCat(R"(carbon_sidecar_inferences_total{route="resnet",model=")", model, R"("})"));
  }
  EXPECT_EQ(inferences, answered.load());
  EXPECT_EQ(after.at(R"(carbon_sidecar_inferences_total{route="resnet",model="resnet152"})") + moved, inferences);
  EXPECT_GT(spilled("resnet101", "latency_slo"), 0);
  EXPECT_EQ(spilled("resnet101", "latency_slo") + spilled("resnet50", "latency_slo") + spilled("resnet34", "latency_slo"),
            moved_by_guard.load());
}

// resnet152 runs two calls at a time, 100 ms each, and queues the rest; resnet101 is not served
// at all (unready). Eight clients saturate resnet152: the sidecar learns an in-flight limit for it
// from its latency (none is configured), spills the excess past the unready resnet101 to resnet50,
// and loses no call.
TEST(LatencyGuardRouteTest, ALearnedLimitHoldsASaturatedVariantAndItsExcessSkipsAnUnreadyOne) {
  bench::FakeUpstreamOptions options;
  options.models = {"resnet34", "resnet50", "resnet152"};
  options.service_time["resnet152"] = absl::Milliseconds(100);
  options.instances["resnet152"] = 2;
  auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
  ASSERT_TRUE(upstream.ok());
  SidecarConfig config = testing::StaticSidecarConfig((*upstream)->port(), 100);  // the policy: resnet152
  config.upstream.readiness_interval = absl::Milliseconds(50);
  config.routes[0].slo = selector::LatencySlo{absl::Milliseconds(250), absl::Seconds(1)};
  auto sidecar = SidecarServer::Start(config);
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  SidecarClient client(**sidecar);
  httplib::Client& http = client.http;
  const auto candidates = [&] {
    const nlohmann::json route = client.Route();
    return route.is_null() ? route : route["candidates"];
  };
  // Wait for the upstream's word on resnet101 before any call is drawn.
  const absl::Time unready_by = absl::Now() + absl::Seconds(10);
  while (candidates()[2]["ready"] != false && absl::Now() < unready_by) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(candidates()[2]["ready"], false);
  EXPECT_EQ(candidates()[3]["max_in_flight_source"], "learning");

  auto stub = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*sidecar)->port()), grpc::InsecureChannelCredentials()));
  std::atomic<bool> sending{true};
  std::atomic<int> failed{0}, answered{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&] {
      while (sending) {
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
        inference::ModelInferResponse resp;
        const grpc::Status status = stub->ModelInfer(&ctx, Request(1), &resp);
        status.ok() ? ++answered : ++failed;
      }
    });
  }
  const auto limit_spills = [&] {
    auto res = http.Get("/metrics");
    if (!res) return -1.0;
    const auto samples = ParseSamples(res->body);
    const auto it = samples.find(
        R"(carbon_sidecar_spilled_requests_total{route="resnet",from="resnet152",to="resnet50",reason="in_flight_limit"})");
    return it == samples.end() ? -1.0 : it->second;
  };
  nlohmann::json now;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (absl::Now() < give_up) {
    now = candidates();
    if (!now.is_null() && now[3]["max_in_flight_source"] == "learned" && limit_spills() > 0) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  sending = false;
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed, 0);
  ASSERT_EQ(now[3]["max_in_flight_source"], "learned") << now.dump();
  const int64_t learned = now[3]["max_in_flight"].get<int64_t>();
  EXPECT_GE(learned, 1);
  EXPECT_LT(learned, 8) << "eight clients queue on two instances; the limit must be below what they offer";
  EXPECT_GT(limit_spills(), 0);

  const std::map<std::string, double> samples = ParseSamples(http.Get("/metrics")->body);
  EXPECT_GE(samples.at(R"(carbon_sidecar_max_in_flight_requests{route="resnet",model="resnet152",source="learned"})"), 1);
  double inferences = 0;
  for (const char* model : {"resnet34", "resnet50", "resnet101", "resnet152"}) {
    inferences += samples.at(absl::StrCat(R"(carbon_sidecar_inferences_total{route="resnet",model=")", model, R"("})"));
  }
  EXPECT_EQ(inferences, answered.load());
  EXPECT_EQ(samples.at(R"(carbon_sidecar_inferences_total{route="resnet",model="resnet101"})"), 0);
  for (const char* reason : {"in_flight_limit", "latency_slo"}) {
    EXPECT_EQ(samples.at(absl::StrCat(R"(carbon_sidecar_spilled_requests_total{route="resnet",from="resnet152",to="resnet101",reason=")",
                                      reason, R"("})")),
              0);
  }
  // The sidecar's own refusals are not the upstream's overload answers: there were none of either.
  EXPECT_EQ(samples.count(R"(carbon_sidecar_requests_total{route="resnet",model="resnet152",code="RESOURCE_EXHAUSTED"})"), 0u);
}

// With a 2 s ramp, the grid turning from dirty (resnet34) to clean (resnet152) moves the route's
// traffic over two seconds: weights in between while it lasts, the new decision's after.
TEST(RampTest, AChangeOfDecisionMovesTrafficOverTheRamp) {
  bench::FakeUpstreamOptions options;
  options.models = {"resnet34", "resnet50", "resnet101", "resnet152"};
  auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
  ASSERT_TRUE(upstream.ok());
  SidecarConfig config = testing::StaticSidecarConfig((*upstream)->port(), 300);  // t = 0: resnet34
  config.routes[0].ramp = absl::Seconds(2);
  auto sidecar = SidecarServer::Start(config);
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  SidecarClient client(**sidecar);
  httplib::Client& http = client.http;
  const auto route = [&] { return client.Route(); };
  EXPECT_EQ(route()["candidates"][0]["weight"], 1);  // the first decision is served at once
  EXPECT_TRUE(route()["ramp_progress"].is_null());

  auto stub = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*sidecar)->port()), grpc::InsecureChannelCredentials()));
  int ramped_calls = 0;
  config.intensity.provider = telemetry::StaticIntensity(100, "test-region");  // t = 1: resnet152
  ASSERT_TRUE((*sidecar)->Reload(config).ok());
  bool seen_between = false;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  nlohmann::json now;
  while (absl::Now() < give_up) {
    // A call while the ramp lasts: on resnet34, it says so, and is counted as moved by the ramp.
    grpc::ClientContext ctx;
    inference::ModelInferResponse resp;
    ASSERT_TRUE(stub->ModelInfer(&ctx, Request(1), &resp).ok());
    const auto& md = ctx.GetServerInitialMetadata();
    if (md.find("x-carbon-reason")->second == "ramp") {
      EXPECT_EQ(md.find("x-carbon-model")->second, "resnet34");
      ++ramped_calls;
    }
    now = route();
    if (now["ramp_progress"].is_null()) break;
    EXPECT_EQ(now["weights_moved_by"], "ramp");
    const double to_152 = now["candidates"][3]["weight"].get<double>();
    const double to_34 = now["candidates"][0]["weight"].get<double>();
    EXPECT_NEAR(to_152 + to_34, 1, 1e-9);
    EXPECT_EQ(now["candidates"][3]["policy_weight"], 1);
    if (to_152 > 0.05 && to_152 < 0.95) seen_between = true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(seen_between) << "never saw the traffic part-way";
  EXPECT_GT(ramped_calls, 0);
  const std::map<std::string, double> samples = ParseSamples(http.Get("/metrics")->body);
  EXPECT_EQ(samples.at(R"(carbon_sidecar_spilled_requests_total{route="resnet",from="resnet152",to="resnet34",reason="ramp"})"),
            ramped_calls);
  EXPECT_TRUE(now["ramp_progress"].is_null()) << now.dump();
  EXPECT_EQ(now["candidates"][3]["weight"], 1);
  EXPECT_EQ(now["model"], "resnet152");
}

// A server whose GPUs cost other energies than the paper's table, metered as Triton meters them
// (a real HTTP server on loopback) while the test sends known mixes of inferences through the
// sidecar: the route's calibrator recovers each variant's energy within 5 %, keeps it through
// garbage, a restart of the server and a lost GPU, and a meter that hangs delays no request.
TEST(EnergyCalibrationTest, LearnsEachVariantsEnergyFromTritonsMeterThroughTheSidecar) {
  const std::map<std::string, double> truth = {
      {"resnet34", 0.30}, {"resnet50", 0.45}, {"resnet101", 0.90}, {"resnet152", 1.40}};
  bench::FakeGpuOptions gpu_options;
  for (const auto& [model, joules] : truth) gpu_options.joules_per_inference[model] = joules;
  gpu_options.idle_watts = 30;
  gpu_options.jitter = 0.05;
  gpu_options.gpu_uuids = {"GPU-0e9fdafb-5adb-91cd-26a8-308d34357efc", "GPU-a07dfe08-b87f-1f96-7083-07a26d0fa83e"};
  auto gpu = std::make_shared<bench::FakeGpuMeter>(gpu_options);
  auto meter = bench::FakeMetricsServer::Start(gpu);
  ASSERT_TRUE(meter.ok()) << meter.status();
  bench::FakeUpstreamOptions options;
  options.models = {"resnet34", "resnet50", "resnet101", "resnet152"};
  options.gpu = gpu;
  auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
  ASSERT_TRUE(upstream.ok());
  SidecarConfig config = testing::StaticSidecarConfig((*upstream)->port(), 200);
  config.routes[0].energy.meter = telemetry::TritonMetricsMeter((*meter)->url());
  config.routes[0].energy.interval = absl::Milliseconds(100);
  config.routes[0].energy.min_inferences = 5;
  config.routes[0].energy.max_relative_error = 0.02;
  auto sidecar = SidecarServer::Start(config);
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  SidecarClient client(**sidecar);
  auto& stub = client.stub;
  httplib::Client& http = client.http;
  const auto route = [&] { return client.Route(); };
  const auto pinned = [&](const std::string& model, int64_t batch) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ctx.AddMetadata("x-carbon-pin-model", model);
    inference::ModelInferResponse resp;
    return stub->ModelInfer(&ctx, Request(batch), &resp);
  };
  // One phase: a random mix, then until the meter has been read again.
  std::mt19937 random(11);
  std::uniform_int_distribution<int> calls(0, 6);
  const auto phase = [&] {
    for (const auto& [model, joules] : truth) {
      for (int k = calls(random); k > 0; --k) ASSERT_TRUE(pinned(model, 2).ok());
    }
    const int64_t scrapes = (*meter)->scrapes();
    while ((*meter)->scrapes() == scrapes) absl::SleepFor(absl::Milliseconds(2));
  };
  const auto all_measured = [&](const nlohmann::json& r) {
    if (r.is_null()) return false;
    for (const auto& c : r["candidates"]) {
      if (c["energy"]["source"] != "measured") return false;
    }
    return true;
  };
  // Judged once every estimate is precise to 1.5 % (its own standard error): the first estimates come
  // from a handful of meter intervals, and under a sanitizer's timing one of them once sat 2.4
  // standard errors (5.07 %) off.
  const auto precise = [&](const nlohmann::json& r) {
    if (!all_measured(r)) return false;
    for (const auto& c : r["candidates"]) {
      const auto& e = c["energy"];
      if (e["stderr_joules"].is_null() || e["stderr_joules"].get<double>() > 0.015 * e["measured_joules"].get<double>()) {
        return false;
      }
    }
    return true;
  };
  nlohmann::json now;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (absl::Now() < give_up && !precise(now = route())) phase();
  ASSERT_TRUE(all_measured(now)) << now.dump(1);
  for (const auto& c : now["candidates"]) {
    const double expected = truth.at(c["model"].get<std::string>());
    EXPECT_NEAR(c["energy"]["measured_joules"].get<double>(), expected, 0.05 * expected) << c.dump();
    EXPECT_EQ(c["energy"]["table_joules"], c["energy_mj"].get<double>() / 1000);
  }
  EXPECT_NEAR(now["energy_calibration"]["idle_watts"].get<double>(), 30, 3);
  // The policy decides on them too, from the next publish.
  const absl::Time decided_by = absl::Now() + absl::Seconds(10);
  while (client.Route()["decision_energies"] != "measured" && absl::Now() < decided_by) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(client.Route()["decision_energies"], "measured");

  // From the next publish on, calls are charged at the measured energies, and the ledger says so.
  const auto sample = [&](const std::string& name) { return client.Sample(name); };
  const std::string measured_152 =
      R"(carbon_sidecar_energy_joules_total{route="resnet",model="resnet152",energy_source="measured"})";
  const absl::Time charged_by = absl::Now() + absl::Seconds(10);
  while (sample(measured_152) <= 0 && absl::Now() < charged_by) ASSERT_TRUE(pinned("resnet152", 1).ok());
  const double before = sample(measured_152);
  ASSERT_GT(before, 0);
  for (int k = 0; k < 10; ++k) ASSERT_TRUE(pinned("resnet152", 2).ok());
  EXPECT_NEAR(sample(measured_152) - before, 20 * 1.40, 20 * 1.40 * 0.05);
  EXPECT_GT(sample(R"(carbon_sidecar_emissions_grams_total{route="resnet",model="resnet152",energy_source="measured"})"), 0);
  EXPECT_EQ(now["energy_calibration"]["source"], "triton-metrics");
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res);
  std::map<std::string, double> samples = ParseSamples(res->body);
  EXPECT_NEAR(samples.at(R"(carbon_sidecar_calibrated_energy_joules{route="resnet",model="resnet152",energy_source="measured"})"),
              1.40, 0.07);
  EXPECT_EQ(samples.count(R"(carbon_sidecar_energy_idle_power_watts{route="resnet",source="triton-metrics"})"), 1u);
  ExpectPromtoolAccepts(res->body);

  const auto reads = [&](const char* result) {
    return client.Sample(absl::StrCat(
        R"(carbon_sidecar_energy_meter_reads_total{route="resnet",source="triton-metrics",result=")", result, R"("})"));
  };
  const auto wait_for = [&](const std::function<bool()>& condition) {
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (!condition() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
    return condition();
  };
  // The estimates stand (certain enough or not, after the one-model intervals above).
  const auto estimates_kept = [&](const nlohmann::json& r) {
    for (const auto& c : r["candidates"]) {
      const double expected = truth.at(c["model"].get<std::string>());
      if (!c["energy"]["measured_joules"].is_number() ||
          std::abs(c["energy"]["measured_joules"].get<double>() - expected) > 0.1 * expected) {
        return false;
      }
    }
    return true;
  };
  // Garbage from the meter: a clear status, and the last good calibration kept.
  (*meter)->set_garbage(true);
  ASSERT_TRUE(wait_for([&] { return route()["energy_calibration"]["last_error"].is_string(); }));
  now = route();
  EXPECT_THAT(now["energy_calibration"]["last_error"].get<std::string>(), HasSubstr("expected a metric name"));
  EXPECT_TRUE(estimates_kept(now)) << now.dump(1);
  EXPECT_GE(reads("failed"), 1);
  (*meter)->set_garbage(false);

  // The server restarts: its counters start from zero; that pair is a reset, not a negative interval.
  const double resets = reads("reset");
  gpu->Restart();
  ASSERT_TRUE(wait_for([&] { return reads("reset") > resets; }));
  now = route();
  EXPECT_TRUE(estimates_kept(now)) << now.dump(1);
  // A GPU stops being reported: a reset too, saying which.
  const double resets_before_loss = reads("reset");
  gpu->RemoveGpu("GPU-a07dfe08-b87f-1f96-7083-07a26d0fa83e");
  ASSERT_TRUE(wait_for([&] { return reads("reset") > resets_before_loss; }));

  // A meter that hangs: a call through the sidecar is answered while the read is still waiting.
  (*meter)->set_delay(absl::Seconds(3));
  ASSERT_TRUE(wait_for([&] { return (*meter)->scrapes_in_progress() > 0; }));
  EXPECT_TRUE(pinned("resnet50", 1).ok());
  EXPECT_GT((*meter)->scrapes_in_progress(), 0) << "the call waited for the meter";
  (*meter)->set_delay(absl::ZeroDuration());
}

// `carbon-sidecar --calibrate` against a server whose GPUs cost other energies than the table: it
// drives each variant, reads the meter, and writes a pool file with the measured energies (and the
// table's errors) that --check_config accepts.
TEST(CalibrateCommandTest, WritesAPoolOfMeasuredEnergiesThatTheSidecarAccepts) {
  const std::map<std::string, double> truth = {
      {"resnet34", 0.30}, {"resnet50", 0.45}, {"resnet101", 0.90}, {"resnet152", 1.40}};
  bench::FakeGpuOptions gpu_options;
  for (const auto& [model, joules] : truth) gpu_options.joules_per_inference[model] = joules;
  // Batches of eight make the inferences' energy dwarf the idle power's noise over these short runs,
  // even under a sanitizer's slowness.
  gpu_options.idle_watts = 10;
  gpu_options.jitter = 0.05;
  auto gpu = std::make_shared<bench::FakeGpuMeter>(gpu_options);
  auto meter = bench::FakeMetricsServer::Start(gpu);
  ASSERT_TRUE(meter.ok());
  bench::FakeUpstreamOptions options;
  options.models = {"resnet34", "resnet50", "resnet101", "resnet152"};
  options.gpu = gpu;
  auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
  ASSERT_TRUE(upstream.ok());
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / absl::StrCat("calibrate_", getpid());
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(std::string(CARBON_SOURCE_DIR) + "/config/pools/resnet-v100.yaml", dir / "table.yaml",
                             std::filesystem::copy_options::overwrite_existing);
  const auto write_config = [&](const std::string& name, const std::string& pool) {
    std::ofstream(dir / name) << "upstream: { target: 127.0.0.1:" << (*upstream)->port() << " }\n"
                              << "intensity: { provider: static, gco2_per_kwh: 200 }\n"
                              << "routes:\n  - name: resnet\n    pool: " << pool
                              << "\n    baseline: resnet50\n    default: resnet50\n"
                              << "    energy: { source: triton-metrics, url: " << (*meter)->url() << " }\n";
  };
  write_config("sidecar.yaml", "table.yaml");
  const std::string out = (dir / "measured.yaml").string();
  const std::string log = (dir / "calibrate.log").string();
  const std::string command = absl::StrCat(
      CARBON_SIDECAR_BINARY, " --config ", (dir / "sidecar.yaml").string(), " --calibrate resnet --calibrate_out ", out,
      " --calibrate_idle 500ms --calibrate_duration 1s --calibrate_batch 8 --calibrate_concurrency 2 > ", log,
      " 2>&1");
  ASSERT_EQ(std::system(command.c_str()), 0) << std::ifstream(log).rdbuf();
  std::stringstream printed;
  printed << std::ifstream(log).rdbuf();
  EXPECT_THAT(printed.str(), HasSubstr("idle: "));
  EXPECT_THAT(printed.str(), HasSubstr("J per inference"));

  auto pool = LoadPoolFile(out);
  ASSERT_TRUE(pool.ok()) << pool.status();
  const std::shared_ptr<const selector::Pool> table = testing::PaperResnetPool();
  for (const auto& [model, joules] : truth) {
    const std::optional<size_t> v = pool->IndexOf(model);
    ASSERT_TRUE(v) << model;
    EXPECT_NEAR((*pool)[*v].energy_mj, joules * 1000, 0.05 * joules * 1000) << model;
    EXPECT_EQ((*pool)[*v].error_percent, (*table)[*table->IndexOf(model)].error_percent);
  }
  std::stringstream written;
  written << std::ifstream(out).rdbuf();
  EXPECT_THAT(written.str(), HasSubstr("# Measured by carbon-sidecar --calibrate resnet on "));
  EXPECT_THAT(written.str(), HasSubstr("GPU-0e9fdafb-5adb-91cd-26a8-308d34357efc"));
  EXPECT_THAT(written.str(), HasSubstr("batch size 8"));

  // Ready to load: a config naming it passes --check_config.
  write_config("measured-sidecar.yaml", "measured.yaml");
  EXPECT_EQ(std::system(absl::StrCat(CARBON_SIDECAR_BINARY, " --check_config --config ",
                                     (dir / "measured-sidecar.yaml").string(), " > ", log, " 2>&1")
                            .c_str()),
            0)
      << std::ifstream(log).rdbuf();

  // A route without a meter says what is missing.
  std::ofstream(dir / "no-meter.yaml") << "upstream: { target: 127.0.0.1:" << (*upstream)->port() << " }\n"
                                       << "intensity: { provider: static, gco2_per_kwh: 200 }\n"
                                       << "routes:\n  - { name: resnet, pool: table.yaml, baseline: resnet50, "
                                          "default: resnet50 }\n";
  EXPECT_NE(std::system(absl::StrCat(CARBON_SIDECAR_BINARY, " --config ", (dir / "no-meter.yaml").string(),
                                     " --calibrate resnet > ", log, " 2>&1")
                            .c_str()),
            0);
  std::stringstream refused;
  refused << std::ifstream(log).rdbuf();
  EXPECT_THAT(refused.str(), HasSubstr("route 'resnet' has no energy meter"));
  std::filesystem::remove_all(dir);
}

TEST_F(AdminTest, ConfigHealthAndReadiness) {
  auto config = http_->Get("/v1/config");
  ASSERT_TRUE(config);
  const auto doc = nlohmann::json::parse(config->body);
  EXPECT_EQ(doc["routes"][0]["baseline"], "resnet50");
  EXPECT_EQ(doc["intensity"]["gco2_per_kwh"], 200);
  EXPECT_EQ(doc["admin"]["listen"], "127.0.0.1:0");

  auto health = http_->Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto ready = http_->Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
}

TEST(ConfigJsonTest, SecretsShowOnlyWhereTheyComeFrom) {
  setenv("CARBON_ADMIN_TEST_TOKEN", "very-secret-value", 1);
  SidecarConfig config = Config(1, 200);
  auto em = std::make_shared<telemetry::ElectricityMapsSpec>();
  em->zone = "GB";
  em->token_env = "CARBON_ADMIN_TEST_TOKEN";
  config.intensity.provider = em;
  const std::string json = RenderConfigJson(config);
  EXPECT_THAT(json, HasSubstr("\"token_env\": \"CARBON_ADMIN_TEST_TOKEN\""));
  EXPECT_THAT(json, ::testing::Not(HasSubstr("very-secret-value")));
}

TEST_F(AdminTest, ReadinessFollowsTheUpstream) {
  SidecarConfig config = Config(upstream_->port(), 200);
  config.upstream.readiness_interval = absl::Milliseconds(20);
  ASSERT_TRUE(sidecar_->Reload(config).ok());
  upstream_.reset();
  bool unready = false;
  for (int i = 0; i < 500 && !unready; ++i) {
    auto res = http_->Get("/readyz");
    unready = res && res->status == 503;
    if (!unready) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(unready);
}

TEST_F(AdminTest, UnknownPathsAndMethods) {
  auto missing = http_->Get("/admin");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  for (const char* path : {"/metrics", "/v1/config", "/elsewhere"}) {
    auto post = http_->Post(path, "x", "text/plain");
    ASSERT_TRUE(post);
    EXPECT_EQ(post->status, 405) << path;
    EXPECT_EQ(post->get_header_value("Allow"), "GET, HEAD");
    auto del = http_->Delete(path);
    ASSERT_TRUE(del);
    EXPECT_EQ(del->status, 405) << path;
  }
}

TEST_F(AdminTest, AScrapeDuringReloadsSeesOneConfigOrTheOther) {
  // Config A: 100 g/kWh selects resnet152; config B: 300 selects resnet34. A scrape must never
  // pair one config's intensity with the other's choice.
  std::atomic<bool> stop{false};
  std::thread reloader([&] {
    for (int i = 0; !stop; ++i) {
      ASSERT_TRUE(sidecar_->Reload(Config(upstream_->port(), i % 2 ? 100 : 300)).ok());
    }
  });
  int scrapes = 0;
  for (; scrapes < 100; ++scrapes) {
    auto m = Scrape();
    const double c = m["carbon_sidecar_grid_intensity_gco2_per_kwh{source=\"static\",region=\"test-region\"}"];
    const bool clean = m["carbon_sidecar_selected_model_info{route=\"resnet\",model=\"resnet152\"}"] == 1;
    const bool dirty = m["carbon_sidecar_selected_model_info{route=\"resnet\",model=\"resnet34\"}"] == 1;
    if (c == 100) {
      EXPECT_TRUE(clean && !dirty);
    } else if (c == 300) {
      EXPECT_TRUE(dirty && !clean);
    } else {
      EXPECT_EQ(c, 200);  // the initial config, before the first reload
    }
  }
  stop = true;
  reloader.join();
}

}  // namespace
}  // namespace carbon::sidecar
