#pragma once

#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "telemetry/providers/kinds.h"
#include "sidecar/config.h"
#include "tests/support/paper_pool.h"

namespace carbon::testing {

// A sidecar on loopback ports of its own (gRPC and admin) in front of `upstream_port`, with one
// route "resnet" over the paper's pool (baseline and default resnet50, batch dimension on), a fixed
// intensity in fixed bounds 100..300 g/kWh — so the choice is exactly docs/design.md §1's test vectors —
// a 4 MiB message limit, and no readiness questions (they would show among what the upstream
// received).
inline sidecar::SidecarConfig StaticSidecarConfig(int upstream_port, double intensity) {
  sidecar::SidecarConfig c;
  c.path = "test";
  c.listen = "127.0.0.1:0";
  c.admin_listen = "127.0.0.1:0";
  c.upstream.target = absl::StrCat("127.0.0.1:", upstream_port);
  c.upstream.max_message_bytes = 4 * 1024 * 1024;
  c.upstream.readiness_interval = absl::ZeroDuration();
  c.intensity.provider = telemetry::StaticIntensity(intensity, "test-region");
  c.intensity.refresh = absl::Hours(1);
  c.intensity.fixed_bounds = selector::WindowBounds{100, 300};
  sidecar::RouteConfig route;
  route.name = "resnet";
  route.pool_source = "inline";
  route.pool = PaperResnetPool();
  route.baseline = 1;
  route.default_variant = 1;
  route.batch_dimension = true;
  c.routes.push_back(route);
  return c;
}

// Suites that run on both data planes: INSTANTIATE_TEST_SUITE_P(Planes, Suite, BothDataPlanes(), PlaneName),
// so each test's name ends in /grpc or /h2.
inline auto BothDataPlanes() {
  return ::testing::Values(sidecar::SidecarConfig::DataPlane::kGrpc, sidecar::SidecarConfig::DataPlane::kH2);
}
inline std::string PlaneName(const ::testing::TestParamInfo<sidecar::SidecarConfig::DataPlane>& info) {
  return std::string(sidecar::DataPlaneName(info.param));
}

}  // namespace carbon::testing
