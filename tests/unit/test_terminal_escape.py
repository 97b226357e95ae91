"""Captured bytes, comm and file names never reach a terminal with their control characters raw."""
from __future__ import annotations

import io
import re

import pytest

from orchestrator import termtext
from orchestrator.bpf import layout
from orchestrator.pipeline import events
from orchestrator.sinks import stdout
from tests.unit import test_cli_pure
from tests.unit.test_pipeline import _probe_set, _raw

EVIL = "a\x1b[2Jb\rc\x07d\u202ee\x9bf\x7fg"
# Raw control characters a terminal interprets; "\n" is the only one allowed through.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_printable_escapes_controls_visibly_and_keeps_plain_text():
    assert termtext.printable(EVIL) == "a\\x1b[2Jb\\x0dc\\x07d\\u202ee\\x9bf\\x7fg"
    assert termtext.printable("héllo wörld ✓") == "héllo wörld ✓"
    assert termtext.printable("one\ntwo\tx") == "one\\x0atwo\\x09x"
    assert termtext.printable("one\ntwo\tx\r", multiline=True) == "one\ntwo\tx\\x0d"
    assert termtext.printable("\u2066\u2069\u202a") == "\\u2066\\u2069\\u202a"


def _records():
    ev = events.decode(_raw(b"x"), _probe_set())
    ev.comm = "ngi\x1b[2Jnx"
    conn = (("127.0.0.1", 443), ("127.0.0.1", 40000))
    body = f"line one {EVIL}\r\nline two {EVIL}"
    return [
        events.Record("http.request", ev, {"direction": "read", "method": "GET", "path": "/" + EVIL,
                                           "version": "HTTP/1.1", "headers": {"Host": EVIL, EVIL: "v"},
                                           "body": body}, conn),
        events.Record("http.response", ev, {"direction": "write", "status": 200, "reason": EVIL,
                                            "version": "HTTP/1.1", "latency_ms": 1.0,
                                            "request": {"method": "GET", "path": EVIL},
                                            "headers": {"Set-Cookie": [EVIL, "b=2"]}, "body": body}, conn),
        events.Record("data", ev, {"direction": "read", "len": 10, "data": body, "truncated": False}, conn),
        events.Record("bash.command", ev, {"command": "ls " + EVIL}),
        events.Record("uprobe.call", ev, {"symbol": "f" + EVIL, "args": {EVIL: EVIL}, "ret": 0}),
        events.Record("loss", None, {"stage": EVIL, "count": 1, "profile": EVIL}),
        events.Record("parse_error", ev, {"protocol": "http1", "reason": EVIL, "offset": 0}, conn),
    ]


@pytest.mark.parametrize("color", ["never", "always"])
def test_stdout_sink_prints_no_raw_control_characters(color):
    buf = io.StringIO()
    sink = stdout.StdoutSink(color=color, file=buf)
    sink.write(_records())
    text = buf.getvalue()
    if color == "always":   # rich's own colour sequences are ours: drop them, then look for others
        text = re.sub("\x1b\\[[0-9;]*m", "", text)
    assert RAW_CONTROL.findall(text) == []
    assert "\\x1b[2J" in text and "\\u202e" in text and "\\x9b" in text
    assert "line one" in text and "line two" in text   # bodies keep their lines


def test_stdout_sink_prints_each_value_of_a_repeated_header_on_its_own_line():
    buf = io.StringIO()
    ev = events.decode(_raw(b"x", hook=0, direction=layout.DIR_WRITE), _probe_set())
    cookies = ["a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT", "b=2; Expires=Thu, 22 Oct 2026 07:28:00 GMT"]
    stdout.StdoutSink(color="never", file=buf).write([events.Record(
        "http.response", ev, {"status": 200, "reason": "OK", "version": "HTTP/1.1",
                              "headers": {"Set-Cookie": cookies, "Server": "x"}, "body": ""})])
    lines = buf.getvalue().splitlines()
    assert [ln.strip() for ln in lines if "Set-Cookie" in ln] == [f"Set-Cookie: {c}" for c in cookies]


def test_validate_escapes_file_names_and_values(tmp_path):
    bad = tmp_path / "evil\x1b[2J\u202e.yaml"
    bad.write_text("apiVersion: ecapture/v1\nkind: CaptureProfile\nmetadata:\n  name: x\nspec:\n"
                   "  targets:\n    - name: \"t\\e[2J\\u202e\\x9b\"\n      kind: \"bash\\e]0;pwned\\a\"\n")
    proc = test_cli_pure.run("validate", str(bad))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "evil\\x1b[2J\\u202e.yaml" in out
    for raw in ("\x1b", "\u202e", "\x9b", "\x07"):
        assert raw not in out
