"""The container image and the Kubernetes manifests, built and run for real.

ContainerImage builds docker/Dockerfile unchanged with Docker when it answers, else with Podman
(run as root with runc and cgroupfs, and a containers.conf of this test's own, as these machines
need), on debian:bookworm and debian:bookworm-slim made locally with mmdebstrap when no registry
has them; runs the image beside the fake upstream and checks what a user relies on. Exit code 77
(ctest: skipped) only when neither engine is installed at all.

KubernetesManifests renders docker/kubernetes with `kubectl kustomize` and checks the sidecar
container's resources, probes and security context.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest
import urllib.request

from e2e_support import SOURCE_DIR, SidecarTestCase, grpc, infer_request, poll, rpc

IMAGE = "localhost/carbon-sidecar:e2e"
ADMIN_PORT = 9464  # the image's HEALTHCHECK asks this port; the test runs serially in ctest
SKIPPED = 77

# What debuerreotype leaves out of Docker's official -slim images.
SLIM_DPKG_OPTIONS = [
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*", "path-exclude=/usr/share/linda/*",
]


def engine():
    """The command that runs the container engine, or None when there is none."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return ["docker"]
    if shutil.which("podman"):
        # No systemd here to manage cgroups, and the default ulimits ask for more than a container
        # in a container may set: a containers.conf of our own, never /etc's.
        conf = os.path.join(tempfile.gettempdir(), "carbon-sidecar-containers.conf")
        with open(conf, "w") as f:
            f.write("[containers]\ndefault_ulimits = []\n")
        os.environ["CONTAINERS_CONF"] = conf
        return ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
    return None


def run(args, timeout=120, check=True):
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except OSError:
        return None, ""


def ensure_base_image(cmd, name, slim):
    """debian:bookworm(-slim) in the engine's store, made with mmdebstrap from the machine's own
    Debian mirror when it is not there yet (kept for later runs)."""
    if run(cmd + ["image", "inspect", name], check=False).returncode == 0:
        return
    sources = "/etc/apt/sources.list.d/debian.sources"
    mirror = [sources] if os.path.exists(sources) else []
    with tempfile.TemporaryDirectory() as tmp:
        tar = os.path.join(tmp, "rootfs.tar")
        options = [f"--dpkgopt={o}" for o in SLIM_DPKG_OPTIONS] if slim else []
        run(["mmdebstrap", "--variant=minbase", "--quiet", *options, "bookworm", tar, *mirror], timeout=900)
        run(cmd + ["import", "--change", 'CMD ["bash"]', tar, name], timeout=300)


class ContainerImage(SidecarTestCase):
    def test_the_image_builds_runs_serves_and_drains(self):
        cmd = engine()
        ensure_base_image(cmd, "docker.io/library/debian:bookworm", slim=False)
        ensure_base_image(cmd, "docker.io/library/debian:bookworm-slim", slim=True)

        # The build, as the README gives it; --format docker keeps the HEALTHCHECK (Podman).
        build = cmd + ["build", "--network", "host", "-f", "docker/Dockerfile", "-t", IMAGE, "."]
        if cmd[0] == "podman":
            build[len(cmd) + 1:len(cmd) + 1] = ["--format", "docker"]
        # The build stage's image (about 1 GB) is left untagged; the next build has other sources.
        self.addCleanup(run, cmd + ["image", "prune", "-f"], check=False)
        built = subprocess.run(build, cwd=SOURCE_DIR, capture_output=True, text=True, timeout=1800)
        self.assertEqual(built.returncode, 0, built.stdout[-4000:] + built.stderr[-4000:])
        size = int(run(cmd + ["image", "inspect", "--format", "{{.Size}}", IMAGE]).stdout.strip())
        print(f"image {IMAGE}: {size / 1e6:.0f} MB", file=sys.stderr)

        # Beside the fake upstream, on the host's network, with a config of the test's own.
        upstream_port = self.start_upstream()
        listen_port = free_port()
        config_dir = tempfile.mkdtemp(dir=self.dir)
        os.chmod(config_dir, 0o755)
        with open(os.path.join(config_dir, "sidecar.yaml"), "w") as f:
            f.write(f"""listen: 127.0.0.1:{listen_port}
admin: {{ listen: "127.0.0.1:{ADMIN_PORT}" }}
upstream: {{ target: "127.0.0.1:{upstream_port}" }}
drain_timeout: 10s
intensity: {{ provider: static, gco2_per_kwh: 200, window_bounds: {{ low: 100, high: 300 }} }}
routes:
  - {{ name: resnet, pool: /etc/carbon-sidecar/pools/resnet-v100.yaml, baseline: resnet50, default: resnet50 }}
""")
        os.chmod(os.path.join(config_dir, "sidecar.yaml"), 0o644)
        name = f"carbon-sidecar-e2e-{os.getpid()}"
        # The packaged pools stay where the image has them; only the config file is mounted.
        run(cmd + ["run", "-d", "--name", name, "--network", "host", "--read-only",
                   "-v", f"{config_dir}/sidecar.yaml:/etc/carbon-sidecar/sidecar.yaml:ro", IMAGE])
        self.addCleanup(run, cmd + ["rm", "-f", name], check=False)
        logs = lambda: run(cmd + ["logs", name], check=False).stderr  # noqa: E731

        self.assertTrue(poll(lambda: http_get("/healthz")[0] == 200, timeout=30), logs())
        self.assertTrue(poll(lambda: http_get("/readyz")[0] == 200, timeout=30), logs())
        # The image's own HEALTHCHECK: run now rather than waiting for its interval.
        self.assertEqual(run(cmd + ["healthcheck", "run", name], check=False).returncode
                         if cmd[0] == "podman" else 0, 0, logs())
        health = "{{.State.Health.Status}}"
        self.assertTrue(poll(lambda: run(cmd + ["inspect", "--format", health, name]).stdout.strip() == "healthy",
                             timeout=60), run(cmd + ["inspect", name]).stdout[-2000:])

        # A routed call with the stock client, tagged with the model that served it.
        stub = rpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{listen_port}"))
        response, call = stub.ModelInfer.with_call(infer_request("resnet"), timeout=10)
        self.assertEqual(response.model_name, "resnet101")
        self.assertIn(("x-carbon-model", "resnet101"), call.initial_metadata())

        # Not root, in the image's metadata and in fact.
        self.assertEqual(run(cmd + ["inspect", "--format", "{{.Config.User}}", name]).stdout.strip(), "10001:10001")
        self.assertEqual(run(cmd + ["exec", name, "id", "-u"]).stdout.strip(), "10001")

        # SIGTERM drains and exits 0.
        run(cmd + ["kill", "--signal", "TERM", name])
        self.assertEqual(run(cmd + ["wait", name], timeout=60).stdout.strip(), "0", logs())
        self.assertIn("event=draining", logs())
        self.assertIn("event=stopped", logs())


class KubernetesManifests(unittest.TestCase):
    def test_the_kustomize_base_renders_a_hardened_sidecar(self):
        import yaml

        rendered = run(["kubectl", "kustomize", os.path.join(SOURCE_DIR, "docker/kubernetes")])
        docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        kinds = sorted(d["kind"] for d in docs)
        self.assertEqual(kinds, ["ConfigMap", "Deployment", "Secret", "Service", "ServiceMonitor"])
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        (sidecar,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "carbon-sidecar"]

        resources = sidecar["resources"]
        self.assertIn("cpu", resources["requests"])
        self.assertIn("memory", resources["requests"])
        self.assertIn("memory", resources["limits"])
        self.assertEqual(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz")
        security = sidecar["securityContext"]
        self.assertTrue(security["readOnlyRootFilesystem"])
        self.assertTrue(security["runAsNonRoot"])
        self.assertEqual(security["runAsUser"], 10001)
        self.assertFalse(security["allowPrivilegeEscalation"])
        self.assertEqual(security["capabilities"]["drop"], ["ALL"])

        # The config the ConfigMap carries loads, with the pool beside it, as the pod mounts them.
        (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
        with tempfile.TemporaryDirectory() as mounted:
            for key, text in config_map["data"].items():
                with open(os.path.join(mounted, key), "w") as f:
                    f.write(text)
            env = dict(os.environ, ELECTRICITY_MAPS_TOKEN="dummy")
            check = subprocess.run([os.environ["CARBON_SIDECAR"], "--config", os.path.join(mounted, "sidecar.yaml"),
                                    "--check_config"], capture_output=True, text=True, timeout=30, env=env)
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        # The pool is the project's, not a copy that drifted.
        with open(os.path.join(SOURCE_DIR, "config/pools/resnet-v100.yaml")) as f:
            self.assertEqual(config_map["data"]["resnet-v100.yaml"], f.read())


if __name__ == "__main__":
    if "ContainerImage" in " ".join(sys.argv) and engine() is None:
        print("skipped: no container engine (neither docker nor podman is installed)")
        sys.exit(SKIPPED)
    unittest.main()
