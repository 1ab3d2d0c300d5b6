"""The Debian package end to end: build it with cpack, install it with apt-get, run the installed
binary with the installed pools against the fake upstream and route a request, then purge it.
Needs root (or password-less sudo), as installing a package does; CI runs as root."""
import glob
import os
import shutil
import subprocess
import unittest

from e2e_support import SidecarTestCase, infer_request

BUILD_DIR = os.environ["CARBON_BUILD_DIR"]


def as_root(args):
    return args if os.geteuid() == 0 else ["sudo", "-n"] + args


class DebianPackage(SidecarTestCase):
    def test_install_run_and_purge(self):
        for old in glob.glob(os.path.join(BUILD_DIR, "carbon-sidecar_*.deb")):
            os.remove(old)
        cpack = subprocess.run(["cpack", "-G", "DEB"], cwd=BUILD_DIR, capture_output=True, text=True, timeout=300)
        self.assertEqual(cpack.returncode, 0, cpack.stdout + cpack.stderr)
        (deb,) = glob.glob(os.path.join(BUILD_DIR, "carbon-sidecar_*.deb"))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = subprocess.run(as_root(["apt-get", "install", "-y", "-q", "--no-install-recommends", deb]),
                                 capture_output=True, text=True, timeout=300, env=env)
        self.addCleanup(subprocess.run, as_root(["apt-get", "remove", "--purge", "-y", "-q", "carbon-sidecar"]),
                        capture_output=True, timeout=300, env=env)
        self.assertEqual(install.returncode, 0, install.stdout + install.stderr)

        for path in ("/usr/bin/carbon-sidecar", "/etc/carbon-sidecar/sidecar.yaml",
                     "/etc/carbon-sidecar/pools/resnet-v100.yaml", "/lib/systemd/system/carbon-sidecar.service"):
            self.assertTrue(os.path.exists(path), path)
        subprocess.run(["getent", "passwd", "carbon-sidecar"], check=True, capture_output=True)
        check = subprocess.run(["/usr/bin/carbon-sidecar", "--config", "/etc/carbon-sidecar/sidecar.yaml",
                                "--check_config"], capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stderr)

        # The installed binary with the installed pool, in front of the fake upstream.
        port = self.start_upstream()
        config = os.path.join(self.dir, "installed.yaml")
        with open(config, "w") as f:
            f.write(f"""listen: 127.0.0.1:0
admin: {{ listen: "127.0.0.1:0" }}
upstream: {{ target: "127.0.0.1:{port}" }}
intensity: {{ provider: static, gco2_per_kwh: 200, window_bounds: {{ low: 100, high: 300 }} }}
routes:
  - {{ name: resnet, pool: /etc/carbon-sidecar/pools/resnet-v100.yaml, baseline: resnet50, default: resnet50 }}
""")
        _, stub = self.start_sidecar(config, binary="/usr/bin/carbon-sidecar")
        response = stub.ModelInfer(infer_request("resnet"), timeout=10)
        self.assertEqual(response.model_name, "resnet101")
        for p in self.processes:
            p.stop()

        purge = subprocess.run(as_root(["apt-get", "remove", "--purge", "-y", "-q", "carbon-sidecar"]),
                               capture_output=True, text=True, timeout=300, env=env)
        self.assertEqual(purge.returncode, 0, purge.stdout + purge.stderr)
        self.assertFalse(os.path.exists("/usr/bin/carbon-sidecar"))
        self.assertFalse(os.path.exists("/etc/carbon-sidecar"))
        self.assertNotEqual(subprocess.run(["getent", "passwd", "carbon-sidecar"], capture_output=True).returncode, 0)
        self.assertIsNone(shutil.which("carbon-sidecar", path="/usr/bin"))


if __name__ == "__main__":
    unittest.main()
