"""`make demo`: a local nginx serving HTTPS on loopback, `ecapture apply profiles/nginx-tls.yaml`, and curl traffic.

The terminal shows each HTTP request and response nginx handled, in plaintext, with
pid, comm and the connection's addresses.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support import nginx  # noqa: E402

PROFILE = os.path.join(ROOT, "profiles", "nginx-tls.yaml")


def main() -> int:
    with nginx.NginxServer(workers=1) as server, tempfile.TemporaryDirectory() as tmp:
        print(f"demo: nginx (pid {server.master_pid}) serves {server.url}", flush=True)
        ready = os.path.join(tmp, "ready")
        ecap = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "ecapture"), "apply", PROFILE,
                                 "--ready-file", ready])
        deadline = time.time() + 60
        while not os.path.exists(ready):
            if ecap.poll() is not None or time.time() > deadline:
                print("demo: ecapture apply did not start", file=sys.stderr)
                ecap.kill()
                return 1
            time.sleep(0.1)
        print("demo: capture is running; sending requests with curl\n", flush=True)
        nginx.curl(server.url + "/")
        nginx.curl(server.url + "/post", "-d", "user=demo&action=login")
        nginx.curl(server.url + "/echo?keep=alive", server.url + "/static/hello.txt")
        time.sleep(1.0)
        ecap.send_signal(signal.SIGINT)
        return ecap.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
