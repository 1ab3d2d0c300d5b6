#!/usr/bin/env bash
# The demo: installs what is needed, builds, then runs a fake inference server and carbon-sidecar on
# loopback with the bundled South West England carbon intensity (June 2023) replayed at one
# simulated hour per second, drives load through the sidecar with the load generator, and prints a
# table from the sidecar's own /metrics every few seconds: simulated time, intensity, window, the
# model in use, requests per model, grams so far and efficiency against resnet50. It ends by itself
# with a summary and the path of a plot. No network or API key needed.
#   --duration N[s]   how long to run (default 90 s)
#   --live            read the real UK Carbon Intensity API (South West England) instead of the
#                     recorded day; needs a network, and the intensity then moves at real speed
set -euo pipefail
cd "$(dirname "$0")/.."

duration=90
live=0
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="${2%s}"; shift 2 ;;
    --live) live=1; shift ;;
    *) echo "usage: scripts/demo.sh [--duration SECONDS] [--live]" >&2; exit 2 ;;
  esac
done
case "$duration" in
  ''|*[!0-9]*) echo "demo: --duration takes whole seconds, e.g. 60 or 60s" >&2; exit 2 ;;
esac

build_dir=${BUILD_DIR:-build}
# The test suite's smoke test runs the demo on binaries it has just built.
if [ "${CARBON_DEMO_SKIP_BUILD:-0}" != 1 ]; then
  bash scripts/setup.sh
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build_dir" -j2 --target carbon-sidecar fake-upstream loadgen
fi

run_dir=$(mktemp -d /tmp/carbon-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo; echo "demo: stopped"; exit 130' INT TERM

port_in_use() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 8001 8011 9464; do
  if port_in_use "$port"; then
    echo "demo: port $port on 127.0.0.1 is in use; stop whatever holds it and retry" >&2
    exit 1
  fi
done

config=config/sidecar.yaml
if [ "$live" = 1 ]; then config=config/sidecar-live.yaml; fi

"$build_dir/bench/fake-upstream" --listen 127.0.0.1:8011 >"$run_dir/upstream.log" 2>&1 &
pids+=($!)
"$build_dir/sidecar/carbon-sidecar" --config "$config" 2>"$run_dir/sidecar.log" &
pids+=($!)
for _ in $(seq 100); do
  if port_in_use 8001 && port_in_use 9464; then break; fi
  sleep 0.1
done
if ! port_in_use 8001; then
  echo "demo: the sidecar did not start; its log:" >&2
  cat "$run_dir/sidecar.log" >&2
  exit 1
fi

if [ "$live" = 1 ]; then
  echo "carbon-sidecar on 127.0.0.1:8001 reads the UK Carbon Intensity API (South West England, live)."
else
  echo "carbon-sidecar on 127.0.0.1:8001, in front of a fake Triton on 127.0.0.1:8011, replays South West"
  echo "England's grid of June 2023 at one simulated hour per second."
fi
echo "Load: 300 ModelInfer requests a second for model \"resnet\" (the pool: resnet34 … resnet152)."
echo "Clean grid -> bigger, more accurate model; dirty grid -> smaller, frugal one. Logs: $run_dir"
echo "Open the status page while it runs: http://127.0.0.1:9464/"
echo

"$build_dir/bench/loadgen" --target 127.0.0.1:8001 --model resnet --rate 300 --warmup 0s \
  --duration "${duration}s" >"$run_dir/loadgen.json" 2>"$run_dir/loadgen.log" &
loadgen=$!
pids+=("$loadgen")
/usr/bin/python3 scripts/demo_monitor.py --metrics http://127.0.0.1:9464/metrics --duration "$duration" \
  --interval 3 --out_dir "$run_dir"
wait "$loadgen" || true
echo "  load generator: $(cat "$run_dir/loadgen.json")"
