// TLS and mutual TLS on both sides of the sidecar, on both data planes, with certificates made by
// openssl at test time: a real TLS client, the sidecar in-process, and a real gRPC upstream that
// demands a client certificate.
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <grpcpp/security/server_credentials.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "bench/fake_upstream.h"
#include "inference/grpc_service.grpc.pb.h"
#include "sidecar/server.h"
#include "tests/support/metric_samples.h"
#include "tests/support/poll.h"
#include "tests/support/static_sidecar_config.h"
#include "tests/support/throwaway_pki.h"

namespace carbon::sidecar {
namespace {

using ::testing::HasSubstr;
using testing::PollUntil;
using testing::ThrowawayPki;

// The upstream's certificate is for "upstream.test" only (besides localhost): the sidecar reaches
// it at 127.0.0.1 and must be told which name to verify.
constexpr char kUpstreamName[] = "upstream.test";

class TlsTest : public ::testing::TestWithParam<SidecarConfig::DataPlane> {
 protected:
  void SetUp() override {
    auto pki = ThrowawayPki::Create("carbon-test-ca");
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_.emplace(*std::move(pki));
    ASSERT_TRUE(pki_->Issue("sidecar", "carbon-sidecar").ok());
    ASSERT_TRUE(pki_->Issue("sidecar-client", "carbon-sidecar-client").ok());
    ASSERT_TRUE(pki_->Issue("upstream", "triton", kUpstreamName).ok());
    ASSERT_TRUE(pki_->Issue("gateway", "gateway").ok());
    auto other = ThrowawayPki::Create("other-ca");
    ASSERT_TRUE(other.ok()) << other.status();
    other_.emplace(*std::move(other));
    ASSERT_TRUE(other_->Issue("stranger", "stranger").ok());

    // The upstream demands a client certificate its CA signed.
    grpc::SslServerCredentialsOptions upstream_tls(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    upstream_tls.pem_root_certs = ThrowawayPki::Read(pki_->ca_cert());
    upstream_tls.pem_key_cert_pairs.push_back(
        {ThrowawayPki::Read(pki_->Key("upstream")), ThrowawayPki::Read(pki_->Cert("upstream"))});
    bench::FakeUpstreamOptions options;
    options.models = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"};
    auto upstream = bench::FakeUpstreamServer::Start("127.0.0.1:0", options, grpc::SslServerCredentials(upstream_tls));
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
  }

  void TearDown() override {
    if (sidecar_) sidecar_->Shutdown(absl::ZeroDuration());
    if (upstream_) upstream_->Shutdown();
    if (pki_) std::filesystem::remove_all(pki_->dir());
    if (other_) std::filesystem::remove_all(other_->dir());
  }

  SidecarConfig MutualTlsConfig() {
    SidecarConfig c = testing::StaticSidecarConfig(upstream_->port(), 150);
    c.data_plane = GetParam();
    c.data_plane_threads = 2;
    c.tls = TlsConfig{.cert_file = pki_->Cert("sidecar"),
                      .key_file = pki_->Key("sidecar"),
                      .ca_file = pki_->ca_cert(),
                      .server_name = "",
                      .refresh_interval = absl::Seconds(1)};
    c.upstream.tls = TlsConfig{.cert_file = pki_->Cert("sidecar-client"),
                               .key_file = pki_->Key("sidecar-client"),
                               .ca_file = pki_->ca_cert(),
                               .server_name = kUpstreamName};
    return c;
  }

  void StartSidecar(const SidecarConfig& config) {
    auto sidecar = SidecarServer::Start(config);
    ASSERT_TRUE(sidecar.ok()) << sidecar.status();
    sidecar_ = *std::move(sidecar);
  }

  // A fresh channel to the sidecar (so a fresh handshake) presenting `client` ("" for none). Quick
  // reconnects (100 ms) also mean 100 ms for each connection attempt, handshake included: a test
  // that must not fail on a slow handshake (a sanitizer on a loaded machine) asks for `patient`.
  std::shared_ptr<grpc::Channel> Channel(const ThrowawayPki& pki, const std::string& client, bool patient = false) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ThrowawayPki::Read(pki_->ca_cert());
    if (!client.empty()) {
      options.pem_private_key = ThrowawayPki::Read(pki.Key(client));
      options.pem_cert_chain = ThrowawayPki::Read(pki.Cert(client));
    }
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    if (!patient) args.SetInt("grpc.testing.fixed_reconnect_backoff_ms", 100);
    args.SetString("carbon.test.channel", absl::StrCat(++channels_));  // distinct args: no shared subchannel
    return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", sidecar_->port()), grpc::SslCredentials(options),
                                     args);
  }

  // One routed ModelInfer; on success, `peer_name` gets the common name of the sidecar's
  // certificate as this client saw it.
  grpc::Status Infer(const std::shared_ptr<grpc::Channel>& channel, inference::ModelInferResponse* response,
                     std::string* peer_name = nullptr) {
    auto stub = inference::GRPCInferenceService::NewStub(channel);
    inference::ModelInferRequest request;
    request.set_model_name("resnet");
    request.add_raw_input_contents(std::string(1024, 'x'));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status status = stub->ModelInfer(&ctx, request, response);
    if (status.ok() && peer_name != nullptr) {
      auto names = ctx.auth_context()->FindPropertyValues("x509_common_name");
      *peer_name = names.empty() ? "<none>" : std::string(names[0].data(), names[0].size());
    }
    return status;
  }

  // A sample summed over the lines of /metrics that carry `label`.
  double H2Sample(const std::string& name, const std::string& label) {
    httplib::Client admin("127.0.0.1", sidecar_->admin_port());
    auto res = admin.Get("/metrics");
    return res ? testing::SumSamples(res->body, name, {label}) : -1;
  }

  std::optional<ThrowawayPki> pki_, other_;
  std::unique_ptr<bench::FakeUpstreamServer> upstream_;
  std::unique_ptr<SidecarServer> sidecar_;
  int channels_ = 0;
};

TEST_P(TlsTest, MutualTlsOnBothSidesCarriesRoutedCalls) {
  StartSidecar(MutualTlsConfig());
  inference::ModelInferResponse response;
  std::string peer;
  grpc::Status status = Infer(Channel(*pki_, "gateway"), &response, &peer);
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(peer, "carbon-sidecar");
  // 150 g/kWh in bounds 100..300 selects resnet101 (docs/design.md §1), served through upstream mTLS.
  EXPECT_EQ(response.model_name(), "resnet101");
  ASSERT_EQ(upstream_->service().received_count(), 1u);
}

// Megabyte messages both ways, several at once on one connection: many TLS records per message,
// writes the socket does not take at once, records cut across reads.
TEST_P(TlsTest, LargeMessagesBothWaysOverMutualTls) {
  StartSidecar(MutualTlsConfig());
  auto stub = inference::GRPCInferenceService::NewStub(Channel(*pki_, "gateway", /*patient=*/true));
  constexpr int kCalls = 8;
  constexpr int64_t kBytes = 1 << 20;
  struct Call {
    grpc::ClientContext ctx;
    inference::ModelInferResponse response;
    grpc::Status status;
    bool done = false;
  };
  std::vector<std::unique_ptr<Call>> calls;
  std::mutex mu;
  std::condition_variable cv;
  inference::ModelInferRequest request;
  request.set_model_name("resnet");
  request.add_raw_input_contents(std::string(kBytes, 'x'));
  (*request.mutable_parameters())["response_bytes"].set_int64_param(kBytes);
  for (int i = 0; i < kCalls; ++i) {
    auto& call = calls.emplace_back(std::make_unique<Call>());
    call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    stub->async()->ModelInfer(&call->ctx, &request, &call->response, [&, c = call.get()](grpc::Status status) {
      std::lock_guard lock(mu);
      c->status = std::move(status);
      c->done = true;
      cv.notify_all();
    });
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] {
    return std::all_of(calls.begin(), calls.end(), [](const auto& c) { return c->done; });
  });
  for (const auto& call : calls) {
    ASSERT_TRUE(call->status.ok()) << call->status.error_code() << " " << call->status.error_message();
    ASSERT_EQ(call->response.raw_output_contents_size(), 3);
    EXPECT_EQ(call->response.raw_output_contents(2), std::string(kBytes, '\x02'));
    int64_t input_bytes = 0;
    std::memcpy(&input_bytes, call->response.raw_output_contents(1).data(), 8);
    EXPECT_EQ(input_bytes, kBytes);
  }
  EXPECT_EQ(upstream_->service().received_count(), static_cast<size_t>(kCalls));
}

TEST_P(TlsTest, ClientsWithoutAValidCertificateAreRefused) {
  StartSidecar(MutualTlsConfig());
  inference::ModelInferResponse response;
  EXPECT_EQ(Infer(Channel(*pki_, ""), &response).error_code(), grpc::StatusCode::UNAVAILABLE);
  // A certificate from a CA the sidecar does not trust.
  EXPECT_EQ(Infer(Channel(*other_, "stranger"), &response).error_code(), grpc::StatusCode::UNAVAILABLE);
  // Plaintext to a TLS listener.
  auto plain = grpc::CreateChannel(absl::StrCat("127.0.0.1:", sidecar_->port()), grpc::InsecureChannelCredentials());
  EXPECT_EQ(Infer(plain, &response).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(upstream_->service().received_count(), 0u);
  // The refusals cost nothing to a client that has a certificate.
  EXPECT_TRUE(Infer(Channel(*pki_, "gateway"), &response).ok());
  // The h2 plane counts them (a gRPC client may try a refused handshake more than once).
  if (GetParam() == SidecarConfig::DataPlane::kH2) {
    EXPECT_GE(H2Sample("carbon_sidecar_h2_tls_handshake_failures_total", "side=\"client\""), 3);
    EXPECT_EQ(H2Sample("carbon_sidecar_h2_tls_handshake_failures_total", "side=\"upstream\""), 0);
  }
}

TEST_P(TlsTest, ServerAuthenticationOnlyWithoutAClientCa) {
  SidecarConfig config = MutualTlsConfig();
  config.tls->ca_file.clear();
  StartSidecar(config);
  inference::ModelInferResponse response;
  grpc::Status status = Infer(Channel(*pki_, ""), &response);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
}

TEST_P(TlsTest, AnUpstreamCertificateFromAnotherCaIsNotTrusted) {
  SidecarConfig config = MutualTlsConfig();
  config.upstream.tls->ca_file = other_->ca_cert();
  StartSidecar(config);
  inference::ModelInferResponse response;
  grpc::Status status = Infer(Channel(*pki_, "gateway"), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  // The client is told why (OpenSSL's reason, on both planes).
  EXPECT_THAT(status.error_message(), HasSubstr("certificate verify failed"));
  EXPECT_EQ(upstream_->service().received_count(), 0u);
  if (GetParam() == SidecarConfig::DataPlane::kH2) {
    EXPECT_GE(H2Sample("carbon_sidecar_h2_tls_handshake_failures_total", "side=\"upstream\""), 1);
  }
}

TEST_P(TlsTest, TheUpstreamRefusesASidecarWithoutAClientCertificate) {
  SidecarConfig config = MutualTlsConfig();
  config.upstream.tls->cert_file.clear();
  config.upstream.tls->key_file.clear();
  StartSidecar(config);
  inference::ModelInferResponse response;
  EXPECT_EQ(Infer(Channel(*pki_, "gateway"), &response).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(upstream_->service().received_count(), 0u);
}

TEST_P(TlsTest, RotatedCertificateFilesAreServedWithoutARestart) {
  StartSidecar(MutualTlsConfig());
  auto before = Channel(*pki_, "gateway");
  inference::ModelInferResponse response;
  std::string peer;
  ASSERT_TRUE(Infer(before, &response, &peer).ok());
  ASSERT_EQ(peer, "carbon-sidecar");

  // As cert-manager does: new files renamed over the old ones; the config is reloaded (SIGHUP).
  ASSERT_TRUE(pki_->Issue("sidecar", "carbon-sidecar-rotated").ok());
  ASSERT_TRUE(sidecar_->Reload(MutualTlsConfig()).ok());
  EXPECT_TRUE(PollUntil([&] {
    std::string now;
    return Infer(Channel(*pki_, "gateway"), &response, &now).ok() && now == "carbon-sidecar-rotated";
  })) << "new handshakes never presented the rotated certificate";
  // A connection made before the rotation carries on.
  EXPECT_TRUE(Infer(before, &response).ok());
}

INSTANTIATE_TEST_SUITE_P(Planes, TlsTest, testing::BothDataPlanes(), testing::PlaneName);

// --- the config's tls blocks: checked at load, errors with their location ---

class TlsConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = ThrowawayPki::Create("config-ca");
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_.emplace(*std::move(pki));
    ASSERT_TRUE(pki_->Issue("a", "a").ok());
    ASSERT_TRUE(pki_->Issue("b", "b").ok());
  }
  void TearDown() override {
    if (pki_) std::filesystem::remove_all(pki_->dir());
  }

  absl::StatusOr<SidecarConfig> Load(const std::string& tls_block, const std::string& upstream_tls = "") {
    const std::string path = pki_->Path("sidecar.yaml");
    std::ofstream(path) << "listen: 127.0.0.1:0\n"
                        << tls_block << "upstream:\n  target: 127.0.0.1:8011\n"
                        << upstream_tls << "intensity: { provider: static, gco2_per_kwh: 100 }\n"
                        << "routes:\n  - name: m\n    baseline: big\n    default: big\n    variants:\n"
                        << "      - { name: small, energy_mj: 1, error_percent: 30 }\n"
                        << "      - { name: big, energy_mj: 5, error_percent: 20 }\n";
    return LoadConfig(path);
  }

  std::optional<ThrowawayPki> pki_;
};

TEST_F(TlsConfigTest, RelativePathsResolveAgainstTheConfigDirectory) {
  auto config = Load("tls:\n  cert_file: a.pem\n  key_file: a.key\n  client_ca_file: config-ca.pem\n",
                     "  tls: { ca_file: config-ca.pem, server_name: triton.internal, refresh_interval: 30s }\n");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->tls.has_value());
  EXPECT_EQ(config->tls->cert_file, pki_->Cert("a"));
  EXPECT_EQ(config->tls->ca_file, pki_->ca_cert());
  ASSERT_TRUE(config->upstream.tls.has_value());
  EXPECT_EQ(config->upstream.tls->server_name, "triton.internal");
  EXPECT_EQ(config->upstream.tls->refresh_interval, absl::Seconds(30));
  EXPECT_TRUE(config->upstream.tls->cert_file.empty());
}

TEST_F(TlsConfigTest, BadFilesAreReportedAtTheirBlock) {
  const std::string path = pki_->Path("sidecar.yaml");
  auto mismatched = Load("tls:\n  cert_file: a.pem\n  key_file: b.key\n");
  EXPECT_EQ(mismatched.status().message(),
            absl::StrCat(path, ":3:3: tls: key_file '", pki_->Key("b"), "' is not the key of the certificate in '",
                         pki_->Cert("a"), "'"));
  auto missing = Load("tls:\n  cert_file: nowhere.pem\n  key_file: a.key\n");
  EXPECT_THAT(missing.status().message(), HasSubstr(":3:3: tls: cert_file '"));
  EXPECT_THAT(missing.status().message(), HasSubstr("nowhere.pem' cannot be read"));
  auto not_pem = Load("tls:\n  cert_file: sidecar.yaml\n  key_file: a.key\n");
  EXPECT_THAT(not_pem.status().message(), HasSubstr("sidecar.yaml' holds no PEM certificate"));
  auto key_not_pem = Load("tls:\n  cert_file: a.pem\n  key_file: a.pem\n");
  EXPECT_THAT(key_not_pem.status().message(), HasSubstr("holds no unencrypted PEM private key"));
  auto no_key = Load("tls:\n  cert_file: a.pem\n");
  EXPECT_THAT(no_key.status().message(), HasSubstr(":3:3: tls: the listener needs both cert_file and key_file"));
  auto half_pair = Load("", "  tls:\n    cert_file: a.pem\n");
  EXPECT_THAT(half_pair.status().message(),
              HasSubstr(":5:5: upstream.tls: cert_file and key_file go together: give both or neither"));
  auto unknown = Load("tls:\n  cert_file: a.pem\n  key_file: a.key\n  ca_file: config-ca.pem\n");
  EXPECT_THAT(unknown.status().message(), HasSubstr(":5:3: unknown key 'ca_file' in tls (known keys: cert_file, "
                                                    "key_file, client_ca_file, refresh_interval)"));
  auto too_often = Load("", "  tls: { ca_file: config-ca.pem, refresh_interval: 100ms }\n");
  EXPECT_THAT(too_often.status().message(), HasSubstr("upstream.tls.refresh_interval must be at least 1s"));
}

}  // namespace
}  // namespace carbon::sidecar
