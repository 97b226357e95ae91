"""spec.redact with the real `ecapture apply`: curl sends a password (form and JSON bodies), a bearer
token and a query token through nginx; no sink's output holds them and the markers are there; an
edit of `redact` during apply changes what the JSONL file shows, without reopening it."""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid

from tests.support.nginx import curl, free_port

FORM_SECRET = "Hunter2-form-" + uuid.uuid4().hex[:8]
JSON_SECRET = "Hunter2-json-" + uuid.uuid4().hex[:8]
TOKEN = "tok-" + uuid.uuid4().hex
QUERY_SECRET = "q-" + uuid.uuid4().hex[:12]
SECRETS = (FORM_SECRET, JSON_SECRET, TOKEN, QUERY_SECRET)


def _profile(port: int, redact: str, extra_sinks: str = "") -> str:
    return f"""
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: redact-test}}
spec:
  targets:
    - {{name: web, kind: openssl, binary: /usr/sbin/nginx, filters: {{ports: [{port}]}}}}
  parsers: [http1]
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
{extra_sinks}{redact}"""


def _send(url: str, tag: str = "") -> None:
    auth = ("-H", f"Authorization: Bearer {TOKEN}")
    assert curl(f"{url}/post?a=1&token={QUERY_SECRET}{tag}", *auth, "-d",
                f"user=bob&password={FORM_SECRET}").returncode == 0
    body = json.dumps({"user": "bob", "credentials": {"password": JSON_SECRET, "remember": True}})
    assert curl(f"{url}/post", *auth, "-H", "Content-Type: application/json", "-d", body).returncode == 0


@contextlib.contextmanager
def _web_reader(port: int, token_file):
    """Everything the live view's socket sends while the block runs."""
    from websockets.sync.client import connect
    got: list[str] = []
    stop = threading.Event()

    def read():
        deadline = time.time() + 30
        while not os.path.exists(token_file) and time.time() < deadline:
            time.sleep(0.05)
        token = open(token_file).read().strip()
        with connect(f"ws://127.0.0.1:{port}/socket?token={token}", open_timeout=10) as ws:
            while not stop.is_set():
                try:
                    got.append(ws.recv(timeout=0.2))
                except TimeoutError:
                    continue

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        yield got
    finally:
        stop.set()
        t.join(5)


def test_no_sink_output_holds_the_password_or_the_token(apply_profile, nginx_server, tmp_path):
    extra = "    - {type: stdout}\n    - {type: stdout, format: json}\n"
    files = {}
    for kind, options in (("har", ""), ("pcapng", ", source: plaintext")):
        files[kind] = tmp_path / f"out.{kind}"
        extra += f"    - {{type: {kind}, path: \"{files[kind]}\"{options}}}\n"
    web_port, token_file = free_port(), tmp_path / "web.token"
    extra += f"    - {{type: web, listen: \"127.0.0.1:{web_port}\", token_file: \"{token_file}\"}}\n"
    redact = "  redact:\n    - defaults: true\n    - fields: [password]\n    - query: [token]\n"
    with apply_profile(_profile(nginx_server.port, redact, extra)) as cap:
        with _web_reader(web_port, str(token_file)) as web:
            time.sleep(0.5)        # the socket is open before the traffic
            _send(nginx_server.url)
            assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 2, timeout=20), \
                cap.stderr
            deadline = time.time() + 10
            while "[redacted" not in "".join(web) and time.time() < deadline:
                time.sleep(0.1)
    reqs = cap.records("http.request")
    assert len(reqs) == 2
    form, js = reqs
    assert form["headers"]["Authorization"] == f"[redacted {len('Bearer ' + TOKEN)}]"
    assert form["body"] == f"user=bob&password=[redacted {len(FORM_SECRET)}]"
    assert form["path"] == f"/post?a=1&token=[redacted {len(QUERY_SECRET)}]"
    assert json.loads(js["body"])["credentials"] == {"password": f"[redacted {len(JSON_SECRET)}]", "remember": True}
    assert cap.records("http.response")[0]["request"]["path"] == form["path"]
    outputs = {"jsonl": cap.jsonl.read_text(), "stdout": cap.stdout}
    outputs.update({kind: path.read_bytes().decode("latin-1") for kind, path in files.items()})
    outputs["web"] = "".join(web)
    assert set(outputs) == {"jsonl", "stdout", "har", "pcapng", "web"}
    for name, text in outputs.items():
        assert "[redacted" in text, name
        for secret in SECRETS:
            assert secret not in text, (name, secret)
    assert cap.returncode == 0, cap.stderr


def test_an_edit_of_redact_during_apply_changes_what_the_file_shows(apply_profile, nginx_server, tmp_path):
    path = tmp_path / "profile.yaml"
    before = "  redact:\n    - fields: [password]\n"
    after = "  redact:\n    - headers: [Authorization]\n"
    with apply_profile(_profile(nginx_server.port, before)) as cap:
        _send(nginx_server.url)
        assert cap.wait_for(lambda rs: sum(r["type"] == "http.request" for r in rs) >= 2, timeout=20), cap.stderr
        first = cap.records("http.request")[0]
        assert first["headers"]["Authorization"] == f"Bearer {TOKEN}"          # not a rule yet
        assert first["body"] == f"user=bob&password=[redacted {len(FORM_SECRET)}]"
        inode = os.stat(cap.jsonl).st_ino
        path.write_text(path.read_text().replace(before, after))
        # What the user sees: a request sent after the edit shows the new rules (retried until it does).
        deadline, seen = time.time() + 30, None
        while time.time() < deadline and seen is None:
            tag = f"&n={uuid.uuid4().hex[:6]}"
            assert curl(f"{nginx_server.url}/post?x=1{tag}", "-H", f"Authorization: Bearer {TOKEN}", "-d",
                        f"password={FORM_SECRET}").returncode == 0
            cap.wait_for(lambda rs: any(tag in r.get("path", "") for r in rs), timeout=5)
            seen = next((r for r in cap.records("http.request")
                         if tag in r["path"] and r["headers"]["Authorization"].startswith("[redacted")), None)
        assert seen is not None, cap.stderr
        assert seen["body"] == f"password={FORM_SECRET}"         # the field rule is gone
        assert os.stat(cap.jsonl).st_ino == inode                 # the same file, not reopened or truncated
        assert cap.records("http.request")[0] == first
    assert cap.returncode == 0, cap.stderr
