"""Helpers shared by the end-to-end tests: child processes whose output is collected, polling, the
generated inference stubs, and a sidecar + fake upstream pair on loopback ports of their own.

Configured by the environment ctest sets: CARBON_SIDECAR, CARBON_FAKE_UPSTREAM (binaries),
CARBON_STUBS (generated Python stubs) and CARBON_SOURCE_DIR.
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
# The data plane the sidecar runs on (grpc unless the test is registered for h2 too).
DATA_PLANE = os.environ.get("CARBON_DATA_PLANE", "grpc")

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

    def __init__(self, args):
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


def peak_resident_kib(pid):
    """VmHWM of a process: the most it has held resident."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def infer_request(model, payload=b"\x01" * 1024, batch=1):
    req = pb.ModelInferRequest(model_name=model, id="e2e")
    tensor = req.inputs.add()
    tensor.name = "input"
    tensor.datatype = "FP32"
    tensor.shape.extend([batch, 3, 224, 224])
    req.raw_input_contents.append(payload)
    return req


class SidecarTestCase(unittest.TestCase):
    """Starts processes in a temporary directory holding the ResNet pool; stops them afterwards."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="carbon-e2e-")
        self.processes = []
        with open(os.path.join(self.dir, "pool.yaml"), "w") as f:
            f.write(POOL)

    def tearDown(self):
        for p in self.processes:
            p.stop()

    def start_upstream(self, *extra):
        upstream = Process([FAKE_UPSTREAM, "--listen", "127.0.0.1:0", "--announce_requests", *extra])
        self.processes.append(upstream)
        self.upstream = upstream  # the last one started; its output says what it received
        match = poll(lambda: upstream.find(r"listening on port (\d+)"))
        self.assertIsNotNone(match, upstream.output())
        return int(match.group(1))

    def upstream_received(self, method):
        """How many `method` requests the last upstream started has received so far."""
        return self.upstream.output().count(f"received {method} ")

    def write_config(self, upstream_port, intensity_block, drain="10s", extra=""):
        path = os.path.join(self.dir, "sidecar.yaml")
        with open(path, "w") as f:
            f.write(f"""listen: 127.0.0.1:0
data_plane: {DATA_PLANE}
admin: {{ listen: "127.0.0.1:0" }}
upstream: {{ target: "127.0.0.1:{upstream_port}" }}
drain_timeout: {drain}
{extra}
intensity:
{intensity_block}
routes:
  - name: resnet
    pool: pool.yaml
    baseline: resnet50
    default: resnet50
    batch_dimension: true
""")
        return path

    @staticmethod
    def static(intensity):
        return f"""  provider: static
  gco2_per_kwh: {intensity}
  refresh: 1h
  window_bounds: {{ low: 100, high: 300 }}"""

    def start_sidecar(self, config, binary=SIDECAR, log_level="info"):
        sidecar = Process([binary, "--config", config, "--log_level", log_level])
        self.processes.append(sidecar)
        match = poll(lambda: sidecar.find(r"event=listening .* port=(\d+) admin_port=(\d+)"))
        self.assertIsNotNone(match, sidecar.output())
        sidecar.admin_port = int(match.group(2))
        channel = grpc.insecure_channel(f"127.0.0.1:{match.group(1)}")
        return sidecar, rpc.GRPCInferenceServiceStub(channel)

    def served(self, stub, **kwargs):
        response, call = stub.ModelInfer.with_call(infer_request("resnet"), timeout=10, **kwargs)
        return response.model_name, dict(call.initial_metadata())
