// libFuzzer harness: the model-name scan over arbitrary bytes split into up to three segments, as a
// gRPC byte buffer may hold them. It must never crash, and whenever protobuf accepts the message
// the scan must name the same model and read the same leading dimension.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "inference/grpc_service.pb.h"
#include "sidecar/request_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  // The first two bytes choose the split points; the rest is the message.
  const std::string message(reinterpret_cast<const char*>(data) + 2, size - 2);
  const size_t a = message.empty() ? 0 : data[0] % (message.size() + 1);
  const size_t b = a + (message.size() - a == 0 ? 0 : data[1] % (message.size() - a + 1));
  const std::string_view view(message);
  const std::vector<std::string_view> segments = {view.substr(0, a), view.substr(a, b - a), view.substr(b)};
  std::string scratch;
  auto scanned = carbon::sidecar::ScanModelNamedRequest(segments, true, &scratch);
  inference::ModelInferRequest parsed;
  if (scanned.ok() && parsed.ParseFromString(message) && parsed.model_name() != scanned->model_name) {
    __builtin_trap();
  }
  // The leading dimension, which the ledger counts inferences by, must be the one protobuf reads.
  if (scanned.ok() && parsed.ParseFromString(message) && parsed.inputs_size() > 0 &&
      parsed.inputs(0).shape_size() > 0 &&
      scanned->first_input_leading_dim != std::optional<int64_t>(parsed.inputs(0).shape(0))) {
    __builtin_trap();
  }
  if (scanned.ok()) {
    // The rewrite must make protobuf see the override whenever it accepted the original.
    inference::ModelInferRequest rewritten;
    if (parsed.ParseFromString(message) &&
        (!rewritten.ParseFromString(message + carbon::sidecar::EncodeModelOverride("variant")) ||
         rewritten.model_name() != "variant")) {
      __builtin_trap();
    }
  }
  return 0;
}
