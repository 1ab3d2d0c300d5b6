#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace carbon {

struct HostPort {
  std::string host;  // without the brackets of an IPv6 literal: "::1" for "[::1]:9464"
  int port = 0;
};

// Splits "host:port" or "[v6-literal]:port"; the host may not be empty. Port 0: any free port.
inline absl::StatusOr<HostPort> ParseHostPort(std::string_view address) {
  const auto error = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("'", absl::string_view(address.data(), address.size()), "' is not host:port"));
  };
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return error();
  HostPort out;
  const std::string_view port = address.substr(colon + 1);
  if (!absl::SimpleAtoi(absl::string_view(port.data(), port.size()), &out.port) || out.port < 0 ||
      out.port > 65535) {
    return error();
  }
  std::string_view host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return error();  // an IPv6 literal needs its brackets
  }
  if (host.empty()) return error();
  out.host = std::string(host);
  return out;
}

}  // namespace carbon
