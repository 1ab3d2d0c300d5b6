#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include "absl/status/statusor.h"
#include "sidecar/request_wire.h"

namespace carbon::sidecar {

// A request message as the proxy holds it: the slices of a grpc::ByteBuffer, shared with gRPC
// (reference-counted, never copied). Scan reads the model name through them; AppendTo rebuilds the
// message from the same slices plus one more, so a 600 KB tensor payload is neither copied nor
// re-encoded. Reused across calls on one thread, so that after warm-up it allocates nothing.
class RequestBytes {
 public:
  // Takes the slices of `message` and scans them (see ScanModelNamedRequest). The result's
  // model_name stays valid until the next Scan or Clear.
  absl::StatusOr<ScannedRequest> Scan(grpc::ByteBuffer* message, bool want_leading_dim);
  // Replaces `message` with the scanned slices followed by `suffix`, then clears.
  void AppendTo(grpc::ByteBuffer* message, const grpc::Slice& suffix);
  // Lets go of the scanned slices.
  void Clear();

 private:
  std::vector<grpc::Slice> slices_;
  std::vector<std::string_view> views_;
  std::string scratch_;
};

}  // namespace carbon::sidecar
