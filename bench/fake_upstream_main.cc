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

int main(int argc, char** argv) {
  carbon::StartBinary(
      "a fake KServe v2 / Triton inference server for the demo, the tests and the benchmarks.\n"
      "Usage: fake-upstream [--listen HOST:PORT] [--models a,b,c] [--service_time model=5ms,...] "
      "[--instances model=2,...] [--announce_requests]",
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
