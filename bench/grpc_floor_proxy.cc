// grpc-floor-proxy: the least a gRPC C++ proxy can cost, as a yardstick for bench/compare.sh.
//   grpc-floor-proxy --listen 127.0.0.1:9000 --upstream 127.0.0.1:8001 [--threads 1]
// Forwards every call as one unary call (request in, response out), with no parsing, routing,
// metadata copying or accounting, on the completion-queue API with one event loop per thread.
// The sidecar uses the callback API, whose completions are handed to gRPC's own "nexting" threads;
// this shows how much of the sidecar's cost over nginx is that threading and how much is gRPC's
// HTTP/2 stack itself. Not a product: unary calls only, and no metadata or deadline passes through.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "common/command_line.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:9000", "host:port to serve on.");
ABSL_FLAG(std::string, upstream, "127.0.0.1:8001", "host:port of the inference server.");
ABSL_FLAG(int, threads, 1,
          "Event-loop threads, each with its own completion queue. One is cheapest on a small host: "
          "gRPC's epoll poller hands each wake-up between the threads that poll.");

namespace {

constexpr int kCallsWaitingPerThread = 64;

// One forwarded call, driven by its completion-queue events in order.
class ForwardedCall {
 public:
  ForwardedCall(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* cq, grpc::GenericStub* upstream)
      : service_(service), cq_(cq), upstream_(upstream) {
    service_->RequestCall(&server_ctx_, &stream_, cq_, cq_, this);
  }

  // Runs the next step; deletes the call after its last one.
  void Proceed(bool ok) {
    switch (step_) {
      case Step::kAccepted:
        if (!ok) return delete this;  // the server is shutting down
        new ForwardedCall(service_, cq_, upstream_);  // keep a call waiting for the next client
        step_ = Step::kRequestRead;
        stream_.Read(&request_, this);
        return;
      case Step::kRequestRead:
        if (!ok) return delete this;  // the client sent no message
        step_ = Step::kUpstreamFinished;
        upstream_call_ = upstream_->PrepareUnaryCall(&upstream_ctx_, server_ctx_.method(), request_, cq_);
        upstream_call_->StartCall();
        upstream_call_->Finish(&response_, &upstream_status_, this);
        return;
      case Step::kUpstreamFinished:
        step_ = Step::kReplied;
        if (upstream_status_.ok()) {
          stream_.WriteAndFinish(response_, grpc::WriteOptions(), grpc::Status::OK, this);
        } else {
          stream_.Finish(upstream_status_, this);
        }
        return;
      case Step::kReplied:
        return delete this;
    }
  }

 private:
  enum class Step { kAccepted, kRequestRead, kUpstreamFinished, kReplied };

  grpc::AsyncGenericService* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::GenericStub* upstream_;
  Step step_ = Step::kAccepted;
  grpc::GenericServerContext server_ctx_;
  grpc::GenericServerAsyncReaderWriter stream_{&server_ctx_};
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  grpc::ClientContext upstream_ctx_;
  grpc::Status upstream_status_;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> upstream_call_;
};

}  // namespace

int main(int argc, char** argv) {
  carbon::StartBinary(
      "the least a gRPC C++ unary proxy can cost (a benchmark yardstick).\n"
      "Usage: grpc-floor-proxy [--listen HOST:PORT] [--upstream HOST:PORT] [--threads N]",
      __FILE__, argc, argv);
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(-1);
  channel_args.SetMaxSendMessageSize(-1);
  grpc::GenericStub upstream(grpc::CreateCustomChannel(absl::GetFlag(FLAGS_upstream),
                                                       grpc::InsecureChannelCredentials(), channel_args));
  grpc::AsyncGenericService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
  builder.RegisterAsyncGenericService(&service);
  const int threads = std::max(1, absl::GetFlag(FLAGS_threads));
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  for (int i = 0; i < threads; ++i) queues.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "grpc-floor-proxy: cannot listen on %s\n", absl::GetFlag(FLAGS_listen).c_str());
    return 1;
  }
  std::fprintf(stderr, "grpc-floor-proxy listening on port %d\n", port);
  std::vector<std::thread> loops;
  for (auto& queue : queues) {
    loops.emplace_back([&service, &upstream, cq = queue.get()] {
      for (int i = 0; i < kCallsWaitingPerThread; ++i) new ForwardedCall(&service, cq, &upstream);
      void* tag;
      bool ok;
      while (cq->Next(&tag, &ok)) static_cast<ForwardedCall*>(tag)->Proceed(ok);
    });
  }
  for (auto& loop : loops) loop.join();  // runs until killed
  return 0;
}
