#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "bench/fake_gpu_meter.h"
#include "inference/grpc_service.grpc.pb.h"

namespace carbon::bench {

// What the fake upstream saw of one request (the payload only as a size and a checksum).
struct ReceivedRequest {
  std::string method;  // "ModelInfer", "ModelStreamInfer", "ModelReady", …
  std::string model_name;
  std::string model_version;
  std::string id;
  uint64_t raw_input_bytes = 0;
  uint64_t raw_input_fnv1a = 0;  // FNV-1a 64 over all raw_input_contents, in order
  std::map<std::string, std::string> metadata;  // client metadata starting with "x-"
  absl::Time deadline = absl::InfiniteFuture();
};

uint64_t Fnv1a64(std::string_view bytes, uint64_t hash = 0xcbf29ce484222325ull);

struct FakeUpstreamOptions {
  std::vector<std::string> models;  // the variant names it serves
  absl::flat_hash_map<std::string, absl::Duration> service_time;  // per model, default none
  // Per model, how many unary ModelInfer calls it executes at once (its instances); the others wait
  // in arrival order, as in Triton's scheduler queue. Absent: no limit.
  absl::flat_hash_map<std::string, int> instances;
  size_t max_recorded = 10000;  // older records are dropped
  // Called as each request arrives (before any service time), from gRPC's threads.
  std::function<void(const ReceivedRequest&)> on_request;
  // When set, each ModelInfer (and streamed request) served is metered there, its batch size (the
  // first input's leading dimension, else 1) as its inferences.
  std::shared_ptr<FakeGpuMeter> gpu;
};

class DelayedUnaryReactor;

// A real inference server for tests, demos and benchmarks: it serves the inference service for
// the configured model names. ModelInfer answers with two outputs: "served_by" (BYTES, the model
// that ran) and "input_bytes" (INT64, raw input bytes received). Unknown models get NOT_FOUND,
// on the stream an in-band error_message. Thread-safe.
class FakeInferenceService final : public inference::GRPCInferenceService::CallbackService {
 public:
  explicit FakeInferenceService(FakeUpstreamOptions options);

  std::vector<ReceivedRequest> received() const;
  size_t received_count() const;
  void ClearReceived();
  // Streams whose client went away before they ended (seen through cancellation).
  int64_t cancelled_streams() const { return cancelled_streams_.load(); }
  // Streams begun and not yet ended.
  int64_t open_streams() const { return open_streams_.load(); }
  // Unary ModelInfer calls cancelled while the model was still "running" (its service time).
  int64_t cancelled_unary() const { return cancelled_unary_.load(); }

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext*, const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse*) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext*, const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse*) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext*,
                                           const inference::ServerMetadataRequest*,
                                           inference::ServerMetadataResponse*) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext*, const inference::ModelReadyRequest*,
                                       inference::ModelReadyResponse*) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext*,
                                          const inference::ModelMetadataRequest*,
                                          inference::ModelMetadataResponse*) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext*, const inference::ModelConfigRequest*,
                                        inference::ModelConfigResponse*) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext*,
                                            const inference::ModelStatisticsRequest*,
                                            inference::ModelStatisticsResponse*) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext*, const inference::ModelInferRequest*,
                                       inference::ModelInferResponse*) override;
  grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse>*
  ModelStreamInfer(grpc::CallbackServerContext*) override;

  // Fills `response` for `request`, or returns why it cannot.
  grpc::Status Infer(const inference::ModelInferRequest& request,
                     inference::ModelInferResponse* response) const;
  absl::Duration ServiceTime(const std::string& model) const;
  void Record(grpc::CallbackServerContext* ctx, std::string method, const std::string& model,
              const std::string& version, const inference::ModelInferRequest* infer);
  bool Serves(const std::string& model) const;

 private:
  friend class StreamInferReactor;
  friend class DelayedUnaryReactor;
  // The executions of one model with instances: those running, and the calls waiting for one.
  struct ModelQueue {
    int instances = 0;
    absl::Mutex mu;
    int running ABSL_GUARDED_BY(mu) = 0;
    std::deque<DelayedUnaryReactor*> waiting ABSL_GUARDED_BY(mu);
  };
  ModelQueue* QueueOf(const std::string& model);
  FakeUpstreamOptions options_;
  absl::flat_hash_map<std::string, std::unique_ptr<ModelQueue>> queues_;  // fixed after construction
  mutable absl::Mutex mu_;
  std::deque<ReceivedRequest> received_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> cancelled_streams_{0};
  std::atomic<int64_t> open_streams_{0};
  std::atomic<int64_t> cancelled_unary_{0};
};

// The fake service behind a real gRPC server on a port of its own.
class FakeUpstreamServer {
 public:
  // `address` such as "127.0.0.1:0"; port 0 picks a free port.
  // `credentials` null: plaintext.
  static absl::StatusOr<std::unique_ptr<FakeUpstreamServer>> Start(
      const std::string& address, FakeUpstreamOptions options,
      std::shared_ptr<grpc::ServerCredentials> credentials = nullptr);
  ~FakeUpstreamServer();
  int port() const { return port_; }
  FakeInferenceService& service() { return *service_; }
  void Shutdown();
  void Wait() { server_->Wait(); }

 private:
  std::unique_ptr<FakeInferenceService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace carbon::bench
