"""End to end: the built carbon-sidecar and fake-upstream binaries, driven by a stock Python grpcio
client through the generated KServe v2 / Triton stubs, as a gateway would.

Run by ctest with: CARBON_SIDECAR, CARBON_FAKE_UPSTREAM (binaries), CARBON_STUBS (generated
Python stubs) and CARBON_SOURCE_DIR set. Must run under Debian's /usr/bin/python3 (python3-grpcio).
"""
import os
import signal
import subprocess
import threading
import time
import unittest


from e2e_support import (SIDECAR, SOURCE_DIR, SidecarTestCase, grpc, infer_request, pb, peak_resident_kib, poll,
                          rpc)


class SidecarEndToEnd(SidecarTestCase):
    def test_stock_client_works_unchanged_through_the_sidecar(self):
        port = self.start_upstream()
        _, stub = self.start_sidecar(self.write_config(port, self.static(200)))
        self.assertTrue(stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live)
        self.assertTrue(stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready)
        self.assertTrue(stub.ModelReady(pb.ModelReadyRequest(name="resnet"), timeout=10).ready)
        self.assertEqual(stub.ModelMetadata(pb.ModelMetadataRequest(name="resnet"), timeout=10).name,
                         "resnet101")

        payload = bytes(range(256)) * 2352  # 602,112 bytes: one 224x224x3 FP32 image
        response, call = stub.ModelInfer.with_call(infer_request("resnet", payload, batch=1), timeout=10)
        self.assertEqual(response.model_name, "resnet101")
        # The fake upstream reports how many raw input bytes it received (INT64, little-endian).
        names = [o.name for o in response.outputs]
        received = int.from_bytes(response.raw_output_contents[names.index("input_bytes")][:8], "little")
        self.assertEqual(received, len(payload))
        tags = dict(call.initial_metadata())
        self.assertEqual(tags["x-carbon-model"], "resnet101")
        self.assertEqual(tags["x-carbon-route"], "resnet")
        self.assertEqual(tags["x-carbon-intensity-gco2-per-kwh"], "200")
        self.assertAlmostEqual(float(tags["x-carbon-grams"]), 803.0948846e-3 / 3.6e6 * 200, delta=1e-15)

        replies = list(stub.ModelStreamInfer(iter([infer_request("resnet"), infer_request("resnet34")]),
                                             timeout=10))
        self.assertEqual([r.infer_response.model_name for r in replies], ["resnet101", "resnet34"])

        with self.assertRaises(grpc.RpcError) as pinned:
            stub.ModelInfer(infer_request("resnet"), timeout=10, metadata=[("x-carbon-pin-model", "vgg16")])
        self.assertEqual(pinned.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(grpc.RpcError) as unknown:
            stub.ModelInfer(infer_request("bert"), timeout=10)
        self.assertEqual(unknown.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_sighup_reloads_and_a_broken_file_keeps_the_old_config(self):
        port = self.start_upstream()
        config = self.write_config(port, self.static(200))
        sidecar, stub = self.start_sidecar(config)
        self.assertEqual(self.served(stub)[0], "resnet101")

        self.write_config(port, self.static(300))
        sidecar.proc.send_signal(signal.SIGHUP)
        self.assertTrue(poll(lambda: self.served(stub)[0] == "resnet34"), sidecar.output())

        with open(config, "w") as f:
            f.write("listen: 127.0.0.1:0\nupstream: { target: x }\nintensity:\n  provider: static\n"
                    "  gco2_per_kwh: 1\nroutes:\n  - name: resnet\n    pool: pool.yaml\n"
                    "    baseline: resnet18\n    default: resnet50\n")
        sidecar.proc.send_signal(signal.SIGHUP)
        match = poll(lambda: sidecar.find(r"event=config_reloaded result=failure error=\"([^\"]*)\""))
        self.assertIsNotNone(match, sidecar.output())
        self.assertIn(f"{config}:9:15: routes[0].baseline 'resnet18' is not a variant", match.group(1))
        self.assertEqual(self.served(stub)[0], "resnet34")  # still the last good config

    def test_an_oversized_request_is_refused_without_being_read_whole(self):
        # 256 MiB against the default 64 MiB max_message_bytes: gRPC 1.51 would read it all before
        # refusing it; the memory limit (32 MiB here) stops the read instead.
        port = self.start_upstream()
        sidecar, stub = self.start_sidecar(
            self.write_config(port, self.static(200), extra="memory_limit_bytes: 33554432"))
        self.assertEqual(self.served(stub)[0], "resnet101")
        before = peak_resident_kib(sidecar.proc.pid)
        with self.assertRaises(grpc.RpcError) as refused:
            stub.ModelInfer(infer_request("resnet", payload=b"\x01" * (256 << 20)), timeout=30)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        grown_mib = (peak_resident_kib(sidecar.proc.pid) - before) / 1024
        self.assertLess(grown_mib, 128, "the sidecar held most of the message")
        # Nothing reached the upstream, and the sidecar serves on.
        self.assertEqual(self.served(stub)[0], "resnet101")

    def test_sigterm_lets_in_flight_calls_finish_then_exits_zero(self):
        # Under load: 16 unary calls and 4 streams in flight, each on a 1.5 s model, when SIGTERM comes.
        port = self.start_upstream("--service_time", "resnet101=1500ms")
        sidecar, stub = self.start_sidecar(self.write_config(port, self.static(200)))
        self.assertEqual(self.served(stub)[0], "resnet101")  # the connection is warm

        results = []
        lock = threading.Lock()

        def record(outcome):
            with lock:
                results.append(outcome)

        def slow_call():
            try:
                record(self.served(stub)[0])
            except grpc.RpcError as e:
                record(e.code())

        def slow_stream():
            answered = threading.Event()

            def requests():
                yield infer_request("resnet")
                answered.wait(timeout=10)  # half-close only once the answer is in

            try:
                for response in stub.ModelStreamInfer(requests(), timeout=10):
                    record("stream:" + (response.error_message or response.infer_response.model_name))
                    answered.set()
            except grpc.RpcError as e:
                record(e.code())

        callers = [threading.Thread(target=slow_call) for _ in range(16)]
        callers += [threading.Thread(target=slow_stream) for _ in range(4)]
        for caller in callers:
            caller.start()
        # Every call in flight at the upstream (the warm-up call was the first ModelInfer).
        self.assertTrue(poll(lambda: self.upstream_received("ModelInfer") == 17
                             and self.upstream_received("ModelStreamInfer") == 4), self.upstream.output())
        sidecar.proc.send_signal(signal.SIGTERM)
        for caller in callers:
            caller.join(timeout=10)
        self.assertEqual(sorted(results), ["resnet101"] * 16 + ["stream:resnet101"] * 4)
        self.assertEqual(sidecar.proc.wait(timeout=10), 0, sidecar.output())
        self.assertIn("event=draining", sidecar.output())

    def test_sigterm_refuses_new_calls_and_the_timeout_or_a_second_signal_forces_exit(self):
        port = self.start_upstream("--service_time", "resnet101=20s")
        for second_signal in (False, True):
            config = self.write_config(port, self.static(200), drain="1s" if not second_signal else "60s")
            sidecar, stub = self.start_sidecar(config)
            sidecar_port = sidecar.find(r"event=listening .* port=(\d+)").group(1)
            ready = grpc.insecure_channel(f"127.0.0.1:{sidecar_port}")
            grpc.channel_ready_future(ready).result(timeout=10)
            result = {}

            def slow_call():
                try:
                    result["model"] = self.served(stub)[0]
                except grpc.RpcError as e:
                    result["error"] = e.code()

            caller = threading.Thread(target=slow_call)
            received = self.upstream_received("ModelInfer")
            caller.start()
            self.assertTrue(poll(lambda: self.upstream_received("ModelInfer") == received + 1), self.upstream.output())
            start = time.monotonic()
            sidecar.proc.send_signal(signal.SIGTERM)
            self.assertTrue(poll(lambda: "event=draining" in sidecar.output()), sidecar.output())
            # Draining: a new connection is refused.
            fresh = rpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{sidecar_port}"))
            with self.assertRaises(grpc.RpcError) as refused:
                fresh.ModelInfer(infer_request("resnet"), timeout=5)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
            if second_signal:
                sidecar.proc.send_signal(signal.SIGTERM)
                self.assertEqual(sidecar.proc.wait(timeout=10), 1, sidecar.output())
                self.assertIn("event=forced_exit", sidecar.output())
            else:
                # The drain timeout (1s) cuts the 20 s call and the sidecar exits 0.
                self.assertEqual(sidecar.proc.wait(timeout=10), 0, sidecar.output())
            self.assertLess(time.monotonic() - start, 20)  # it did not wait for the 20 s call
            caller.join(timeout=10)
            self.assertIn(result.get("error"), (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), result)
            ready.close()

    def test_check_config_names_file_line_and_column(self):
        path = os.path.join(self.dir, "broken.yaml")
        with open(path, "w") as f:
            f.write("listen: 127.0.0.1:0\nupstream: { target: a }\nintensity:\n  provider: static\n"
                    "  gco2_per_kwh: 1\n  refesh: 5m\nroutes: []\n")
        run = subprocess.run([SIDECAR, "--config", path, "--check_config"], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(run.returncode, 2)
        self.assertIn(f"{path}:6:3: unknown key 'refesh' in intensity", run.stderr)

        run = subprocess.run([SIDECAR, "--config", os.path.join(SOURCE_DIR, "config/sidecar.yaml"),
                              "--check_config"], capture_output=True, text=True, timeout=30)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("route resnet: 4 variants", run.stdout)

    def test_probe_intensity_reports_the_provider_and_fails_clearly(self):
        import datetime
        import http.server

        status = {"code": 200}

        class Uk(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                start = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
                body = ('{"data":[{"from":"%s","to":"%s","intensity":{"forecast":210,"actual":null,"index":"moderate"}}]}'
                        % (start.strftime("%Y-%m-%dT%H:%MZ"), start.strftime("%Y-%m-%dT%H:%MZ"))).encode()
                if self.path.startswith("/intensity/"):  # the history range: an empty list
                    body = b'{"data":[]}'
                self.send_response(status["code"])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Uk)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.shutdown)
        config = self.write_config(1, f"""  provider: uk-carbon-intensity
  base_url: http://127.0.0.1:{server.server_port}
  window_bounds: {{ low: 100, high: 300 }}""")
        run = subprocess.run([SIDECAR, "--config", config, "--probe_intensity"], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("provider: uk-carbon-intensity", run.stdout)
        self.assertIn("latest:   210.0 gCO2/kWh", run.stdout)
        self.assertIn("route resnet: resnet101 (heuristic, t = 0.450", run.stdout)

        status["code"] = 500
        run = subprocess.run([SIDECAR, "--config", config, "--probe_intensity"], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(run.returncode, 1, run.stdout + run.stderr)
        self.assertIn("error:    uk-carbon-intensity", run.stdout)
        self.assertIn("HTTP 500", run.stdout)

    def test_replayed_trace_moves_the_choice_across_the_pool(self):
        port = self.start_upstream()
        trace = os.path.join(SOURCE_DIR, "data/carbon/sw_england_2023_06")
        _, stub = self.start_sidecar(self.write_config(port, f"""  provider: trace
  file: {trace}
  time_column: from
  value_column: regions.intensity.forecast
  start: 2023-06-02T00:00:00Z
  speedup: 14400
  refresh: 100ms
  window: 24h"""))
        seen = set()

        def all_variants_seen():
            seen.add(self.served(stub)[0])
            return len(seen) == 4

        # Four simulated hours per second: a whole day's swing within about six seconds.
        self.assertTrue(poll(all_variants_seen, timeout=20), seen)


if __name__ == "__main__":
    unittest.main()
