#include "bench/fake_gpu_meter.h"

#include <algorithm>

#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace carbon::bench {

FakeGpuMeter::FakeGpuMeter(FakeGpuOptions options)
    : options_(std::move(options)), random_(options_.seed), last_accrual_(absl::Now()), gpus_(options_.gpu_uuids) {}

double FakeGpuMeter::Noise() {
  return 1 + std::uniform_real_distribution<double>(-options_.jitter, options_.jitter)(random_);
}

void FakeGpuMeter::AccrueIdle() {
  const absl::Time now = absl::Now();
  joules_ += options_.idle_watts * absl::ToDoubleSeconds(now - last_accrual_) * Noise();
  last_accrual_ = now;
}

void FakeGpuMeter::CountInference(const std::string& model, int64_t items) {
  absl::MutexLock lock(&mu_);
  inferences_[model] += items;
  requests_[model] += 1;
  const auto it = options_.joules_per_inference.find(model);
  if (it != options_.joules_per_inference.end()) {
    for (int64_t i = 0; i < items; ++i) joules_ += it->second * Noise();
  }
}

void FakeGpuMeter::Restart() {
  absl::MutexLock lock(&mu_);
  joules_ = 0;
  last_accrual_ = absl::Now();
  inferences_.clear();
  requests_.clear();
}

void FakeGpuMeter::RemoveGpu(const std::string& uuid) {
  absl::MutexLock lock(&mu_);
  std::erase(gpus_, uuid);
}

std::string FakeGpuMeter::RenderTritonMetrics() {
  absl::MutexLock lock(&mu_);
  AccrueIdle();
  std::vector<std::string> models;
  for (const auto& [m, n] : inferences_) models.push_back(m);
  std::sort(models.begin(), models.end());
  std::string out;
  const auto family = [&](const char* name, const char* help, const char* type) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  };
  family("nv_inference_request_success", "Number of successful inference requests, all batch sizes", "counter");
  for (const std::string& m : models) {
    absl::StrAppendFormat(&out, "nv_inference_request_success{model=\"%s\",version=\"1\"} %d\n", m, requests_[m]);
  }
  family("nv_inference_count", "Number of inferences performed (does not include cached requests)", "counter");
  for (const std::string& m : models) {
    absl::StrAppendFormat(&out, "nv_inference_count{model=\"%s\",version=\"1\"} %d\n", m, inferences_[m]);
  }
  family("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)", "counter");
  for (const std::string& m : models) {
    absl::StrAppendFormat(&out, "nv_inference_exec_count{model=\"%s\",version=\"1\"} %d\n", m, requests_[m]);
  }
  family("nv_gpu_power_usage", "GPU power usage in watts", "gauge");
  for (const std::string& g : gpus_) {
    absl::StrAppendFormat(&out, "nv_gpu_power_usage{gpu_uuid=\"%s\"} %.6f\n", g,
                          options_.idle_watts / static_cast<double>(options_.gpu_uuids.size()));
  }
  family("nv_energy_consumption", "GPU energy consumption in joules since the Triton Server started", "counter");
  for (const std::string& g : gpus_) {
    absl::StrAppendFormat(&out, "nv_energy_consumption{gpu_uuid=\"%s\"} %.6f\n", g,
                          joules_ / static_cast<double>(options_.gpu_uuids.size()));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<FakeMetricsServer>> FakeMetricsServer::Start(std::shared_ptr<FakeGpuMeter> meter) {
  auto server = std::unique_ptr<FakeMetricsServer>(new FakeMetricsServer());
  server->meter_ = std::move(meter);
  server->server_ = std::make_unique<httplib::Server>();
  FakeMetricsServer* self = server.get();
  server->server_->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    self->scrapes_.fetch_add(1);
    self->in_progress_.fetch_add(1);
    if (const int64_t ms = self->delay_ms_.load(); ms > 0) absl::SleepFor(absl::Milliseconds(ms));
    self->in_progress_.fetch_sub(1);
    if (self->garbage_.load()) {
      res.set_content("<html><body>502 Bad Gateway</body></html>\n{nv_energy_consumption 12", "text/plain");
      return;
    }
    res.set_content(self->meter_->RenderTritonMetrics(), "text/plain; version=0.0.4");
  });
  server->port_ = server->server_->bind_to_any_port("127.0.0.1");
  if (server->port_ <= 0) return absl::UnavailableError("the fake metrics server cannot listen");
  server->thread_ = std::thread([self] { self->server_->listen_after_bind(); });
  // listen_after_bind accepts on the socket already bound: connections made before it runs wait in
  // the backlog, so the port is usable at once.
  return server;
}

FakeMetricsServer::~FakeMetricsServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

std::string FakeMetricsServer::url() const { return absl::StrCat("http://127.0.0.1:", port_, "/metrics"); }

}  // namespace carbon::bench
