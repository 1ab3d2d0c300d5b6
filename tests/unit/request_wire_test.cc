#include "sidecar/request_wire.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "inference/grpc_service.pb.h"

namespace carbon::sidecar {
namespace {

using ::testing::HasSubstr;

inference::ModelInferRequest SampleRequest(const std::string& model, size_t payload_bytes) {
  inference::ModelInferRequest req;
  req.set_model_name(model);
  req.set_model_version("3");
  req.set_id("req-7");
  (*req.mutable_parameters())["priority"].set_int64_param(2);
  auto* in = req.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  for (int64_t d : {8, 3, 224, 224}) in->add_shape(d);
  auto* second = req.add_inputs();
  second->set_name("mask");
  second->add_shape(5);
  req.add_outputs()->set_name("probabilities");
  req.add_raw_input_contents(std::string(payload_bytes, '\x7f'));
  return req;
}

absl::StatusOr<ScannedRequest> ScanWhole(const std::string& bytes, std::string* scratch) {
  std::vector<std::string_view> one{bytes};
  return ScanModelNamedRequest(one, true, scratch);
}

TEST(RequestWireTest, ReadsModelNameAndLeadingDimension) {
  const std::string bytes = SampleRequest("resnet", 1024).SerializeAsString();
  std::string scratch;
  auto scanned = ScanWhole(bytes, &scratch);
  ASSERT_TRUE(scanned.ok()) << scanned.status();
  EXPECT_EQ(scanned->model_name, "resnet");
  EXPECT_EQ(scanned->first_input_leading_dim, 8);
  // The name is a view into the message, not a copy.
  EXPECT_GE(scanned->model_name.data(), bytes.data());
  EXPECT_LT(scanned->model_name.data(), bytes.data() + bytes.size());
}

TEST(RequestWireTest, LeadingDimensionOnlyWhenAskedAndPresent) {
  const std::string bytes = SampleRequest("resnet", 16).SerializeAsString();
  std::string scratch;
  std::vector<std::string_view> one{bytes};
  auto without = ScanModelNamedRequest(one, false, &scratch);
  ASSERT_TRUE(without.ok());
  EXPECT_FALSE(without->first_input_leading_dim.has_value());

  inference::ModelInferRequest no_inputs;
  no_inputs.set_model_name("resnet");
  const std::string plain = no_inputs.SerializeAsString();
  auto scanned = ScanWhole(plain, &scratch);
  ASSERT_TRUE(scanned.ok());
  EXPECT_FALSE(scanned->first_input_leading_dim.has_value());
}

TEST(RequestWireTest, UnpackedShapeIsReadToo) {
  // proto3 packs repeated int64 by default; parsers must accept the unpacked form as well.
  // Input tensor: name "x" (0a 01 78), shape 4 unpacked (18 04), shape 9 unpacked (18 09).
  const std::string input("\x0a\x01x\x18\x04\x18\x09", 7);
  std::string bytes = "\x0a\x03vgg";
  bytes += '\x2a';  // field 5, length-delimited
  bytes += static_cast<char>(input.size());
  bytes += input;
  std::string scratch;
  auto scanned = ScanWhole(bytes, &scratch);
  ASSERT_TRUE(scanned.ok()) << scanned.status();
  EXPECT_EQ(scanned->model_name, "vgg");
  EXPECT_EQ(scanned->first_input_leading_dim, 4);
}

TEST(RequestWireTest, EverySplitIntoSegmentsGivesTheSameAnswer) {
  const std::string bytes = SampleRequest("resnet-family-with-a-long-name", 64).SerializeAsString();
  for (size_t a = 0; a <= bytes.size(); ++a) {
    for (size_t b = a; b <= bytes.size(); b += 7) {
      std::vector<std::string_view> parts{std::string_view(bytes).substr(0, a),
                                          std::string_view(bytes).substr(a, b - a),
                                          std::string_view(bytes).substr(b)};
      std::string scratch;
      auto scanned = ScanModelNamedRequest(parts, true, &scratch);
      ASSERT_TRUE(scanned.ok()) << "split at " << a << "," << b << ": " << scanned.status();
      EXPECT_EQ(scanned->model_name, "resnet-family-with-a-long-name") << a << "," << b;
      EXPECT_EQ(scanned->first_input_leading_dim, 8) << a << "," << b;
    }
  }
}

TEST(RequestWireTest, LastModelNameWinsAsInProtobuf) {
  std::string bytes = SampleRequest("first", 8).SerializeAsString();
  bytes += EncodeModelOverride("second");
  std::string scratch;
  auto scanned = ScanWhole(bytes, &scratch);
  ASSERT_TRUE(scanned.ok());
  EXPECT_EQ(scanned->model_name, "second");
}

TEST(RequestWireTest, OverrideMakesProtobufSeeTheVariantAndKeepsEverythingElse) {
  const inference::ModelInferRequest original = SampleRequest("resnet", 602112);
  const std::string rewritten = original.SerializeAsString() + EncodeModelOverride("resnet152");
  inference::ModelInferRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(rewritten));
  EXPECT_EQ(parsed.model_name(), "resnet152");
  EXPECT_EQ(parsed.model_version(), "");
  inference::ModelInferRequest expected = original;
  expected.set_model_name("resnet152");
  expected.clear_model_version();
  EXPECT_EQ(parsed.SerializeAsString(), expected.SerializeAsString());

  // ModelMetadataRequest, ModelReadyRequest, ModelConfigRequest and ModelStatisticsRequest
  // share the layout: name = 1, version = 2.
  inference::ModelMetadataRequest meta;
  meta.set_name("resnet");
  meta.set_version("7");
  inference::ModelMetadataRequest meta_parsed;
  ASSERT_TRUE(meta_parsed.ParseFromString(meta.SerializeAsString() + EncodeModelOverride("resnet34")));
  EXPECT_EQ(meta_parsed.name(), "resnet34");
  EXPECT_EQ(meta_parsed.version(), "");
}

TEST(RequestWireTest, UnknownFieldsOfEveryWireTypeAreSkipped) {
  std::string bytes;
  bytes += std::string("\xa0\x06\x96\x01", 4);            // field 100 varint 150
  bytes += std::string("\xa9\x06") + std::string(8, 'x');  // field 101 fixed64
  bytes += std::string("\xb5\x06") + std::string(4, 'y');  // field 102 fixed32
  bytes += std::string("\xba\x06\x03" "abc", 6);        // field 103 length-delimited
  bytes += "\x0a\x05model";
  std::string scratch;
  auto scanned = ScanWhole(bytes, &scratch);
  ASSERT_TRUE(scanned.ok()) << scanned.status();
  EXPECT_EQ(scanned->model_name, "model");
}

TEST(RequestWireTest, EmptyMessageHasNoName) {
  std::string scratch;
  auto scanned = ScanWhole("", &scratch);
  ASSERT_TRUE(scanned.ok());
  EXPECT_EQ(scanned->model_name, "");
}

struct MalformedCase {
  std::string name;
  std::string bytes;
  std::string expected;
};

TEST(RequestWireTest, MalformedMessagesAreInvalidArgumentSayingWhatAndWhere) {
  const std::vector<MalformedCase> cases = {
      {"length past the end", std::string("\x0a\x10short", 7), "at byte 0: model name declares 16 bytes"},
      {"name as varint", std::string("\x08\x05", 2), "model name (field 1) has wire type 0"},
      {"11-byte varint tag", std::string(10, '\xff') + "\x01", "at byte 0: truncated or over-long field tag"},
      {"over-long varint value", std::string("\x0a\x01x\x20", 4) + std::string(10, '\x80') + "\x01",
       "at byte 3: field 4 has a truncated or over-long varint"},
      {"truncated fixed64", std::string("\x0a\x01x\x19\x01\x02", 6), "at byte 3: field 3 is truncated"},
      {"group wire type", std::string("\x0a\x01x\x1b", 4), "field 3 has unsupported wire type 3"},
      {"field number 0", std::string("\x02\x00", 2), "field number 0"},
      {"truncated tag", std::string("\x0a\x01x\x80", 4), "at byte 3: truncated or over-long field tag"},
      {"payload past the end", std::string("\x0a\x01x\x3a\xff\x7f", 6) + "abc",
       "field 7 declares 16383 bytes but only 3 remain"},
      {"input tensor past the end", std::string("\x0a\x01x\x2a\x09\x0a", 6), "first input tensor is truncated"},
      {"invalid UTF-8 name", std::string("\x0a\x02\xc3\x28", 4), "model name is not valid UTF-8"},
      {"surrogate in name", std::string("\x0a\x03\xed\xa0\x80", 5), "model name is not valid UTF-8"},
      {"overlong encoding", std::string("\x0a\x02\xc0\xaf", 4), "model name is not valid UTF-8"},
      {"1 MiB model name", std::string("\x0a\x80\x80\x40", 4) + std::string(1 << 20, 'm'),
       "at byte 0: model name is 1048576 bytes, more than the 1024 allowed"},
  };
  for (const MalformedCase& c : cases) {
    std::string scratch;
    auto scanned = ScanWhole(c.bytes, &scratch);
    ASSERT_FALSE(scanned.ok()) << c.name;
    EXPECT_EQ(scanned.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(scanned.status().message()), HasSubstr(c.expected)) << c.name;
  }
}

TEST(RequestWireTest, ProtobufAgreesWithTheScanOnTruncations) {
  // Every prefix of a valid message that protobuf rejects, the scan rejects too, and every prefix
  // it accepts yields the same model name.
  const std::string bytes = SampleRequest("resnet", 40).SerializeAsString();
  for (size_t n = 0; n <= bytes.size(); ++n) {
    const std::string prefix = bytes.substr(0, n);
    inference::ModelInferRequest parsed;
    const bool protobuf_ok = parsed.ParseFromString(prefix);
    std::string scratch;
    auto scanned = ScanWhole(prefix, &scratch);
    if (scanned.ok()) {
      // The scan does not descend into every nested message, so it may accept a prefix that
      // protobuf rejects only for nested reasons; what it accepts must name the same model.
      if (protobuf_ok) {
        EXPECT_EQ(scanned->model_name, parsed.model_name()) << n;
      }
    } else {
      EXPECT_FALSE(protobuf_ok) << "prefix " << n << ": " << scanned.status();
    }
  }
}

TEST(RequestWireTest, ValidMultibyteNamesPass) {
  inference::ModelInferRequest req;
  req.set_model_name("modèle-日本-🌍");
  const std::string bytes = req.SerializeAsString();
  std::string scratch;
  auto scanned = ScanWhole(bytes, &scratch);
  ASSERT_TRUE(scanned.ok()) << scanned.status();
  EXPECT_EQ(scanned->model_name, "modèle-日本-🌍");
}

TEST(RequestWireTest, OverrideEncodesLongNamesWithMultibyteLengths) {
  const std::string name(300, 'n');
  inference::ModelInferRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(EncodeModelOverride(name)));
  EXPECT_EQ(parsed.model_name(), name);
}

}  // namespace
}  // namespace carbon::sidecar
