#include "telemetry/admin_server.h"

#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/host_port.h"
#include "common/string_view_compat.h"

namespace carbon::telemetry {
namespace {

// Two threads are plenty for scrapes and operators, and keep the admin port off the CPU the
// proxy needs.
constexpr size_t kAdminThreads = 2;

}  // namespace

AdminServer::AdminServer() : server_(std::make_unique<httplib::Server>()) {}

AdminServer::~AdminServer() { Stop(); }

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(
    const std::string& listen, std::map<std::string, AdminHandler> handlers) {
  auto address = ParseHostPort(listen);
  if (!address.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("admin listen address ", address.status().message()));
  }
  const std::string& host = address->host;
  const int port = address->port;
  std::unique_ptr<AdminServer> admin(new AdminServer());
  httplib::Server& server = *admin->server_;
  server.new_task_queue = [] { return new httplib::ThreadPool(kAdminThreads); };
  for (auto& [path, handler] : handlers) {
    server.Get(path, [handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
      AdminRequest request{req.get_header_value("Accept")};
      AdminResponse response = handler(request);
      res.status = response.status;
      res.set_content(std::move(response.body), response.content_type.c_str());
    });
  }
  const auto not_allowed = [](const httplib::Request&, httplib::Response& res) {
    res.status = 405;
    res.set_header("Allow", "GET, HEAD");
    res.set_content("method not allowed: the admin port is read-only (GET, HEAD)\n", "text/plain; charset=utf-8");
  };
  server.Post(".*", not_allowed);
  server.Put(".*", not_allowed);
  server.Delete(".*", not_allowed);
  server.Patch(".*", not_allowed);
  server.Options(".*", not_allowed);
  server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404) {
      res.set_content(absl::StrCat("no such admin path: ", req.path,
                                   " (try /metrics, /healthz, /readyz, /v1/selection, /v1/config)\n"),
                      "text/plain; charset=utf-8");
    }
  });
  admin->port_ = port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
  if (admin->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("admin port cannot listen on ", listen));
  }
  admin->thread_ = std::thread([&server] { server.listen_after_bind(); });
  // Stop() before the loop runs would not reach it; wait until it does (it starts at once).
  for (int i = 0; i < 5000 && !server.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!server.is_running()) {
    admin->Stop();
    return absl::InternalError(absl::StrCat("admin port on ", listen, " did not start serving"));
  }
  return admin;
}

void AdminServer::Stop() {
  if (thread_.joinable()) {
    server_->stop();
    thread_.join();
  }
}

}  // namespace carbon::telemetry
