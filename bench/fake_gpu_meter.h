#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace httplib {
class Server;
}

namespace carbon::bench {

struct FakeGpuOptions {
  // Energy per inference of each model; models absent cost nothing but are still counted.
  absl::flat_hash_map<std::string, double> joules_per_inference;
  double idle_watts = 50;
  // Relative noise: each inference's energy, and the idle power between two scrapes, vary uniformly
  // by ± this.
  double jitter = 0.05;
  // The GPUs the server reports; the energy is shared evenly between them.
  std::vector<std::string> gpu_uuids = {"GPU-0e9fdafb-5adb-91cd-26a8-308d34357efc"};
  uint64_t seed = 1;
};

// The GPUs behind the fake inference server, metered the way Triton reports them on its metrics
// port (https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/user_guide/metrics.html):
// nv_energy_consumption{gpu_uuid} in joules since the server started, counters of inferences per
// model and version, with power and utilisation gauges beside. The energy is what the options say
// the inferences and the idle time cost, with noise. Thread-safe.
class FakeGpuMeter {
 public:
  explicit FakeGpuMeter(FakeGpuOptions options);

  // `items` inferences of `model` ran (a request's batch size).
  void CountInference(const std::string& model, int64_t items);
  // The metrics page now, with the idle energy since the last one added.
  std::string RenderTritonMetrics();
  // As if the server restarted: every counter from zero.
  void Restart();
  // The GPU stops being reported (a GPU lost, or hidden from the container).
  void RemoveGpu(const std::string& uuid);

 private:
  void AccrueIdle() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  double Noise() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const FakeGpuOptions options_;
  absl::Mutex mu_;
  std::mt19937_64 random_ ABSL_GUARDED_BY(mu_);
  absl::Time last_accrual_ ABSL_GUARDED_BY(mu_);
  double joules_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, int64_t> inferences_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> gpus_ ABSL_GUARDED_BY(mu_);
};

// Serves a FakeGpuMeter's page at GET /metrics on a loopback port of its own, as Triton's metrics
// port does; can be told to answer slowly or with garbage.
class FakeMetricsServer {
 public:
  static absl::StatusOr<std::unique_ptr<FakeMetricsServer>> Start(std::shared_ptr<FakeGpuMeter> meter);
  ~FakeMetricsServer();
  int port() const { return port_; }
  std::string url() const;
  void set_delay(absl::Duration delay) { delay_ms_ = absl::ToInt64Milliseconds(delay); }
  void set_garbage(bool garbage) { garbage_ = garbage; }
  int64_t scrapes() const { return scrapes_.load(); }  // begun
  int64_t scrapes_in_progress() const { return in_progress_.load(); }

 private:
  FakeMetricsServer() = default;
  std::shared_ptr<FakeGpuMeter> meter_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<int64_t> delay_ms_{0};
  std::atomic<bool> garbage_{false};
  std::atomic<int64_t> scrapes_{0};
  std::atomic<int64_t> in_progress_{0};
};

}  // namespace carbon::bench
