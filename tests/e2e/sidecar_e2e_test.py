"""End to end: the built carbon-sidecar and fake-upstream binaries, driven by a stock Python grpcio
client through the generated KServe v2 / Triton stubs, as a gateway would.

Run by ctest with: CARBON_SIDECAR, CARBON_FAKE_UPSTREAM (binaries), CARBON_STUBS (generated
Python stubs) and CARBON_SOURCE_DIR set. Must run under Debian's /usr/bin/python3 (python3-grpcio).
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.environ["CARBON_STUBS"])
import grpc  # noqa: E402
from inference import grpc_service_pb2 as pb  # noqa: E402
from inference import grpc_service_pb2_grpc as rpc  # noqa: E402

SIDECAR = os.environ["CARBON_SIDECAR"]
FAKE_UPSTREAM = os.environ["CARBON_FAKE_UPSTREAM"]
SOURCE_DIR = os.environ["CARBON_SOURCE_DIR"]

POOL = """variants:
  - { name: resnet34,  energy_mj: 359.9321833, error_percent: 8.58 }
  - { name: resnet50,  energy_mj: 420.6213298, error_percent: 7.138 }
  - { name: resnet101, energy_mj: 803.0948846, error_percent: 6.454 }
  - { name: resnet152, energy_mj: 1238.147188, error_percent: 5.954 }
"""


def poll(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


class Process:
    """A child process whose output lines are collected as they arrive."""

    def __init__(self, args, stream="stderr"):
        self.lines = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def output(self):
        with self.lock:
            return "\n".join(self.lines)

    def find(self, pattern):
        match = re.search(pattern, self.output())
        return match

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=5)


def infer_request(model, payload=b"\x01" * 1024, batch=1):
    req = pb.ModelInferRequest(model_name=model, id="e2e")
    tensor = req.inputs.add()
    tensor.name = "input"
    tensor.datatype = "FP32"
    tensor.shape.extend([batch, 3, 224, 224])
    req.raw_input_contents.append(payload)
    return req


class SidecarEndToEnd(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="carbon-e2e-")
        self.processes = []
        with open(os.path.join(self.dir, "pool.yaml"), "w") as f:
            f.write(POOL)

    def tearDown(self):
        for p in self.processes:
            p.stop()

    def start_upstream(self, *extra):
        upstream = Process([FAKE_UPSTREAM, "--listen", "127.0.0.1:0", *extra])
        self.processes.append(upstream)
        match = poll(lambda: upstream.find(r"listening on port (\d+)"))
        self.assertIsNotNone(match, upstream.output())
        return int(match.group(1))

    def write_config(self, upstream_port, intensity_block, drain="10s"):
        path = os.path.join(self.dir, "sidecar.yaml")
        with open(path, "w") as f:
            f.write(f"""listen: 127.0.0.1:0
admin: {{ listen: "127.0.0.1:0" }}
upstream: {{ target: "127.0.0.1:{upstream_port}" }}
drain_timeout: {drain}
intensity:
{intensity_block}
routes:
  - name: resnet
    pool: pool.yaml
    baseline: resnet50
    default: resnet50
""")
        return path

    @staticmethod
    def static(intensity):
        return f"""  provider: static
  gco2_per_kwh: {intensity}
  refresh: 1h
  window_bounds: {{ low: 100, high: 300 }}"""

    def start_sidecar(self, config):
        sidecar = Process([SIDECAR, "--config", config])
        self.processes.append(sidecar)
        match = poll(lambda: sidecar.find(r"event=listening .* port=(\d+)"))
        self.assertIsNotNone(match, sidecar.output())
        channel = grpc.insecure_channel(f"127.0.0.1:{match.group(1)}")
        return sidecar, rpc.GRPCInferenceServiceStub(channel)

    def served(self, stub, **kwargs):
        response, call = stub.ModelInfer.with_call(infer_request("resnet"), timeout=10, **kwargs)
        return response.model_name, dict(call.initial_metadata())

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

    def test_sigterm_lets_in_flight_calls_finish_then_exits_zero(self):
        port = self.start_upstream("--service_time", "resnet101=1500ms")
        sidecar, stub = self.start_sidecar(self.write_config(port, self.static(200)))
        self.assertEqual(self.served(stub)[0], "resnet101")  # the connection is warm

        result = {}

        def slow_call():
            try:
                result["model"] = self.served(stub)[0]
            except grpc.RpcError as e:
                result["error"] = e.code()

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.3)  # let the call reach the upstream; there is nothing to poll for from here
        sidecar.proc.send_signal(signal.SIGTERM)
        caller.join(timeout=10)
        self.assertEqual(result, {"model": "resnet101"})
        self.assertEqual(sidecar.proc.wait(timeout=10), 0, sidecar.output())
        self.assertIn("event=draining", sidecar.output())

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
