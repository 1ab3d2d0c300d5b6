// carbon-sidecar: wires the config, the selection publisher and the proxy together, then waits
// for signals: SIGHUP reloads the config, SIGTERM / SIGINT drain and exit.
#include <malloc.h>

#include <csignal>
#include <cstdlib>
#include <thread>

#include "absl/flags/flag.h"
#include "common/command_line.h"
#include "absl/synchronization/mutex.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/notification.h"
#include "common/string_view_compat.h"
#include "sidecar/calibration.h"
#include "sidecar/config.h"
#include "sidecar/probe.h"
#include "sidecar/server.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, config, "config/sidecar.yaml", "Path of the sidecar's YAML config.");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error or off.");
ABSL_FLAG(bool, check_config, false, "Validate the config, print the routes, and exit.");
ABSL_FLAG(bool, probe_intensity, false,
          "Ask the configured intensity provider now, print its answer, the window and each route's "
          "choice, and exit (non-zero on failure).");

ABSL_FLAG(std::string, calibrate, "",
          "Measure the energy per inference of this route's variants on the upstream, with the meter its "
          "energy names, write a pool file (--calibrate_out) and exit.");
ABSL_FLAG(std::string, calibrate_out, "measured-pool.yaml", "The pool file --calibrate writes.");
ABSL_FLAG(absl::Duration, calibrate_idle, absl::Seconds(10), "How long --calibrate reads the idle power.");
ABSL_FLAG(absl::Duration, calibrate_duration, absl::Seconds(30), "How long --calibrate runs each variant.");
ABSL_FLAG(int64_t, calibrate_batch, 1, "Inferences per request --calibrate sends.");
ABSL_FLAG(int, calibrate_concurrency, 4, "Calls --calibrate keeps in flight.");

int main(int argc, char** argv) {
  carbon::StartBinary(
      "carbon-aware gRPC sidecar for KServe v2 / Triton inference servers.\n"
      "Usage: carbon-sidecar [--config FILE] [--log_level LEVEL] [--check_config | --probe_intensity |\n"
      "                      --calibrate ROUTE [--calibrate_out FILE] [--calibrate_duration 30s] ...]",
      __FILE__, argc, argv);
  // glibc gives each thread that allocates its own arena (up to 8 per core), and gRPC's threads
  // take turns with every message, so freed 600 KB messages were kept in many arenas at once:
  // 64 in flight peaked at 207 MB with the default and 107 MB with two arenas, at the same
  // throughput (bench/RESULTS.md). An operator's MALLOC_ARENA_MAX or GLIBC_TUNABLES still wins.
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr && std::getenv("GLIBC_TUNABLES") == nullptr) {
    mallopt(M_ARENA_MAX, 2);
  }
  // Logs go to stderr, as services' logs do; stdout is left to --check_config's report.
  spdlog::set_default_logger(spdlog::stderr_logger_mt("carbon-sidecar"));
  spdlog::set_pattern("ts=%Y-%m-%dT%H:%M:%S.%e level=%l %v");
  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));

  // Signals are taken synchronously by this thread only: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string path = absl::GetFlag(FLAGS_config);
  auto config = carbon::sidecar::LoadConfig(path);
  if (!config.ok()) {
    spdlog::error("event=config_invalid error=\"{}\"", carbon::ToStd(config.status().message()));
    return 2;
  }
  if (absl::GetFlag(FLAGS_check_config)) {
    for (const auto& route : config->routes) {
      std::printf("route %s: %zu variants from %s, default %s, baseline %s\n", route.name.c_str(),
                  route.pool->size(), route.pool_source.c_str(),
                  (*route.pool)[route.default_variant].name.c_str(),
                  (*route.pool)[route.baseline].name.c_str());
    }
    std::printf("%s: ok\n", path.c_str());
    return 0;
  }
  if (absl::GetFlag(FLAGS_probe_intensity)) return carbon::sidecar::RunIntensityProbe(*config, stdout);
  if (!absl::GetFlag(FLAGS_calibrate).empty()) {
    carbon::sidecar::CalibrationRunOptions options;
    options.route = absl::GetFlag(FLAGS_calibrate);
    options.out_path = absl::GetFlag(FLAGS_calibrate_out);
    options.idle = absl::GetFlag(FLAGS_calibrate_idle);
    options.per_variant = absl::GetFlag(FLAGS_calibrate_duration);
    options.batch = absl::GetFlag(FLAGS_calibrate_batch);
    options.concurrency = absl::GetFlag(FLAGS_calibrate_concurrency);
    const absl::Status calibrated = carbon::sidecar::RunCalibration(*config, options, stdout);
    if (!calibrated.ok()) {
      spdlog::error("event=calibration_failed error=\"{}\"", carbon::ToStd(calibrated.message()));
      return 1;
    }
    return 0;
  }
  auto server = carbon::sidecar::SidecarServer::Start(*config);
  if (!server.ok()) {
    spdlog::error("event=start_failed error=\"{}\"", carbon::ToStd(server.status().message()));
    return 1;
  }

  absl::Notification drained;
  std::thread drainer;
  while (!drained.HasBeenNotified()) {
    const timespec poll{0, 100'000'000};
    const int sig = sigtimedwait(&signals, nullptr, &poll);
    if (sig == SIGHUP) {
      (void)(*server)->ReloadFromFile(path);  // logged and counted either way
    } else if (sig == SIGTERM || sig == SIGINT) {
      if (drainer.joinable()) {
        spdlog::warn("event=forced_exit detail=\"second signal during drain\"");
        std::_Exit(1);
      }
      const absl::Duration drain = (*server)->drain_timeout();
      spdlog::info("event=draining timeout={}", absl::FormatDuration(drain));
      drainer = std::thread([&server, &drained, drain] {
        (*server)->Shutdown(drain);
        drained.Notify();
      });
    }
  }
  drainer.join();
  spdlog::info("event=stopped");
  return 0;
}
