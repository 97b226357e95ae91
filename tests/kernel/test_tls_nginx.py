"""TLS plaintext of nginx, captured through libssl uprobes, checked against what curl and python sent."""
from __future__ import annotations

import subprocess
import textwrap

from tests.kernel.conftest import uprobe_events_of
from tests.support.nginx import curl

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: nginx-test}}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
{filters}
  parsers: [http1]
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
"""


def _profile(filters: str = "") -> str:
    return PROFILE.format(filters=textwrap.indent(filters, " " * 6) if filters else "")


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_short_lived_connections_each_named_right(apply_profile, nginx_server):
    paths = [f"/short/{i}" for i in range(6)]
    with apply_profile(_profile()) as cap:
        for p in paths:
            assert curl(nginx_server.url + p).returncode == 0   # one process, one connection each
        assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= len(paths))
    reqs = cap.records("http.request")
    resps = cap.records("http.response")
    assert [r["path"] for r in reqs] == paths
    assert all(r["method"] == "GET" and r["version"] == "HTTP/1.1" for r in reqs)
    assert [r["status"] for r in resps] == [200] * len(paths)
    assert [r["request"]["path"] for r in resps] == paths
    workers = set(nginx_server.worker_pids())
    remote_ports = set()
    for r in reqs + resps:
        assert r["comm"] == "nginx" and r["pid"] in workers
        assert _port(r["conn"]["local"]) == nginx_server.port
        assert r["conn"]["local"].startswith("127.0.0.1:") and r["conn"]["remote"].startswith("127.0.0.1:")
        assert r["direction"] == ("read" if r["type"] == "http.request" else "write")
        remote_ports.add(_port(r["conn"]["remote"]))
    # Every curl process had its own ephemeral port, and each request is paired with its own response.
    assert len(remote_ports) == len(paths)
    for req, resp in zip(reqs, resps):
        assert req["conn"] == resp["conn"]
        assert resp["body"] == "hello from ecapture demo\n"
    assert cap.returncode == 0
    assert uprobe_events_of(cap.proc.pid) == []


def test_keep_alive_many_requests_one_connection(apply_profile, nginx_server):
    urls = [f"{nginx_server.url}/keep/{i}" for i in range(40)]
    with apply_profile(_profile()) as cap:
        assert curl(urls[-1], *urls[:-1]).returncode == 0   # the helper puts its url argument last
        assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 40)
    reqs, resps = cap.records("http.request"), cap.records("http.response")
    assert [r["path"] for r in reqs] == [f"/keep/{i}" for i in range(40)]
    assert len(resps) == 40 and all(r["status"] == 200 for r in resps)
    assert len({r["conn"]["remote"] for r in reqs + resps}) == 1
    seqs = [r["seq"] for r in cap.records() if r["type"] != "loss"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_large_response_and_post_body(apply_profile, nginx_server):
    with apply_profile(_profile()) as cap:
        assert curl(nginx_server.url + "/big").returncode == 0
        assert curl(nginx_server.url + "/post", "-d", "name=ecapture&x=1").returncode == 0
        assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 2)
    big, posted = cap.records("http.response")
    assert big["request"]["path"] == "/big" and big["body_len"] == 100000
    assert big["headers"]["Content-Length"] == "100000"
    post = [r for r in cap.records("http.request") if r["method"] == "POST"][0]
    assert post["body"] == "name=ecapture&x=1"
    assert posted["body"] == "posted\n"


def test_port_filter_compiled_in(apply_profile, nginx_server):
    with apply_profile(_profile("filters: {ports: [1]}")) as cap:
        assert curl(nginx_server.url + "/filtered-out").returncode == 0
        cap.wait_for(lambda rs: False, timeout=1.0)
    assert cap.records("http.request") == []
    with apply_profile(_profile(f"filters: {{ports: [{nginx_server.port}], comm: [nginx]}}")) as cap:
        assert curl(nginx_server.url + "/filtered-in").returncode == 0
        assert cap.wait_for(lambda rs: any(r["type"] == "http.response" for r in rs))
    assert [r["path"] for r in cap.records("http.request")] == ["/filtered-in"]


def test_curl_is_out_of_nginx_scope(apply_profile, nginx_server):
    """curl uses the same libssl, but the target is nginx: curl's own writes must not appear."""
    with apply_profile(_profile()) as cap:
        assert curl(nginx_server.url + "/scope").returncode == 0
        assert cap.wait_for(lambda rs: any(r["type"] == "http.response" for r in rs))
    assert {r["comm"] for r in cap.records()} == {"nginx"}


PY_CLIENT = r"""
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
port = int(sys.argv[1])
for i in range(3):
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(f"GET /py/{i} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
print("done")
"""


def test_python_ssl_client_uses_ex_functions(apply_profile, nginx_server, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(PY_CLIENT)
    profile = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: py-client}
spec:
  targets:
    - name: client
      kind: openssl
      binary: /usr/bin/python3.11
      library: /lib/x86_64-linux-gnu/libssl.so.3
  sinks:
    - {type: jsonl, path: "{jsonl}"}
"""
    with apply_profile(profile) as cap:
        out = subprocess.run(["/usr/bin/python3.11", str(script), str(nginx_server.port)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 3)
    reqs = cap.records("http.request")
    resps = cap.records("http.response")
    assert [r["path"] for r in reqs] == ["/py/0", "/py/1", "/py/2"]
    assert all(r["direction"] == "write" and r["comm"].startswith("python3") for r in reqs)
    assert all(_port(r["conn"]["remote"]) == nginx_server.port for r in reqs + resps)
    assert [r["status"] for r in resps] == [200] * 3


def test_http2_over_tls_streams(apply_profile):
    from tests.support.nginx import NginxServer
    profile = PROFILE.format(filters="").replace("parsers: [http1]", "parsers: [http1, http2]").replace(
        "  parsers:", "    - {name: client, kind: openssl, binary: /usr/bin/curl}\n  parsers:")
    with NginxServer(workers=1, http2=True) as server:
        urls = [f"{server.url}/h2/{i}" for i in range(3)]
        with apply_profile(profile) as cap:
            run = curl(urls[-1], *urls[:-1], "-w", "%{http_version}\n", http2=True)
            assert run.returncode == 0 and "2" in run.stdout
            post = curl(server.url + "/post", "-d", "h2=body", http2=True)
            assert post.returncode == 0
            assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 8)
    for side in ("web", "client"):
        reqs = [r for r in cap.records("http.request") if r["target"] == side]
        resps = [r for r in cap.records("http.response") if r["target"] == side]
        assert [r["path"] for r in reqs] == [f"/h2/{i}" for i in range(3)] + ["/post"], side
        assert all(r["version"] == "HTTP/2" and r["stream_id"] % 2 == 1 for r in reqs + resps)
        assert [r["status"] for r in resps] == [200] * 4
        assert resps[0]["request"] == {"method": "GET", "path": "/h2/0"}
        assert all(_port(r["conn"]["local" if side == "web" else "remote"]) == server.port for r in reqs)
    # curl sends the POST body; nginx answers `return 200` without reading it, so only curl's side has it.
    client_post = [r for r in cap.records("http.request") if r["target"] == "client" and r["method"] == "POST"]
    assert client_post[0]["body"] == "h2=body"


def test_apply_runs_the_compiled_consumer_and_says_so(apply_profile, nginx_server):
    """make setup builds the compiled hot path; apply uses it (status tells), and the records it
    writes are the ones the tests above check field by field."""
    import json

    from orchestrator import fastpath
    from tests.kernel.conftest import ECAPTURE

    assert fastpath.mode == "compiled", fastpath.reason
    with apply_profile(_profile()) as cap:
        status = json.loads(subprocess.run([ECAPTURE, "status", "--json"], capture_output=True, text=True,
                                           timeout=10).stdout)
        assert status["consumer"]["build"] == "compiled", status["consumer"]
        text = subprocess.run([ECAPTURE, "status"], capture_output=True, text=True, timeout=10).stdout
        assert "consumer compiled (mypyc)" in text, text
        assert curl(nginx_server.url + "/compiled").returncode == 0
        assert cap.wait_for(lambda rs: any(r["type"] == "http.response" for r in rs))
    (req,) = cap.records("http.request")
    assert req["path"] == "/compiled" and req["headers"]["Host"].startswith("127.0.0.1:")
