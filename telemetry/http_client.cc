#include "telemetry/http_client.h"

#include <curl/curl.h>

#include <cstring>
#include <mutex>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/string_view_compat.h"

namespace carbon::telemetry {
namespace {

constexpr char kRetryAfterPayload[] = "type.carbon-sidecar/retry-after-ms";

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Transfer {
  HttpResponse* response;
  int64_t max_bytes;
  bool too_large = false;
};

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (static_cast<int64_t>(t->response->body.size() + n) > t->max_bytes) {
    t->too_large = true;
    return 0;  // aborts the transfer: the body is never held whole
  }
  t->response->body.append(data, n);
  return n;
}

}  // namespace

std::string UrlEscape(std::string_view text) {
  GlobalInitOnce();
  // libcurl ignores the handle (7.82 and later) and leaves only A-Z a-z 0-9 - . _ ~ as they are.
  char* escaped = curl_easy_escape(nullptr, text.data(), static_cast<int>(text.size()));
  if (escaped == nullptr) return "";
  std::string out(escaped);
  curl_free(escaped);
  return out;
}

std::string RedactUrl(const std::string& url) {
  std::string out = url.substr(0, url.find_first_of("?#"));
  const size_t scheme = out.find("://");
  const size_t at = out.find('@', scheme == std::string::npos ? 0 : scheme + 3);
  const size_t slash = out.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  if (scheme != std::string::npos && at != std::string::npos && (slash == std::string::npos || at < slash)) {
    out.erase(scheme + 3, at - scheme - 2);
  }
  return out;
}

HttpClient::HttpClient(HttpOptions options) : options_(std::move(options)) {
  GlobalInitOnce();
  curl_ = curl_easy_init();
}

HttpClient::~HttpClient() {
  if (curl_ != nullptr) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

absl::StatusOr<HttpResponse> HttpClient::Get(const HttpRequest& request) {
  CURL* curl = static_cast<CURL*>(curl_);
  if (curl == nullptr) return absl::InternalError("libcurl could not be initialised");
  curl_easy_reset(curl);
  HttpResponse response;
  Transfer transfer{&response, options_.max_response_bytes};
  curl_slist* headers = nullptr;
  for (const auto& [name, value] : request.headers) {
    headers = curl_slist_append(headers, absl::StrCat(name, ": ", value).c_str());
  }
  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 3L);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "https");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(absl::ToInt64Milliseconds(options_.timeout)));
  curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(options_.max_response_bytes));
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!options_.ca_file.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, options_.ca_file.c_str());
  curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");  // gzip and friends, decoded by libcurl
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "carbon-sidecar");
  if (!request.basic_auth.empty()) {
    curl_easy_setopt(curl, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(curl, CURLOPT_USERPWD, request.basic_auth.c_str());
  }
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
  const CURLcode rc = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  // Credentials must not linger in the handle between polls.
  curl_easy_setopt(curl, CURLOPT_USERPWD, nullptr);
  const std::string where = RedactUrl(request.url);
  if (transfer.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
    return absl::ResourceExhaustedError(absl::StrCat(where, ": response larger than ",
                                                     options_.max_response_bytes, " bytes"));
  }
  if (rc == CURLE_OPERATION_TIMEDOUT) {
    return absl::DeadlineExceededError(absl::StrCat(where, ": ", curl_easy_strerror(rc)));
  }
  if (rc != CURLE_OK) return absl::UnavailableError(absl::StrCat(where, ": ", curl_easy_strerror(rc)));
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  // libcurl reads Retry-After in seconds or as an HTTP date (then relative to now); 0 when absent.
  curl_off_t retry_after = 0;
  if (curl_easy_getinfo(curl, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK && retry_after > 0) {
    response.retry_after = absl::Seconds(retry_after);
  }
  return response;
}

absl::Status RedactSecrets(const absl::Status& status, const HttpRequest& request) {
  if (status.ok()) return status;
  std::vector<std::string> secrets;
  for (const auto& [name, value] : request.headers) {
    if (absl::EqualsIgnoreCase(name, "Accept") || absl::EqualsIgnoreCase(name, "Content-Type")) continue;
    secrets.push_back(value);
    if (absl::StartsWithIgnoreCase(value, "Bearer ")) secrets.push_back(value.substr(7));
  }
  if (!request.basic_auth.empty()) {
    secrets.push_back(request.basic_auth);
    secrets.push_back(absl::Base64Escape(request.basic_auth));  // as it travels in the header
    if (const size_t colon = request.basic_auth.find(':'); colon != std::string::npos) {
      secrets.push_back(request.basic_auth.substr(colon + 1));
    }
  }
  std::string message(status.message());
  bool changed = false;
  for (const std::string& secret : secrets) {
    if (secret.size() < 4) continue;  // too short to tell from ordinary text
    for (size_t at = message.find(secret); at != std::string::npos; at = message.find(secret, at)) {
      message.replace(at, secret.size(), "[redacted]");
      changed = true;
    }
  }
  if (!changed) return status;
  absl::Status redacted(status.code(), message);
  status.ForEachPayload([&redacted](absl::string_view url, const absl::Cord& payload) {
    redacted.SetPayload(url, payload);
  });
  return redacted;
}

absl::Status HttpError(const std::string& what, const HttpResponse& response) {
  std::string body = response.body.substr(0, 200);
  for (char& c : body) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  const std::string message = absl::StrCat(what, ": HTTP ", response.status, body.empty() ? "" : ": ", body);
  absl::Status status;
  if (response.status == 401) {
    status = absl::UnauthenticatedError(message);
  } else if (response.status == 403) {
    status = absl::PermissionDeniedError(message);
  } else if (response.status == 404) {
    status = absl::NotFoundError(message);
  } else if (response.status == 429) {
    status = absl::ResourceExhaustedError(message);
  } else if (response.status >= 500) {
    status = absl::UnavailableError(message);
  } else {
    status = absl::InvalidArgumentError(message);
  }
  if (response.retry_after) SetRetryAfter(&status, *response.retry_after);
  return status;
}

void SetRetryAfter(absl::Status* status, absl::Duration delay) {
  status->SetPayload(kRetryAfterPayload, absl::Cord(absl::StrCat(absl::ToInt64Milliseconds(delay))));
}

std::optional<absl::Duration> RetryAfter(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryAfterPayload);
  int64_t ms;
  if (!payload || !absl::SimpleAtoi(std::string(*payload), &ms)) return std::nullopt;
  return absl::Milliseconds(ms);
}

}  // namespace carbon::telemetry
