#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace carbon::telemetry {

struct HttpOptions {
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration timeout = absl::Seconds(10);  // the whole exchange
  int64_t max_response_bytes = 4 * 1024 * 1024;
  std::string ca_file;  // empty: the system CA bundle
};

struct HttpResponse {
  long status = 0;
  std::string body;
  std::optional<absl::Duration> retry_after;  // from a Retry-After header in seconds or an HTTP date
};

struct HttpRequest {
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;  // may carry secrets: never logged
  std::string basic_auth;  // "user:password", or empty; never logged
};

// A blocking HTTPS GET client on libcurl for the intensity providers, which poll from a background
// thread. Certificates are verified (system CA bundle, or `ca_file`); the standard proxy environment
// variables (https_proxy, no_proxy, …) apply; bodies over `max_response_bytes` are cut off and
// refused. Transport failures are UNAVAILABLE (DEADLINE_EXCEEDED for timeouts) with the reason
// libcurl gives; the URL in messages is stripped of its query, which may carry secrets. Not
// thread-safe: one per provider.
class HttpClient {
 public:
  explicit HttpClient(HttpOptions options);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  absl::StatusOr<HttpResponse> Get(const HttpRequest& request);

 private:
  HttpOptions options_;
  void* curl_;  // CURL*, reused so connections are kept alive between polls
};

// `text` percent-encoded for a URL's path segment or query value (RFC 3986 unreserved characters
// stay as they are).
std::string UrlEscape(std::string_view text);

// The URL without its query string and user info, for messages and logs.
std::string RedactUrl(const std::string& url);

// `status` with every secret `request` carried (credential header values, the bearer token, the
// basic-auth password) replaced by "[redacted]" in its message: a provider that echoes what it
// was sent in an error body must not put a token in the logs.
absl::Status RedactSecrets(const absl::Status& status, const HttpRequest& request);

// Turns a non-2xx response into a status a person can read: 401/403 PERMISSION_DENIED or
// UNAUTHENTICATED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED (with the Retry-After delay attached as
// payload, see RetryAfter), 5xx UNAVAILABLE. The body is quoted, cut to 200 bytes.
absl::Status HttpError(const std::string& what, const HttpResponse& response);

// The Retry-After delay a provider error carries, if any.
std::optional<absl::Duration> RetryAfter(const absl::Status& status);
void SetRetryAfter(absl::Status* status, absl::Duration delay);

}  // namespace carbon::telemetry
