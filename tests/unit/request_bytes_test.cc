#include "sidecar/request_bytes.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "inference/grpc_service.pb.h"

namespace carbon::sidecar {
namespace {

std::string Concatenate(const std::vector<grpc::Slice>& slices) {
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// A ModelInferRequest laid out as gRPC hands it over: the header fields in one slice, the tensor
// payload (one 224x224x3 FP32 image) in a slice of its own.
struct SplitRequest {
  grpc::Slice head;
  grpc::Slice payload;
  grpc::ByteBuffer buffer;
};

SplitRequest MakeSplitRequest() {
  inference::ModelInferRequest header;
  header.set_model_name("resnet");
  header.set_model_version("4");
  header.set_id("image-1");
  auto* in = header.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  for (int64_t d : {1, 3, 224, 224}) in->add_shape(d);
  std::string head = header.SerializeAsString();
  constexpr size_t kPayload = 602112;
  head += '\x3a';  // field 7 (raw_input_contents), length-delimited
  for (uint64_t v = kPayload; ; v >>= 7) {  // varint length
    if (v < 0x80) { head += static_cast<char>(v); break; }
    head += static_cast<char>(v | 0x80);
  }
  std::string payload(kPayload, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 7919);
  SplitRequest r{grpc::Slice(head), grpc::Slice(payload), {}};
  grpc::Slice parts[] = {r.head, r.payload};
  r.buffer = grpc::ByteBuffer(parts, 2);
  return r;
}

TEST(RequestBytesTest, RewriteSharesThePayloadSliceInsteadOfCopyingIt) {
  SplitRequest req = MakeSplitRequest();
  const uint8_t* payload_at = req.payload.begin();
  RequestBytes bytes;
  auto scanned = bytes.Scan(&req.buffer, true);
  ASSERT_TRUE(scanned.ok()) << scanned.status();
  EXPECT_EQ(scanned->model_name, "resnet");
  EXPECT_EQ(scanned->first_input_leading_dim, 1);

  const std::string suffix = EncodeModelOverride("resnet152");
  const grpc::Slice override_slice(suffix);
  bytes.AppendTo(&req.buffer, override_slice);

  std::vector<grpc::Slice> out;
  ASSERT_TRUE(req.buffer.Dump(&out).ok());
  ASSERT_EQ(out.size(), 3u);
  // The same memory, not an equal copy: the 600 KB were never touched.
  EXPECT_EQ(out[0].begin(), req.head.begin());
  EXPECT_EQ(out[1].begin(), payload_at);
  EXPECT_EQ(out[1].size(), 602112u);
  // The override (a few bytes) may be inlined by value into the buffer; its content is what counts.
  EXPECT_EQ(Concatenate({out[2]}), suffix);

  inference::ModelInferRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(Concatenate(out)));
  EXPECT_EQ(parsed.model_name(), "resnet152");
  EXPECT_EQ(parsed.model_version(), "");
  EXPECT_EQ(parsed.id(), "image-1");
  ASSERT_EQ(parsed.raw_input_contents_size(), 1);
  EXPECT_EQ(parsed.raw_input_contents(0),
            std::string(reinterpret_cast<const char*>(payload_at), 602112));
}

TEST(RequestBytesTest, ScanningAloneLeavesTheMessageAsItWas) {
  SplitRequest req = MakeSplitRequest();
  RequestBytes bytes;
  ASSERT_TRUE(bytes.Scan(&req.buffer, false).ok());
  bytes.Clear();
  std::vector<grpc::Slice> out;
  ASSERT_TRUE(req.buffer.Dump(&out).ok());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].begin(), req.head.begin());
  EXPECT_EQ(out[1].begin(), req.payload.begin());
}

TEST(RequestBytesTest, ReuseAcrossMessagesKeepsNothingOfTheLastOne) {
  RequestBytes bytes;
  SplitRequest first = MakeSplitRequest();
  ASSERT_TRUE(bytes.Scan(&first.buffer, true).ok());
  bytes.AppendTo(&first.buffer, grpc::Slice(EncodeModelOverride("resnet34")));

  const std::string bad("\x0a\x05" "ab", 4);
  grpc::Slice bad_slice(bad);
  grpc::ByteBuffer bad_buffer(&bad_slice, 1);
  auto scanned = bytes.Scan(&bad_buffer, true);
  EXPECT_EQ(scanned.status().code(), absl::StatusCode::kInvalidArgument);
  bytes.Clear();

  SplitRequest second = MakeSplitRequest();
  ASSERT_TRUE(bytes.Scan(&second.buffer, true).ok());
  bytes.AppendTo(&second.buffer, grpc::Slice(EncodeModelOverride("resnet50")));
  std::vector<grpc::Slice> out;
  ASSERT_TRUE(second.buffer.Dump(&out).ok());
  EXPECT_EQ(out.size(), 3u);
  inference::ModelInferRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(Concatenate(out)));
  EXPECT_EQ(parsed.model_name(), "resnet50");
}

}  // namespace
}  // namespace carbon::sidecar
