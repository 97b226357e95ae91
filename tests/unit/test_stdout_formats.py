"""The stdout sink's formats (text, compact, json) on records made by the real pipeline, and its
writer thread: a slow reader of stdout costs counted losses, never a stalled dispatcher."""
from __future__ import annotations

import io
import json
import os
import re
import threading
import time

import msgspec
import pytest

from orchestrator.bpf import layout
from orchestrator.pipeline import dispatch, events
from orchestrator.profile import models
from orchestrator.sinks import factory, jsonl, stdout
from tests.unit.test_pipeline import REQ, RESP, _probe_set, _raw
from tests.unit.test_terminal_escape import EVIL, RAW_CONTROL

CONN = (("127.0.0.1", 3306), ("127.0.0.1", 50000))


class ListSink:
    def __init__(self):
        self.records = []

    def write(self, records):
        self.records += records


def _pipeline_records() -> list:
    """An HTTP request and its response, and a data record, as the dispatcher makes them."""
    sink = ListSink()
    d = dispatch.Dispatcher(lambda _p: [sink])
    ps, raw_only = _probe_set(), _probe_set(parsers=())
    d.process([events.decode(_raw(REQ, seq=0), ps),
               events.decode(_raw(RESP, seq=1, hook=0, direction=layout.DIR_WRITE), ps),
               events.decode(_raw(b"plain text", seq=2, rport=40001), raw_only)])
    d.flush_all()
    assert [r.type for r in sink.records] == ["http.request", "http.response", "data"]
    return sink.records


def _sql_records() -> list:
    """MySQL and PostgreSQL records with the fields orchestrator/parsers/mysql.py and postgres.py give them."""
    ev = events.decode(_raw(b"x"), _probe_set(kind="socket"))
    my_select = {"command": "COM_QUERY", "sql": "SELECT id, name\n  FROM t ORDER BY id", "status": "rows",
                 "affected_rows": None, "last_insert_id": None, "warnings": 0, "columns": ["id", "name"],
                 "rows": [["1", "one"], ["2", None]], "row_count": 3, "error_code": None, "sql_state": None,
                 "error_message": None, "latency_ms": 1.25}
    return [
        events.Record("mysql.query", ev, {"command": "COM_QUERY", "sql": my_select["sql"]}, CONN),
        events.Record("mysql.result", ev, my_select, CONN),
        events.Record("mysql.result", ev, {**my_select, "sql": "INSERT INTO t VALUES (1,'one'),(2,'two'),(3,'three')",
                                           "status": "ok", "affected_rows": 3, "last_insert_id": 0, "warnings": 1,
                                           "columns": [], "rows": [], "row_count": 0, "latency_ms": 0.5}, CONN),
        events.Record("mysql.result", ev, {**my_select, "sql": "SELECT * FROM no_such_table", "status": "error",
                                           "columns": [], "rows": [], "row_count": 0, "error_code": 1146,
                                           "sql_state": "42S02",
                                           "error_message": "Table 'ecap.no_such_table' doesn't exist"}, CONN),
        events.Record("mysql.query", ev, {"command": "COM_INIT_DB", "sql": None, "database": "ecap"}, CONN),
        events.Record("pg.query", ev, {"kind": "extended", "sql": "SELECT name FROM t WHERE id = $1",
                                       "statement": "", "params": ["2"]}, CONN),
        events.Record("pg.result", ev, {"sql": "SELECT name FROM t WHERE id = $1", "status": "ok",
                                        "tag": "SELECT 1", "columns": ["name"], "rows": [["two"]], "row_count": 1,
                                        "latency_ms": 0.3}, CONN),
        events.Record("pg.result", ev, {"sql": "SELECT * FROM no_such_table", "status": "error", "tag": None,
                                        "columns": [], "rows": [], "row_count": 0, "latency_ms": 0.2,
                                        "error": {"severity": "ERROR", "code": "42P01",
                                                  "message": 'relation "no_such_table" does not exist',
                                                  "position": "15"}}, CONN),
    ]


def _other_records() -> list:
    ev = events.decode(_raw(b"x"), _probe_set(kind="bash"))
    return [events.Record("bash.command", ev, {"command": "ls -la /tmp"}),
            events.Record("loss", None, {"profile": "prof", "target": "web", "stage": "kernel.ringbuf", "count": 3})]


def _print(records, fmt: str, **options) -> str:
    buf = io.StringIO()
    stdout.StdoutSink(color=options.pop("color", "never"), file=buf, format=fmt, **options).write(records)
    return buf.getvalue()


def _plain(text: str) -> str:
    return re.sub("\x1b\\[[0-9;]*m", "", text)


# ---------------------------------------------------------------- json

def test_json_lines_are_exactly_the_jsonl_sink_lines(tmp_path):
    records = _pipeline_records() + _sql_records() + _other_records()
    path = tmp_path / "same.jsonl"
    sink = jsonl.JsonlSink(str(path))
    sink.write(records)
    sink.close()
    printed = _print(records, "json", color="always")        # colour never applies to JSON
    assert printed.encode() == path.read_bytes()
    lines = printed.splitlines()
    assert len(lines) == len(records) and "\x1b" not in printed
    parsed = [json.loads(line) for line in lines]
    assert [p["type"] for p in parsed] == [r.type for r in records]
    assert parsed[1]["status"] == 200 and parsed[1]["request"] == {"method": "GET", "path": "/a"}
    encode = msgspec.json.Encoder().encode
    assert lines[0].encode() == records[0].to_json(encode)


def test_json_escapes_what_a_terminal_would_interpret_and_keeps_the_value():
    ev = events.decode(_raw(b"x"), _probe_set(kind="bash"))
    record = events.Record("bash.command", ev, {"command": "echo " + EVIL})
    line = _print([record], "json")
    assert RAW_CONTROL.findall(line.rstrip("\n")) == []
    assert "\\u009b" in line and "\\u202e" in line and "\\u007f" in line
    assert json.loads(line)["command"] == "echo " + EVIL


def test_json_honours_show_data_and_show_secrets_and_prints_bodies_whole():
    records = _pipeline_records()
    assert [json.loads(x)["type"] for x in _print(records, "json", show_data=False).splitlines()] == \
           ["http.request", "http.response"]
    assert json.loads(_print(records, "json", max_body=2).splitlines()[1])["body"] == "hello"
    ev = events.decode(_raw(b"x"), _probe_set())
    secret = events.Record("tls.secret", ev, {"label": "CLIENT_RANDOM", "client_random": "ab" * 32,
                                              "secret": "cd" * 48})
    assert _print([secret], "json") == ""
    assert json.loads(_print([secret], "json", show_secrets=True))["secret"] == "cd" * 48


# ---------------------------------------------------------------- compact

def test_compact_one_line_per_record_for_a_person():
    records = _pipeline_records() + _sql_records() + _other_records()
    lines = _print(records, "compact").splitlines()
    assert len(lines) == len(records)
    time_and_who = r"\d\d:\d\d:\d\d\.\d{3} nginx\[100\] "
    assert re.fullmatch(time_and_who + "GET /a", lines[0])
    assert re.fullmatch(time_and_who + r"GET /a → 200 \([0-9.]+ ms\)", lines[1])
    assert re.fullmatch(time_and_who + "read 10 bytes from 127.0.0.1:40001", lines[2])
    assert lines[3].endswith("] sql SELECT id, name FROM t ORDER BY id")
    assert lines[4].endswith("] sql SELECT id, name FROM t ORDER BY id → 3 rows (1.25 ms)")
    assert lines[5].endswith("→ ok, 3 rows affected, 1 warning (0.5 ms)")
    assert lines[6].endswith("] sql SELECT * FROM no_such_table → error 1146 (42S02): "
                             "Table 'ecap.no_such_table' doesn't exist (1.25 ms)")
    assert lines[7].endswith("] sql use ecap")
    assert lines[8].endswith("] sql SELECT name FROM t WHERE id = $1")
    assert lines[9].endswith("→ SELECT 1 (0.3 ms)")
    assert lines[10].endswith('→ ERROR 42P01: relation "no_such_table" does not exist (0.2 ms)')
    assert lines[11].endswith("] $ ls -la /tmp")
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} prof/web lost 3 record\(s\) at kernel.ringbuf", lines[12])


def test_compact_is_terminal_safe_and_one_line_even_for_hostile_fields():
    from tests.unit.test_terminal_escape import _records as hostile
    records = hostile()
    for color in ("never", "always"):
        text = _plain(_print(records, "compact", color=color))
        assert len(text.splitlines()) == len(records)
        assert RAW_CONTROL.findall(text) == []
        assert "\\x1b[2J" in text and "\\u202e" in text


def test_compact_options():
    records = _pipeline_records()
    assert "read 10 bytes" not in _print(records, "compact", show_data=False)
    long_sql = _sql_records()[0]
    long_sql.fields["sql"] = "SELECT " + "x, " * 50 + "y"
    assert _print([long_sql], "compact", max_body=20).rstrip("\n").endswith("] sql SELECT x, x, x, x, x…")
    assert "\x1b[" in _print(records, "compact", color="always")
    assert "\x1b[" not in _print(records, "compact", color="never")


# ---------------------------------------------------------------- text

def test_text_prints_sql_as_sql_with_its_result_summary_not_a_dict():
    text = _print(_sql_records(), "text")
    assert "{'" not in text and "'command'" not in text
    assert "sql> SELECT id, name\n" in text and "       FROM t ORDER BY id" in text      # the statement's own lines
    assert "→ 3 rows (1.25 ms) after SELECT id, name FROM t ORDER BY id" in text
    assert "    id | name\n    1 | one\n    2 | NULL\n    … 1 more row(s)" in text
    assert "→ ok, 3 rows affected, 1 warning (0.5 ms)" in text
    assert "→ error 1146 (42S02): Table 'ecap.no_such_table' doesn't exist" in text
    assert "sql> use ecap" in text
    assert 'params: ["2"]' in text
    assert "→ SELECT 1 (0.3 ms)" in text and "    name\n    two" in text
    assert '→ ERROR 42P01: relation "no_such_table" does not exist (0.2 ms)' in text


def test_text_stays_the_default_and_keeps_its_options():
    spec = models.Sink("stdout")
    sink = factory.build(spec)
    try:
        assert sink.format == "text" and sink.max_body == 2048 and not sink.show_secrets
    finally:
        sink.close()
    records = _pipeline_records()
    text = _print(records, "text", max_body=3)
    assert "GET /a HTTP/1.1" in text and "HTTP/1.1 200 OK" in text
    assert "    hel\n" in text and "… 2 more bytes" in text
    assert "plain text" not in _print(records, "text", show_data=False)


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown stdout format"):
        stdout.StdoutSink(file=io.StringIO(), format="yaml")


# ---------------------------------------------------------------- a slow reader

def test_a_stalled_reader_costs_counted_losses_not_a_stalled_dispatcher():
    read_fd, write_fd = os.pipe()
    try:
        sink = stdout.StdoutSink(format="json", fd=write_fd, writer_limit=64 << 10)
        d = dispatch.Dispatcher(lambda _p: [sink])
        ps = _probe_set()
        batches = 400                       # ~300 KiB of JSON: far more than the pipe and the writer hold
        started = time.monotonic()
        for i in range(batches):
            d.process([events.decode(_raw(REQ, seq=2 * i, rport=10000 + i), ps),
                       events.decode(_raw(RESP, seq=2 * i + 1, hook=0, direction=layout.DIR_WRITE,
                                          rport=10000 + i), ps)])
        assert time.monotonic() - started < 10          # nobody read: process() still returned every time
        lost = d.stats.losses[("prof", "web", "sink.stdout")]
        assert 0 < lost < 2 * batches

        chunks = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 1 << 16), b"")))
        reader.start()
        time.sleep(0.5)                                  # the writer catches up once someone reads
        d.process([events.decode(_raw(REQ, seq=10_000, rport=60000), ps)])
        sink.close()
        os.close(write_fd)
        write_fd = -1
        reader.join(10)
        recs = [json.loads(line) for line in b"".join(chunks).splitlines()]
        told = [r for r in recs if r["type"] == "loss"]
        assert told and sum(r["count"] for r in told) == lost and told[0]["stage"] == "sink.stdout"
        assert sum(r["type"] != "loss" for r in recs) + lost == 2 * batches + 1
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
