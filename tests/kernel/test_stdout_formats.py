"""`ecapture apply` printing nginx's TLS traffic on stdout as JSON lines (for `| jq`) and as compact lines."""
from __future__ import annotations

import json
import re
import time

from tests.support.nginx import curl

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: stdout-{fmt}}}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
  parsers: [http1]
  sinks:
    - {{type: stdout, format: {fmt}}}
    - {{type: jsonl, path: "{{jsonl}}"}}
"""


def _wait_stdout(cap, predicate, timeout=20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate(cap.stdout):
            return True
        time.sleep(0.1)
    return False


def test_json_stdout_is_the_jsonl_records_and_nothing_else(apply_profile, nginx_server):
    paths = ["/stdout-json/0", "/stdout-json/1?q=a%20b"]
    with apply_profile(PROFILE.format(fmt="json")) as cap:
        for p in paths:
            assert curl(nginx_server.url + p).returncode == 0
        assert _wait_stdout(cap, lambda out: out.count('"type":"http.response"') >= len(paths)), cap.stderr
    assert cap.returncode == 0, cap.stderr
    lines = cap.stdout.splitlines()
    records = [json.loads(line) for line in lines]           # every line, apply's own messages included
    requests = [r for r in records if r["type"] == "http.request"]
    responses = [r for r in records if r["type"] == "http.response"]
    assert [r["path"] for r in requests] == paths
    assert [(r["request"]["path"], r["status"]) for r in responses] == [(p, 200) for p in paths]
    assert all(r["comm"] == "nginx" and r["profile"] == "stdout-json" for r in requests + responses)
    assert responses[0]["body"] == "hello from ecapture demo\n"
    # The same bytes as the jsonl sink wrote, line for line, but for the TLS secrets (shown only when
    # asked for: show_secrets); apply's messages went to stderr.
    assert [line for line in cap.jsonl.read_text().splitlines() if '"type":"tls.secret"' not in line] == lines
    assert "stopped after" in cap.stderr and "losses: 0" in cap.stderr


def test_compact_stdout_one_line_per_message(apply_profile, nginx_server):
    with apply_profile(PROFILE.format(fmt="compact")) as cap:
        assert curl(nginx_server.url + "/stdout-compact").returncode == 0
        assert curl(nginx_server.url + "/post", "-d", "name=ecapture").returncode == 0
        assert _wait_stdout(cap, lambda out: out.count(" → 200 (") >= 2), cap.stderr
    assert cap.returncode == 0, cap.stderr
    workers = "|".join(map(str, nginx_server.worker_pids()))
    head = rf"\d\d:\d\d:\d\d\.\d{{3}} nginx\[(?:{workers})\] "
    lines = cap.stdout.splitlines()
    shown = [r for r in cap.records() if r["type"] != "tls.secret"]        # secrets: only with show_secrets
    assert len(lines) == len(shown), cap.stdout                            # one line per record
    assert re.fullmatch(head + "GET /stdout-compact", lines[0]), lines
    assert re.fullmatch(head + r"GET /stdout-compact → 200 \(\d+(\.\d+)? ms\)", lines[1]), lines
    assert re.fullmatch(head + "POST /post", lines[2]), lines
    assert re.fullmatch(head + r"POST /post → 200 \(\d+(\.\d+)? ms\)", lines[3]), lines
    assert "stopped after" not in cap.stdout and "stopped after" in cap.stderr
