// Faults under load: the upstream killed and restarted, reloads good and bad, a provider that
// hangs, thousands of idle streams, messages held past the memory limit. Real gRPC clients, the sidecar in-process, a real gRPC upstream on loopback; each test
// bounded in time and requests.
#include <arpa/inet.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/cleanup/cleanup.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "bench/fake_upstream.h"
#include "dataplane/h2_proxy.h"
#include "inference/grpc_service.grpc.pb.h"
#include "sidecar/server.h"
#include "tests/support/metric_samples.h"
#include "tests/support/poll.h"
#include "tests/support/resident_memory.h"
#include "tests/support/static_sidecar_config.h"

namespace carbon::sidecar {
namespace {

using ::testing::HasSubstr;
using testing::PollUntil;
using testing::SumSamples;
using testing::ResidentKiB;

const std::vector<std::string> kVariants = {"resnet34", "resnet50", "resnet101", "resnet152"};


// Client threads calling ModelInfer on the route back to back, each call with its own deadline;
// every outcome is counted by code, and the longest call is kept.
class InferLoad {
 public:
  InferLoad(std::shared_ptr<grpc::Channel> channel, int threads, absl::Duration deadline) : deadline_(deadline) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this, channel] {
        auto stub = inference::GRPCInferenceService::NewStub(channel);
        inference::ModelInferRequest request;
        request.set_model_name("resnet");
        request.add_raw_input_contents(std::string(1024, 'p'));
        while (!stop_.load()) {
          grpc::ClientContext ctx;
          ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline_));
          inference::ModelInferResponse response;
          const absl::Time start = absl::Now();
          grpc::Status status = stub->ModelInfer(&ctx, request, &response);
          Record(status, response.model_name(), absl::Now() - start);
        }
      });
    }
  }
  ~InferLoad() { Stop(); }

  void Stop() {
    stop_.store(true);
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  std::map<grpc::StatusCode, int64_t> codes() const {
    absl::MutexLock lock(&mu_);
    return codes_;
  }
  int64_t count(grpc::StatusCode code) const {
    absl::MutexLock lock(&mu_);
    auto it = codes_.find(code);
    return it == codes_.end() ? 0 : it->second;
  }
  int64_t total() const {
    absl::MutexLock lock(&mu_);
    int64_t n = 0;
    for (const auto& [code, c] : codes_) n += c;
    return n;
  }
  absl::Duration longest() const {
    absl::MutexLock lock(&mu_);
    return longest_;
  }
  std::string last_model() const {
    absl::MutexLock lock(&mu_);
    return last_model_;
  }
  std::string last_error() const {
    absl::MutexLock lock(&mu_);
    return last_error_;
  }

 private:
  void Record(const grpc::Status& status, const std::string& model, absl::Duration took) {
    absl::MutexLock lock(&mu_);
    ++codes_[status.error_code()];
    longest_ = std::max(longest_, took);
    if (status.ok()) {
      last_model_ = model;
    } else {
      last_error_ = absl::StrCat(status.error_code(), " ", status.error_message());
    }
  }

  const absl::Duration deadline_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  mutable absl::Mutex mu_;
  std::map<grpc::StatusCode, int64_t> codes_ ABSL_GUARDED_BY(mu_);
  absl::Duration longest_ ABSL_GUARDED_BY(mu_);
  std::string last_model_ ABSL_GUARDED_BY(mu_);
  std::string last_error_ ABSL_GUARDED_BY(mu_);
};

// A TCP relay in front of a port on loopback that holds each new connection for `delay` before
// passing bytes either way: an inference server far away, or slow to handshake.
class DelayingRelay {
 public:
  DelayingRelay(int target_port, absl::Duration delay) : target_port_(target_port), delay_(delay) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(listen_fd_, 16) != 0 ||
        getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "relay cannot listen";
      return;
    }
    port_ = ntohs(addr.sin_port);
    accepting_ = std::thread([this] { AcceptLoop(); });
  }
  ~DelayingRelay() {
    stop_.store(true);
    if (accepting_.joinable()) accepting_.join();
    for (int fd : open_) shutdown(fd, SHUT_RDWR);  // wakes the pipes
    for (auto& t : pipes_) t.join();
    for (int fd : open_) close(fd);
    close(listen_fd_);
  }
  int port() const { return port_; }

 private:
  void AcceptLoop() {
    while (!stop_.load()) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const int client = accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      absl::SleepFor(delay_);
      const int upstream = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(static_cast<uint16_t>(target_port_));
      open_.push_back(client);
      open_.push_back(upstream);
      if (connect(upstream, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        shutdown(client, SHUT_RDWR);
        continue;
      }
      pipes_.emplace_back([client, upstream] { Pipe(client, upstream); });
      pipes_.emplace_back([client, upstream] { Pipe(upstream, client); });
    }
  }
  static void Pipe(int from, int to) {
    char buffer[16384];
    ssize_t n;
    while ((n = read(from, buffer, sizeof(buffer))) > 0) {
      for (ssize_t off = 0; off < n;) {
        const ssize_t w = write(to, buffer + off, static_cast<size_t>(n - off));
        if (w <= 0) return;
        off += w;
      }
    }
    shutdown(to, SHUT_WR);
  }

  const int target_port_;
  const absl::Duration delay_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread accepting_;
  // Written by the accept loop only, read once it has been joined.
  std::vector<int> open_;
  std::vector<std::thread> pipes_;
};

// Every fault test runs against both data planes.
class FaultTest : public ::testing::TestWithParam<SidecarConfig::DataPlane> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / absl::StrCat("carbon-fault-", getpid(), "-", counter_++);
    std::filesystem::create_directories(dir_);
    StartUpstream("127.0.0.1:0");
  }
  void TearDown() override {
    if (sidecar_) sidecar_->Shutdown(absl::ZeroDuration());
    upstream_.reset();
    std::filesystem::remove_all(dir_);
  }

  void StartUpstream(const std::string& address) {
    bench::FakeUpstreamOptions options;
    options.models = kVariants;
    // A little service time, so that calls are in flight when the upstream goes away.
    for (const auto& v : kVariants) options.service_time[v] = absl::Milliseconds(2);
    auto upstream = bench::FakeUpstreamServer::Start(address, options);
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
  }

  // Writes the config file the sidecar runs on (and reloads from).
  std::string WriteConfig(const std::string& intensity_line, const std::string& broken = "",
                          const std::string& refresh = "1h") {
    const std::string path = (dir_ / "sidecar.yaml").string();
    std::ofstream(path) << "listen: 127.0.0.1:0\n"
                        << "admin: { listen: \"127.0.0.1:0\" }\n"
                        << "upstream: { target: \"127.0.0.1:" << (target_port_ ? target_port_ : upstream_->port())
                        << "\", readiness_interval: 0s }\n"
                        << "intensity: { " << intensity_line
                        << ", refresh: " << refresh << ", window_bounds: { low: 100, high: 300 } }\n"
                        << broken << "routes:\n  - name: resnet\n    baseline: resnet50\n    default: resnet50\n"
                        << testing::kResnetVariantsYaml;
    return path;
  }

  void StartSidecar(const std::string& path) {
    auto config = LoadConfig(path);
    ASSERT_TRUE(config.ok()) << config.status();
    config->data_plane = GetParam();
    config->data_plane_threads = 2;
    auto sidecar = SidecarServer::Start(*config);
    ASSERT_TRUE(sidecar.ok()) << sidecar.status();
    sidecar_ = *std::move(sidecar);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", sidecar_->port()), grpc::InsecureChannelCredentials());
  }

  std::string Metrics() {
    httplib::Client admin("127.0.0.1", sidecar_->admin_port());
    auto res = admin.Get("/metrics");
    return res && res->status == 200 ? res->body : "";
  }

  static inline int counter_ = 0;
  int target_port_ = 0;  // where the sidecar is sent, when not straight to upstream_
  std::filesystem::path dir_;
  std::unique_ptr<bench::FakeUpstreamServer> upstream_;
  std::unique_ptr<SidecarServer> sidecar_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_P(FaultTest, UpstreamKilledUnderLoadAndRestartedLosesNothingFromTheLedger) {
  StartSidecar(WriteConfig("provider: static, gco2_per_kwh: 150"));
  const absl::Duration deadline = absl::Seconds(3);
  InferLoad load(channel_, 8, deadline);
  ASSERT_TRUE(PollUntil([&] { return load.count(grpc::StatusCode::OK) >= 200; }));

  // Killed mid-load: in-flight calls are cut, new ones find no upstream.
  const int port = upstream_->port();
  upstream_.reset();
  const int64_t failed_before = load.total() - load.count(grpc::StatusCode::OK);
  ASSERT_TRUE(PollUntil([&] { return load.total() - load.count(grpc::StatusCode::OK) >= failed_before + 50; }))
      << "calls did not fail while the upstream was down";

  // Back on the same port: the sidecar reconnects by itself.
  StartUpstream(absl::StrCat("127.0.0.1:", port));
  const int64_t ok_at_restart = load.count(grpc::StatusCode::OK);
  EXPECT_TRUE(PollUntil([&] { return load.count(grpc::StatusCode::OK) >= ok_at_restart + 200; }))
      << load.last_error();
  load.Stop();

  const auto codes = load.codes();
  for (const auto& [code, n] : codes) {
    EXPECT_TRUE(code == grpc::StatusCode::OK || code == grpc::StatusCode::UNAVAILABLE)
        << n << " calls ended with code " << code << "; last error: " << load.last_error();
  }
  EXPECT_GT(load.count(grpc::StatusCode::UNAVAILABLE), 0);
  // Promptly: no call waited out its deadline.
  EXPECT_LT(load.longest(), deadline);
  EXPECT_EQ(load.last_model(), "resnet101");

  // The ledger charged exactly the successful responses the clients received, and counted every
  // call once.
  const std::string metrics = Metrics();
  EXPECT_EQ(SumSamples(metrics, "carbon_sidecar_requests_total", {"code=\"OK\""}), load.count(grpc::StatusCode::OK));
  EXPECT_EQ(SumSamples(metrics, "carbon_sidecar_inferences_total"), load.count(grpc::StatusCode::OK));
  EXPECT_EQ(SumSamples(metrics, "carbon_sidecar_requests_total"), load.total());
}

TEST_P(FaultTest, AnUpstreamSlowToHandshakeIsStillReached) {
  // Each connection to the upstream passes no byte for 300 ms: longer than the 100 ms connect
  // timeout the sidecar once had, which failed every attempt with "connection attempt timed out
  // before receiving SETTINGS frame".
  DelayingRelay relay(upstream_->port(), absl::Milliseconds(300));
  target_port_ = relay.port();
  StartSidecar(WriteConfig("provider: static, gco2_per_kwh: 150"));
  auto stub = inference::GRPCInferenceService::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  inference::ModelInferRequest request;
  request.set_model_name("resnet");
  inference::ModelInferResponse response;
  const grpc::Status status = stub->ModelInfer(&ctx, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(response.model_name(), "resnet101");
  if (sidecar_) sidecar_->Shutdown(absl::ZeroDuration());  // before the relay goes
}

TEST_P(FaultTest, ReloadsUnderLoadDropNothingAndABrokenFileKeepsTheOldConfig) {
  const std::string path = WriteConfig("provider: static, gco2_per_kwh: 150");
  StartSidecar(path);
  InferLoad load(channel_, 4, absl::Seconds(5));
  ASSERT_TRUE(PollUntil([&] { return load.count(grpc::StatusCode::OK) >= 100; }));
  EXPECT_EQ(load.last_model(), "resnet101");

  // A broken file: refused with its location, counted, the old config serves on.
  WriteConfig("provider: static, gco2_per_kwh: 150", "  stray: [\n");
  const absl::Status broken = sidecar_->ReloadFromFile(path);
  EXPECT_EQ(broken.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(broken.message()), ::testing::StartsWith(path + ":"));
  const int64_t ok_after_broken = load.count(grpc::StatusCode::OK);
  ASSERT_TRUE(PollUntil([&] { return load.count(grpc::StatusCode::OK) >= ok_after_broken + 100; }));
  EXPECT_EQ(load.last_model(), "resnet101");

  // A valid one takes effect without a dropped call.
  WriteConfig("provider: static, gco2_per_kwh: 300");
  ASSERT_TRUE(sidecar_->ReloadFromFile(path).ok());
  EXPECT_TRUE(PollUntil([&] { return load.last_model() == "resnet34"; }));
  const int64_t ok_after_good = load.count(grpc::StatusCode::OK);
  ASSERT_TRUE(PollUntil([&] { return load.count(grpc::StatusCode::OK) >= ok_after_good + 100; }));
  load.Stop();

  EXPECT_EQ(load.total(), load.count(grpc::StatusCode::OK)) << load.last_error();
  const std::string metrics = Metrics();
  EXPECT_EQ(SumSamples(metrics, "carbon_sidecar_config_reloads_total", {"result=\"failure\""}), 1);
  EXPECT_EQ(SumSamples(metrics, "carbon_sidecar_config_reloads_total", {"result=\"success\""}), 1);
  EXPECT_EQ(SumSamples(metrics, "carbon_sidecar_requests_total"), load.total());
}

// Many streams opened and left idle: each costs a bounded amount, they all end cleanly when the
// clients go, and ordinary calls are served meanwhile.
TEST_P(FaultTest, ThousandsOfIdleStreamsCostBoundedMemory) {
  StartSidecar(WriteConfig("provider: static, gco2_per_kwh: 150"));
  constexpr int kStreams = 2000;
  auto stub = inference::GRPCInferenceService::NewStub(channel_);
  {  // warm: the connection and the upstream channel exist before the baseline is taken
    grpc::ClientContext ctx;
    inference::ModelInferRequest request;
    request.set_model_name("resnet");
    inference::ModelInferResponse response;
    ASSERT_TRUE(stub->ModelInfer(&ctx, request, &response).ok());
  }
  const int64_t before_kib = ResidentKiB();
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientAsyncReaderWriter<inference::ModelInferRequest,
                                                             inference::ModelStreamInferResponse>>>
      streams;
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(stub->AsyncModelStreamInfer(contexts.back().get(), &cq, reinterpret_cast<void*>(i + 1)));
  }
  int started = 0;
  void* tag;
  bool ok;
  while (started < kStreams && cq.Next(&tag, &ok)) started += ok ? 1 : 0;
  ASSERT_EQ(started, kStreams);
  // Idle, a stream is only the sidecar's: it opens the upstream stream on the first message, which
  // it needs to route.
  const int64_t idle_kib = ResidentKiB() - before_kib;
  EXPECT_EQ(upstream_->service().open_streams(), 0);

  // One message on each: now all of them are open at the upstream too.
  inference::ModelInferRequest request;
  request.set_model_name("resnet");
  std::vector<inference::ModelStreamInferResponse> replies(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    streams[i]->Write(request, reinterpret_cast<void*>(i + 1));
    streams[i]->Read(&replies[i], reinterpret_cast<void*>(i + 1));
  }
  int done = 0;
  while (done < 2 * kStreams && cq.Next(&tag, &ok)) done += ok ? 1 : 0;
  ASSERT_EQ(done, 2 * kStreams);
  for (const auto& reply : replies) ASSERT_EQ(reply.infer_response().model_name(), "resnet101");
  ASSERT_TRUE(PollUntil([&] { return upstream_->service().open_streams() == kStreams; }))
      << upstream_->service().open_streams();
  const int64_t open_kib = ResidentKiB() - before_kib;
  // Client, sidecar (both sides) and upstream share this process. Measured on 2 cores: about 36 KiB
  // per idle stream (client and sidecar) and 82 KiB per open one (all four ends); the bounds leave
  // room for allocator noise, and catch a per-stream buffer or a leak.
  EXPECT_LT(idle_kib, kStreams * 64) << "grew " << idle_kib << " KiB for " << kStreams << " idle streams";
  EXPECT_LT(open_kib, kStreams * 128) << "grew " << open_kib << " KiB for " << kStreams << " open streams";
  std::printf("%d streams: resident growth %lld KiB idle, %lld KiB with one message each (all ends together)\n",
              kStreams, static_cast<long long>(idle_kib), static_cast<long long>(open_kib));

  // Calls are served while the streams idle.
  grpc::ClientContext ctx;
  inference::ModelInferResponse response;
  EXPECT_TRUE(stub->ModelInfer(&ctx, request, &response).ok());

  for (auto& c : contexts) c->TryCancel();
  std::vector<grpc::Status> statuses(kStreams);
  for (int i = 0; i < kStreams; ++i) streams[i]->Finish(&statuses[i], reinterpret_cast<void*>(i + 1));
  int finished = 0;
  while (finished < kStreams && cq.Next(&tag, &ok)) ++finished;
  EXPECT_EQ(finished, kStreams);
  EXPECT_TRUE(PollUntil([&] { return upstream_->service().open_streams() == 0; }))
      << upstream_->service().open_streams() << " streams still open at the upstream";
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_P(FaultTest, AProviderThatHangsNeverHoldsUpARequest) {
  // An Electricity Maps stand-in that answers the sidecar's first poll, then takes every later poll
  // and does not answer it until the test ends.
  httplib::Server provider;
  std::atomic<int> polls{0}, hung{0};
  absl::Notification release;
  provider.Get("/v3/carbon-intensity/history", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"zone\":\"GB\",\"history\":[]}", "application/json");
  });
  provider.Get("/v3/carbon-intensity/latest", [&](const httplib::Request&, httplib::Response& res) {
    if (polls.fetch_add(1) > 0) {
      hung.fetch_add(1);
      release.WaitForNotificationWithTimeout(absl::Seconds(20));
    }
    res.set_content(absl::StrCat("{\"zone\":\"GB\",\"carbonIntensity\":120,\"datetime\":\"",
                                 absl::FormatTime(absl::RFC3339_full, absl::Now(), absl::UTCTimeZone()), "\"}"),
                    "application/json");
  });
  const int provider_port = provider.bind_to_any_port("127.0.0.1");
  ASSERT_GT(provider_port, 0);
  std::thread serving([&] { provider.listen_after_bind(); });
  absl::Cleanup stop_provider = [&] {
    release.Notify();
    provider.stop();
    serving.join();
  };
  setenv("CARBON_FAULT_TEST_TOKEN", "t", 1);
  StartSidecar(WriteConfig(absl::StrCat("provider: electricity-maps, zone: GB, token_env: CARBON_FAULT_TEST_TOKEN, "
                                        "base_url: \"http://127.0.0.1:", provider_port, "\", timeout: 30s"),
                           "", "200ms"));

  InferLoad load(channel_, 4, absl::Seconds(5));
  ASSERT_TRUE(PollUntil([&] { return hung.load() >= 1 && load.total() >= 200; }, absl::Seconds(10)));
  const int64_t during_hang = load.total();
  // Calls keep completing while the poll hangs.
  ASSERT_TRUE(PollUntil([&] { return load.total() >= during_hang + 500; }, absl::Seconds(10)));
  load.Stop();
  // The poll is still hanging (it is released only when the test ends), so a call that waited on
  // it could not have succeeded: every call OK proves none did, on a machine of any speed.
  EXPECT_GE(hung.load(), 1);
  EXPECT_EQ(load.count(grpc::StatusCode::OK), load.total()) << load.last_error();
  EXPECT_EQ(load.last_model(), "resnet152");  // 120 g/kWh, from the one poll that was answered
}

INSTANTIATE_TEST_SUITE_P(Planes, FaultTest, testing::BothDataPlanes(), testing::PlaneName);

// A hand-driven HTTP/2 client (libnghttp2) for what a gRPC client never does: a request message
// sent only in part, its stream then left open.
class PartialMessageClient {
 public:
  explicit PartialMessageClient(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) ADD_FAILURE() << "cannot connect";
    nghttp2_session_callbacks* callbacks;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_send_callback(callbacks, &PartialMessageClient::SendBytes);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, &PartialMessageClient::OnHeader);
    nghttp2_session_client_new(&session_, callbacks, this);
    nghttp2_session_callbacks_del(callbacks);
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~PartialMessageClient() {
    nghttp2_session_del(session_);
    close(fd_);
  }

  // Opens a ModelInfer call and sends `body` on it, without ending the stream; `timeout`, when
  // given, is sent as grpc-timeout.
  int32_t Open(std::string body, const char* timeout = nullptr) {
    auto nv = [](const char* name, const char* value) {
      return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name)),
                        reinterpret_cast<uint8_t*>(const_cast<char*>(value)), std::strlen(name), std::strlen(value),
                        NGHTTP2_NV_FLAG_NONE};
    };
    const nghttp2_nv headers[] = {nv(":method", "POST"), nv(":scheme", "http"),
                                  nv(":path", "/inference.GRPCInferenceService/ModelInfer"),
                                  nv(":authority", "sidecar"), nv("content-type", "application/grpc"),
                                  nv("te", "trailers"), nv("grpc-timeout", timeout ? timeout : "")};
    auto stream = std::make_unique<Stream>();
    stream->body = std::move(body);
    nghttp2_data_provider provider{};
    provider.source.ptr = stream.get();
    provider.read_callback = &PartialMessageClient::ReadBody;
    const int32_t id =
        nghttp2_submit_request(session_, nullptr, headers, std::size(headers) - (timeout ? 0 : 1), &provider, nullptr);
    streams_[id] = std::move(stream);
    return id;
  }
  // Sends `rest` after what was sent, and ends the stream.
  void Finish(int32_t id, std::string_view rest) {
    streams_.at(id)->body += rest;
    streams_.at(id)->end = true;
    nghttp2_session_resume_data(session_, id);
  }

  // Sends and receives until `done()` holds; false after 10 s, or when the sidecar closed first.
  bool PumpUntil(const std::function<bool()>& done) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    uint8_t buffer[65536];
    while (!done()) {
      if (absl::Now() > deadline || nghttp2_session_send(session_) != 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 10) > 0) {
        const ssize_t n = read(fd_, buffer, sizeof buffer);
        if (n <= 0 || nghttp2_session_mem_recv(session_, buffer, static_cast<size_t>(n)) < 0) return done();
      }
    }
    return true;
  }
  bool Sent(int32_t id) const { return streams_.at(id)->sent == streams_.at(id)->body.size(); }
  std::optional<std::string> GrpcStatus(int32_t id) const { return streams_.at(id)->grpc_status; }
  std::string GrpcMessage(int32_t id) const { return streams_.at(id)->grpc_message; }

 private:
  struct Stream {
    std::string body;
    size_t sent = 0;
    bool end = false;  // END_STREAM once the body is sent
    std::optional<std::string> grpc_status;
    std::string grpc_message;
  };
  static ssize_t SendBytes(nghttp2_session*, const uint8_t* data, size_t length, int, void* user) {
    const int fd = static_cast<PartialMessageClient*>(user)->fd_;
    for (size_t off = 0; off < length;) {
      const ssize_t n = write(fd, data + off, length - off);
      if (n <= 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
      off += static_cast<size_t>(n);
    }
    return static_cast<ssize_t>(length);
  }
  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void*) {
    auto* stream = static_cast<Stream*>(source->ptr);
    const size_t n = std::min(length, stream->body.size() - stream->sent);
    if (stream->end && n == stream->body.size() - stream->sent) *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (n == 0 && !stream->end) return NGHTTP2_ERR_DEFERRED;  // the stream stays open, the message unfinished
    std::memcpy(buf, stream->body.data() + stream->sent, n);
    stream->sent += n;
    return static_cast<ssize_t>(n);
  }
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t, void* user) {
    auto& streams = static_cast<PartialMessageClient*>(user)->streams_;
    auto it = streams.find(frame->hd.stream_id);
    if (it == streams.end()) return 0;
    const std::string_view n(reinterpret_cast<const char*>(name), namelen);
    const std::string v(reinterpret_cast<const char*>(value), valuelen);
    if (n == "grpc-status") it->second->grpc_status = v;
    if (n == "grpc-message") it->second->grpc_message = v;
    return 0;
  }

  int fd_ = -1;
  nghttp2_session* session_ = nullptr;
  std::map<int32_t, std::unique_ptr<Stream>> streams_;
};

// A DNS server on loopback (UDP) for names under ".test": "slow.*" answered with 127.0.0.1 after
// `delay`, "missing.*" with NXDOMAIN, "two.*" with 127.0.0.2 and then 127.0.0.1, others with
// 127.0.0.1 at once; AAAA questions get no answer.
class LoopbackDnsServer {
 public:
  explicit LoopbackDnsServer(absl::Duration delay) : delay_(delay) {
    fd_ = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "dns server cannot bind";
    }
    port_ = ntohs(addr.sin_port);
    serving_ = std::thread([this] { Serve(); });
  }
  ~LoopbackDnsServer() {
    stop_.store(true);
    serving_.join();
    for (auto& t : delayed_) t.join();
    close(fd_);
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  int questions() const { return questions_.load(); }

 private:
  void Serve() {
    uint8_t query[512];
    while (!stop_.load()) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      sockaddr_in from{};
      socklen_t from_len = sizeof from;
      const ssize_t n = recvfrom(fd_, query, sizeof query, 0, reinterpret_cast<sockaddr*>(&from), &from_len);
      if (n < 17) continue;
      ++questions_;
      // The question: labels from byte 12, then QTYPE and QCLASS.
      std::string name;
      size_t at = 12;
      while (at < static_cast<size_t>(n) && query[at] != 0) {
        name.append(reinterpret_cast<const char*>(query + at + 1), query[at]).append(".");
        at += query[at] + 1;
      }
      name = absl::AsciiStrToLower(name);  // resolvers may randomise the case (DNS 0x20)
      const size_t question_end = at + 5;
      if (question_end > static_cast<size_t>(n)) continue;
      const bool a_question = query[at + 1] == 0 && query[at + 2] == 1;
      std::string reply(reinterpret_cast<const char*>(query), question_end);
      const bool missing = name.starts_with("missing.");
      reply[2] = static_cast<char>(0x81);                  // a response, recursion desired
      reply[3] = static_cast<char>(missing ? 0x83 : 0x80);  // recursion available; NXDOMAIN or not
      reply[6] = reply[7] = reply[8] = reply[9] = reply[10] = reply[11] = 0;
      if (a_question && !missing) {
        // Each answer: the name (a pointer to the question's), A, IN, TTL 60, the address.
        if (name.starts_with("two.")) {
          reply[7] = 2;
          reply += std::string("\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x02", 16);
        } else {
          reply[7] = 1;
        }
        reply += std::string("\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01", 16);
      }
      auto send = [this, reply, from] {
        sendto(fd_, reply.data(), reply.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
      };
      if (name.starts_with("slow.")) {
        delayed_.emplace_back([send, this] {
          absl::SleepFor(delay_);
          send();
        });
      } else {
        send();
      }
    }
  }

  const absl::Duration delay_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> questions_{0};
  std::thread serving_;
  std::vector<std::thread> delayed_;  // touched by the serving thread only, until it is joined
};

// Sends each method to the upstream its path names: ModelInfer to a name the DNS server is slow to
// answer, ServerReady to a name it does not know, everything else to the numeric address.
class ByMethodCalls final : public dataplane::CallHandlerFactory {
 public:
  explicit ByMethodCalls(int port)
      : slow_(absl::StrCat("slow.upstream.test:", port)),
        missing_(absl::StrCat("missing.upstream.test:", port)),
        numeric_(absl::StrCat("127.0.0.1:", port)) {}
  std::unique_ptr<dataplane::CallHandler> NewCall(std::string_view path,
                                                  std::span<const dataplane::HeaderField>) override {
    const std::string& target = path.ends_with("/ModelInfer")    ? slow_
                                : path.ends_with("/ServerReady") ? missing_
                                                                 : numeric_;
    return std::make_unique<dataplane::PassThroughCall>(target);
  }

 private:
  const std::string slow_, missing_, numeric_;
};

// Upstream names are looked up without blocking: while one waits a second for its DNS answer, a
// call to another upstream on the same worker is served at once; a name that does not exist ends
// its calls UNAVAILABLE, saying so.
// A fake upstream serving kVariants and, in front of it, a sidecar on the h2 plane at 150 g/kWh
// (`adjust` changes its config first); the sidecar is shut down when this goes.
struct H2SidecarOverFakeUpstream {
  std::unique_ptr<bench::FakeUpstreamServer> upstream;
  std::unique_ptr<SidecarServer> sidecar;

  void Start(const std::function<void(SidecarConfig&)>& adjust = {}) {
    bench::FakeUpstreamOptions upstream_options;
    upstream_options.models = kVariants;
    auto started_upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", upstream_options);
    ASSERT_TRUE(started_upstream.ok()) << started_upstream.status();
    upstream = *std::move(started_upstream);
    SidecarConfig config = testing::StaticSidecarConfig(upstream->port(), 150);
    config.data_plane = SidecarConfig::DataPlane::kH2;
    if (adjust) adjust(config);
    auto started_sidecar = SidecarServer::Start(config);
    ASSERT_TRUE(started_sidecar.ok()) << started_sidecar.status();
    sidecar = *std::move(started_sidecar);
  }
  ~H2SidecarOverFakeUpstream() {
    if (sidecar) sidecar->Shutdown(absl::ZeroDuration());
  }
};

// The h2 plane opens the upstream stream only once it knows the model name, so a call may wait
// in the sidecar for its first message: the upstream gets the time left of the client's deadline
// (grpc-timeout less that wait), and a call whose deadline passed meanwhile never reaches it.
TEST(H2DeadlineTest, TheUpstreamGetsTheTimeLeftAfterTheSidecarWaitedForTheModelName) {
  H2SidecarOverFakeUpstream h2;
  ASSERT_NO_FATAL_FAILURE(h2.Start());
  const auto& upstream = h2.upstream;
  const auto& sidecar = h2.sidecar;
  // A ModelInferRequest naming the route, in a gRPC message: its first 6 bytes leave the name unknown.
  const std::string message = "\x0a\x06resnet\x3a\x04" "abcd";
  const std::string framed = std::string("\0\0\0\0", 4) + static_cast<char>(message.size()) + message;
  auto wait = [](PartialMessageClient& client, absl::Duration d) {
    const absl::Time until = absl::Now() + d;
    client.PumpUntil([&] { return absl::Now() >= until; });
  };

  PartialMessageClient client(sidecar->port());
  const absl::Time start = absl::Now();
  const int32_t in_time = client.Open(framed.substr(0, 6), "3S");
  wait(client, absl::Milliseconds(800));
  client.Finish(in_time, framed.substr(6));
  ASSERT_TRUE(client.PumpUntil([&] { return client.GrpcStatus(in_time).has_value(); }));
  EXPECT_EQ(client.GrpcStatus(in_time), "0") << client.GrpcMessage(in_time);
  auto received = upstream->service().received();
  ASSERT_EQ(received.size(), 1u);
  // The client's deadline is start + 3 s; passed on as sent, the upstream's would be 800 ms later.
  EXPECT_LE(received[0].deadline, start + absl::Seconds(3) + absl::Milliseconds(100));
  EXPECT_GT(received[0].deadline, start + absl::Seconds(2));

  const int32_t too_late = client.Open(framed.substr(0, 6), "300m");
  wait(client, absl::Milliseconds(500));
  client.Finish(too_late, framed.substr(6));
  ASSERT_TRUE(client.PumpUntil([&] { return client.GrpcStatus(too_late).has_value(); }));
  EXPECT_EQ(client.GrpcStatus(too_late), "4");
  EXPECT_THAT(client.GrpcMessage(too_late), HasSubstr("deadline"));
  EXPECT_EQ(upstream->service().received_count(), 1u);
}

TEST(H2UpstreamNamesTest, ALookupNeverHoldsUpTheWorkerAndAFailedOneSaysWhy) {
  bench::FakeUpstreamOptions upstream_options;
  upstream_options.models = kVariants;
  auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", upstream_options);
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  LoopbackDnsServer dns(absl::Seconds(1));
  ByMethodCalls calls((*upstream)->port());
  dataplane::H2ProxyOptions options;
  options.listen = "127.0.0.1:0";
  options.threads = 1;
  options.nameservers = {dns.address()};
  auto proxy = dataplane::H2Proxy::Start(options, &calls);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  auto stub = inference::GRPCInferenceService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*proxy)->port()), grpc::InsecureChannelCredentials()));

  // A call to the slow name, left waiting for its answer.
  grpc::ClientContext infer_ctx;
  infer_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  inference::ModelInferRequest request;
  request.set_model_name("resnet50");
  inference::ModelInferResponse response;
  grpc::Status infer_status;
  absl::Notification infer_done;
  const absl::Time infer_start = absl::Now();
  absl::Time infer_end;
  stub->async()->ModelInfer(&infer_ctx, &request, &response, [&](grpc::Status status) {
    infer_status = std::move(status);
    infer_end = absl::Now();
    infer_done.Notify();
  });
  ASSERT_TRUE(PollUntil([&] { return dns.questions() > 0; }));

  // Meanwhile the same worker serves a call to the numeric address.
  const absl::Time live_start = absl::Now();
  grpc::ClientContext live_ctx;
  inference::ServerLiveResponse live;
  const grpc::Status live_status = stub->ServerLive(&live_ctx, inference::ServerLiveRequest(), &live);
  const absl::Duration live_took = absl::Now() - live_start;
  EXPECT_TRUE(live_status.ok()) << live_status.error_message();
  EXPECT_LT(live_took, absl::Milliseconds(500)) << "a DNS lookup held up the worker";
  EXPECT_FALSE(infer_done.HasBeenNotified());

  // The slow name is answered; its call goes through.
  ASSERT_TRUE(infer_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(infer_status.ok()) << infer_status.error_code() << " " << infer_status.error_message();
  EXPECT_GE(infer_end - infer_start, absl::Milliseconds(900));
  EXPECT_EQ(response.model_name(), "resnet50");

  // A name that does not exist.
  grpc::ClientContext ready_ctx;
  inference::ServerReadyResponse ready;
  const grpc::Status ready_status = stub->ServerReady(&ready_ctx, inference::ServerReadyRequest(), &ready);
  EXPECT_EQ(ready_status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(ready_status.error_message(), HasSubstr("cannot resolve"));
  EXPECT_THAT(ready_status.error_message(), HasSubstr("missing.upstream.test"));
  (*proxy)->Shutdown(absl::ZeroDuration());
}

// Every call to one target.
class AllCallsTo final : public dataplane::CallHandlerFactory {
 public:
  explicit AllCallsTo(std::string target) : target_(std::move(target)) {}
  std::unique_ptr<dataplane::CallHandler> NewCall(std::string_view, std::span<const dataplane::HeaderField>) override {
    return std::make_unique<dataplane::PassThroughCall>(target_);
  }

 private:
  const std::string target_;
};

// A name with several addresses (localhost's ::1 and 127.0.0.1, say) is dialled address by address
// until one connects, as gRPC's pick_first does; when none does, the calls end UNAVAILABLE naming
// each address and why.
TEST(H2UpstreamNamesTest, EachAddressOfANameIsTriedInTurn) {
  bench::FakeUpstreamOptions upstream_options;
  upstream_options.models = kVariants;
  auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", upstream_options);  // not 127.0.0.2
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  LoopbackDnsServer dns(absl::ZeroDuration());
  auto call_through = [&](const std::string& target) {
    AllCallsTo calls(target);
    dataplane::H2ProxyOptions options;
    options.listen = "127.0.0.1:0";
    options.threads = 1;
    options.nameservers = {dns.address()};
    auto proxy = dataplane::H2Proxy::Start(options, &calls);
    EXPECT_TRUE(proxy.ok()) << proxy.status();
    if (!proxy.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "no proxy");
    auto stub = inference::GRPCInferenceService::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*proxy)->port()), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    inference::ServerLiveResponse live;
    grpc::Status status = stub->ServerLive(&ctx, inference::ServerLiveRequest(), &live);
    (*proxy)->Shutdown(absl::ZeroDuration());
    return status;
  };

  const int port = (*upstream)->port();
  const grpc::Status second_answers = call_through(absl::StrCat("two.upstream.test:", port));
  EXPECT_TRUE(second_answers.ok()) << second_answers.error_code() << " " << second_answers.error_message();

  // A port nothing listens on, at either address.
  const int closed_port = [] {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    bind(fd, reinterpret_cast<sockaddr*>(&addr), len);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);  // bound, never listened on: nothing takes connections there
    return ntohs(addr.sin_port);
  }();
  const grpc::Status none_answers = call_through(absl::StrCat("two.upstream.test:", closed_port));
  EXPECT_EQ(none_answers.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(none_answers.error_message(), HasSubstr(absl::StrCat("127.0.0.2:", closed_port, " (Connection refused)")));
  EXPECT_THAT(none_answers.error_message(), HasSubstr(absl::StrCat("127.0.0.1:", closed_port, " (Connection refused)")));
}

// The h2 plane holds a routed message whose model name comes after its tensor whole (it cannot be
// routed before). memory_limit_bytes bounds what all such messages hold together: the call that
// would go past it ends RESOURCE_EXHAUSTED at once, the others carry on, and what the refused call
// held is free again. (The gRPC plane's limit is gRPC's resource quota, tested end to end with an
// oversized message in sidecar_e2e_test.py.)
TEST(H2MemoryLimitTest, MessagesHeldForALateModelNameStopAtTheLimit) {
  H2SidecarOverFakeUpstream h2;
  ASSERT_NO_FATAL_FAILURE(h2.Start([](SidecarConfig& config) {
    config.data_plane_threads = 1;         // one worker: its share is the whole limit
    config.memory_limit_bytes = 16 << 20;  // the smallest the config accepts
  }));
  const auto& upstream = h2.upstream;
  const auto& sidecar = h2.sidecar;
  httplib::Client admin("127.0.0.1", sidecar->admin_port());
  auto Sample = [&](const std::string& name) {
    auto res = admin.Get("/metrics");
    return res ? SumSamples(res->body, name) : -1.0;
  };
  auto HeldBytes = [&] { return Sample("carbon_sidecar_h2_held_request_bytes"); };

  // ModelInferRequest with raw_input_contents (field 7) first and model_name (field 1) last.
  auto late_name_message = [](size_t tensor_bytes) {
    std::string message = "\x3a";
    for (size_t v = tensor_bytes; v != 0; v >>= 7) message += static_cast<char>((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    message += std::string(tensor_bytes, 'x');
    message += "\x0a\x06resnet";
    return message;
  };
  // A gRPC client's whole call with such a message: its status.
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", sidecar->port()), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  auto call = [&](const std::string& message) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::Slice slice(message);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::Status status;
    absl::Notification done;
    stub.UnaryCall(&ctx, "/inference.GRPCInferenceService/ModelInfer", grpc::StubOptions(), &request, &response,
                   [&](grpc::Status s) {
                     status = std::move(s);
                     done.Notify();
                   });
    done.WaitForNotification();
    return status;
  };

  const std::string big = late_name_message(3 << 20);
  std::string framed = {0, static_cast<char>(big.size() >> 24), static_cast<char>(big.size() >> 16),
                        static_cast<char>(big.size() >> 8), static_cast<char>(big.size())};
  framed += big;
  const std::string part = framed.substr(0, (5 << 20) / 2);  // 2.5 MiB of it
  {
    PartialMessageClient client(sidecar->port());
    std::vector<int32_t> held;
    // Six parts hold 15 MiB: under the limit, each call waits for the rest of its message.
    for (int i = 0; i < 6; ++i) {
      const int32_t id = client.Open(part);
      ASSERT_TRUE(client.PumpUntil([&] { return client.Sent(id); })) << "call " << i << " was not read";
      held.push_back(id);
    }
    // The seventh would hold 17.5 MiB.
    const int32_t refused = client.Open(part);
    ASSERT_TRUE(client.PumpUntil([&] { return client.GrpcStatus(refused).has_value(); }));
    EXPECT_EQ(client.GrpcStatus(refused), "8");  // RESOURCE_EXHAUSTED
    EXPECT_THAT(client.GrpcMessage(refused), HasSubstr("memory_limit_bytes"));
    for (int32_t id : held) EXPECT_FALSE(client.GrpcStatus(id).has_value()) << "stream " << id;
    EXPECT_EQ(upstream->service().received_count(), 0u);
    // /metrics counts what the six hold (their 2.5 MiB each, less the 5-byte prefix kept apart),
    // nothing of the seventh.
    EXPECT_EQ(HeldBytes(), 6.0 * static_cast<double>(part.size() - 5));
    // The refused call is over (its stream reset after its status, as gRPC servers do): six remain.
    EXPECT_TRUE(PollUntil([&] { return Sample("carbon_sidecar_h2_calls_in_flight") == 6; }))
        << Sample("carbon_sidecar_h2_calls_in_flight");

    // What the refused call held (about 1 MiB when it crossed the limit) is free again: a 602 KB
    // image with a late name fits beside the six (15.6 MiB), is routed and served.
    const grpc::Status beside = call(late_name_message(602112));
    EXPECT_TRUE(beside.ok()) << beside.error_code() << " " << beside.error_message();
    // But a 3 MiB one does not.
    EXPECT_EQ(call(big).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  // The six go with their connection (once the sidecar has seen it close): a 3 MiB one fits now.
  EXPECT_TRUE(PollUntil([&] { return call(big).ok(); }));
  EXPECT_TRUE(PollUntil([&] { return HeldBytes() == 0; })) << HeldBytes();
  const std::vector<bench::ReceivedRequest> received = upstream->service().received();
  ASSERT_EQ(received.size(), 2u);
  for (const auto& r : received) EXPECT_EQ(r.model_name, "resnet101");
  EXPECT_EQ(received[1].raw_input_bytes, 3u << 20);
}

}  // namespace
}  // namespace carbon::sidecar
