"""NSS/NSPR: tstclnt against the test nginx (client side) and selfserv serving curl (server side).

PR_Read/PR_Write are NSPR's I/O for every file and socket: only TLS file descriptors (with
SSL_ImportFD's layer) are captured. tstclnt reads its request from a file with PR_Read: that
read must not show up.
"""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from tests.kernel.test_reload import _wait_for
from tests.support import listen
from tests.support.nginx import curl, free_port

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: nss}}
spec:
  targets:
    - name: nss
      kind: {kind}
      binary: {binary}{extra}
  parsers: [http1]
  sinks:
    - {{type: jsonl, path: "{jsonl}"}}
"""


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.mark.parametrize("kind", ["nss", "tls"])
def test_tstclnt_request_to_nginx(apply_profile, nginx_server, tmp_path, kind):
    request = tmp_path / "request.txt"
    request.write_bytes(b"GET /nss-path HTTP/1.0\r\nHost: x\r\n\r\n")
    with apply_profile(PROFILE.format(kind=kind, binary="/usr/bin/tstclnt", extra="", jsonl="{jsonl}")) as cap:
        run = subprocess.run(["tstclnt", "-D", "-o", "-4", "-h", "127.0.0.1", "-p", str(nginx_server.port),
                              "-A", str(request)], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert run.returncode == 0 and b"hello from ecapture demo" in run.stdout, run.stderr
        assert cap.wait_for(lambda rs: any(r["type"] == "http.response" for r in rs), 20), cap.stderr
        time.sleep(0.3)
    records = [r for r in cap.records() if r["type"] != "loss"]
    assert [(r["type"], r["direction"]) for r in records] == [("http.request", "write"), ("http.response", "read")], \
        records          # the PR_Read of request.txt is not TLS: not captured
    req, resp = records
    assert req["path"] == "/nss-path" and resp["status"] == 200 and resp["body"] == "hello from ecapture demo\n"
    for r in records:
        assert r["comm"] == "tstclnt" and r["tls"] == "nss"
        assert _port(r["conn"]["remote"]) == nginx_server.port and _port(r["conn"]["local"]) != 0
    assert cap.records("loss") == []


@pytest.fixture(scope="module")
def nss_server_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("nssdb")
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True)
    noise = db / "noise"
    noise.write_bytes(bytes(range(64)))
    subprocess.run(["certutil", "-S", "-n", "server", "-s", "CN=localhost", "-x", "-t", "CT,,", "-d", f"sql:{db}",
                    "-z", str(noise), "-k", "rsa", "-g", "2048", "--extSAN", "dns:localhost,ip:127.0.0.1"],
                   check=True, capture_output=True)
    return db


def _selfserv(db, port: int) -> subprocess.Popen:
    return listen.start_server(["selfserv", "-d", f"sql:{db}", "-n", "server", "-p", str(port)], port)


def test_selfserv_serving_curl_and_a_filter_edit_under_load(apply_profile, nss_server_db, tmp_path):
    """selfserv answers with an HTTP/1.0 page that echoes the request (its headers with PR_Write,
    the rest gathered with PR_Writev): compared as raw data, per connection."""
    port = free_port()
    count = 60
    path = tmp_path / "profile.yaml"
    profile = PROFILE.replace("parsers: [http1]", "parsers: []")
    with apply_profile(profile.format(kind="nss", binary="/usr/bin/selfserv", extra="", jsonl="{jsonl}")) as cap:
        server = _selfserv(nss_server_db, port)
        failures = []

        def load():
            for i in range(count):
                if curl(f"https://127.0.0.1:{port}/selfserv/{i}").returncode != 0:
                    failures.append(i)

        try:
            t = threading.Thread(target=load)
            t.start()
            time.sleep(0.3)
            path.write_text(profile.format(kind="nss", binary="/usr/bin/selfserv",
                                           extra="\n      filters: {comm: [selfserv, other-1]}", jsonl=cap.jsonl))
            assert _wait_for(lambda: "reloaded nss" in cap.stderr, 20), cap.stderr
            t.join(120)
            assert failures == []
            assert cap.wait_for(lambda rs: sum("EOF" in r.get("data", "") for r in rs) >= count, 20), cap.stderr
        finally:
            server.kill()
    assert "express lane, no compile" in cap.stderr, cap.stderr
    conns: dict = {}
    for r in cap.records("data"):
        assert r["comm"] == "selfserv" and r["tls"] == "nss" and _port(r["conn"]["local"]) == port
        conns.setdefault(r["conn"]["remote"], {"read": "", "write": ""})[r["direction"]] += r["data"]
    assert len(conns) == count
    for i, c in enumerate(conns.values()):         # first seen first: the order curl ran them
        assert c["read"].startswith(f"GET /selfserv/{i} HTTP/1.1\r\n"), c
        assert c["write"].startswith("HTTP/1.0 200 OK\r\n") and c["read"] in c["write"], c
        assert c["write"].endswith("EOF\r\n\r\n\r\n"), c
    assert cap.records("loss") == []
