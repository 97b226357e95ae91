"""`ecapture apply` with a nats sink beside a jsonl sink: TLS traffic through nginx captured, and
the JetStream stream holds exactly the JSONL file's records, each once, even when the server
comes up only while capture is running."""
from __future__ import annotations

from tests.support.nats_server import NatsServer, read_stream
from tests.support.nginx import curl

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: nginx-nats}}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
  parsers: [http1]
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
    - {{type: nats, url: "{url}", subject: ecapture.nginx, stream: ECAPTURE, flush_timeout: 10}}
"""


def _file_lines(cap) -> list[bytes]:
    return [line for line in cap.jsonl.read_bytes().split(b"\n") if line]


def test_stream_holds_exactly_the_jsonl_records(apply_profile, nginx_server):
    paths = [f"/nats/{i}" for i in range(8)]
    with NatsServer() as srv:
        with apply_profile(PROFILE.format(url=srv.url)) as cap:
            for p in paths:
                assert curl(nginx_server.url + p).returncode == 0
            assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= len(paths))
        assert cap.returncode == 0, cap.stderr
        assert "Traceback" not in cap.stderr
        lines = _file_lines(cap)
        assert [r["path"] for r in cap.records("http.request")] == paths
        msgs = read_stream(srv.url, "ECAPTURE")
    assert [payload for _, payload in msgs] == lines
    assert len({msg_id for msg_id, _ in msgs}) == len(lines)


def test_server_that_comes_late_gets_everything_once(apply_profile, nginx_server):
    """Started after the first requests were captured: they waited in the sink's buffer."""
    srv = NatsServer()
    try:
        with apply_profile(PROFILE.format(url=srv.url)) as cap:
            assert curl(nginx_server.url + "/before").returncode == 0
            assert cap.wait_for(lambda rs: any(r["type"] == "http.response" for r in rs))
            srv.start()
            assert curl(nginx_server.url + "/after").returncode == 0
            assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 2)
        assert cap.returncode == 0, cap.stderr
        assert "cannot reach the server" in cap.stderr and "not sent within" not in cap.stderr
        assert [r["path"] for r in cap.records("http.request")] == ["/before", "/after"]
        msgs = read_stream(srv.url, "ECAPTURE")
        assert [payload for _, payload in msgs] == _file_lines(cap)
    finally:
        srv.__exit__(None, None, None)
