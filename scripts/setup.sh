#!/usr/bin/env bash
# Installs every Debian 12 package that the build, the tests and the demo need, plus any package
# named on the command line (bench/compare.sh asks for nginx and h2load this way).
#   --build-only   only what building the carbon-sidecar binary and its Debian package needs
#                  (docker/Dockerfile's build stage; configure with -DCARBON_BUILD_TESTS=OFF)
# Idempotent: packages already present are skipped; sudo is used only when not root.
set -euo pipefail

build_only=0
if [ "${1:-}" = "--build-only" ]; then
  build_only=1
  shift
fi

# Compiling the binary; `file` is what CPack's shared-library dependency scan runs.
packages=(
  build-essential cmake pkg-config ninja-build file
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev libfmt-dev libyaml-cpp-dev libcurl4-openssl-dev nlohmann-json3-dev
  libcpp-httplib-dev libssl-dev
  # The HTTP/2 data plane (data_plane: h2).
  libnghttp2-dev libevent-dev zlib1g-dev
)
if [ "$build_only" = 0 ]; then
  packages+=(
    libgtest-dev libgmock-dev googletest libbenchmark-dev
    python3 python3-grpcio python3-protobuf python3-yaml
    curl procps prometheus gnuplot-nox bc
    clang libclang-rt-14-dev
    shellcheck yamllint
    # The status page's browser test (tests/e2e/status_page_test.py).
    chromium
    # The container test: an engine and locally made base images (tests/e2e/container_test.py).
    podman runc mmdebstrap
  )
  # `kubectl kustomize` renders the Kubernetes manifests; any kubectl will do (some machines
  # have one from another package, which Debian's would conflict with).
  if ! command -v kubectl >/dev/null 2>&1; then
    packages+=(kubernetes-client)
  fi
fi
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  as_root=(sudo)
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
