#include "sidecar/request_bytes.h"

#include "absl/strings/str_cat.h"

namespace carbon::sidecar {

absl::StatusOr<ScannedRequest> RequestBytes::Scan(grpc::ByteBuffer* message, bool want_leading_dim) {
  Clear();
  if (grpc::Status dumped = message->Dump(&slices_); !dumped.ok()) {
    return absl::InternalError(absl::StrCat("cannot read request bytes: ", dumped.error_message()));
  }
  for (const grpc::Slice& s : slices_) {
    views_.emplace_back(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return ScanModelNamedRequest(views_, want_leading_dim, &scratch_);
}

void RequestBytes::AppendTo(grpc::ByteBuffer* message, const grpc::Slice& suffix) {
  slices_.push_back(suffix);
  grpc::ByteBuffer rewritten(slices_.data(), slices_.size());
  message->Swap(&rewritten);
  Clear();
}

void RequestBytes::Clear() {
  slices_.clear();
  views_.clear();
}

}  // namespace carbon::sidecar
