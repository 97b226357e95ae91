"""GnuTLS: wget against the test nginx, and gnutls-cli talking to gnutls-serv, both sides.

Each asserts the exact plaintext, direction, pid/comm, the `tls` field and the 4-tuple, and a
comm-filter edit under a steady stream of writes loses and duplicates nothing.
"""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.kernel.test_reload import _wait_for
from tests.support import listen
from tests.support.nginx import free_port

WGET_PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: gnutls-wget}
spec:
  targets:
    - name: wget
      kind: gnutls
      binary: /usr/bin/wget
  parsers: [http1]
  sinks:
    - {type: jsonl, path: "{jsonl}"}
"""

PAIR_PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: gnutls-pair}}
spec:
  targets:
    - name: cli
      kind: gnutls
      binary: /usr/bin/gnutls-cli
      filters: {{comm: [{comm}]}}
    - name: serv
      kind: gnutls
      binary: /usr/bin/gnutls-serv
  parsers: []
  sinks:
    - {{type: jsonl, path: "{jsonl}"}}
"""


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_wget_requests_through_gnutls(apply_profile, nginx_server):
    paths = ["/gnutls/one", "/gnutls/two"]
    with apply_profile(WGET_PROFILE) as cap:
        procs = []
        for p in paths:
            run = subprocess.run(["wget", "-q", "-O", "-", "--no-check-certificate", "--no-proxy",
                                  nginx_server.url + p], capture_output=True, text=True, timeout=30)
            assert run.returncode in (0, 8), run.stderr        # 8: the server answered 404
            procs.append(run)
        assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 2, 20), cap.stderr
    reqs, resps = cap.records("http.request"), cap.records("http.response")
    assert [r["path"] for r in reqs] == paths
    for r in reqs + resps:
        assert r["comm"] == "wget" and r["tls"] == "gnutls" and r["target"] == "wget"
        assert _port(r["conn"]["remote"]) == nginx_server.port          # the client side of the connection
        assert r["conn"]["local"].startswith("127.0.0.1:")
        assert r["direction"] == ("write" if r["type"] == "http.request" else "read")
    assert all(r["headers"].get("User-Agent", "").startswith("Wget/") for r in reqs)
    assert [r["request"]["path"] for r in resps] == paths
    assert len({r["conn"]["local"] for r in reqs}) == 2               # one connection per wget process
    assert cap.records("loss") == []


@pytest.fixture
def gnutls_server(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    yield port, cert, key


def _start_server(port: int, cert, key) -> subprocess.Popen:
    return listen.start_server(["gnutls-serv", "--echo", "-p", str(port), "--x509certfile", str(cert),
                                "--x509keyfile", str(key)], port)


def _client(port: int) -> subprocess.Popen:
    return subprocess.Popen(["gnutls-cli", "--insecure", "-p", str(port), "127.0.0.1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_gnutls_cli_and_serv_both_sides_and_a_filter_edit_loses_nothing(apply_profile, gnutls_server, tmp_path):
    port, cert, key = gnutls_server
    count = 300
    with apply_profile(PAIR_PROFILE.format(comm="gnutls-cli", jsonl="{jsonl}")) as cap:
        serv = _start_server(port, cert, key)       # started under capture: scoped by exec
        cli = _client(port)
        try:
            for i in range(count):
                cli.stdin.write(f"line-{i:05d}\n")
                cli.stdin.flush()
                time.sleep(0.005)
                if i == count // 3:      # a filter edit (map writes) while the lines flow
                    (tmp_path / "profile.yaml").write_text(PAIR_PROFILE.format(
                        comm="gnutls-cli, other-1", jsonl=str(cap.jsonl)))
                if i == 2 * count // 3:
                    assert _wait_for(lambda: "reloaded gnutls-pair" in cap.stderr, 20), cap.stderr
            cli.stdin.close()
            cli.wait(20)
            assert cap.wait_for(lambda rs: sum(r.get("comm") == "gnutls-cli" and r["direction"] == "read"
                                               for r in rs if r["type"] == "data") >= 1, 20)
            time.sleep(1.0)
        finally:
            cli.kill()
            serv.kill()
    assert "express lane, no compile" in cap.stderr, cap.stderr
    data = cap.records("data")
    assert all(r["tls"] == "gnutls" for r in data)
    cli_writes = "".join(r["data"] for r in data if r["target"] == "cli" and r["direction"] == "write")
    serv_reads = "".join(r["data"] for r in data if r["target"] == "serv" and r["direction"] == "read")
    serv_writes = "".join(r["data"] for r in data if r["target"] == "serv" and r["direction"] == "write")
    cli_reads = "".join(r["data"] for r in data if r["target"] == "cli" and r["direction"] == "read")
    expected = "".join(f"line-{i:05d}\n" for i in range(count))
    assert cli_writes == expected              # every line once, in order, across the edit
    assert serv_reads == expected and serv_writes == expected      # the echo server: both directions
    assert cli_reads == expected
    for r in data:
        if r["target"] == "cli":
            assert r["comm"] == "gnutls-cli" and _port(r["conn"]["remote"]) == port
        else:
            assert r["comm"] == "gnutls-serv" and _port(r["conn"]["local"]) == port
    (cli_conn,) = {(r["conn"]["local"], r["conn"]["remote"]) for r in data if r["target"] == "cli"}
    (serv_conn,) = {(r["conn"]["local"], r["conn"]["remote"]) for r in data if r["target"] == "serv"}
    assert cli_conn == serv_conn[::-1]          # the two ends of one connection
    assert cap.records("loss") == []
