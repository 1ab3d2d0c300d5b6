#include "sidecar/calibration.h"

#include <atomic>
#include <cmath>
#include <fstream>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/number_text.h"
#include "common/string_view_compat.h"
#include "inference/grpc_service.grpc.pb.h"
#include "sidecar/tls.h"
#include "telemetry/energy_meter.h"

namespace carbon::sidecar {
namespace {

// Bytes per element of a KServe v2 datatype; nullopt for BYTES (variable) and unknown ones.
std::optional<size_t> ElementBytes(const std::string& datatype) {
  if (datatype == "BOOL" || datatype == "UINT8" || datatype == "INT8") return 1;
  if (datatype == "UINT16" || datatype == "INT16" || datatype == "FP16" || datatype == "BF16") return 2;
  if (datatype == "UINT32" || datatype == "INT32" || datatype == "FP32") return 4;
  if (datatype == "UINT64" || datatype == "INT64" || datatype == "FP64") return 8;
  return std::nullopt;
}

// A request of zeros for `model`, shaped as its metadata says with the batch dimension (-1) set.
absl::StatusOr<inference::ModelInferRequest> ZerosRequest(inference::GRPCInferenceService::Stub& stub,
                                                          const std::string& model, int64_t batch) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  inference::ModelMetadataRequest ask;
  ask.set_name(model);
  inference::ModelMetadataResponse metadata;
  const grpc::Status status = stub.ModelMetadata(&ctx, ask, &metadata);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("ModelMetadata of '", model, "': ", status.error_message()));
  }
  if (metadata.inputs_size() == 0) return absl::FailedPreconditionError(absl::StrCat("'", model, "' declares no input"));
  inference::ModelInferRequest request;
  request.set_model_name(model);
  for (const auto& input : metadata.inputs()) {
    const std::optional<size_t> element = ElementBytes(input.datatype());
    if (!element) {
      return absl::FailedPreconditionError(absl::StrCat("input '", input.name(), "' of '", model, "' is ",
                                                        input.datatype(), ": only fixed-size types can be made up"));
    }
    auto* in = request.add_inputs();
    in->set_name(input.name());
    in->set_datatype(input.datatype());
    size_t bytes = *element;
    for (size_t d = 0; d < static_cast<size_t>(input.shape_size()); ++d) {
      const int64_t dim = input.shape(static_cast<int>(d)) < 0 ? (d == 0 ? batch : 1) : input.shape(static_cast<int>(d));
      in->add_shape(dim);
      bytes *= static_cast<size_t>(dim);
    }
    request.add_raw_input_contents(std::string(bytes, '\0'));
  }
  return request;
}

// The meter's devices' energy now, and the inferences it counts for `model` (nullopt: it counts
// none).
struct MeterNow {
  double joules = 0;
  std::optional<double> inferences;
  absl::Time at;
  std::vector<std::string> devices;
};

absl::StatusOr<MeterNow> ReadMeter(telemetry::EnergyMeter& meter, const std::vector<std::string>& devices,
                                   const std::string& model) {
  auto reading = meter.Read();
  if (!reading.ok()) return reading.status();
  MeterNow now{0, std::nullopt, absl::Now(), {}};
  for (const auto& [device, joules] : reading->device_joules) {
    if (!devices.empty() && std::find(devices.begin(), devices.end(), device) == devices.end()) continue;
    now.joules += joules;
    now.devices.push_back(device);
  }
  if (now.devices.empty()) return absl::NotFoundError("none of the configured devices is reported by the meter");
  if (reading->inferences) {
    const auto it = reading->inferences->find(model);
    now.inferences = it == reading->inferences->end() ? 0.0 : it->second;
  }
  return now;
}

struct Measured {
  double joules_per_inference = 0;
  double stderr_joules = 0;
  double inferences = 0;
  double calls_per_second = 0;
};

}  // namespace

absl::Status RunCalibration(const SidecarConfig& given, const CalibrationRunOptions& options, std::FILE* report) {
  const SidecarConfig config = WithClusters(given);
  const RouteConfig* route = nullptr;
  for (const RouteConfig& r : config.routes) {
    if (r.name == options.route) route = &r;
  }
  if (route == nullptr) return absl::NotFoundError(absl::StrCat("no route '", options.route, "' in ", config.path));
  if (route->energy.meter == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "route '", route->name, "' has no energy meter: set routes[].energy.source to triton-metrics, dcgm-exporter "
        "or prometheus, with its url"));
  }
  if (options.batch < 1 || options.concurrency < 1 || options.slices < 2 || options.per_variant <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("batch and concurrency must be at least 1, slices at least 2, the run positive");
  }
  auto meter = route->energy.meter->Build();
  if (!meter.ok()) return meter.status();
  // The route's home cluster: its meter measures that cluster's devices.
  const ClusterConfig& home = config.clusters[route->clusters.front()];
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(config.upstream.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(config.upstream.max_message_bytes));
  auto credentials = UpstreamCredentials(home.tls, &args);
  auto stub = inference::GRPCInferenceService::NewStub(grpc::CreateCustomChannel(home.target, credentials, args));
  const selector::Pool& pool = *route->pool;

  // Idle: the devices' power with no calls from here.
  auto before = ReadMeter(**meter, route->energy.devices, pool[0].name);
  if (!before.ok()) return before.status();
  absl::SleepFor(options.idle);
  auto after = ReadMeter(**meter, route->energy.devices, pool[0].name);
  if (!after.ok()) return after.status();
  const double idle_seconds = absl::ToDoubleSeconds(after->at - before->at);
  if (after->joules < before->joules) return absl::AbortedError("the energy counter went down while idle (a restart)");
  const double idle_watts = (after->joules - before->joules) / idle_seconds;
  std::fprintf(report, "idle: %.2f W over %.1f s on %s\n", idle_watts, idle_seconds,
               absl::StrJoin(after->devices, ", ").c_str());

  std::vector<Measured> measured;
  for (const selector::Variant& variant : pool.variants()) {
    auto request = ZerosRequest(*stub, variant.name, options.batch);
    if (!request.ok()) return request.status();
    std::atomic<bool> running{true};
    std::atomic<int64_t> ok_calls{0}, failed_calls{0};
    std::string first_error;
    absl::Mutex error_mu;
    std::vector<std::thread> clients;
    for (int c = 0; c < options.concurrency; ++c) {
      clients.emplace_back([&] {
        while (running.load()) {
          grpc::ClientContext ctx;
          ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
          inference::ModelInferResponse response;
          const grpc::Status status = stub->ModelInfer(&ctx, *request, &response);
          if (status.ok()) {
            ok_calls.fetch_add(1);
          } else {
            failed_calls.fetch_add(1);
            absl::MutexLock lock(&error_mu);
            if (first_error.empty()) first_error = status.error_message();
          }
        }
      });
    }
    std::vector<double> per_slice;
    double inferences = 0, joules = 0, seconds = 0;
    absl::Status failure;
    auto last = ReadMeter(**meter, route->energy.devices, variant.name);
    int64_t last_calls = ok_calls.load();
    if (!last.ok()) failure = last.status();
    for (int slice = 0; failure.ok() && slice < options.slices; ++slice) {
      absl::SleepFor(options.per_variant / options.slices);
      auto now = ReadMeter(**meter, route->energy.devices, variant.name);
      const int64_t calls = ok_calls.load();
      if (!now.ok()) {
        failure = now.status();
        break;
      }
      if (now->joules < last->joules || (now->inferences && last->inferences && *now->inferences < *last->inferences)) {
        failure = absl::AbortedError("a counter of the meter went down during the run (a restart)");
        break;
      }
      const double n = now->inferences && last->inferences ? *now->inferences - *last->inferences
                                                           : static_cast<double>(calls - last_calls) * options.batch;
      const double dt = absl::ToDoubleSeconds(now->at - last->at);
      const double dj = now->joules - last->joules;
      if (n > 0) per_slice.push_back((dj - idle_watts * dt) / n);
      inferences += n;
      joules += dj;
      seconds += dt;
      last = now;
      last_calls = calls;
    }
    running = false;
    for (auto& t : clients) t.join();
    if (!failure.ok()) return failure;
    if (failed_calls.load() > 0) {
      return absl::UnavailableError(absl::StrCat(failed_calls.load(), " calls to '", variant.name,
                                                 "' failed, the first with: ", first_error));
    }
    if (per_slice.size() < 2) {
      return absl::FailedPreconditionError(
          absl::StrCat("'", variant.name, "' ran too few inferences for the meter to see; run it longer"));
    }
    double mean = 0;
    for (double x : per_slice) mean += x;
    mean /= static_cast<double>(per_slice.size());
    double var = 0;
    for (double x : per_slice) var += (x - mean) * (x - mean);
    var /= static_cast<double>(per_slice.size() - 1);
    // The whole run's estimate, with the slices' spread as its uncertainty.
    const double estimate = (joules - idle_watts * seconds) / inferences;
    if (!(estimate > 0)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "'%s' measured %.4f J per inference: no more than idle; the meter cannot tell it at this load", variant.name,
          estimate));
    }
    measured.push_back({estimate, std::sqrt(var / static_cast<double>(per_slice.size())), inferences,
                        static_cast<double>(ok_calls.load()) / absl::ToDoubleSeconds(options.per_variant)});
    std::fprintf(report, "%s: %.4f J per inference ± %.4f (%.0f inferences, %.1f calls/s, batch %lld)\n",
                 variant.name.c_str(), measured.back().joules_per_inference, measured.back().stderr_joules,
                 inferences, measured.back().calls_per_second, static_cast<long long>(options.batch));
  }

  std::string yaml = absl::StrCat(
      "# Measured by carbon-sidecar --calibrate ", route->name, " on ",
      absl::FormatTime("%Y-%m-%d %H:%M UTC", absl::Now(), absl::UTCTimeZone()), "\n",
      "# upstream: ", home.target, " (cluster ", home.name, "); meter: ", ToAbsl(route->energy.meter->kind()), " (devices: ",
      absl::StrJoin(after->devices, ", "), ")\n",
      absl::StrFormat("# idle power %.2f W, subtracted; batch size %lld; %d calls in flight; %s per variant in %d slices\n",
                      idle_watts, static_cast<long long>(options.batch), options.concurrency,
                      absl::FormatDuration(options.per_variant), options.slices),
      "# energy_mj: the devices' energy per inference above idle; ± is the standard error over the slices.\n",
      "# error_percent: kept from ", route->pool_source, " (the sidecar cannot measure accuracy).\n",
      "name: ", route->name, "-measured\n",
      "source: carbon-sidecar --calibrate (", ToAbsl(route->energy.meter->kind()), ")\n", "variants:\n");
  for (size_t v = 0; v < pool.size(); ++v) {
    absl::StrAppend(&yaml, "  - { name: ", pool[v].name, ", energy_mj: ",
                    ShortestDecimal(measured[v].joules_per_inference * 1000), ", error_percent: ",
                    ShortestDecimal(pool[v].error_percent), " }",
                    absl::StrFormat("  # ± %.3f mJ, %.0f inferences\n", measured[v].stderr_joules * 1000,
                                    measured[v].inferences));
  }
  std::ofstream out(options.out_path);
  out << yaml;
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat(options.out_path, ": cannot write"));
  std::fprintf(report, "wrote %s\n", options.out_path.c_str());
  return absl::OkStatus();
}

}  // namespace carbon::sidecar
