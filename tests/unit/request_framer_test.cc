// The h2 plane's request framer against what the gRPC plane does with whole messages: for every
// way a body can be cut into DATA frames, the upstream must receive the same bytes.
#include "dataplane/request_framer.h"

#include <zlib.h>

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "inference/grpc_service.pb.h"
#include "sidecar/request_wire.h"

namespace carbon::dataplane {
namespace {

using ::testing::HasSubstr;
using Route = RequestFramer::Options::Route;

std::string Framed(const std::string& message, bool compressed = false) {
  const auto n = static_cast<uint32_t>(message.size());
  std::string out = {static_cast<char>(compressed ? 1 : 0), static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                     static_cast<char>(n >> 8), static_cast<char>(n)};
  return out + message;
}

std::string InferRequest(const std::string& model, size_t payload_bytes, int64_t batch) {
  inference::ModelInferRequest req;
  req.set_model_name(model);
  req.set_model_version("3");
  req.set_id("req-7");
  auto* in = req.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  for (int64_t d : {batch, int64_t{3}, int64_t{224}, int64_t{224}}) in->add_shape(d);
  req.add_outputs()->set_name("probabilities");
  std::string payload(payload_bytes, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 131 + 7);
  req.add_raw_input_contents(payload);
  return req.SerializeAsString();
}

// A decider like the sidecar's: scans the head and appends an override for model "resnet".
struct Decider {
  std::vector<std::string> names;
  std::vector<int64_t> batches;
  std::string override_bytes = sidecar::EncodeModelOverride("resnet152");
  absl::StatusOr<std::string_view> operator()(std::string_view head) {
    std::string scratch;
    const std::string_view segments[] = {head};
    auto scanned = sidecar::ScanModelNamedRequest(segments, true, &scratch);
    if (!scanned.ok()) return scanned.status();
    names.emplace_back(scanned->model_name);
    batches.push_back(scanned->first_input_leading_dim.value_or(-1));
    if (scanned->model_name != "resnet") return std::string_view();
    return std::string_view(override_bytes);
  }
};

struct Result {
  absl::Status status;
  std::string out;
  Decider decider;
};

// Feeds `body` cut at the given sizes (the rest in one piece).
Result Feed(const std::string& body, Route route, const std::vector<size_t>& cuts, uint32_t max = 64u << 20,
            MessageEncoding encoding = MessageEncoding::kIdentity) {
  Result r;
  RequestFramer framer({route, max, encoding});
  size_t at = 0;
  auto feed = [&](size_t n) {
    if (!r.status.ok()) return;
    r.status = framer.Feed(
        std::string_view(body).substr(at, n), [&](std::string_view head) { return r.decider(head); },
        [&](std::string_view bytes) { r.out.append(bytes); });
    at += n;
  };
  for (size_t c : cuts) feed(std::min(c, body.size() - at));
  feed(body.size() - at);
  if (r.status.ok()) r.status = framer.Finish();
  return r;
}

TEST(RequestFramerTest, ARoutedMessageIsRewrittenAlikeHoweverItIsCut) {
  const std::string message = InferRequest("resnet", 3000, 4);
  const std::string body = Framed(message);
  const std::string expected = Framed(message + sidecar::EncodeModelOverride("resnet152"));
  // Every single cut point, then pieces of every size from 1 byte to 40.
  for (size_t cut = 0; cut <= body.size(); ++cut) {
    Result r = Feed(body, Route::kFirst, {cut});
    ASSERT_TRUE(r.status.ok()) << cut << ": " << r.status;
    ASSERT_EQ(r.out, expected) << "cut at " << cut;
    ASSERT_EQ(r.decider.names, std::vector<std::string>{"resnet"});
    ASSERT_EQ(r.decider.batches, std::vector<int64_t>{4});
  }
  for (size_t piece = 1; piece <= 40; ++piece) {
    Result r = Feed(body, Route::kFirst, std::vector<size_t>(body.size() / piece + 1, piece));
    ASSERT_TRUE(r.status.ok()) << r.status;
    ASSERT_EQ(r.out, expected) << "pieces of " << piece;
  }
}

TEST(RequestFramerTest, OnlyTheHeadIsHeldBeforeTheMessageIsPassedOn) {
  const std::string message = InferRequest("resnet", 600000, 1);
  const std::string body = Framed(message);
  RequestFramer framer({Route::kFirst, 64u << 20, MessageEncoding::kIdentity});
  Decider decider;
  std::string out;
  // The first 16 KiB DATA frame carries the head: after it, everything but nothing is held.
  ASSERT_TRUE(framer
                  .Feed(std::string_view(body).substr(0, 16384), [&](std::string_view h) { return decider(h); },
                        [&](std::string_view b) { out.append(b); })
                  .ok());
  EXPECT_EQ(framer.held_bytes(), 0u);
  EXPECT_EQ(out.size(), 16384u);  // the corrected prefix, the head and the start of the tensor
  EXPECT_EQ(decider.names, std::vector<std::string>{"resnet"});
}

TEST(RequestFramerTest, StreamsRouteEveryMessageAndUnaryCallsOnlyTheFirst) {
  const std::string a = InferRequest("resnet", 100, 2), b = InferRequest("other", 50, 3);
  const std::string body = Framed(a) + Framed(b) + Framed(a);
  const std::string o = sidecar::EncodeModelOverride("resnet152");
  Result every = Feed(body, Route::kEvery, {7, 300});
  ASSERT_TRUE(every.status.ok()) << every.status;
  EXPECT_EQ(every.out, Framed(a + o) + Framed(b) + Framed(a + o));
  EXPECT_EQ(every.decider.names, (std::vector<std::string>{"resnet", "other", "resnet"}));
  EXPECT_EQ(every.decider.batches, (std::vector<int64_t>{2, 3, 2}));
  Result first = Feed(body, Route::kFirst, {7, 300});
  ASSERT_TRUE(first.status.ok());
  EXPECT_EQ(first.out, Framed(a + o) + Framed(b) + Framed(a));
  Result none = Feed(body, Route::kNone, {7, 300});
  ASSERT_TRUE(none.status.ok());
  EXPECT_EQ(none.out, body);  // byte for byte
  EXPECT_TRUE(none.decider.names.empty());
}

TEST(RequestFramerTest, ANameAfterTheTensorIsFoundByHoldingTheWholeMessage) {
  // raw_input_contents (7) before model_name (1): legal protobuf, though no client writes it so.
  const std::string tail = InferRequest("", 2000, 1);
  std::string name_last = tail + std::string("\x0a\x06resnet", 8);
  Result r = Feed(Framed(name_last), Route::kFirst, {100});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.out, Framed(name_last + sidecar::EncodeModelOverride("resnet152")));
  EXPECT_EQ(r.decider.names, std::vector<std::string>{"resnet"});
}

TEST(RequestFramerTest, CompressedMessagesAreRoutedAndPassedOnUncompressed) {
  const std::string message = InferRequest("resnet", 5000, 1);
  for (const auto& [encoding, window_bits] :
       {std::pair{MessageEncoding::kGzip, 16 + MAX_WBITS}, std::pair{MessageEncoding::kDeflate, MAX_WBITS}}) {
    z_stream z{};
    ASSERT_EQ(deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::string packed(deflateBound(&z, message.size()), '\0');
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(message.data()));
    z.avail_in = static_cast<uInt>(message.size());
    z.next_out = reinterpret_cast<Bytef*>(packed.data());
    z.avail_out = static_cast<uInt>(packed.size());
    ASSERT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
    packed.resize(z.total_out);
    deflateEnd(&z);
    Result r = Feed(Framed(packed, true), Route::kFirst, {3, 10}, 64u << 20, encoding);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.out, Framed(message + sidecar::EncodeModelOverride("resnet152")));  // flag 0
    // Not decompressible: INVALID_ARGUMENT; past max_message_bytes once inflated: RESOURCE_EXHAUSTED.
    EXPECT_EQ(Feed(Framed("not zlib", true), Route::kFirst, {}, 64u << 20, encoding).status.code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Feed(Framed(packed, true), Route::kFirst, {}, 4096, encoding).status.code(),
              absl::StatusCode::kResourceExhausted);
  }
  EXPECT_EQ(Feed(Framed("x", true), Route::kFirst, {}, 64u << 20, MessageEncoding::kUnsupported).status.code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(Feed(Framed("x", true), Route::kFirst, {}).status.code(), absl::StatusCode::kInternal);
  // Not routed: a compressed message passes as it is.
  EXPECT_EQ(Feed(Framed("x", true), Route::kNone, {}).out, Framed("x", true));
}

TEST(RequestFramerTest, BadMessagesEndTheCallWithTheReason) {
  // Declared larger than allowed: refused from its prefix, before any of it is held.
  Result big = Feed(Framed(std::string(5000, 'a')), Route::kNone, {5}, 4096);
  EXPECT_EQ(big.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status.message(), HasSubstr("5000 bytes, more than max_message_bytes (4096)"));
  EXPECT_TRUE(big.out.empty());
  // The same texts as the gRPC plane's scanner, at the same offsets.
  EXPECT_EQ(Feed(Framed(std::string("\x0a\x10short", 7)), Route::kFirst, {2}).status.message(),
            "malformed request message at byte 0: model name declares 16 bytes but only 5 remain");
  EXPECT_THAT(Feed(Framed(std::string("\x0a\xff\x0f", 3) + std::string(2000, 'm')), Route::kFirst, {}).status.message(),
              HasSubstr("model name is 2047 bytes, more than the 1024 allowed"));
  EXPECT_THAT(Feed(Framed(std::string("\x0b", 1)), Route::kFirst, {}).status.message(),
              HasSubstr("model name (field 1) has wire type 3"));
  // A fault in the streamed tail: the message's end is never passed on.
  std::string message = InferRequest("resnet", 100, 1);
  message += std::string("\x3a\x20xy", 4);  // field 7 declares 32 bytes, 2 follow
  Result tail = Feed(Framed(message), Route::kFirst, {40});
  EXPECT_EQ(tail.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tail.status.message(), HasSubstr("field 7 declares 32 bytes but only 2 remain"));
  EXPECT_EQ(tail.out.find(sidecar::EncodeModelOverride("resnet152")), std::string::npos);
  // A second name after routing on the first.
  std::string twice = InferRequest("resnet", 100, 1) + std::string("\x0a\x05other", 7);
  EXPECT_THAT(Feed(Framed(twice), Route::kFirst, {}).status.message(), HasSubstr("a second model name"));
  // The body ends inside a routed message: the call fails rather than leave the upstream waiting.
  Result cut = Feed(Framed(InferRequest("resnet", 100, 1)).substr(0, 50), Route::kFirst, {});
  EXPECT_EQ(cut.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cut.status.message(), HasSubstr("the request ended inside a message"));
  // Passed through or not, a body cut inside a message (or its prefix) is reported, not smoothed over.
  EXPECT_THAT(Feed(Framed("abc") + std::string(2, '\0'), Route::kNone, {}).status.message(),
              HasSubstr("the request ended inside a message prefix (2 of 5 bytes)"));
  EXPECT_THAT(Feed(Framed("abcdef").substr(0, 8), Route::kNone, {}).status.message(),
              HasSubstr("the request ended inside a message (3 of 6 bytes)"));
  // An unknown prefix flag.
  std::string flagged = Framed("abc");
  flagged[0] = 7;
  EXPECT_EQ(Feed(flagged, Route::kNone, {}).status.code(), absl::StatusCode::kInternal);
}

TEST(RequestFramerTest, AnEmptyRoutedMessageIsDecidedAndPassedOn) {
  Result r = Feed(Framed("") + Framed(""), Route::kEvery, {1, 5});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.out, Framed("") + Framed(""));
  EXPECT_EQ(r.decider.names, (std::vector<std::string>{"", ""}));
}

}  // namespace
}  // namespace carbon::dataplane
