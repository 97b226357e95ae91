"""The HAR sink with the real `ecapture apply`: curl through nginx over HTTP/1.1 and HTTP/2 (TLS), both
sides captured, and the file checked against HAR 1.2 while apply runs, after it stops and after a
SIGKILL in the middle of traffic."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.support.nginx import NginxServer, curl, curl_loop
from tests.unit.test_har_sink import validate

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: har-test}
spec:
  targets:
    - {name: web, kind: openssl, binary: /usr/sbin/nginx, filters: {ports: [PORT]}}
    - {name: client, kind: openssl, binary: /usr/bin/curl, filters: {ports: [PORT]}}
  parsers: [http1, http2]
  sinks:
    - {type: har, path: "HAR"}
"""


def _profile(har: Path, port: int) -> str:
    return PROFILE.replace("HAR", str(har)).replace("PORT", str(port))


def _entries(har: Path) -> list[dict]:
    """The entries of the file as it is now: it must be a valid HAR at any moment."""
    return validate(har)["log"]["entries"] if har.exists() else []


def _wait_entries(har: Path, predicate, timeout: float = 15.0) -> list[dict]:
    """While apply runs. A read can land inside the sink's write of a batch over the old trailer
    (the kernel copies a write page by page): that read is not JSON and is tried again. A write
    the sink left unfinished would fail every try, and the checks after apply stops are strict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entries = _entries(har)
        except json.JSONDecodeError:
            entries = None
        if entries is not None and predicate(entries):
            return entries
        time.sleep(0.1)
    return _entries(har)


def _find(entries, target: str, method: str, url: str) -> dict:
    found = [e for e in entries if e["_ecapture"]["target"] == target and e["request"]["method"] == method
             and e["request"]["url"] == url]
    assert len(found) == 1, (target, method, url, [(e["_ecapture"]["target"], e["request"]["url"]) for e in entries])
    return found[0]


def _check_exchanges(entries, base: str, version: str, server_version: str, port: int):
    get_url, post_url = f"{base}/echo?x=1&y=two%20words", f"{base}/post?id=5"
    for target in ("web", "client"):
        get = _find(entries, target, "GET", get_url)
        assert get["request"]["httpVersion"] == get["response"]["httpVersion"] == version
        assert get["request"]["queryString"] == [{"name": "x", "value": "1"}, {"name": "y", "value": "two words"}]
        assert get["response"]["status"] == 200
        assert get["response"]["content"]["text"] == f"GET /echo?x=1&y=two%20words {server_version}\n"
        assert get["serverIPAddress"] == "127.0.0.1" and get["connection"] != str(port)
        assert get["time"] >= 0 and get["comment"].startswith("pid=")
        assert f"profile=har-test target={target}" in get["comment"]
        post = _find(entries, target, "POST", post_url)
        assert post["request"]["queryString"] == [{"name": "id", "value": "5"}]
        assert post["response"]["status"] == 200 and post["response"]["content"]["text"] == "posted\n"
    # curl sent the body; over HTTP/2 nginx answers /post without reading it, so curl's side has it for sure.
    client_post = _find(entries, "client", "POST", post_url)
    assert client_post["request"]["postData"] == {"mimeType": "application/x-www-form-urlencoded",
                                                  "text": "name=ecapture&x=1"}
    assert client_post["request"]["bodySize"] == len("name=ecapture&x=1")


def test_http1_and_http2_exchanges_in_a_valid_har(apply_profile, tmp_path):
    for http2, version, server_version in ((False, "HTTP/1.1", "HTTP/1.1"), (True, "HTTP/2", "HTTP/2.0")):
        har = tmp_path / f"h{int(http2)}.har"
        with NginxServer(workers=1, http2=http2) as server, apply_profile(_profile(har, server.port)) as cap:
            assert _entries(har) == []                         # a valid, empty HAR from the start
            got = curl(server.url + "/echo?x=1&y=two%20words", http2=http2)
            assert got.returncode == 0 and got.stdout.startswith("GET /echo")
            assert curl(server.url + "/post?id=5", "-d", "name=ecapture&x=1", http2=http2).returncode == 0
            entries = _wait_entries(har, lambda es: sum(e["response"]["status"] == 200 for e in es) >= 4)
            _check_exchanges(entries, server.url, version, server_version, server.port)
        assert cap.returncode == 0, cap.stderr
        entries = _entries(har)                                # after apply stopped: still valid, nothing lost
        _check_exchanges(entries, server.url, version, server_version, server.port)
        assert not [e for e in entries if e.get("_incomplete")]
        assert "Traceback" not in cap.stderr


def test_sigkill_mid_traffic_leaves_a_valid_har_and_the_next_run_appends(apply_profile, tmp_path, nginx_server):
    har = tmp_path / "killed.har"
    profile = _profile(har, nginx_server.port)
    with apply_profile(profile) as cap:
        with curl_loop(lambda i: f"{nginx_server.url}/echo?n={i}") as sent:
            entries = _wait_entries(har, lambda es: len(es) >= 10, timeout=30)
            assert len(entries) >= 10, cap.stderr
            cap.proc.send_signal(signal.SIGKILL)
            cap.proc.wait(timeout=10)
            assert sent
    assert cap.returncode == -signal.SIGKILL
    left = _entries(har)                           # the file as the kill left it parses as HAR 1.2
    assert len(left) >= 10
    assert all(e["request"]["url"].startswith(nginx_server.url + "/echo?n=") for e in left)
    assert all(e["response"]["status"] == 200 for e in left)

    with apply_profile(profile) as cap2:           # a new run appends to the file it wrote
        assert curl(nginx_server.url + "/echo?after=kill").returncode == 0
        _wait_entries(har, lambda es: any(e["request"]["url"].endswith("/echo?after=kill") for e in es))
    assert cap2.returncode == 0, cap2.stderr
    after = _entries(har)
    assert after[:len(left)] == left
    assert {e["_ecapture"]["target"] for e in after if e["request"]["url"].endswith("/echo?after=kill")} == \
           {"web", "client"}
    assert json.loads(har.read_text())["log"]["creator"]["name"] == "ecapture"
