"""`make demo`: a local nginx serving HTTPS on loopback, `ecapture apply profiles/nginx-tls.yaml`, and curl traffic.

The terminal shows each HTTP request and response nginx handled, in plaintext, with
pid, comm and the connection's addresses. Then the profile is edited twice while capture
runs (a comm filter that matches nothing, then one that matches nginx): each edit is applied
live, as map writes in the running program (no compile), and the requests show (or not)
accordingly.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support import nginx  # noqa: E402

PROFILE = os.path.join(ROOT, "profiles", "nginx-tls.yaml")
ECAPTURE = os.path.join(ROOT, ".venv", "bin", "ecapture")


def web_status() -> dict:
    out = subprocess.run([ECAPTURE, "status", "--json"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        return {}
    return next((t for p in json.loads(out.stdout)["profiles"] for t in p["targets"] if t["name"] == "web"), {})


def wait_for(pred, timeout=30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def edit(profile: str, comm: str) -> bool:
    """Give the running profile a comm filter; True once `ecapture status` shows it in force."""
    with open(PROFILE) as f:
        text = f.read()
    text = text.replace("      max_bytes: 16384\n", f"      max_bytes: 16384\n      filters: {{comm: [{comm}]}}\n")
    with open(profile, "w") as f:
        f.write(text)
    return wait_for(lambda: web_status().get("filters_in_force", {}).get("comm") == [comm])


def main() -> int:
    with nginx.NginxServer(workers=1) as server, tempfile.TemporaryDirectory() as tmp:
        print(f"demo: nginx (pid {server.master_pid}) serves {server.url}", flush=True)
        ready = os.path.join(tmp, "ready")
        profile = os.path.join(tmp, "nginx-tls.yaml")    # a copy, edited live below
        shutil.copy(PROFILE, profile)
        ecap = subprocess.Popen([ECAPTURE, "apply", profile, "--ready-file", ready])
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
        print("\ndemo: editing the profile while it runs: filters: {comm: [nobody]}", flush=True)
        ok = edit(profile, "nobody")
        nginx.curl(server.url + "/not-captured")
        time.sleep(0.5)
        print("demo: (a request to /not-captured was just served, and filtered out)", flush=True)
        print("demo: editing the profile again: filters: {comm: [nginx]}\n", flush=True)
        ok = ok and edit(profile, "nginx")
        nginx.curl(server.url + "/captured-again")
        time.sleep(1.0)
        ecap.send_signal(signal.SIGINT)
        rc = ecap.wait(timeout=30)
        if not ok:
            print("demo: a live edit was not applied in time", file=sys.stderr)
            return rc or 1
        return rc


if __name__ == "__main__":
    sys.exit(main())
