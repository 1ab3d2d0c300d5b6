// libFuzzer harness: the YAML config loader on arbitrary text. Every input must end in a config or an
// error status; yaml-cpp's exceptions must never escape.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "sidecar/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/carbon-config-fuzz-" + std::to_string(getpid()) + ".yaml";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  auto config = carbon::sidecar::LoadConfig(path);
  if (!config.ok() && config.status().message().empty()) __builtin_trap();  // errors must say why
  auto pool = carbon::sidecar::LoadPoolFile(path);
  (void)pool;
  return 0;
}
