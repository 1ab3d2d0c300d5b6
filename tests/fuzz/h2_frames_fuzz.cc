// libFuzzer harness: arbitrary HTTP/2 frame sequences from a client into the h2 data plane, whose
// request bodies reach the gRPC message framer and an in-process upstream. Each input is written on
// a fresh connection after the client preface, then the client half-closes; the proxy must close
// the connection in reply (no hang) and never crash. The seeds (corpus/h2_frames) are real call
// sequences: SETTINGS, HEADERS for ModelInfer and other methods, DATA with gRPC messages,
// RST_STREAM, WINDOW_UPDATE, PING, GOAWAY.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "bench/fake_upstream.h"
#include "dataplane/h2_proxy.h"
#include "sidecar/request_wire.h"

namespace {

using carbon::dataplane::CallHandler;
using carbon::dataplane::HeaderField;
using carbon::dataplane::RequestFramer;

class FuzzCall final : public CallHandler {
 public:
  FuzzCall(bool routed, std::string_view target) : routed_(routed), target_(target) {}
  RequestFramer::Options::Route route() const override {
    return routed_ ? RequestFramer::Options::Route::kEvery : RequestFramer::Options::Route::kNone;
  }
  carbon::dataplane::UpstreamAddress Upstream() override { return {.target = target_}; }
  absl::StatusOr<std::string_view> Decide(std::string_view head) override {
    static const std::string kOverride = carbon::sidecar::EncodeModelOverride("resnet50");
    std::string scratch;
    const std::string_view segments[] = {head};
    auto scanned = carbon::sidecar::ScanModelNamedRequest(segments, true, &scratch);
    if (!scanned.ok()) return scanned.status();
    return scanned->model_name == "resnet" ? std::string_view(kOverride) : std::string_view();
  }
  void ForEachResponseHeader(absl::FunctionRef<void(std::string_view, std::string_view)> add) const override {
    if (routed_) add("x-carbon-model", "resnet50");
  }
  void Finished(int) override {}

 private:
  bool routed_;
  std::string_view target_;
};

class FuzzCalls final : public carbon::dataplane::CallHandlerFactory {
 public:
  explicit FuzzCalls(std::string target) : target_(std::move(target)) {}
  std::unique_ptr<CallHandler> NewCall(std::string_view path, std::span<const HeaderField>) override {
    return std::make_unique<FuzzCall>(path.starts_with("/inference.GRPCInferenceService/Model"), target_);
  }

 private:
  std::string target_;
};

struct Setup {
  std::unique_ptr<carbon::bench::FakeUpstreamServer> upstream;
  std::unique_ptr<FuzzCalls> calls;
  std::unique_ptr<carbon::dataplane::H2Proxy> proxy;
};

Setup& TheSetup() {
  static Setup* setup = [] {
    auto* s = new Setup();
    carbon::bench::FakeUpstreamOptions options;
    options.models = {"resnet50"};
    s->upstream = *carbon::bench::FakeUpstreamServer::Start("127.0.0.1:0", options);
    s->calls = std::make_unique<FuzzCalls>(absl::StrCat("127.0.0.1:", s->upstream->port()));
    carbon::dataplane::H2ProxyOptions proxy_options;
    proxy_options.listen = "127.0.0.1:0";
    proxy_options.threads = 1;
    proxy_options.max_message_bytes = 1 << 20;
    s->proxy = *carbon::dataplane::H2Proxy::Start(proxy_options, s->calls.get());
    return s;
  }();
  return *setup;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Setup& setup = TheSetup();
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(setup.proxy->port()));
  // Loopback connects complete at once; one interrupted by the watchdog goes on in the kernel.
  while (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno == EISCONN) break;
    if (errno == EINTR || errno == EALREADY) continue;
    fprintf(stderr, "h2_frames_fuzz: cannot connect to the proxy: %s\n", strerror(errno));
    __builtin_trap();
  }
  static constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  std::string input(kPreface, sizeof kPreface - 1);
  input.append(reinterpret_cast<const char*>(data), size);
  // The proxy answers while it reads: read its replies as the input goes, so neither side blocks.
  size_t sent = 0;
  bool half_closed = false;
  char sink[65536];
  for (;;) {
    pollfd p{fd, static_cast<short>(POLLIN | (half_closed ? 0 : POLLOUT)), 0};
    // Ten seconds without the proxy reading, answering or closing is a hang. libFuzzer's -timeout
    // watchdog is a SIGALRM every few seconds: an interrupted call is simply made again.
    const int ready = poll(&p, 1, 10000);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      fprintf(stderr, "h2_frames_fuzz: the proxy neither answered nor closed for 10 s\n");
      __builtin_trap();
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = read(fd, sink, sizeof sink);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // closed (or reset): done
    }
    if (!half_closed && (p.revents & POLLOUT)) {
      const ssize_t n = send(fd, input.data() + sent, input.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) sent += static_cast<size_t>(n);
      if (n < 0 && errno != EAGAIN && errno != EINTR) break;
      if (sent == input.size()) {
        shutdown(fd, SHUT_WR);
        half_closed = true;
      }
    }
  }
  close(fd);
  // Every connection is closed before the next input: its calls end and are freed soon after (the
  // upstream answers the resets). A call still alive two seconds later is leaked.
  for (int i = 0; i < 20000 && setup.proxy->active_calls() > 0; ++i) usleep(100);
  if (setup.proxy->active_calls() > 0) {
    fprintf(stderr, "h2_frames_fuzz: %d call(s) still alive 2 s after their connection closed\n",
            setup.proxy->active_calls());
    __builtin_trap();
  }
  return 0;
}
