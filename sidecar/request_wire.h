#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace carbon::sidecar {

// What the sidecar needs from a serialized request whose field 1 names a model (ModelInferRequest,
// ModelMetadataRequest, ModelReadyRequest, ModelConfigRequest, ModelStatisticsRequest).
struct ScannedRequest {
  // The last field 1, as a protobuf parser would keep it; empty when absent. Points into the
  // message's bytes, or into the caller's scratch when the name straddles two segments.
  std::string_view model_name;
  // shape[0] of the first input tensor (ModelInferRequest field 5, its field 3), when asked for
  // and present.
  std::optional<int64_t> first_input_leading_dim;
};

// No model repository holds a longer name (Triton's are directory names, at most 255 bytes); a
// longer one is an attack or a bug, refused before anything is copied.
inline constexpr uint64_t kMaxModelNameBytes = 1024;

// Walks the top-level fields of a serialized message held in `segments` (the slices of a gRPC
// byte buffer, in order) without copying them: length-delimited fields, such as 600 KB of
// raw_input_contents, are skipped by their length. Rejects what a protobuf parser would reject
// at the top level (truncated fields, over-long varints, lengths past the end, group or unknown
// wire types, field number 0), a field 1 that is not length-delimited, and a model name that is
// longer than kMaxModelNameBytes or not valid UTF-8. Errors are INVALID_ARGUMENT and say what was wrong and at which byte offset.
// `scratch` is used only when the model name straddles segments, and may be reused across calls.
absl::StatusOr<ScannedRequest> ScanModelNamedRequest(std::span<const std::string_view> segments,
                                                     bool want_leading_dim, std::string* scratch);

// The bytes to append to a serialized request so that a protobuf parser sees `model_name` in
// field 1 and an empty field 2 (model_version / version): a later value of a singular field
// replaces an earlier one.
std::string EncodeModelOverride(std::string_view model_name);

}  // namespace carbon::sidecar
