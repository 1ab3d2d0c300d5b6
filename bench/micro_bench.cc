// Micro-benchmarks of the request path's own work and of a scrape (Google Benchmark).
//   build/bench/micro_bench --benchmark_repetitions=10 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

#include <grpcpp/support/byte_buffer.h>

#include "absl/strings/str_cat.h"
#include "inference/grpc_service.pb.h"
#include "spdlog/spdlog.h"
#include "telemetry/providers/kinds.h"
#include "sidecar/admin_endpoints.h"
#include "sidecar/request_bytes.h"
#include "sidecar/request_wire.h"
#include "selector/policies/horizon_target.h"
#include "sidecar/routing.h"
#include "telemetry/carbon_ledger.h"

namespace carbon {
namespace {

// The fastest repetition: on a shared VM, whose speed swings by 2x from one second to the next,
// the least disturbed estimate of what the code itself costs (reported beside the median).
double Fastest(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

sidecar::SidecarConfig ConfigWith(size_t routes, size_t variants) {
  sidecar::SidecarConfig c;
  c.upstream.target = "127.0.0.1:1";
  c.intensity.provider = telemetry::StaticIntensity(200);
  c.intensity.fixed_bounds = selector::WindowBounds{100, 300};
  for (size_t r = 0; r < routes; ++r) {
    std::vector<selector::Variant> vs;
    for (size_t v = 0; v < variants; ++v) {
      vs.push_back({absl::StrCat("model", v), 100.0 + 50.0 * static_cast<double>(v), 20.0 - static_cast<double>(v)});
    }
    sidecar::RouteConfig route;
    route.name = r == 0 ? "resnet" : absl::StrCat("route", r);
    route.pool = std::make_shared<const selector::Pool>(*selector::Pool::Create(vs));
    c.routes.push_back(route);
  }
  return c;
}

// What a routed request costs the sidecar beyond forwarding: one snapshot load, the route lookup
// by name, and one ledger update.
void BM_SelectionReadAndLedgerUpdate(benchmark::State& state) {
  static std::unique_ptr<sidecar::SelectionPublisher> publisher;
  if (state.thread_index() == 0) publisher = *sidecar::SelectionPublisher::Create(ConfigWith(1, 4));
  const std::string_view name = "resnet";
  for (auto _ : state) {
    const auto& snapshot = publisher->snapshots().Load();
    const sidecar::RouteView* route = snapshot->Find(name);
    const size_t variant = route->Draw().variant;
    route->route->ledger->variant(variant).RecordServed(1, 1, route->decision.intensity->gco2_per_kwh);
    benchmark::DoNotOptimize(route);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SelectionReadAndLedgerUpdate)->Threads(1)->Threads(2)->UseRealTime()->ComputeStatistics("min", Fastest);

// The same for a decision that mixes two variants (70/30): the weighted draw adds one relaxed
// atomic increment of the route's counter, shared by every thread.
void BM_WeightedDrawAndLedgerUpdate(benchmark::State& state) {
  static std::unique_ptr<sidecar::SelectionPublisher> publisher;
  static std::unique_ptr<selector::SnapshotCell<sidecar::RoutingSnapshot>> mixed;
  if (state.thread_index() == 0) {
    publisher = *sidecar::SelectionPublisher::Create(ConfigWith(1, 4));
    sidecar::RouteView view = publisher->snapshots().Load()->routes()[0];
    view.decision.weights = {{1, 0.7}, {2, 0.3}};
    view.draw = std::make_shared<const selector::WeightedDraw>(view.decision.weights);
    mixed = std::make_unique<selector::SnapshotCell<sidecar::RoutingSnapshot>>(
        std::make_shared<const sidecar::RoutingSnapshot>(std::vector<sidecar::RouteView>{view}));
  }
  const std::string_view name = "resnet";
  for (auto _ : state) {
    const auto& snapshot = mixed->Load();
    const sidecar::RouteView* route = snapshot->Find(name);
    const size_t variant = route->Draw().variant;
    route->route->ledger->variant(variant).RecordServed(1, 1, route->decision.intensity->gco2_per_kwh);
    benchmark::DoNotOptimize(route);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WeightedDrawAndLedgerUpdate)->Threads(1)->Threads(2)->UseRealTime()->ComputeStatistics("min", Fastest);

// The same single-variant request with the capacity guard's count, taken at the draw and returned
// when the call is settled: without a limit (argument 0) on the thread's shard; under one, on the
// counter all threads share.
void BM_SelectionInFlightAndLedgerUpdate(benchmark::State& state) {
  static std::unique_ptr<sidecar::SelectionPublisher> publisher;
  if (state.thread_index() == 0) publisher = *sidecar::SelectionPublisher::Create(ConfigWith(1, 4));
  const std::string_view name = "resnet";
  for (auto _ : state) {
    const auto& snapshot = publisher->snapshots().Load();
    const sidecar::RouteView* route = snapshot->Find(name);
    const size_t variant = route->Draw().variant;
    telemetry::VariantLedger& cell = route->route->ledger->variant(variant);
    if (auto ticket = cell.TryStartCall(state.range(0))) {
      cell.RecordServed(1, 1, route->decision.intensity->gco2_per_kwh);
      telemetry::VariantLedger::CallEnded(*ticket);
    }
    benchmark::DoNotOptimize(route);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SelectionInFlightAndLedgerUpdate)
    ->Arg(0)
    ->Arg(1'000'000)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime()
    ->ComputeStatistics("min", Fastest);

// A ModelInferRequest for the route "resnet" with one FP32 input tensor of `payload` bytes.
std::string ImageRequestBytes(size_t payload) {
  inference::ModelInferRequest header;
  header.set_model_name("resnet");
  header.set_id("request-1");
  auto* in = header.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  for (int64_t d : {1, 3, 224, 224}) in->add_shape(d);
  header.add_raw_input_contents(std::string(payload, '\1'));
  return header.SerializeAsString();
}

// A request message held as gRPC holds it, scanned for the model name and rewritten by appending
// the override slice. Must not depend on the payload size.
void BM_ScanAndRewrite(benchmark::State& state) {
  const std::string bytes = ImageRequestBytes(static_cast<size_t>(state.range(0)));
  const grpc::Slice message_slice(bytes);
  const std::string suffix = sidecar::EncodeModelOverride("resnet152");
  const grpc::Slice override_slice(suffix);
  sidecar::RequestBytes request_bytes;
  for (auto _ : state) {
    grpc::Slice s = message_slice;
    grpc::ByteBuffer buffer(&s, 1);
    auto scanned = request_bytes.Scan(&buffer, true);
    benchmark::DoNotOptimize(scanned);
    request_bytes.AppendTo(&buffer, override_slice);
    benchmark::DoNotOptimize(buffer);
  }
  state.SetLabel(absl::StrCat(bytes.size(), " bytes"));
}
BENCHMARK(BM_ScanAndRewrite)->Arg(1024)->Arg(602112)->ComputeStatistics("min", Fastest);

// The parts of the above: the scan of the bytes alone (ScanModelNamedRequest, no gRPC types), and
// what the harness itself pays per message for a gRPC byte buffer made and freed, which the
// proxy's forwarding pays for every message whether or not it rewrites one.
void BM_ScanOnly(benchmark::State& state) {
  const std::string bytes = ImageRequestBytes(static_cast<size_t>(state.range(0)));
  const std::string_view whole(bytes);
  // Split as gRPC delivers a large message: the header and the start of the payload in one slice.
  const size_t first = std::min<size_t>(8192, whole.size());
  const std::vector<std::string_view> segments = {whole.substr(0, first), whole.substr(first)};
  std::string scratch;
  for (auto _ : state) {
    auto scanned = sidecar::ScanModelNamedRequest(segments, true, &scratch);
    benchmark::DoNotOptimize(scanned);
  }
}
BENCHMARK(BM_ScanOnly)->Arg(1024)->Arg(602112)->ComputeStatistics("min", Fastest);

void BM_ByteBufferMadeAndFreed(benchmark::State& state) {
  const grpc::Slice message_slice(ImageRequestBytes(static_cast<size_t>(state.range(0))));
  for (auto _ : state) {
    grpc::Slice s = message_slice;
    grpc::ByteBuffer buffer(&s, 1);
    benchmark::DoNotOptimize(buffer);
  }
}
BENCHMARK(BM_ByteBufferMadeAndFreed)->Arg(1024)->ComputeStatistics("min", Fastest);

// A Prometheus scrape of 5 routes × 10 variants.
void BM_RenderMetrics(benchmark::State& state) {
  auto publisher = *sidecar::SelectionPublisher::Create(ConfigWith(5, 10));
  const auto snapshot = publisher->snapshots().Load();
  for (const auto& route : snapshot->routes()) {
    for (size_t v = 0; v < route.pool().size(); ++v) route.route->ledger->variant(v).RecordServed(3, 5, 200);
  }
  sidecar::ProxyCounters proxy;
  sidecar::ReloadCounters reloads;
  size_t bytes = 0;
  for (auto _ : state) {
    std::string text = sidecar::RenderMetrics({*snapshot, proxy, reloads}, false);
    bytes = text.size();
    benchmark::DoNotOptimize(text);
  }
  state.SetLabel(absl::StrCat(bytes, " bytes per scrape"));
}
BENCHMARK(BM_RenderMetrics)->Unit(benchmark::kMicrosecond)->ComputeStatistics("min", Fastest);

// One decision of an aimed policy, as the publisher makes it at each poll: the rest of the horizon
// planned (PlanHorizon over its half-hours and the paper pool's hull) from a week of half-hours
// remembered. Off the request path; the argument is the horizon in days.
void BM_AccuracyTargetDecision(benchmark::State& state) {
  const selector::Pool pool = *selector::Pool::Create({{"resnet34", 359.9321833, 8.58},
                                                       {"resnet50", 420.6213298, 7.138},
                                                       {"resnet101", 803.0948846, 6.454},
                                                       {"resnet152", 1238.147188, 5.954}});
  const selector::Horizon horizon{absl::Hours(24 * state.range(0)), absl::FromUnixSeconds(1685577600)};
  const auto spec = selector::MakeHorizonTargetSpec({selector::PlanLimit::Kind::kMeanErrorPercent, 6.7}, horizon);
  const auto policy = spec->Build(pool, {1, absl::InfiniteDuration(), absl::ZeroDuration()});
  // A week seen, then the decision at the start of the horizon (the longest plan).
  std::optional<selector::Decision> previous;
  selector::ServedTotals served;
  const absl::Time start = absl::FromUnixSeconds(1685577600) - absl::Hours(24 * 7);
  for (int s = 0; s <= 7 * 48; ++s) {
    const absl::Time now = start + s * absl::Minutes(30);
    previous = policy->Decide({selector::IntensityReading{150.0 + 100 * (s % 7), now}, std::nullopt, now,
                               pool.all_variants_mask(), previous ? &*previous : nullptr, served, {}});
    served.items += 1000;
    served.error_percent_sum += 1000 * 7;
  }
  const absl::Time now = start + 7 * 48 * absl::Minutes(30);
  for (auto _ : state) {
    selector::Decision d = policy->Decide({selector::IntensityReading{200, now}, std::nullopt, now,
                                           pool.all_variants_mask(), &*previous, served, {}});
    benchmark::DoNotOptimize(d);
  }
}
BENCHMARK(BM_AccuracyTargetDecision)->Arg(1)->Arg(30)->Unit(benchmark::kMicrosecond)->ComputeStatistics("min", Fastest);

}  // namespace
}  // namespace carbon

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);  // selection logs would drown the figures
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
