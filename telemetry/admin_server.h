#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace carbon::telemetry {

struct AdminRequest {
  std::string accept;  // the Accept header, for content negotiation
};

struct AdminResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

using AdminHandler = std::function<AdminResponse(const AdminRequest&)>;

// The admin HTTP port: GET (and HEAD) on the registered paths, 404 for any other path, 405 with
// `Allow: GET, HEAD` for any other method. Handlers run on the server's own small thread pool,
// never on the gRPC request path. Thread-safe.
class AdminServer {
 public:
  // `listen` is host:port (port 0: any free port).
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& listen,
                                                            std::map<std::string, AdminHandler> handlers);
  ~AdminServer();

  int port() const { return port_; }
  void Stop();

 private:
  AdminServer();
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace carbon::telemetry
