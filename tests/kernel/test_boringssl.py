"""BoringSSL (Debian's android-libboringssl, loaded through bssl-tool's RUNPATH): bssl-tool's
server answering curl and bssl-tool's client, both sides, with kind boringssl and kind tls.
`bssl-tool server -www` reads only the first 4 bytes ("GET ") before it answers: the records are
compared as the exact bytes each side read and wrote."""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.kernel.conftest import ECAPTURE
from tests.support import listen
from tests.support.nginx import curl, free_port

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: bssl}}
spec:
  targets:
    - name: bssl
      kind: {kind}
      binary: /usr/bin/bssl-tool
  parsers: []
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
"""


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.mark.parametrize("kind", ["boringssl", "tls"])
def test_bssl_server_and_client(apply_profile, kind):
    port = free_port()
    with apply_profile(PROFILE.format(kind=kind)) as cap:
        assert "android/libssl.so.0" in subprocess.run(
            [ECAPTURE, "plan", str(cap.jsonl.parent / "profile.yaml")], capture_output=True, text=True).stdout
        server = listen.start_server(["bssl-tool", "server", "-accept", str(port), "-www", "-loop"], port)
        try:
            assert curl(f"https://127.0.0.1:{port}/from-curl").returncode == 0
            client = subprocess.Popen(["bssl-tool", "client", "-connect", f"127.0.0.1:{port}"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            client.stdin.write(b"GET /from-bssl HTTP/1.0\r\nHost: x\r\n\r\n")
            client.stdin.flush()
            assert cap.wait_for(lambda rs: sum(r["direction"] == "read" and r["data"].startswith("HTTP/1.0 200")
                                               for r in rs if r["type"] == "data") >= 1, 20), cap.stderr
            time.sleep(0.3)
            client.kill()
        finally:
            server.kill()
    conns: dict = {}
    for r in cap.records("data"):
        assert r["tls"] == "boringssl" and r["comm"] == "bssl-tool"
        side = "server" if r["pid"] == server.pid else "client"
        ends = (r["conn"]["local"], r["conn"]["remote"]) if side == "server" else (r["conn"]["remote"], r["conn"]["local"])
        assert _port(ends[0]) == port and _port(ends[1]) not in (0, port), r
        c = conns.setdefault((side, ends[1]), {"read": "", "write": ""})
        c[r["direction"]] += r["data"]
    servers = [c for (side, _), c in conns.items() if side == "server"]
    (client_side,) = [c for (side, _), c in conns.items() if side == "client"]
    assert len(servers) == 2 and all(c["read"] == "GET " for c in servers)       # curl's and bssl-tool's
    assert all(c["write"].startswith("HTTP/1.0 200 OK\r\nContent-Type: text/plain") for c in servers)
    assert client_side["write"] == "GET /from-bssl HTTP/1.0\r\nHost: x\r\n\r\n"
    assert client_side["read"].startswith("HTTP/1.0 200 OK\r\n")
    assert cap.records("loss") == []


def test_a_filter_edit_under_a_stream_of_writes_loses_nothing(apply_profile, tmp_path):
    from tests.kernel.test_reload import _wait_for
    port = free_port()
    count = 300
    with apply_profile(PROFILE.format(kind="boringssl")) as cap:
        server = listen.start_server(["bssl-tool", "server", "-accept", str(port), "-loop"], port,
                                     stdin=subprocess.PIPE)
        try:
            client = subprocess.Popen(["bssl-tool", "client", "-connect", f"127.0.0.1:{port}"],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(count):
                client.stdin.write(f"bssl-{i:05d}\n".encode())
                client.stdin.flush()
                time.sleep(0.005)
                if i == count // 2:
                    (tmp_path / "profile.yaml").write_text(PROFILE.format(kind="boringssl").replace(
                        "binary: /usr/bin/bssl-tool", "binary: /usr/bin/bssl-tool\n      filters: {comm: [bssl-tool, x-1]}")
                        .replace("{jsonl}", str(cap.jsonl)))
            assert _wait_for(lambda: "reloaded bssl" in cap.stderr, 20), cap.stderr
            expected = "".join(f"bssl-{i:05d}\n" for i in range(count))
            assert cap.wait_for(lambda rs: "".join(r["data"] for r in rs if r["type"] == "data"
                                                   and r["pid"] == server.pid) == expected, 20), cap.stderr
            client.kill()
        finally:
            server.kill()
    assert "express lane, no compile" in cap.stderr
    data = cap.records("data")
    assert "".join(r["data"] for r in data if r["pid"] == client.pid and r["direction"] == "write") == expected
    assert "".join(r["data"] for r in data if r["pid"] == server.pid and r["direction"] == "read") == expected
    assert cap.records("loss") == []
