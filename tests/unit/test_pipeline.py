"""Decode → per-connection workers → records → sinks, on synthetic ring-buffer samples (no root)."""
from __future__ import annotations

import io
import json
import os
import stat

from orchestrator.bpf import hooks, layout, render
from orchestrator.pipeline import dispatch, events
from orchestrator.plan import model
from orchestrator.sinks import jsonl, stdout
from orchestrator.profile import models

REQ = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def _probe_set(ports=(), parsers=None, kind="openssl", target_hooks=None):
    t = models.Target("web", kind, binary="/usr/sbin/nginx", filters=models.Filters(ports=ports))
    return model.ProbeSet("prof", t, "/lib/libssl.so.3", target_hooks or hooks.BUILTIN["openssl"][:5], (), None,
                          render.Rendered("", "d"), parsers=parsers)


def _raw(payload: bytes, *, seq=0, hook=1, direction=layout.DIR_READ, record=layout.RECORD_DATA, fd=5,
         session=0xabc, lport=443, rport=40000, family=2, length=None, truncated=False, pid=100, ret=0, args=(0,) * 6,
         gen=1):
    addr = b"\x7f\0\0\x01" + b"\0" * 12
    header = layout.HEADER.pack(
        1_000, seq, session, ret, *args, pid, pid, 33, fd, len(payload) if length is None else length, len(payload),
        hook, record, direction, layout.FLAG_TRUNCATED if truncated else 0, gen, family, lport, rport, 0, addr, addr,
        b"nginx".ljust(16, b"\0"), 0)
    return header + payload


class ListSink:
    def __init__(self):
        self.records = []

    def write(self, records):
        self.records += [r.to_dict() for r in records]


def _run(samples, ps):
    sink = ListSink()
    d = dispatch.Dispatcher(lambda _p: [sink])
    d.process([events.decode(s, ps) for s in samples])
    d.flush_all()
    return sink.records


def test_decode_reads_every_header_field():
    ev = events.decode(_raw(b"abc", seq=7, fd=9, lport=8443, rport=5555, truncated=True, length=10), _probe_set())
    assert (ev.seq, ev.fd, ev.pid, ev.uid, ev.comm, ev.payload, ev.len, ev.truncated) == \
           (7, 9, 100, 33, "nginx", b"abc", 10, True)
    assert ev.conn_tuple() == (("127.0.0.1", 8443), ("127.0.0.1", 5555))


def test_request_and_response_paired_on_one_connection():
    ps = _probe_set()
    recs = _run([_raw(REQ, seq=0), _raw(RESP, seq=1, hook=0, direction=layout.DIR_WRITE)], ps)
    assert [r["type"] for r in recs] == ["http.request", "http.response"]
    req, resp = recs
    assert req["path"] == "/a" and req["conn"] == {"local": "127.0.0.1:443", "remote": "127.0.0.1:40000"}
    assert resp["request"] == {"method": "GET", "path": "/a"} and resp["body"] == "hello"
    for key in ("type", "ts", "seq", "profile", "target", "pid", "tid", "comm", "uid"):
        assert key in req
    assert req["profile"] == "prof" and req["target"] == "web"


def test_reused_session_pointer_on_a_new_connection_starts_fresh():
    ps = _probe_set()
    recs = _run([_raw(REQ, rport=1111), _raw(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n", rport=2222)], ps)
    assert [(r["path"], r["conn"]["remote"]) for r in recs] == [("/a", "127.0.0.1:1111"), ("/b", "127.0.0.1:2222")]


def test_non_http_bytes_become_data_records_base64_when_binary():
    recs = _run([_raw(b"\xff\xfe binary"), _raw(b"plain text", hook=0, direction=layout.DIR_WRITE)], _probe_set())
    assert recs[0]["type"] == "data" and recs[0]["encoding"] == "base64" and recs[0]["direction"] == "read"
    assert recs[1]["data"] == "plain text" and "encoding" not in recs[1]


def test_parsers_empty_list_means_raw_only():
    recs = _run([_raw(REQ)], _probe_set(parsers=()))
    assert [r["type"] for r in recs] == ["data"]


def test_truncated_body_is_marked():
    body = b"x" * 100
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body
    cut = resp[:60]
    recs = _run([_raw(cut, hook=0, direction=layout.DIR_WRITE, length=len(resp), truncated=True)], _probe_set())
    assert recs[0]["type"] == "http.response" and recs[0]["truncated"] is True and recs[0]["body_len"] == 100


def test_userspace_port_filter_for_connections_the_kernel_did_not_resolve():
    # family 0 = the kernel did not know the connection; with fd -1 nothing can resolve it, so it passes.
    assert _run([_raw(REQ, family=0, fd=-1)], _probe_set(ports=(443,)))
    assert _run([_raw(REQ, lport=8080, rport=1)], _probe_set(ports=(443,))) == []


def test_uprobe_call_args_are_typed():
    t_hooks = (hooks.Hook("f", "return", hooks.RECORD_CALL, scalars=((0, "a", "int"), (1, "b", "uint"),
                                                                      (2, "c", "long"), ("ret", "r", "int")),
                          payload=hooks.Payload(3, "string"), name="s", ret32=True),)
    ps = _probe_set(kind="uprobe", target_hooks=t_hooks)
    neg = (1 << 64) - 5
    recs = _run([_raw(b"hi", record=layout.RECORD_CALL, hook=0, ret=-1, args=(0xFFFFFFFF, 0xFFFFFFFF, neg, 0, 0, 0))],
                ps)
    assert recs[0]["args"] == {"a": -1, "b": 0xFFFFFFFF, "c": -5, "r": -1, "s": "hi"}
    assert recs[0]["ret"] == -1


def test_jsonl_sink_creates_0600_and_writes_one_object_per_line(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    sink = jsonl.JsonlSink(str(path))
    ps = _probe_set()
    recs = []
    d = dispatch.Dispatcher(lambda _p: [sink])
    d.process([events.decode(_raw(REQ), ps), events.decode(_raw(RESP, hook=0, direction=layout.DIR_WRITE), ps)])
    sink.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = path.read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["type"] for r in recs] == ["http.request", "http.response"]


def test_stdout_sink_shows_method_path_status_and_addresses():
    buf = io.StringIO()
    sink = stdout.StdoutSink(color="never", file=buf)
    d = dispatch.Dispatcher(lambda _p: [sink])
    ps = _probe_set()
    d.process([events.decode(_raw(REQ), ps), events.decode(_raw(RESP, hook=0, direction=layout.DIR_WRITE), ps)])
    text = buf.getvalue()
    assert "GET /a HTTP/1.1" in text and "HTTP/1.1 200 OK" in text
    assert "nginx[100]" in text and "127.0.0.1:443 ← 127.0.0.1:40000" in text and "\x1b[" not in text


def test_loss_records_carry_profile_and_are_counted():
    sink = ListSink()
    d = dispatch.Dispatcher(lambda _p: [sink])
    d.process([events.Record("loss", None, {"profile": "prof", "target": "web", "stage": "kernel.ringbuf",
                                            "count": 3})])
    assert sink.records[0]["type"] == "loss" and sink.records[0]["count"] == 3 and "ts" in sink.records[0]


def test_idle_connections_are_evicted_with_a_fake_clock():
    now = [0]
    sink = ListSink()
    d = dispatch.Dispatcher(lambda _p: [sink], clock=lambda: now[0], idle_evict_ns=10)
    d.process([events.decode(_raw(REQ), _probe_set())])
    assert d.worker_count == 1
    d.evict_idle(now=5_000)
    assert d.worker_count == 0


# ---- protocol choice per connection, on real recorded conversations

import pathlib  # noqa: E402
import struct  # noqa: E402

PARSER_FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "parsers" / "fixtures"


def _conv(path: pathlib.Path, captured_is_server: bool):
    """A recorded conversation as (direction, bytes) seen by the captured process."""
    if path.suffix == ".json":
        chunks = [(side, bytes.fromhex(h)) for side, h in json.loads(path.read_text())["chunks"]]
        from_client = [(side == "client", data) for side, data in chunks]
    else:
        b, i, from_client = path.read_bytes(), 0, []
        while i < len(b):
            n = struct.unpack_from(">I", b, i + 1)[0]
            from_client.append((b[i:i + 1] == b">", b[i + 5:i + 5 + n]))
            i += 5 + n
    return [(layout.DIR_READ if c == captured_is_server else layout.DIR_WRITE, data) for c, data in from_client]


def _socket_probe_set(parsers=None):
    t = models.Target("sql", "socket")
    return model.ProbeSet("prof", t, "syscalls", hooks.BUILTIN["socket"], (), None, render.Rendered("", "d"),
                          parsers=parsers)


def _run_conv(chunks, ps):
    return _run([_raw(data, seq=i, hook=0, direction=d, session=0) for i, (d, data) in enumerate(chunks)], ps)


def test_http2_server_that_speaks_first_is_still_recognised():
    chunks = _conv(PARSER_FIXTURES / "http2" / "server_speaks_first.json", captured_is_server=True)
    assert chunks[0][0] == layout.DIR_WRITE        # the server's SETTINGS come first
    recs = _run_conv(chunks, _probe_set())
    assert [r["type"] for r in recs] == ["http.request", "http.response"]
    assert recs[0]["version"] == "HTTP/2" and recs[0]["stream_id"] == 1


def test_mysql_and_postgres_are_chosen_from_the_first_bytes_either_side():
    for captured_is_server in (True, False):
        my = _run_conv(_conv(PARSER_FIXTURES / "mysql" / "real_cli_text.conv", captured_is_server),
                       _socket_probe_set())
        assert {"mysql.query", "mysql.result"} <= {r["type"] for r in my}
        assert not [r for r in my if r["type"] in ("data", "parse_error")]
    pg_file = sorted((PARSER_FIXTURES / "postgres").glob("real_*.conv"))[0]
    pg = _run_conv(_conv(pg_file, True), _socket_probe_set())
    assert {"pg.query", "pg.result"} <= {r["type"] for r in pg}


def test_parsers_list_limits_the_choice():
    chunks = _conv(PARSER_FIXTURES / "mysql" / "real_cli_text.conv", True)
    recs = _run_conv(chunks, _socket_probe_set(parsers=("postgres",)))
    assert recs and {r["type"] for r in recs} == {"data"}


def test_a_parse_error_turns_only_that_connection_raw():
    ps = _socket_probe_set()
    good = _conv(PARSER_FIXTURES / "mysql" / "real_cli_text.conv", True)
    bad = _conv(PARSER_FIXTURES / "mysql" / "bad_row.conv", True) + [(layout.DIR_READ, b"after the error")]
    events_ = [_raw(d, seq=i, hook=0, direction=dr, session=0, fd=7, rport=1)
               for i, (dr, d) in enumerate(bad)]
    events_ += [_raw(d, seq=i, hook=0, direction=dr, session=0, fd=8, rport=2) for i, (dr, d) in enumerate(good)]
    recs = _run(events_, ps)
    by_conn = {}
    for r in recs:
        by_conn.setdefault(r["conn"]["remote"], []).append(r["type"])
    assert "mysql.result" in by_conn["127.0.0.1:2"] and "parse_error" not in by_conn["127.0.0.1:2"]
    # the broken one: one parse_error, then its bytes as raw data
    assert by_conn["127.0.0.1:1"].count("parse_error") == 1 and by_conn["127.0.0.1:1"][-1] == "data"


def test_jsonl_lines_are_the_records_dicts(tmp_path):
    path = tmp_path / "o.jsonl"
    sink = jsonl.JsonlSink(str(path))
    ps = _probe_set()
    recs = []

    class Keep:
        def write(self, records):
            recs.extend(records)

    d = dispatch.Dispatcher(lambda _p: [Keep(), sink])
    d.process([events.decode(_raw(REQ), ps), events.decode(_raw(RESP, hook=0, direction=layout.DIR_WRITE), ps),
               events.decode(_raw("héllo wörld".encode(), seq=3, rport=7), ps),
               events.Record("loss", None, {"profile": "prof", "target": "web", "stage": "s", "count": 1})])
    d.flush_all()    # the undecided first chunk of the third connection is held until then
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(recs) == len(lines) == 4
    for r, line in zip(recs, lines):
        assert json.loads(line) == r.to_dict()
        assert list(json.loads(line)) == list(r.to_dict())      # same key order
    assert "héllo wörld" in path.read_text(encoding="utf-8")     # UTF-8, not \u escapes


def test_repeated_http1_headers_stay_a_list_in_records():
    cookies = ["a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT", "b=2; Expires=Thu, 22 Oct 2026 07:28:00 GMT"]
    resp = ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + "".join(f"Set-Cookie: {c}\r\n" for c in cookies)
            + "\r\n").encode()
    recs = _run([_raw(REQ, seq=0), _raw(resp, seq=1, hook=0, direction=layout.DIR_WRITE)], _probe_set())
    assert recs[1]["headers"]["Set-Cookie"] == cookies       # not joined with ", " (the dates hold commas)
    assert recs[1]["headers"]["Content-Length"] == "0"


def test_http1_and_http2_records_get_the_same_header_and_body_shaping():
    import hpack

    def frame(ftype, flags, sid, payload):
        return struct.pack(">HBBBL", len(payload) >> 8, len(payload) & 0xFF, ftype, flags, sid) + payload

    body = b"\xff\xfebinary"
    hdrs = [("cookie", "a=1"), ("accept", "a"), ("cookie", "b=2"), ("accept", "b")]
    h1 = ("POST /p HTTP/1.1\r\n" + "".join("%s: %s\r\n" % h for h in hdrs)
          + "content-length: %d\r\n\r\n" % len(body)).encode() + body
    block = hpack.Encoder().encode([(":method", "POST"), (":path", "/p"), (":scheme", "http"),
                                    (":authority", "x"), *hdrs, ("content-length", "8")])
    h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 4, 1, block) + frame(0, 1, 1, body)
    r1 = _run([_raw(h1, direction=layout.DIR_WRITE, rport=1)], _probe_set())
    r2 = _run([_raw(h2, direction=layout.DIR_WRITE, rport=2)], _probe_set())
    assert [r["type"] for r in r1] == [r["type"] for r in r2] == ["http.request"]
    shaped = ("headers", "body", "body_len", "body_encoding", "truncated")
    assert {k: r1[0].get(k) for k in shaped} == {k: r2[0].get(k) for k in shaped} == {
        "headers": {"cookie": "a=1; b=2", "accept": ["a", "b"], "content-length": "8"}, "body": "//5iaW5hcnk=", "body_len": 8,
        "body_encoding": "base64", "truncated": None}
    assert r1[0]["version"] == "HTTP/1.1" and r2[0]["version"] == "HTTP/2"


def test_http1_parse_error_record_fields_are_unchanged():
    recs = _run([_raw(b"GET / HTTP/1.1\r\nbad header\r\n\r\n", seq=0)], _probe_set())
    assert [r["type"] for r in recs] == ["parse_error"]
    assert {k: recs[0][k] for k in ("protocol", "offset")} == {"protocol": "http1", "offset": 16}
    assert "invalid header line" in recs[0]["reason"] and "direction" not in recs[0]


class PlaintextSink(ListSink):
    """A sink that also takes the plaintext itself (pcapng source: plaintext)."""

    def __init__(self):
        super().__init__()
        self.data = []

    def write_data(self, items):
        self.data += [(ev.direction, ev.payload, conn) for ev, conn in items]


def test_plaintext_reaches_sinks_that_take_it_in_order_with_its_connection_and_port_filter():
    ps = _probe_set(ports=(443,))
    taker, plain = PlaintextSink(), ListSink()
    d = dispatch.Dispatcher(lambda _p: [taker, plain])
    d.process([events.decode(_raw(REQ, seq=0), ps), events.decode(_raw(RESP, seq=1, direction=layout.DIR_WRITE), ps),
               events.decode(_raw(b"elsewhere", seq=2, lport=8080, session=0xdef, fd=6), ps)])
    conn = (("127.0.0.1", 443), ("127.0.0.1", 40000))
    assert taker.data == [(layout.DIR_READ, REQ, conn), (layout.DIR_WRITE, RESP, conn)]   # port 8080: filtered out
    assert [r["type"] for r in taker.records] == [r["type"] for r in plain.records] == ["http.request", "http.response"]
    assert not hasattr(plain, "data")


def test_the_queue_is_bounded_in_bytes_and_a_producer_waits_for_room():
    """An overload backs up into the producer (then the kernel ring, which counts its drops),
    not into memory: the queue never holds much more than max_queued_bytes, and nothing is
    lost or reordered on the way."""
    import threading
    import time

    class SlowSink:
        def __init__(self):
            self.seqs = []

        def write(self, records):
            time.sleep(0.002)
            self.seqs += [r.event.seq for r in records]

    ps = _probe_set()
    request = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 960 + b"\r\n\r\n"
    sink = SlowSink()
    limit = 64 * 1024
    d = dispatch.Dispatcher(lambda _p: [sink], max_queued_bytes=limit)
    d.start()
    peak = [0]
    batch_bytes = 8 * (dispatch.EVENT_OVERHEAD + len(request))

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], d.queued_bytes)
            time.sleep(0.0005)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    seq = 0
    t0 = time.monotonic()
    for _ in range(100):
        batch = []
        for _ in range(8):
            batch.append(events.decode(_raw(request, seq=seq, fd=9, session=seq + 1), ps))
            seq += 1
        d.submit(batch)
    waited = time.monotonic() - t0
    d.stop()
    done.set()
    watcher.join()
    assert sink.seqs == list(range(seq))
    assert 0 < peak[0] <= limit + batch_bytes
    assert d.queued_bytes == 0
    assert waited > 0.05          # the producer did wait for the slow sink (100 writes of 2 ms)


def test_records_are_counted_by_profile_target_and_type():
    sink = ListSink()
    d = dispatch.Dispatcher(lambda _p: [sink])
    ps = _probe_set()
    d.process([events.decode(_raw(REQ, seq=0), ps), events.decode(_raw(RESP, seq=1, hook=0, direction=layout.DIR_WRITE), ps),
               events.Record("loss", None, {"profile": "prof", "target": "web", "stage": "kernel.ringbuf", "count": 3})])
    d.flush_all()
    assert [r["type"] for r in sink.records] == ["http.request", "http.response", "loss"]
    assert d.stats.records_by_target == {("prof", "web", "http.request"): 1, ("prof", "web", "http.response"): 1,
                                         ("prof", "web", "loss"): 1}
    assert d.stats.records == {"http.request": 1, "http.response": 1, "loss": 1}


def test_latency_ms_is_round_of_the_quotient_for_every_kind_of_value():
    import random
    rng = random.Random(3)
    values = [0, 1, 499, 500, 501, 999, 1000, 1500, 2500, 123456500, -1, -400, -500, -1400, -1600,
              10**15 - 1, 10**15, 10**15 + 500, 2**53, 2**63 - 1, -(2**63)]
    values += [rng.randrange(0, 10**12) for _ in range(20000)]
    values += [rng.randrange(0, 10**9) // 1000 * 1000 + 500 for _ in range(2000)]       # ties
    values += [rng.randrange(-10**9, 0) for _ in range(2000)]
    for ns in values:
        got, want = events.latency_ms(ns), round(ns / 1e6, 3)
        assert repr(got) == repr(want), ns      # (repr: -0.0 and 0.0 differ in the JSON)
