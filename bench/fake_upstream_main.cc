// A fake inference server on loopback, for the demo and benchmarks: serves the given model names
// until SIGTERM or SIGINT.
#include <csignal>
#include <cstdio>

#include "absl/flags/flag.h"
#include "common/command_line.h"
#include "absl/synchronization/mutex.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/fake_upstream.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:8011", "Address to serve on (port 0: any free port).");
ABSL_FLAG(std::string, models, "resnet34,resnet50,resnet101,resnet152,alexnet,vgg16,vgg19",
          "Model names to serve.");
ABSL_FLAG(bool, announce_requests, false,
          "Print \"received <method> <model>\" as each request arrives (tests poll for it).");
ABSL_FLAG(std::vector<std::string>, service_time, {},
          "Per-model service time, e.g. resnet152=5ms,resnet34=1ms.");
ABSL_FLAG(std::vector<std::string>, instances, {},
          "Per-model executions at once, e.g. resnet152=2 (the others queue, as in Triton's scheduler; "
          "default: no limit).");

ABSL_FLAG(std::vector<std::string>, gpu_joules, {},
          "Meter a simulated GPU, as Triton's metrics port does (GET /metrics on --metrics_listen): "
          "energy per inference per model, e.g. resnet34=0.36,resnet152=1.24 (joules).");
ABSL_FLAG(double, idle_watts, 50, "The simulated GPU's idle power (with --gpu_joules).");
ABSL_FLAG(double, gpu_jitter, 0.05, "Relative noise of each inference's and each scrape's energy.");

int main(int argc, char** argv) {
  carbon::StartBinary(
      "a fake KServe v2 / Triton inference server for the demo, the tests and the benchmarks.\n"
      "Usage: fake-upstream [--listen HOST:PORT] [--models a,b,c] [--service_time model=5ms,...] "
      "[--instances model=2,...] [--announce_requests] [--gpu_joules model=0.4,... [--idle_watts 50]]",
      __FILE__, argc, argv);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  carbon::bench::FakeUpstreamOptions options;
  options.models = absl::StrSplit(absl::GetFlag(FLAGS_models), ',', absl::SkipEmpty());
  options.max_recorded = 0;
  for (const std::string& entry : absl::GetFlag(FLAGS_service_time)) {
    std::pair<std::string, std::string> kv = absl::StrSplit(entry, '=');
    absl::Duration d;
    if (!absl::ParseDuration(kv.second, &d)) {
      std::fprintf(stderr, "bad --service_time entry '%s'\n", entry.c_str());
      return 2;
    }
    options.service_time[kv.first] = d;
  }
  for (const std::string& entry : absl::GetFlag(FLAGS_instances)) {
    std::pair<std::string, std::string> kv = absl::StrSplit(entry, '=');
    int n = 0;
    if (!absl::SimpleAtoi(kv.second, &n) || n < 1) {
      std::fprintf(stderr, "bad --instances entry '%s'\n", entry.c_str());
      return 2;
    }
    options.instances[kv.first] = n;
  }
  if (absl::GetFlag(FLAGS_announce_requests)) {
    options.on_request = [](const carbon::bench::ReceivedRequest& r) {
      // One write per line, so lines from concurrent calls do not interleave.
      const std::string line = absl::StrCat("received ", r.method, " ", r.model_name, "\n");
      std::fwrite(line.data(), 1, line.size(), stdout);
      std::fflush(stdout);
    };
  }
  std::unique_ptr<carbon::bench::FakeMetricsServer> metrics;
  if (!absl::GetFlag(FLAGS_gpu_joules).empty()) {
    carbon::bench::FakeGpuOptions gpu;
    gpu.idle_watts = absl::GetFlag(FLAGS_idle_watts);
    gpu.jitter = absl::GetFlag(FLAGS_gpu_jitter);
    for (const std::string& entry : absl::GetFlag(FLAGS_gpu_joules)) {
      std::pair<std::string, std::string> kv = absl::StrSplit(entry, '=');
      double joules = 0;
      if (!absl::SimpleAtod(kv.second, &joules) || !(joules >= 0)) {
        std::fprintf(stderr, "bad --gpu_joules entry '%s'\n", entry.c_str());
        return 2;
      }
      gpu.joules_per_inference[kv.first] = joules;
    }
    options.gpu = std::make_shared<carbon::bench::FakeGpuMeter>(gpu);
    auto started = carbon::bench::FakeMetricsServer::Start(options.gpu);
    if (!started.ok()) {
      std::fprintf(stderr, "%s\n", std::string(started.status().message()).c_str());
      return 1;
    }
    metrics = *std::move(started);
    std::printf("fake-upstream metrics at %s\n", metrics->url().c_str());
  }
  auto server = carbon::bench::FakeUpstreamServer::Start(absl::GetFlag(FLAGS_listen), options);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  std::printf("fake-upstream listening on port %d\n", (*server)->port());
  std::fflush(stdout);
  int sig;
  sigwait(&signals, &sig);
  (*server)->Shutdown();
  return 0;
}
