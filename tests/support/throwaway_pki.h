#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace carbon::testing {

// A certificate authority made with the openssl command at test time, in a fresh temporary
// directory, and the leaf certificates it issues (P-256 keys, valid for two days). Nothing of it
// is kept in the repository.
class ThrowawayPki {
 public:
  // `ca_name` is the CA's common name, and the stem of its files (<ca_name>.pem, .key).
  static absl::StatusOr<ThrowawayPki> Create(const std::string& ca_name) {
    char dir_template[] = "/tmp/carbon-pki-XXXXXX";
    if (mkdtemp(dir_template) == nullptr) return absl::InternalError("mkdtemp failed");
    ThrowawayPki pki(dir_template, ca_name);
    if (auto s = pki.Run(absl::StrCat("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes",
                                      " -keyout ", pki.Key(ca_name), " -out ", pki.Cert(ca_name),
                                      " -days 2 -subj /CN=", ca_name));
        !s.ok()) {
      return s;
    }
    return pki;
  }

  // Issues <name>.pem and <name>.key, signed by the CA, for `common_name`, with subject
  // alternative names localhost, 127.0.0.1 and `extra_dns` (when given). Issuing to a name again
  // overwrites its files in place, as a certificate rotation does.
  absl::Status Issue(const std::string& name, const std::string& common_name, const std::string& extra_dns = "") {
    const std::string ext = Path(name + ".ext");
    std::ofstream(ext) << "subjectAltName=DNS:localhost,IP:127.0.0.1"
                       << (extra_dns.empty() ? "" : ",DNS:" + extra_dns) << "\n";
    // Written beside and renamed over, so a reader never sees half a file.
    const std::string key_tmp = Path(name + ".key.new"), cert_tmp = Path(name + ".pem.new");
    if (auto s = Run(absl::StrCat("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ",
                                  key_tmp, " -out ", Path(name + ".csr"), " -subj /CN=", common_name));
        !s.ok()) {
      return s;
    }
    if (auto s = Run(absl::StrCat("openssl x509 -req -in ", Path(name + ".csr"), " -CA ", Cert(ca_name_),
                                  " -CAkey ", Key(ca_name_), " -CAcreateserial -days 2 -out ", cert_tmp,
                                  " -extfile ", ext));
        !s.ok()) {
      return s;
    }
    std::filesystem::rename(key_tmp, Key(name));
    std::filesystem::rename(cert_tmp, Cert(name));
    return absl::OkStatus();
  }

  std::string dir() const { return dir_; }
  std::string Path(const std::string& file) const { return dir_ + "/" + file; }
  std::string Cert(const std::string& name) const { return Path(name + ".pem"); }
  std::string Key(const std::string& name) const { return Path(name + ".key"); }
  std::string ca_cert() const { return Cert(ca_name_); }

  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  ThrowawayPki(std::string dir, std::string ca_name) : dir_(std::move(dir)), ca_name_(std::move(ca_name)) {}

  absl::Status Run(const std::string& command) const {
    const std::string log = Path("openssl.log");
    if (std::system((command + " >" + log + " 2>&1").c_str()) != 0) {
      return absl::InternalError(absl::StrCat("'", command, "' failed: ", Read(log)));
    }
    return absl::OkStatus();
  }

  std::string dir_;
  std::string ca_name_;
};

}  // namespace carbon::testing
