#!/usr/bin/env bash
# A long run under mixed load with faults, to show what tests of a few seconds cannot: that memory
# stays flat, and that the ledger counts every call once, however the calls ended.
#
#   loadgen (1 KB, open loop)  ─┐
#   loadgen (602 KB, open loop) ┴─> carbon-sidecar ──> fake-upstream
#
# Meanwhile: every 20 s a SIGHUP that switches the static intensity between two values (the routed
# model changes), every third one a broken file (refused, the old config stays); every 60 s the
# upstream is killed with SIGKILL and started again on the same port 2 s later. The sidecar's RSS,
# threads and open descriptors are sampled every 10 s. At the end the sidecar's ledger is scraped and
# reconciled with what the clients saw: calls counted by the ledger == calls the clients made, OK by
# the ledger == OK seen by the clients, inferences == OK calls (batch 1). Exits 1 if they differ.
#   --duration S   seconds of load (default 600)
# Results go to bench/results/soak/<time>/ (summary.md, rss.csv, the logs).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=600
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="${2%s}"; shift 2 ;;
    *) echo "usage: bench/soak.sh [--duration SECONDS]" >&2; exit 2 ;;
  esac
done

bash scripts/setup.sh
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build_dir" -j2 --target carbon-sidecar fake-upstream loadgen

out="bench/results/soak/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
pids=()
upstream_pid=0
cleanup() {
  for pid in "${pids[@]}" "$upstream_pid"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/lib.sh
source bench/lib.sh

upstream_port=$(free_port)
start_upstream() {
  "$build_dir/bench/fake-upstream" --listen "127.0.0.1:$upstream_port" >>"$out/upstream.log" 2>&1 &
  upstream_pid=$!
  wait_port "$upstream_port"
}
start_upstream

sidecar_port=$(free_port)
admin_port=$(free_port)
write_config() {  # $1: static intensity (gCO2/kWh)
  cat >"$out/sidecar.yaml.new" <<YAML
listen: 127.0.0.1:$sidecar_port
admin: { listen: "127.0.0.1:$admin_port" }
upstream: { target: "127.0.0.1:$upstream_port", readiness_interval: 1s }
drain_timeout: 5s
intensity: { provider: static, gco2_per_kwh: $1, refresh: 1s, window_bounds: { low: 100, high: 300 } }
routes:
  - { name: resnet, pool: $PWD/config/pools/resnet-v100.yaml, baseline: resnet50, default: resnet50, batch_dimension: true }
YAML
  mv "$out/sidecar.yaml.new" "$out/sidecar.yaml"
}
write_config 120
"$build_dir/sidecar/carbon-sidecar" --config "$out/sidecar.yaml" --log_level info 2>"$out/sidecar.log" &
sidecar_pid=$!
pids+=("$sidecar_pid")
wait_port "$sidecar_port"

# Open loop, so a stall shows as latency instead of fewer calls; no warm-up, so every call the
# clients start is one the ledger must count. A 3 s deadline bounds what a dead upstream costs.
"$build_dir/bench/loadgen" --target "127.0.0.1:$sidecar_port" --model resnet --rate 400 --channels 4 \
  --payload_bytes 1024 --warmup 0s --timeout 3s --duration "${duration}s" >"$out/load_small.json" &
pids+=($!)
small_pid=$!
"$build_dir/bench/loadgen" --target "127.0.0.1:$sidecar_port" --model resnet --rate 10 --channels 2 \
  --payload_bytes 602112 --warmup 0s --timeout 3s --duration "${duration}s" >"$out/load_image.json" &
pids+=($!)
image_pid=$!

echo "seconds,rss_kib,hwm_kib,threads,fds" >"$out/rss.csv"
sample() {
  local rss hwm threads fds
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$sidecar_pid/status")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$sidecar_pid/status")
  threads=$(awk '/Threads/ {print $2}' "/proc/$sidecar_pid/status")
  fds=$(find "/proc/$sidecar_pid/fd" -mindepth 1 | wc -l)
  echo "$1,$rss,$hwm,$threads,$fds" >>"$out/rss.csv"
}

reloads=0
broken=0
upstream_kills=0
for ((t = 1; t <= duration; t++)); do
  sleep 1
  if ((t % 10 == 0)); then sample "$t"; fi
  if ((t % 20 == 0 && t + 5 < duration)); then
    reloads=$((reloads + 1))
    if ((reloads % 3 == 0)); then
      broken=$((broken + 1))
      cp "$out/sidecar.yaml" "$out/sidecar.yaml.good"
      printf 'routes: [ { name: resnet, pool: \n' >"$out/sidecar.yaml"
      kill -HUP "$sidecar_pid"
      sleep 0.5
      mv "$out/sidecar.yaml.good" "$out/sidecar.yaml"
    else
      if ((reloads % 2 == 0)); then write_config 120; else write_config 280; fi
      kill -HUP "$sidecar_pid"
    fi
  fi
  if ((t % 60 == 30 && t + 5 < duration)); then
    upstream_kills=$((upstream_kills + 1))
    kill -KILL "$upstream_pid"
    wait "$upstream_pid" 2>/dev/null || true
    sleep 2
    start_upstream
  fi
done
wait "$small_pid" "$image_pid"
sample "$duration"
curl -sf "http://127.0.0.1:$admin_port/metrics" >"$out/metrics.txt"
kill -TERM "$sidecar_pid"
wait "$sidecar_pid" || true

/usr/bin/python3 - "$out" "$duration" "$reloads" "$broken" "$upstream_kills" <<'PY'
import csv, json, re, sys
out, duration, reloads, broken, kills = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
loads = [json.load(open(f"{out}/load_{name}.json")) for name in ("small", "image")]
client_calls = sum(l["requests"] for l in loads)
client_ok = sum(l["ok"] for l in loads)
client_errors = {}
for l in loads:
    for code, n in l["errors"].items():
        client_errors[code] = client_errors.get(code, 0) + n

def metric(name, **match):
    total = 0.0
    for line in open(f"{out}/metrics.txt"):
        m = re.match(r'(\w+)\{([^}]*)\} (\S+)$', line.strip())
        if not m or m.group(1) != name:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(labels.get(k) == v for k, v in match.items()):
            total += float(m.group(3))
    return int(total)

ledger_calls = metric("carbon_sidecar_requests_total", route="resnet")
ledger_ok = metric("carbon_sidecar_requests_total", route="resnet", code="OK")
ledger_inferences = metric("carbon_sidecar_inferences_total", route="resnet")
reload_ok = metric("carbon_sidecar_config_reloads_total", result="success")
reload_failed = metric("carbon_sidecar_config_reloads_total", result="failure")
by_model = {}
for line in open(f"{out}/metrics.txt"):
    m = re.match(r'carbon_sidecar_inferences_total\{([^}]*)\} (\S+)$', line.strip())
    if m:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        by_model[labels["model"]] = int(float(m.group(2)))

rows = list(csv.DictReader(open(f"{out}/rss.csv")))
rss = [int(r["rss_kib"]) for r in rows]
checks = [
    ("calls counted by the ledger == calls the clients made", ledger_calls, client_calls),
    ("OK in the ledger == OK seen by the clients", ledger_ok, client_ok),
    ("inferences in the ledger == OK calls (batch 1)", ledger_inferences, client_ok),
    ("successful reloads", reload_ok, reloads - broken),
    ("refused reloads", reload_failed, broken),
]
failed = [c for c in checks if c[1] != c[2]]
half = rss[len(rss) // 2:]
lines = [
    f"# Soak: {duration} s of mixed load with faults", "",
    f"Load: 1 KB ModelInfer at 400/s over 4 connections and a 602,112-byte image at 10/s over 2, open loop, 3 s deadline.",
    f"Faults: {kills} upstream SIGKILLs (restarted 2 s later), {reloads} SIGHUPs of which {broken} broken files.", "",
    "| | small (1 KB) | image (602 KB) |", "|---|---:|---:|",
    f"| calls | {loads[0]['requests']} | {loads[1]['requests']} |",
    f"| OK | {loads[0]['ok']} | {loads[1]['ok']} |",
    f"| errors by gRPC code | {loads[0]['errors']} | {loads[1]['errors']} |",
    f"| p50 / p99 / p99.9 / max latency (ms) | " + " | ".join(
        f"{l['latency_us']['p50']/1000:.2f} / {l['latency_us']['p99']/1000:.2f} / {l['latency_us']['p999']/1000:.1f} / {l['latency_us']['max']/1000:.0f}"
        for l in loads) + " |", "",
    "| reconciliation | ledger / sidecar | clients / script | |", "|---|---:|---:|---|",
] + [f"| {name} | {a} | {b} | {'ok' if a == b else 'MISMATCH'} |" for name, a, b in checks] + [
    "", f"Inferences by model: {by_model}", "",
    f"Sidecar RSS (KiB): first sample {rss[0]}, at half time {half[0]}, last {rss[-1]}, "
    f"max {max(rss)}, max of the second half {max(half)}; peak (VmHWM) {rows[-1]['hwm_kib']}; "
    f"threads {rows[0]['threads']} -> {rows[-1]['threads']}; open fds {rows[0]['fds']} -> {rows[-1]['fds']}.",
]
summary = "\n".join(lines) + "\n"
open(f"{out}/summary.md", "w").write(summary)
print(summary)
sys.exit(1 if failed else 0)
PY
