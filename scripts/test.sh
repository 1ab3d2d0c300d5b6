#!/usr/bin/env bash
# Installs what is needed, builds, and runs the whole ctest suite.
#   BUILD_DIR  build directory, reused between runs (default: build)
#   CTEST_ARGS extra ctest arguments, e.g. "-L unit" or "-R proxy"
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j2
# shellcheck disable=SC2086  # CTEST_ARGS is a list of arguments
ctest --test-dir "$build_dir" --output-on-failure -j2 --timeout 300 ${CTEST_ARGS:-}
