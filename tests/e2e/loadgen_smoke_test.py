"""bench-smoke: the load generator (bench/loadgen) through the built sidecar, unary closed loop, open
loop and ModelStreamInfer streams, for a second each (hundreds of requests; fewer under sanitizers).
Every request must be reported, all without error and served by the variant the sidecar chose.
Correctness only: no timing is judged.

Run by ctest with CARBON_LOADGEN set besides what e2e_support needs.
"""
import json
import os
import subprocess
import unittest

from e2e_support import SidecarTestCase

LOADGEN = os.environ["CARBON_LOADGEN"]


class LoadgenSmoke(SidecarTestCase):
    def loadgen(self, port, *extra):
        run = subprocess.run([LOADGEN, "--target", f"127.0.0.1:{port}", "--model", "resnet", "--warmup", "0s",
                              "--duration", "1s", "--timeout", "5s", *extra],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        return json.loads(run.stdout)

    def test_every_request_is_reported_without_error(self):
        upstream = self.start_upstream()
        sidecar, _ = self.start_sidecar(self.write_config(upstream, self.static(200)))
        port = int(sidecar.find(r"event=listening .* port=(\d+)").group(1))
        for mode, extra in (("closed", ["--concurrency", "4"]),
                            ("open", ["--rate", "300"]),
                            ("stream", ["--stream", "--concurrency", "4", "--payload_bytes", "602112"])):
            with self.subTest(mode=mode):
                report = self.loadgen(port, *extra)
                self.assertEqual(report["mode"], mode)
                # Open loop sends 300 whatever the speed; closed loops get what the machine (or a
                # sanitizer build) manages, which is never judged beyond "some".
                self.assertGreaterEqual(report["requests"], 290 if mode == "open" else 50, report)
                self.assertEqual(report["ok"], report["requests"], report)
                self.assertEqual(report["errors"], {}, report)
                self.assertEqual(report["models"], {"resnet101": report["ok"]}, report)


if __name__ == "__main__":
    unittest.main()
