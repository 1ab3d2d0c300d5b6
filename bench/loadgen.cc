// A gRPC load generator for KServe v2 / Triton ModelInfer (callback API).
//   loadgen --target 127.0.0.1:8001 --model resnet --concurrency 16 --duration 10s
//   loadgen --target 127.0.0.1:8001 --rate 2000 --duration 10s      (open loop)
//   loadgen --target 127.0.0.1:8001 --stream --concurrency 16        (ModelStreamInfer)
// Closed loop: `concurrency` calls always in flight. Open loop: calls start at a fixed rate whatever
// the server does, and latency is measured from each call's intended start, so a stalled server
// shows up in the tail instead of hiding behind fewer sends (coordinated omission). Streaming:
// `concurrency` ModelStreamInfer streams, each sending its next request when the last is answered;
// a request is counted like a call (an in-band error_message counts as an UNKNOWN error).
// Prints one JSON object: throughput, latency percentiles (µs), error counts by code, and how many
// responses each model served.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "common/command_line.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "inference/grpc_service.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:8001", "host:port of the sidecar or inference server.");
ABSL_FLAG(std::string, model, "resnet", "model_name of every request.");
ABSL_FLAG(int, concurrency, 1, "Closed loop: calls in flight (ignored with --rate).");
ABSL_FLAG(double, rate, 0, "Open loop: calls started per second (0: closed loop).");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "How long to measure.");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(1), "Load before measuring, not counted.");
ABSL_FLAG(int64_t, payload_bytes, 1024, "raw_input_contents size (602112: one 224x224x3 FP32 image).");
ABSL_FLAG(int64_t, response_bytes, 0,
          "Asks the fake upstream for an output tensor this large (602112: one image back); a response "
          "without it counts as a DATA_LOSS error.");
ABSL_FLAG(int64_t, batch, 1, "shape[0] of the input tensor.");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(10), "Deadline of each call.");
ABSL_FLAG(int, channels, 1, "gRPC channels (connections) the calls are spread over.");
ABSL_FLAG(bool, stream, false, "ModelStreamInfer streams instead of unary calls (closed loop).");
ABSL_FLAG(std::string, ca_file, "",
          "TLS to the target, trusting the CA certificates in this PEM file (the target's certificate "
          "must name its host); empty: plaintext.");

namespace {

class LoadGenerator {
 public:
  LoadGenerator() {
    request_.set_model_name(absl::GetFlag(FLAGS_model));
    auto* input = request_.add_inputs();
    input->set_name("input");
    input->set_datatype("FP32");
    for (int64_t d : {absl::GetFlag(FLAGS_batch), int64_t{3}, int64_t{224}, int64_t{224}}) input->add_shape(d);
    request_.add_raw_input_contents(std::string(static_cast<size_t>(absl::GetFlag(FLAGS_payload_bytes)), '\x01'));
    if (absl::GetFlag(FLAGS_response_bytes) > 0) {
      (*request_.mutable_parameters())["response_bytes"].set_int64_param(absl::GetFlag(FLAGS_response_bytes));
    }
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (const std::string ca_file = absl::GetFlag(FLAGS_ca_file); !ca_file.empty()) {
      std::ifstream in(ca_file);
      std::stringstream pem;
      pem << in.rdbuf();
      if (!in || pem.str().empty()) {
        std::fprintf(stderr, "loadgen: cannot read --ca_file %s\n", ca_file.c_str());
        std::exit(2);
      }
      grpc::SslCredentialsOptions tls;
      tls.pem_root_certs = pem.str();
      credentials = grpc::SslCredentials(tls);
    }
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    for (int c = 0; c < std::max(1, absl::GetFlag(FLAGS_channels)); ++c) {
      args.SetInt("carbon.loadgen.channel", c);  // distinct arguments: distinct connections
      stubs_.push_back(inference::GRPCInferenceService::NewStub(
          grpc::CreateCustomChannel(absl::GetFlag(FLAGS_target), credentials, args)));
    }
  }

  // Starts one call; `intended` is when it should have started (open loop) or did (closed loop).
  void Issue(absl::Time intended, std::function<void()> then) {
    auto* call = new Call;
    call->intended = intended;
    call->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
    auto& stub = *stubs_[next_stub_.fetch_add(1, std::memory_order_relaxed) % stubs_.size()];
    in_flight_.fetch_add(1);
    stub.async()->ModelInfer(&call->ctx, &request_, &call->response, [this, call, then](grpc::Status s) {
      Record(call->intended, s, &call->response);
      delete call;
      if (then) then();
      in_flight_.fetch_sub(1);  // last: main may end the process once nothing is in flight
    });
  }

  // Opens one ModelStreamInfer stream that runs request after request until `stop`, each measured
  // like a call. Counts as in flight until the stream has ended.
  void StartStream(const std::atomic<bool>* stop, absl::Time deadline) {
    auto& stub = *stubs_[next_stub_.fetch_add(1, std::memory_order_relaxed) % stubs_.size()];
    in_flight_.fetch_add(1);
    new StreamWorker(this, &stub, stop, deadline);
  }

  void StartMeasuring(absl::Time at) {
    absl::MutexLock lock(&mu_);
    measure_from_ = at;
  }
  void StopMeasuring(absl::Time at) {
    absl::MutexLock lock(&mu_);
    measure_to_ = at;
  }
  int64_t in_flight() const { return in_flight_.load(); }

  std::string Report(absl::Duration measured, const std::string& mode) {
    absl::MutexLock lock(&mu_);
    std::sort(latencies_us_.begin(), latencies_us_.end());
    const auto pct = [&](double q) {
      if (latencies_us_.empty()) return 0.0;
      const size_t i = std::min(latencies_us_.size() - 1, static_cast<size_t>(q * static_cast<double>(latencies_us_.size())));
      return latencies_us_[i];
    };
    double sum = 0;
    for (double l : latencies_us_) sum += l;
    std::string errors, models;
    for (const auto& [code, n] : errors_) absl::StrAppend(&errors, errors.empty() ? "" : ", ", "\"", code, "\": ", n);
    for (const auto& [model, n] : models_) absl::StrAppend(&models, models.empty() ? "" : ", ", "\"", model, "\": ", n);
    const double seconds = absl::ToDoubleSeconds(measured);
    return absl::StrFormat(
        "{\"mode\": \"%s\", \"target\": \"%s\", \"concurrency\": %d, \"rate\": %g, \"payload_bytes\": %d, "
        "\"response_bytes\": %d, "
        "\"duration_s\": %.3f, \"requests\": %d, \"ok\": %d, \"throughput_rps\": %.1f, "
        "\"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f, \"mean\": %.1f}, "
        "\"errors\": {%s}, \"models\": {%s}}\n",
        mode, absl::GetFlag(FLAGS_target), absl::GetFlag(FLAGS_concurrency), absl::GetFlag(FLAGS_rate),
        absl::GetFlag(FLAGS_payload_bytes), absl::GetFlag(FLAGS_response_bytes), seconds, latencies_us_.size(), ok_,
        static_cast<double>(ok_) / seconds, pct(0.5), pct(0.9), pct(0.99), pct(0.999),
        latencies_us_.empty() ? 0.0 : latencies_us_.back(), latencies_us_.empty() ? 0.0 : sum / latencies_us_.size(),
        errors, models);
  }

 private:
  struct Call {
    grpc::ClientContext ctx;
    inference::ModelInferResponse response;
    absl::Time intended;
  };

  // One request in flight on the stream at a time: the next is written once both the last write
  // and its answer have completed (they may complete in either order, on different threads).
  class StreamWorker final
      : public grpc::ClientBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse> {
   public:
    StreamWorker(LoadGenerator* gen, inference::GRPCInferenceService::Stub* stub, const std::atomic<bool>* stop,
                 absl::Time deadline)
        : gen_(gen), stop_(stop) {
      ctx_.set_deadline(absl::ToChronoTime(deadline));
      stub->async()->ModelStreamInfer(&ctx_, this);
      AddHold();  // until the last request is answered or the stream fails
      Send();
      StartCall();
    }
    // A failed write is followed by a failed read, which lets the stream end.
    void OnWriteDone(bool) override { Step(); }
    void OnReadDone(bool ok) override {
      if (!ok) {
        RemoveHold();  // the stream ended early; OnDone has its status
        return;
      }
      answered_ = true;
      const std::string& error = response_.error_message();
      gen_->Record(sent_, error.empty() ? grpc::Status::OK : grpc::Status(grpc::StatusCode::UNKNOWN, error),
                   &response_.infer_response());
      Step();
    }
    void OnDone(const grpc::Status& status) override {
      if (!status.ok() && !answered_) gen_->Record(sent_, status, nullptr);
      LoadGenerator* gen = gen_;
      delete this;
      gen->in_flight_.fetch_sub(1);  // last: main may end the process once nothing is in flight
    }

   private:
    void Send() {
      pending_.store(2);
      answered_ = false;
      sent_ = absl::Now();
      StartWrite(&gen_->request_);
      StartRead(&response_);
    }
    // The second of a request's two completions moves on.
    void Step() {
      if (pending_.fetch_sub(1) != 1) return;
      if (stop_->load()) {
        StartWritesDone();
        RemoveHold();
      } else {
        Send();
      }
    }

    LoadGenerator* gen_;
    const std::atomic<bool>* stop_;
    grpc::ClientContext ctx_;
    inference::ModelStreamInferResponse response_;
    std::atomic<int> pending_{2};
    bool answered_ = false;  // the request in flight has its answer
    absl::Time sent_;
  };

  void Record(absl::Time intended, grpc::Status status, const inference::ModelInferResponse* response) {
    const absl::Time done = absl::Now();
    const int64_t want = absl::GetFlag(FLAGS_response_bytes);
    if (status.ok() && want > 0 &&
        (response->raw_output_contents().empty() ||
         static_cast<int64_t>(response->raw_output_contents().rbegin()->size()) != want)) {
      status = grpc::Status(grpc::StatusCode::DATA_LOSS, "the output tensor is missing or short");
    }
    absl::MutexLock lock(&mu_);
    // Counted when the call started inside the measured span.
    if (intended < measure_from_ || intended >= measure_to_) return;
    latencies_us_.push_back(absl::ToDoubleMicroseconds(done - intended));
    if (status.ok()) {
      ++ok_;
      ++models_[response->model_name()];
    } else {
      ++errors_[static_cast<int>(status.error_code())];
    }
  }

  inference::ModelInferRequest request_;
  std::vector<std::unique_ptr<inference::GRPCInferenceService::Stub>> stubs_;
  std::atomic<uint64_t> next_stub_{0};
  std::atomic<int64_t> in_flight_{0};
  absl::Mutex mu_;
  absl::Time measure_from_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  absl::Time measure_to_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::vector<double> latencies_us_ ABSL_GUARDED_BY(mu_);
  int64_t ok_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int, int64_t> errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> models_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

int main(int argc, char** argv) {
  carbon::StartBinary(
      "gRPC ModelInfer load generator (closed or open loop), JSON out.\n"
      "Usage: loadgen [--target HOST:PORT] [--concurrency N | --rate PER_SECOND] [--stream] [flags below]",
      __FILE__, argc, argv);
  LoadGenerator gen;
  const absl::Duration warmup = absl::GetFlag(FLAGS_warmup);
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  const absl::Time start = absl::Now();
  const absl::Time measure_from = start + warmup;
  const absl::Time end = measure_from + duration;
  gen.StartMeasuring(measure_from);
  gen.StopMeasuring(end);
  const double rate = absl::GetFlag(FLAGS_rate);
  std::string mode;
  // Outlive every call: completions read them until the last call has ended.
  std::atomic<bool> stop{false};
  std::function<void()> loop;
  if (absl::GetFlag(FLAGS_stream)) {
    mode = "stream";
    const absl::Time stream_deadline = end + absl::GetFlag(FLAGS_timeout);
    for (int c = 0; c < std::max(1, absl::GetFlag(FLAGS_concurrency)); ++c) gen.StartStream(&stop, stream_deadline);
    absl::SleepFor(end - absl::Now());
    stop = true;
  } else if (rate > 0) {
    mode = "open";
    // Sends on schedule from this thread; completions never hold it up.
    const absl::Duration interval = absl::Seconds(1) / rate;
    for (int64_t i = 0;; ++i) {
      const absl::Time due = start + interval * i;
      if (due >= end) break;
      const absl::Time now = absl::Now();
      if (due > now) absl::SleepFor(due - now);
      gen.Issue(due, nullptr);
    }
  } else {
    mode = "closed";
    loop = [&] {
      if (!stop.load()) gen.Issue(absl::Now(), loop);
    };
    for (int c = 0; c < std::max(1, absl::GetFlag(FLAGS_concurrency)); ++c) gen.Issue(absl::Now(), loop);
    absl::SleepFor(end - absl::Now());
    stop = true;
  }
  // Let the calls started inside the span finish (bounded by their deadline).
  const absl::Time drain_until = absl::Now() + absl::GetFlag(FLAGS_timeout) + absl::Seconds(1);
  while (gen.in_flight() > 0 && absl::Now() < drain_until) absl::SleepFor(absl::Milliseconds(5));
  std::fputs(gen.Report(duration, mode).c_str(), stdout);
  std::fflush(stdout);
  // Calls still in flight past their deadline would outlive what they use.
  if (gen.in_flight() > 0) std::_Exit(0);
  return 0;
}
