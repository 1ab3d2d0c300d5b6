#!/usr/bin/env bash
# Measures, in one run, the same ModelInfer load against the fake upstream (zero service time):
#   direct            loadgen -> fake-upstream
#   carbon-sidecar    loadgen -> carbon-sidecar -> fake-upstream   (model "resnet": routed and rewritten;
#                     "sidecar" on data_plane grpc, "sidecar-h2" on data_plane h2, one worker per core)
#   nginx grpc_pass   loadgen -> nginx -> fake-upstream
#   grpc-floor        loadgen -> bench/grpc-floor-proxy -> fake-upstream   (unary only: a yardstick for
#                     what any gRPC C++ proxy costs, with nothing parsed, copied or counted)
# Unary ModelInfer at concurrency 1, 16 and 64 and ModelStreamInfer with 1 and 16 streams, each with a
# 1 KB payload and one 224x224x3 FP32 image (602,112 bytes), answered with small responses (a
# classifier's scores) and with a 602,112-byte output tensor (segmentation, super-resolution and
# generative models answer that way; the loadgen checks it arrived whole), three repetitions, recording the proxy's
# CPU seconds (from /proc) per 1,000 requests and its peak RSS during that run (VmHWM, reset before
# each run); then cross-checks the small payload with h2load, an independent HTTP/2 client. Medians
# and ratios go to bench/results/compare/<time>/summary.md; copy the table into bench/RESULTS.md.
# Last, the cost growth with payload size (1 KB to 4 MiB) and concurrency (1 to 64), plotted with gnuplot
# to bench/growth.svg.
#   --duration S   seconds measured per run (default 5), --reps N (default 3),
#   --growth-duration S   seconds per cost-growth run (default 3)
#   --rows LIST    only these rows (mode:request:response:concurrency, comma-separated, e.g.
#                  stream:602112:0:16), without the growth runs and h2load
#   --h2-wide S:C  also measure a third sidecar, "sidecar-h2-wide": the h2 plane with stream window S
#                  and connection window C bytes
#   --h2-alt 'KEY: VALUE; ...'  also measure a third sidecar, "sidecar-h2-alt": the h2 plane with
#                  these top-level config keys added (e.g. 'data_plane_upstream_max_concurrent_streams: 4')
#   --tls          the sidecars and nginx terminate TLS from the loadgen (a fresh self-signed
#                  P-256 certificate for 127.0.0.1; the upstream stays plaintext, direct too);
#                  needs --rows; grpc-floor (plaintext only) is left out
set -euo pipefail
cd "$(dirname "$0")/.."

duration=5
reps=3
growth_duration=3
rows=""
h2_alt=""       # config lines of the third sidecar
h2_alt_name=""  # its name in the results
tls=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows="$2"; shift 2 ;;
    --tls) tls=1; shift ;;
    --h2-wide) h2_alt=$(printf 'data_plane_stream_window_bytes: %s\ndata_plane_connection_window_bytes: %s' "${2%%:*}" "${2##*:}")
               h2_alt_name=sidecar-h2-wide; shift 2 ;;
    --h2-alt) h2_alt=$(printf '%s' "$2" | sed -e 's/; */\n/g'); h2_alt_name=sidecar-h2-alt; shift 2 ;;
    --duration) duration="${2%s}"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --growth-duration) growth_duration="${2%s}"; shift 2 ;;
    *) echo "usage: bench/compare.sh [--duration SECONDS] [--reps N] [--growth-duration SECONDS] [--rows LIST]" \
         "[--h2-wide STREAM_WINDOW:CONNECTION_WINDOW | --h2-alt 'KEY: VALUE; ...'] [--tls]" >&2; exit 2 ;;
  esac
done
if [ -n "$tls" ] && [ -z "$rows" ]; then
  echo "bench/compare.sh: --tls measures chosen rows only: add --rows" >&2
  exit 2
fi

bash scripts/setup.sh nginx-light nghttp2-client bc openssl  # openssl: the --tls certificate
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build_dir" -j2 --target carbon-sidecar fake-upstream loadgen grpc-floor-proxy inference_proto_python

out="bench/results/compare/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/lib.sh
source bench/lib.sh

upstream_port=$(free_port)
"$build_dir/bench/fake-upstream" --listen "127.0.0.1:$upstream_port" >"$out/upstream.log" 2>&1 &
pids+=($!)
wait_port "$upstream_port"

tls_yaml=""
nginx_tls=""
if [ -n "$tls" ]; then
  mkdir -p "$out/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$out/tls/key.pem" -out "$out/tls/cert.pem" 2>/dev/null
  tls_yaml="tls: { cert_file: $PWD/$out/tls/cert.pem, key_file: $PWD/$out/tls/key.pem }"
  nginx_tls="ssl_certificate $PWD/$out/tls/cert.pem; ssl_certificate_key $PWD/$out/tls/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"
fi

sidecar_port=$(free_port)
cat >"$out/sidecar.yaml" <<YAML
listen: 127.0.0.1:$sidecar_port
data_plane: grpc
admin: { listen: "127.0.0.1:0" }
upstream: { target: "127.0.0.1:$upstream_port", readiness_interval: 0s }
intensity: { provider: static, gco2_per_kwh: 200, refresh: 1h, window_bounds: { low: 100, high: 300 } }
routes:
  - { name: resnet, pool: $PWD/config/pools/resnet-v100.yaml, baseline: resnet50, default: resnet50, batch_dimension: true }
$tls_yaml
YAML
"$build_dir/sidecar/carbon-sidecar" --config "$out/sidecar.yaml" --log_level warn 2>"$out/sidecar.log" &
sidecar_pid=$!
pids+=("$sidecar_pid")
wait_port "$sidecar_port"

# The same sidecar on the HTTP/2 data plane.
sidecar_h2_port=$(free_port)
sed -e "s/^listen: .*/listen: 127.0.0.1:$sidecar_h2_port/" -e "s/^data_plane: grpc/data_plane: h2/" "$out/sidecar.yaml" \
  >"$out/sidecar-h2.yaml"
"$build_dir/sidecar/carbon-sidecar" --config "$out/sidecar-h2.yaml" --log_level warn 2>"$out/sidecar-h2.log" &
sidecar_h2_pid=$!
pids+=("$sidecar_h2_pid")
wait_port "$sidecar_h2_port"

# The h2 plane with other settings (--h2-wide, --h2-alt).
sidecar_h2_alt_port=0
sidecar_h2_alt_pid=0
targets="direct sidecar sidecar-h2"
if [ -n "$h2_alt" ]; then
  sidecar_h2_alt_port=$(free_port)
  sed -e "s/^listen: .*/listen: 127.0.0.1:$sidecar_h2_alt_port/" "$out/sidecar-h2.yaml" >"$out/$h2_alt_name.yaml"
  printf '%s\n' "$h2_alt" >>"$out/$h2_alt_name.yaml"
  "$build_dir/sidecar/carbon-sidecar" --config "$out/$h2_alt_name.yaml" --log_level warn 2>"$out/$h2_alt_name.log" &
  sidecar_h2_alt_pid=$!
  pids+=("$sidecar_h2_alt_pid")
  wait_port "$sidecar_h2_alt_port"
  targets="$targets $h2_alt_name"
fi
targets="$targets nginx"

nginx_port=$(free_port)
mkdir -p "$out/nginx"
cat >"$out/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
pid $PWD/$out/nginx/nginx.pid;
error_log $PWD/$out/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $PWD/$out/nginx/body;
  proxy_temp_path $PWD/$out/nginx/proxy;
  fastcgi_temp_path $PWD/$out/nginx/fastcgi;
  uwsgi_temp_path $PWD/$out/nginx/uwsgi;
  scgi_temp_path $PWD/$out/nginx/scgi;
  client_max_body_size 0;
  keepalive_requests 1000000;
  upstream inference { server 127.0.0.1:$upstream_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port $([ -n "$tls" ] && echo ssl) http2;
    $nginx_tls
    location / { grpc_pass grpc://inference; }
  }
}
NGINX
nginx -c "$PWD/$out/nginx.conf" &
nginx_pid=$!
pids+=("$nginx_pid")
wait_port "$nginx_port"

floor_port=$(free_port)
"$build_dir/bench/grpc-floor-proxy" --listen "127.0.0.1:$floor_port" --upstream "127.0.0.1:$upstream_port" \
  2>"$out/grpc-floor.log" &
floor_pid=$!
pids+=("$floor_pid")
wait_port "$floor_port"

# One loadgen run against a target; prints its JSON line (with the proxy's CPU and peak RSS).
measure() {  # mode target payload concurrency seconds rep [response_bytes]
  local mode=$1 target=$2 payload=$3 concurrency=$4 seconds=$5 rep=$6 response=${7:-0}
  local port model pid before result cpu=0 rss=0
  case "$target" in
    direct) port=$upstream_port; model=resnet50; pid=0 ;;
    sidecar) port=$sidecar_port; model=resnet; pid=$sidecar_pid ;;
    sidecar-h2) port=$sidecar_h2_port; model=resnet; pid=$sidecar_h2_pid ;;
    sidecar-h2-wide|sidecar-h2-alt) port=$sidecar_h2_alt_port; model=resnet; pid=$sidecar_h2_alt_pid ;;
    nginx) port=$nginx_port; model=resnet50; pid=$nginx_pid ;;
    grpc-floor) port=$floor_port; model=resnet50; pid=$floor_pid ;;
  esac
  if [ "$pid" != 0 ]; then before=$(cpu_seconds "$pid"); reset_peak_rss "$pid"; fi
  local ca_file=""
  if [ -n "$tls" ] && [ "$target" != direct ]; then ca_file="$out/tls/cert.pem"; fi
  result=$("$build_dir/bench/loadgen" --target "127.0.0.1:$port" --model "$model" --ca_file "$ca_file" \
    --stream="$([ "$mode" = stream ] && echo true || echo false)" \
    --concurrency "$concurrency" --payload_bytes "$payload" --response_bytes "$response" --warmup 1s \
    --duration "${seconds}s")
  if [ "$pid" != 0 ]; then
    cpu=$(echo "$(cpu_seconds "$pid") - $before" | bc | awk '{printf "%.4f", $1}')
    rss=$(peak_rss_kb "$pid")
  fi
  echo "rep $rep $mode payload $payload response $response c=$concurrency $target: $(echo "$result" | /usr/bin/python3 bench/compare_summary.py --line)" >&2
  echo "{\"rep\": $rep, \"mode\": \"$mode\", \"target\": \"$target\", \"payload\": $payload, \"response\": $response, \"concurrency\": $concurrency, \"proxy_cpu_s\": $cpu, \"proxy_peak_rss_kb\": $rss, \"load\": $result}"
}

raw="$out/raw.jsonl"
: >"$raw"
if [ -n "$rows" ]; then
  for rep in $(seq "$reps"); do
    for row in ${rows//,/ }; do
      IFS=: read -r mode payload response concurrency <<<"$row"
      for target in $targets $([ "$mode" = unary ] && [ -z "$tls" ] && echo grpc-floor); do
        measure "$mode" "$target" "$payload" "$concurrency" "$duration" "$rep" "$response" >>"$raw"
      done
    done
  done
  /usr/bin/python3 bench/compare_summary.py "$raw" /dev/null >"$out/summary.md"
  if [ -n "$tls" ]; then
    echo "TLS (--tls): the sidecars and nginx terminate TLS from the loadgen; direct and every upstream hop are plaintext." \
      >>"$out/summary.md"
  fi
  cat "$out/summary.md"
  echo
  echo "results: $out"
  exit 0
fi
# Size-major, smallest first, so that no small run follows a large one: memory a process freed but
# kept (glibc does not hand every freed block back) would show as the small runs' peak.
for sizes in "1024 0" "602112 0" "1024 602112" "602112 602112"; do
  read -r payload response <<<"$sizes"
  for rep in $(seq "$reps"); do
    for concurrency in 1 16 64; do
      for target in $targets grpc-floor; do
        measure unary "$target" "$payload" "$concurrency" "$duration" "$rep" "$response" >>"$raw"
      done
    done
    for concurrency in 1 16; do
      for target in $targets; do
        measure stream "$target" "$payload" "$concurrency" "$duration" "$rep" "$response" >>"$raw"
      done
    done
  done
done

# Cost growth, one repetition: unary calls at concurrency 1 from 1 KB to 4 MiB, then 1 KB calls
# from concurrency 1 to 64 (the points the runs above measured are taken from them).
growth="$out/growth.jsonl"
: >"$growth"
for payload in 16384 65536 262144 1048576 4194304; do
  for target in direct sidecar nginx; do
    measure unary "$target" "$payload" 1 "$growth_duration" 1 >>"$growth"
  done
done
for concurrency in 2 4 8 32; do
  for target in direct sidecar nginx; do
    measure unary "$target" 1024 "$concurrency" "$growth_duration" 1 >>"$growth"
  done
done

# Independent cross-check: h2load sends framed gRPC requests itself (1 KB payload, 16 streams on one
# connection, 20,000 requests).
/usr/bin/python3 - "$build_dir/proto/python" "$out/request.bin" <<'PY'
import struct, sys
sys.path.insert(0, sys.argv[1])
from inference import grpc_service_pb2 as pb
for name, model in (("direct", "resnet50"), ("routed", "resnet")):
    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add(); t.name = "input"; t.datatype = "FP32"; t.shape.extend([1, 3, 224, 224])
    req.raw_input_contents.append(b"\x01" * 1024)
    body = req.SerializeToString()
    open(sys.argv[2] + "." + name, "wb").write(b"\x00" + struct.pack(">I", len(body)) + body)
PY
h2="$out/h2load.txt"
: >"$h2"
for target in $targets grpc-floor; do
  case "$target" in
    direct) port=$upstream_port; body="$out/request.bin.direct" ;;
    sidecar-h2-wide|sidecar-h2-alt) port=$sidecar_h2_alt_port; body="$out/request.bin.routed" ;;
    sidecar-h2) port=$sidecar_h2_port; body="$out/request.bin.routed" ;;
    grpc-floor) port=$floor_port; body="$out/request.bin.direct" ;;
    sidecar) port=$sidecar_port; body="$out/request.bin.routed" ;;
    nginx) port=$nginx_port; body="$out/request.bin.direct" ;;
  esac
  echo "== $target" >>"$h2"
  h2load -n 20000 -c 1 -m 16 -d "$body" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$port/inference.GRPCInferenceService/ModelInfer" >>"$h2" 2>&1 || true
done

/usr/bin/python3 bench/compare_summary.py "$raw" "$h2" >"$out/summary.md"
/usr/bin/python3 bench/compare_summary.py --growth "$raw" "$growth" "$out" >>"$out/summary.md"
if [ -f "$out/growth.svg" ]; then cp "$out/growth.svg" bench/growth.svg; fi
cat "$out/summary.md"
echo
echo "results: $out"
