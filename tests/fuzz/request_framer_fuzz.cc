// libFuzzer harness: the h2 plane's request framer over arbitrary bodies cut into arbitrary DATA
// frames. It must never crash, and the cut must not matter: fed in pieces, the framer passes on the
// same bytes and ends with the same status as fed the body whole.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dataplane/request_framer.h"
#include "sidecar/request_wire.h"

namespace {

using carbon::dataplane::MessageEncoding;
using carbon::dataplane::RequestFramer;

struct Outcome {
  absl::Status status;
  std::string out;
};

Outcome Run(const RequestFramer::Options& options, std::string_view body, const std::vector<size_t>& pieces) {
  static const std::string kOverride = carbon::sidecar::EncodeModelOverride("variant");
  Outcome o;
  RequestFramer framer(options);
  const auto decide = [](std::string_view head) -> absl::StatusOr<std::string_view> {
    std::string scratch;
    const std::string_view segments[] = {head};
    auto scanned = carbon::sidecar::ScanModelNamedRequest(segments, true, &scratch);
    if (!scanned.ok()) return scanned.status();
    // Names starting with 'r' are routes; the others pass.
    return scanned->model_name.starts_with("r") ? std::string_view(kOverride) : std::string_view();
  };
  size_t at = 0;
  for (size_t i = 0; at < body.size() || i == 0; ++i) {
    const size_t n = i < pieces.size() ? std::min(pieces[i], body.size() - at) : body.size() - at;
    o.status = framer.Feed(body.substr(at, n), decide, [&](std::string_view b) { o.out.append(b); });
    at += n;
    if (!o.status.ok()) return o;
  }
  o.status = framer.Finish();
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  // Byte 0: which messages are routed and the encoding; byte 1: the piece size seed; the rest: the body.
  RequestFramer::Options options;
  options.route = static_cast<RequestFramer::Options::Route>(data[0] % 3);
  options.encoding = static_cast<MessageEncoding>((data[0] / 3) % 4);
  options.max_message_bytes = 1 << 20;
  const std::string_view body(reinterpret_cast<const char*>(data) + 2, size - 2);
  std::vector<size_t> pieces;
  uint32_t seed = data[1] | 1u;
  for (size_t total = 0; total < body.size();) {
    seed = seed * 1103515245u + 12345u;
    const size_t n = 1 + (seed >> 16) % 64;
    pieces.push_back(n);
    total += n;
  }
  const Outcome whole = Run(options, body, {});
  const Outcome cut = Run(options, body, pieces);
  if (whole.status != cut.status) __builtin_trap();
  if (whole.status.ok() && whole.out != cut.out) __builtin_trap();
  // Nothing routed: the body passes byte for byte.
  if (options.route == RequestFramer::Options::Route::kNone && whole.status.ok() && whole.out != body) {
    __builtin_trap();
  }
  return 0;
}
