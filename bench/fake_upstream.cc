#include "bench/fake_upstream.h"

#include <grpcpp/alarm.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/happens_before.h"

namespace carbon::bench {
// Finishes a unary call after the model's service time, without blocking a server thread. With a
// queue (the model has instances), the service time starts only when an instance is free.
class DelayedUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  DelayedUnaryReactor(absl::Duration delay, grpc::Status status, std::atomic<int64_t>* cancelled,
                      FakeInferenceService::ModelQueue* queue)
      : delay_(delay), status_(std::move(status)), cancelled_(cancelled), queue_(queue) {
    HappensBefore(this);  // common/happens_before.h: each step is started by the one before
    if (delay_ <= absl::ZeroDuration()) {
      Finish(status_);
      return;
    }
    if (queue_ != nullptr) {
      absl::MutexLock lock(&queue_->mu);
      if (queue_->running >= queue_->instances) {
        queue_->waiting.push_back(this);
        return;
      }
      ++queue_->running;
    }
    Run();
  }
  // A cancelled call (client gone, deadline passed, server shutting down) ends at once; one still
  // waiting leaves the queue.
  void OnCancel() override {
    cancelled_->fetch_add(1);
    if (queue_ != nullptr) {
      absl::MutexLock lock(&queue_->mu);
      auto it = std::find(queue_->waiting.begin(), queue_->waiting.end(), this);
      if (it != queue_->waiting.end()) {
        queue_->waiting.erase(it);
        HappensBefore(this);
        Finish(grpc::Status::CANCELLED);
        return;
      }
    }
    alarm_.Cancel();
    HappensBefore(this);
  }
  void OnDone() override {
    HappensAfter(this);
    delete this;
  }

 private:
  // Holds an instance for the service time, then frees it for the next call waiting.
  void Run() {
    alarm_.Set(absl::ToChronoTime(absl::Now() + delay_), [this](bool fired) {
      HappensAfter(this);
      if (queue_ != nullptr) {
        DelayedUnaryReactor* next = nullptr;
        {
          absl::MutexLock lock(&queue_->mu);
          if (queue_->waiting.empty()) {
            --queue_->running;
          } else {
            next = queue_->waiting.front();  // takes over this instance
            queue_->waiting.pop_front();
          }
        }
        if (next != nullptr) next->Run();
      }
      Finish(fired ? status_ : grpc::Status::CANCELLED);
    });
  }

  absl::Duration delay_;
  grpc::Status status_;
  std::atomic<int64_t>* cancelled_;
  FakeInferenceService::ModelQueue* queue_;
  grpc::Alarm alarm_;
};

namespace {

// The largest output a request may ask for: well inside the 64 MiB messages both sides accept.
constexpr int64_t kMaxResponseBytes = int64_t{48} * 1024 * 1024;

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, grpc::Status status = grpc::Status::OK) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

uint64_t Fnv1a64(std::string_view bytes, uint64_t hash) {
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

FakeInferenceService::FakeInferenceService(FakeUpstreamOptions options) : options_(std::move(options)) {
  for (const auto& [model, instances] : options_.instances) {
    if (instances <= 0) continue;
    auto queue = std::make_unique<ModelQueue>();
    queue->instances = instances;
    queues_[model] = std::move(queue);
  }
}

FakeInferenceService::ModelQueue* FakeInferenceService::QueueOf(const std::string& model) {
  auto it = queues_.find(model);
  return it == queues_.end() ? nullptr : it->second.get();
}

bool FakeInferenceService::Serves(const std::string& model) const {
  return std::find(options_.models.begin(), options_.models.end(), model) != options_.models.end();
}

absl::Duration FakeInferenceService::ServiceTime(const std::string& model) const {
  auto it = options_.service_time.find(model);
  return it == options_.service_time.end() ? absl::ZeroDuration() : it->second;
}

void FakeInferenceService::Record(grpc::CallbackServerContext* ctx, std::string method,
                                  const std::string& model, const std::string& version,
                                  const inference::ModelInferRequest* infer) {
  ReceivedRequest r;
  r.method = std::move(method);
  r.model_name = model;
  r.model_version = version;
  if (infer != nullptr) {
    r.id = infer->id();
    uint64_t hash = 0xcbf29ce484222325ull;
    for (const std::string& raw : infer->raw_input_contents()) {
      r.raw_input_bytes += raw.size();
      hash = Fnv1a64(raw, hash);
    }
    r.raw_input_fnv1a = hash;
  }
  for (const auto& [key, value] : ctx->client_metadata()) {
    if (key.starts_with("x-")) {
      r.metadata.emplace(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
    }
  }
  r.deadline = absl::FromChrono(ctx->deadline());
  if (options_.on_request) options_.on_request(r);
  absl::MutexLock lock(&mu_);
  received_.push_back(std::move(r));
  while (received_.size() > options_.max_recorded) received_.pop_front();
}

std::vector<ReceivedRequest> FakeInferenceService::received() const {
  absl::MutexLock lock(&mu_);
  return {received_.begin(), received_.end()};
}

size_t FakeInferenceService::received_count() const {
  absl::MutexLock lock(&mu_);
  return received_.size();
}

void FakeInferenceService::ClearReceived() {
  absl::MutexLock lock(&mu_);
  received_.clear();
}

grpc::Status FakeInferenceService::Infer(const inference::ModelInferRequest& request,
                                         inference::ModelInferResponse* response) const {
  if (!Serves(request.model_name())) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("Request for unknown model: '", request.model_name(), "' is not found"));
  }
  // A model that answers with a large tensor (segmentation, super-resolution, generation): the
  // request asks for `response_bytes` of output, for benchmarks of the response direction.
  int64_t response_bytes = 0;
  if (const auto it = request.parameters().find("response_bytes"); it != request.parameters().end()) {
    response_bytes = it->second.int64_param();
    if (response_bytes < 0 || response_bytes > kMaxResponseBytes || response_bytes % 4 != 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("response_bytes must be a multiple of 4 between 0 and ", kMaxResponseBytes,
                                       ", got ", response_bytes));
    }
  }
  uint64_t input_bytes = 0;
  for (const std::string& raw : request.raw_input_contents()) input_bytes += raw.size();
  response->set_model_name(request.model_name());
  response->set_model_version("1");
  response->set_id(request.id());
  auto* served_by = response->add_outputs();
  served_by->set_name("served_by");
  served_by->set_datatype("BYTES");
  served_by->add_shape(1);
  // Triton's raw BYTES layout: a 4-byte little-endian length before each element.
  std::string element(4, '\0');
  const uint32_t n = static_cast<uint32_t>(request.model_name().size());
  for (int i = 0; i < 4; ++i) element[i] = static_cast<char>(n >> (8 * i) & 0xff);
  element += request.model_name();
  response->add_raw_output_contents(element);
  auto* bytes = response->add_outputs();
  bytes->set_name("input_bytes");
  bytes->set_datatype("INT64");
  bytes->add_shape(1);
  std::string count(8, '\0');
  for (int i = 0; i < 8; ++i) count[i] = static_cast<char>(input_bytes >> (8 * i) & 0xff);
  response->add_raw_output_contents(count);
  if (response_bytes > 0) {
    auto* tensor = response->add_outputs();
    tensor->set_name("output");
    tensor->set_datatype("FP32");
    tensor->add_shape(1);
    tensor->add_shape(response_bytes / 4);
    response->add_raw_output_contents(std::string(static_cast<size_t>(response_bytes), '\x02'));
  }
  if (options_.gpu) {
    const int64_t batch = request.inputs_size() > 0 && request.inputs(0).shape_size() > 0 ? request.inputs(0).shape(0) : 1;
    options_.gpu->CountInference(request.model_name(), std::max<int64_t>(batch, 1));
  }
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* FakeInferenceService::ServerLive(grpc::CallbackServerContext* ctx,
                                                           const inference::ServerLiveRequest*,
                                                           inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Done(ctx);
}

grpc::ServerUnaryReactor* FakeInferenceService::ServerReady(grpc::CallbackServerContext* ctx,
                                                            const inference::ServerReadyRequest*,
                                                            inference::ServerReadyResponse* response) {
  response->set_ready(true);
  return Done(ctx);
}

grpc::ServerUnaryReactor* FakeInferenceService::ServerMetadata(
    grpc::CallbackServerContext* ctx, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  response->set_name("carbon-sidecar-fake-upstream");
  response->set_version("1");
  return Done(ctx);
}

grpc::ServerUnaryReactor* FakeInferenceService::ModelReady(grpc::CallbackServerContext* ctx,
                                                           const inference::ModelReadyRequest* request,
                                                           inference::ModelReadyResponse* response) {
  Record(ctx, "ModelReady", request->name(), request->version(), nullptr);
  response->set_ready(Serves(request->name()));
  return Done(ctx);
}

grpc::ServerUnaryReactor* FakeInferenceService::ModelMetadata(
    grpc::CallbackServerContext* ctx, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  Record(ctx, "ModelMetadata", request->name(), request->version(), nullptr);
  if (!Serves(request->name())) {
    return Done(ctx, grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model"));
  }
  response->set_name(request->name());
  // Built from a std::string: GCC 12 reports a false -Wrestrict on the literal overload here.
  response->mutable_versions()->Add(std::string(1, '1'));
  response->set_platform("fake");
  auto* input = response->add_inputs();
  input->set_name("input");
  input->set_datatype("FP32");
  for (int64_t d : {-1, 3, 224, 224}) input->add_shape(d);
  auto* output = response->add_outputs();
  output->set_name("served_by");
  output->set_datatype("BYTES");
  output->add_shape(1);
  return Done(ctx);
}

grpc::ServerUnaryReactor* FakeInferenceService::ModelConfig(grpc::CallbackServerContext* ctx,
                                                            const inference::ModelConfigRequest* request,
                                                            inference::ModelConfigResponse* response) {
  Record(ctx, "ModelConfig", request->name(), request->version(), nullptr);
  if (!Serves(request->name())) {
    return Done(ctx, grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model"));
  }
  response->mutable_config()->set_name(request->name());
  response->mutable_config()->set_platform("fake");
  response->mutable_config()->set_max_batch_size(8);
  return Done(ctx);
}

grpc::ServerUnaryReactor* FakeInferenceService::ModelStatistics(
    grpc::CallbackServerContext* ctx, const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  Record(ctx, "ModelStatistics", request->name(), request->version(), nullptr);
  for (const std::string& model : options_.models) {
    if (request->name().empty() || request->name() == model) {
      response->add_model_stats()->set_name(model);
    }
  }
  return Done(ctx);
}

grpc::ServerUnaryReactor* FakeInferenceService::ModelInfer(grpc::CallbackServerContext* ctx,
                                                           const inference::ModelInferRequest* request,
                                                           inference::ModelInferResponse* response) {
  Record(ctx, "ModelInfer", request->model_name(), request->model_version(), request);
  grpc::Status status = Infer(*request, response);
  return new DelayedUnaryReactor(status.ok() ? ServiceTime(request->model_name()) : absl::ZeroDuration(),
                                 status, &cancelled_unary_, status.ok() ? QueueOf(request->model_name()) : nullptr);
}

// Answers each request of the stream in order, one response per request.
class StreamInferReactor final
    : public grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse> {
 public:
  StreamInferReactor(FakeInferenceService* service, grpc::CallbackServerContext* ctx)
      : service_(service), ctx_(ctx) {
    service_->open_streams_.fetch_add(1);
    HappensBefore(this);  // common/happens_before.h: one operation at a time, each started by the last
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override {
    HappensAfter(this);
    if (!ok) {
      HappensBefore(this);
      Finish(ctx_->IsCancelled() ? grpc::Status::CANCELLED : grpc::Status::OK);
      return;
    }
    service_->Record(ctx_, "ModelStreamInfer", request_.model_name(), request_.model_version(), &request_);
    response_.Clear();
    grpc::Status status = service_->Infer(request_, response_.mutable_infer_response());
    if (!status.ok()) {
      response_.clear_infer_response();
      response_.set_error_message(status.error_message());
    }
    const absl::Duration delay = status.ok() ? service_->ServiceTime(request_.model_name()) : absl::ZeroDuration();
    if (delay > absl::ZeroDuration()) {
      alarm_ = std::make_unique<grpc::Alarm>();
      HappensBefore(this);
      alarm_->Set(absl::ToChronoTime(absl::Now() + delay), [this](bool) {
        HappensAfter(this);
        HappensBefore(this);
        StartWrite(&response_);
      });
    } else {
      HappensBefore(this);
      StartWrite(&response_);
    }
  }
  void OnWriteDone(bool ok) override {
    HappensAfter(this);
    HappensBefore(this);
    if (!ok) {
      Finish(grpc::Status::CANCELLED);
      return;
    }
    StartRead(&request_);
  }
  void OnCancel() override {
    service_->cancelled_streams_.fetch_add(1);
    HappensBefore(this);  // gRPC runs OnDone after OnCancel has returned
  }
  void OnDone() override {
    HappensAfter(this);
    service_->open_streams_.fetch_sub(1);
    // The server's Wait (inside uninstrumented libgrpc) returns after this; the service is deleted then.
    HappensBefore(service_);
    delete this;
  }

 private:
  FakeInferenceService* service_;
  grpc::CallbackServerContext* ctx_;
  inference::ModelInferRequest request_;
  inference::ModelStreamInferResponse response_;
  std::unique_ptr<grpc::Alarm> alarm_;
};

grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse>*
FakeInferenceService::ModelStreamInfer(grpc::CallbackServerContext* ctx) {
  return new StreamInferReactor(this, ctx);
}

absl::StatusOr<std::unique_ptr<FakeUpstreamServer>> FakeUpstreamServer::Start(
    const std::string& address, FakeUpstreamOptions options, std::shared_ptr<grpc::ServerCredentials> credentials) {
  auto server = std::unique_ptr<FakeUpstreamServer>(new FakeUpstreamServer());
  server->service_ = std::make_unique<FakeInferenceService>(std::move(options));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, credentials ? credentials : grpc::InsecureServerCredentials(), &server->port_);
  builder.SetMaxReceiveMessageSize(64 * 1024 * 1024);
  builder.SetMaxSendMessageSize(64 * 1024 * 1024);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("fake upstream cannot listen on ", address));
  }
  return server;
}

FakeUpstreamServer::~FakeUpstreamServer() { Shutdown(); }

void FakeUpstreamServer::Shutdown() {
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
    HappensAfter(service_.get());  // every stream's OnDone, which touched the service, came first
    server_.reset();
  }
}

}  // namespace carbon::bench
