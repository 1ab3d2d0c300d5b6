#!/usr/bin/env bash
# Installs what is needed, builds, and runs the whole ctest suite; then (unless --quick) the same
# suite built with AddressSanitizer and UndefinedBehaviorSanitizer, and each libFuzzer harness for
# about a minute under both.
#   --quick     only the plain build and suite
#   BUILD_DIR   build directory, reused between runs (default: build; the sanitizer and fuzz builds
#               go to $BUILD_DIR-asan and $BUILD_DIR-fuzz)
#   CTEST_ARGS  extra ctest arguments for the plain suite, e.g. "-L unit" or "-R proxy"
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; fi

bash scripts/setup.sh
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j2
# shellcheck disable=SC2086  # CTEST_ARGS is a list of arguments
ctest --test-dir "$build_dir" --output-on-failure -j2 --timeout 300 ${CTEST_ARGS:-}
if [ "$quick" = 1 ]; then exit 0; fi

# Any sanitizer report fails the test that triggered it.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cmake -S . -B "$build_dir-asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCARBON_SANITIZE=ON
cmake --build "$build_dir-asan" -j2
# (The package test installs the plain build's .deb; building one from sanitized binaries adds nothing.)
ctest --test-dir "$build_dir-asan" --output-on-failure -j2 --timeout 300 -LE fuzz -E DebianPackage

CC=clang CXX=clang++ cmake -S . -B "$build_dir-fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCARBON_FUZZ=ON -DCARBON_FUZZ_SECONDS=60
cmake --build "$build_dir-fuzz" -j2 --target fuzz_all
ctest --test-dir "$build_dir-fuzz" --output-on-failure -j2 -L fuzz
