"""filters.cgroups and the cgroup of every record, on real cgroups: Python TLS clients, each moved
into its own cgroup (under a test-owned parent below the cgroup2 mount) before it makes any
traffic, request pages of a real nginx; the CLIENT side is captured (python's libssl), so the
client's cgroup decides what is recorded."""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator import cgroups

PYTHON = "/usr/bin/python3.11"
LIBSSL = "/lib/x86_64-linux-gnu/libssl.so.3"
DOCKER_ID = secrets.token_hex(32)

# Moves itself into the cgroup whose cgroup.procs is argv[1] first, then requests
# /echo/<tag>/<i> over TLS (a new connection each time) until argv[4] exists or 120 s passed.
CLIENT = r"""
import os, socket, ssl, sys, time
procs, port, tag, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(procs, "w") as f:
    f.write(str(os.getpid()))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
print("ready", flush=True)
deadline, i = time.monotonic() + 120, 0
while not os.path.exists(stop) and time.monotonic() < deadline:
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as s:
        s.sendall(b"GET /echo/%s/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (tag.encode(), i))
        while s.recv(65536):
            pass
    i += 1
    time.sleep(0.05)
"""


def profile(paths: list[str]) -> str:
    return f"""apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: cg}}
spec:
  targets:
    - name: clients
      kind: openssl
      binary: {PYTHON}
      library: {LIBSSL}
      filters:
        cgroups: [{', '.join(f'"{p}"' for p in paths)}]
  parsers: [http1]
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
"""


@pytest.fixture
def parent():
    """A test-owned cgroup with children a, b and a docker-like scope; (its path relative to the
    mount, the mount). Removed after (its clients are gone by then)."""
    mount = cgroups.mount()
    if mount is None:
        pytest.fail("no cgroup2 file system is mounted")
    rel = f"/ecap-test-{os.getpid()}-{secrets.token_hex(3)}"
    made = [rel, f"{rel}/a", f"{rel}/b", f"{rel}/docker-{DOCKER_ID}.scope"]
    for r in made:
        os.mkdir(mount + r)
    try:
        yield rel, mount
    finally:
        for r in reversed(made):
            for _ in range(50):     # a client that just exited may still be listed for a moment
                try:
                    os.rmdir(mount + r)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


class Clients:
    def __init__(self, tmp_path: Path, port: int, mount: str):
        self.tmp, self.port, self.mount = tmp_path, port, mount
        self.stop = tmp_path / "stop-clients"
        self.procs: list[subprocess.Popen] = []
        (tmp_path / "client.py").write_text(CLIENT)

    def start(self, cgroup: str, tag: str) -> None:
        p = subprocess.Popen([PYTHON, str(self.tmp / "client.py"), f"{self.mount}{cgroup}/cgroup.procs",
                              str(self.port), tag, str(self.stop)], stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"

    def close(self) -> None:
        self.stop.touch()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def requests(cap, tag: str) -> list[dict]:
    return [r for r in cap.records("http.request") if r["path"].startswith(f"/echo/{tag}/")]


def test_only_the_selected_cgroup_is_captured_and_an_edit_switches_it(apply_profile, nginx_server, parent,
                                                                       tmp_path):
    rel, mount = parent
    a, b, docker = f"{rel}/a", f"{rel}/b", f"{rel}/docker-{DOCKER_ID}.scope"
    clients = Clients(tmp_path, nginx_server.port, mount)
    try:
        for cgroup, tag in ((a, "a"), (b, "b"), (docker, "d")):
            clients.start(cgroup, tag)
        with apply_profile(profile([a])) as cap:
            assert cap.wait_for(lambda rs: len(requests(cap, "a")) >= 5, timeout=30), cap.stderr
            # b and the scope make as much traffic meanwhile: none of it is recorded
            time.sleep(1.0)
            assert requests(cap, "b") == [] and requests(cap, "d") == []
            got_a = requests(cap, "a")
            assert {r["cgroup"] for r in got_a} == {a}
            assert all("container_id" not in r for r in got_a)
            assert {r["cgroup"] for r in cap.records()} == {a}          # responses too

            # a live edit: b and the docker-like scope instead of a (a filter map switch, no compile)
            edited = time.monotonic()
            (tmp_path / "profile.yaml").write_text(profile([b, docker]).replace("{jsonl}", str(cap.jsonl)))
            assert cap.wait_for(lambda rs: requests(cap, "b") and requests(cap, "d"), timeout=15), cap.stderr
            switched_s = time.monotonic() - edited
            assert "reloaded cg" in cap.stderr and "express" in cap.stderr, cap.stderr
            time.sleep(1.0)      # a call a entered before the switch may still complete
            settled = len(requests(cap, "a"))
            time.sleep(1.5)
            assert len(requests(cap, "a")) == settled, "records of a kept coming after the switch"
            assert {r["cgroup"] for r in requests(cap, "b")} == {b}
            got_d = requests(cap, "d")
            assert {r["cgroup"] for r in got_d} == {docker}
            assert {r.get("container_id") for r in got_d} == {DOCKER_ID}
            assert all("container_id" not in r for r in requests(cap, "b"))
            print(f"cgroup filter switched in {switched_s:.2f} s (edit to the first records seen)")
    finally:
        clients.close()


def test_a_cgroup_made_after_apply_starts_matching(apply_profile, nginx_server, parent, tmp_path):
    """A path that does not exist yet is a warning and a filter that matches nothing, until it exists."""
    rel, mount = parent
    later = f"{rel}/later"
    clients = Clients(tmp_path, nginx_server.port, mount)
    try:
        clients.start(f"{rel}/a", "a")
        with apply_profile(profile([later])) as cap:
            assert cap.wait_for(lambda _: f"filters.cgroups[0]: no cgroup {later}" in cap.stderr, 10), cap.stderr
            line = next(ln for ln in cap.stderr.splitlines() if "filters.cgroups[0]" in ln)
            assert "profile.yaml:11:" in line, line        # file:line of the path in the profile
            time.sleep(1.0)
            assert cap.records() == []
            os.mkdir(mount + later)
            try:
                clients.start(later, "l")
                assert cap.wait_for(lambda rs: requests(cap, "l"), timeout=15), cap.stderr
                assert requests(cap, "a") == []
                assert {r["cgroup"] for r in cap.records()} == {later}
            finally:
                clients.stop.touch()
                for p in clients.procs:
                    p.wait(10)
                for _ in range(50):
                    try:
                        os.rmdir(mount + later)
                        break
                    except OSError:
                        time.sleep(0.1)
    finally:
        clients.close()
