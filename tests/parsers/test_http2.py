"""Tests for orchestrator.parsers.http2 (sans-IO HTTP/2 observer).

Fixtures are real conversations under fixtures/http2/ (regenerate with
fixtures/http2/make_fixtures.py: an h2 client and an h2 server talking in
memory, plus one curl -> nginx h2c capture).  Each is fed from both
perspectives (captured process = client: its requests are "write";
captured process = server: they are "read"), whole, with every chunk split
in two at every offset, one byte at a time and in random chunkings; all must
give the same messages.  Chunk i carries ts = i ms, so latencies are exact.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from orchestrator.parsers.http2 import PREFACE, Http2Parser, Message, looks_like_http2

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "http2"
MS = 1_000_000


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()


def match(expected, got) -> bool:
    if expected is ANY:
        return True
    if isinstance(expected, dict):
        return (isinstance(got, dict) and expected.keys() == got.keys()
                and all(match(v, got[k]) for k, v in expected.items()))
    if isinstance(expected, list):
        return (isinstance(got, list) and len(expected) == len(got)
                and all(match(e, g) for e, g in zip(expected, got)))
    return type(expected) is type(got) and expected == got


def Req(sid, method, path, headers, body="", body_len=None, authority="example.com",
        scheme="https", **extra):
    f = {"stream_id": sid, "method": method, "path": path, "authority": authority,
         "scheme": scheme, "version": "HTTP/2", "headers": headers, "body": body,
         "body_len": len(body) if body_len is None else body_len}
    f.update(extra)
    return ("http.request", f)


def Resp(sid, status, headers, body="", request=None, latency=1.0, body_len=None, **extra):
    f = {"stream_id": sid, "status": status, "version": "HTTP/2", "headers": headers,
         "body": body, "body_len": len(body) if body_len is None else body_len}
    f.update(extra)
    f["request"] = request
    f["latency_ms"] = latency
    # keep the parser's key order irrelevant: compare as dicts
    return ("http.response", f)


def _noise(seed: int, n: int) -> str:  # mirrors make_fixtures._noise
    rng = random.Random(seed)
    return "".join(rng.choice("<>[]^`{|}~")
                   for _ in range(n))


UA = {"user-agent": "curl/7.88.1"}
BIG = "".join("line %05d of a large body\n" % i for i in range(1600))[:40000]


def R(method, path):
    return {"method": method, "path": path}


@dataclass
class Case:
    name: str
    messages: list
    max_body: int = 16384

    def chunks(self) -> list[tuple[str, bytes, int]]:
        doc = json.loads((FIXTURES / (self.name + ".json")).read_text())
        return [(who, bytes.fromhex(hx), i * MS) for i, (who, hx) in enumerate(doc["chunks"])]


CASES = [
    Case("get_simple", [
        Req(1, "GET", "/index.html?q=1", {**UA, "accept": "*/*"}),
        Resp(1, 200, {"content-type": "text/plain", "content-length": "14"}, "Hello, world!\n",
             R("GET", "/index.html?q=1")),
    ]),
    Case("server_speaks_first", [
        Req(1, "GET", "/", UA, authority="h2.test", scheme="http"),
        Resp(1, 204, {"server": "h2"}, "", R("GET", "/"), latency=1.0),
    ]),
    Case("post_body", [
        Req(1, "POST", "/api/items",
            {**UA, "content-type": "application/json", "content-length": "27",
             "expect": "100-continue"}, '{"name":"widget","qty":42}\n'),
        Resp(1, 201, {"content-type": "application/json", "location": "/api/items/7"},
             '{"id":7}', R("POST", "/api/items")),
    ]),
    Case("interleaved_streams", [
        Req(1, "GET", "/one", UA),
        Req(5, "GET", "/three", UA),
        Resp(5, 200, {"x-stream": "5"}, "three-a three-b", R("GET", "/three"), latency=3.0),
        Req(3, "POST", "/two", {**UA, "content-type": "text/plain"}, "body of two"),
        Resp(1, 200, {"x-stream": "1"}, "one-a one-b", R("GET", "/one"), latency=5.0),
        Resp(3, 202, {"x-stream": "3"}, "two done", R("POST", "/two")),
    ]),
    Case("continuation", [
        Req(1, "GET", "/cont", {**UA, "x-big": _noise(1, 12000), "x-after": "1"}),
        Resp(1, 200, {"x-big-resp": _noise(2, 12000)}, "ok", R("GET", "/cont")),
    ]),
    Case("padding", [
        Req(1, "PUT", "/padded", UA, "abcdef"),
        Resp(1, 200, {"x-pad": "yes"}, "padded body", R("PUT", "/padded"), latency=2.0),
    ]),
    Case("trailers", [
        Req(1, "POST", "/pkg.Svc/Call",
            {"content-type": "application/grpc", "te": "trailers", "x-checksum": "c0ffee"},
            base64.b64encode(b"\x00\x00\x00\x00\x05\x0a\x03abc\xff").decode(), body_len=11,
            body_encoding="base64"),
        Resp(1, 200, {"content-type": "application/grpc", "grpc-status": "0",
                      "grpc-message": "OK"}, "\x00\x00\x00\x00\x02\x08\x01",
             R("POST", "/pkg.Svc/Call")),
    ]),
    Case("large_body", [
        Req(1, "GET", "/big", UA),
        Resp(1, 200, {"content-length": "40000"}, BIG[:16384], R("GET", "/big"),
             body_len=40000, truncated=True),
        Req(3, "GET", "/small", UA),
        Resp(3, 200, {}, "small", R("GET", "/small")),
    ]),
    Case("dynamic_table", [
        m
        for i, sid in enumerate((1, 3, 5, 7))
        for m in (
            Req(sid, "GET", "/r%d" % i,
                {**UA, "x-token": "secret-token-value-0123456789", "cookie": "a=1; b=2"}),
            Resp(sid, 200, {"server": "h2-fixture", "cache-control": "no-store"},
                 "r%d" % i if i < 3 else "", R("GET", "/r%d" % i)),
        )
    ]),
    Case("rst_stream", [
        Req(1, "GET", "/slow", UA),
        Resp(1, 200, {}, "partial ", R("GET", "/slow"), latency=2.0, reset=True, error_code=8),
        Req(3, "POST", "/upload", UA, "first part second part", reset=True, error_code=7),
        Resp(3, None, {}, "", R("POST", "/upload"), latency=0.0, reset=True, error_code=7),
        Req(5, "GET", "/after", UA),
        Resp(5, 200, {}, "fine", R("GET", "/after")),
    ]),
    Case("push_promise", [
        Req(1, "GET", "/index.html", UA),
        Req(2, "GET", "/style.css", {}, pushed=True, promised_on_stream=1),
        Resp(1, 200, {"content-type": "text/html"}, "<link rel=stylesheet href=/style.css>",
             R("GET", "/index.html")),
        Resp(2, 200, {"content-type": "text/css"}, "body{}", R("GET", "/style.css"),
             latency=0.0),
    ]),
    Case("control_frames", [
        Req(1, "GET", "/c", UA),
        Resp(1, 200, {}, "ok", R("GET", "/c"), latency=2.0),
        Req(3, "GET", "/late", UA),
        Resp(3, None, {}, "", R("GET", "/late"), reset=True, error_code=0),
    ]),
    Case("nginx_h2c", [
        Req(1, "POST", "/echo",
            {**UA, "accept": "*/*", "content-length": "7",
             "content-type": "application/x-www-form-urlencoded"}, "x=1&y=2",
            authority=ANY, scheme="http"),
        Resp(1, 201, {"server": "nginx/1.22.1", "date": ANY, "content-type": "text/plain",
                      "content-length": "8"}, "created\n", R("POST", "/echo"), latency=ANY),
    ]),
]
IDS = [c.name for c in CASES]
PERSPECTIVES = ["client", "server"]


def direction(who: str, perspective: str) -> str:
    return "write" if who == perspective else "read"


def run(case: Case, chunks, perspective: str, max_body: int | None = None):
    """Feed (who, bytes, ts[, missing]) chunks; check the error-state contract on the way."""
    p = Http2Parser(max_body=case.max_body if max_body is None else max_body)
    out: list[Message] = []
    for c in chunks:
        who, data, ts = c[:3]
        got = p.feed(direction(who, perspective), data, ts, *c[3:])
        assert isinstance(got, list)
        if out and out[-1].type == "parse_error":
            assert got == []
        out += got
    return out, p


def as_tuples(msgs: list[Message]) -> list:
    return [(m.type, m.fields) for m in msgs]


def assert_matches(got: list[Message], expected: list) -> None:
    got_t = as_tuples(got)
    assert len(got_t) == len(expected), got_t
    for g, e in zip(got_t, expected):
        assert g[0] == e[0], g
        assert match(e[1], g[1]), (g, e)


def split_offsets(data: bytes):
    """Every offset of a small chunk; for a big one, around every frame boundary + a sample."""
    n = len(data)
    if n <= 2000:
        return range(n + 1)
    near = {o + d for f in frames(data) for o in (f[0], f[0] + 9 + f[4]) for d in range(-12, 13)}
    return sorted(x for x in near | set(range(0, n + 1, 127)) | {n} if 0 <= x <= n)


def test_all_fixture_files_are_covered():
    assert {p.stem for p in FIXTURES.glob("*.json")} == {c.name for c in CASES}


@pytest.mark.parametrize("perspective", PERSPECTIVES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fixture_whole(case: Case, perspective: str):
    msgs, p = run(case, case.chunks(), perspective)
    assert_matches(msgs, case.messages)
    assert not p.failed
    assert p.client_direction == direction("client", perspective)
    for m in msgs:
        json.dumps(m.fields)  # JSON-ready


@pytest.mark.parametrize("perspective", PERSPECTIVES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fixture_split_everywhere(case: Case, perspective: str):
    chunks = case.chunks()
    expected, _ = run(case, chunks, perspective)
    for j, (who, data, ts) in enumerate(chunks):
        for k in split_offsets(data):
            cs = chunks[:j] + [(who, data[:k], ts), (who, data[k:], ts)] + chunks[j + 1:]
            got, _ = run(case, cs, perspective)
            assert got == expected, "chunk %d split at %d" % (j, k)


@pytest.mark.parametrize("perspective", PERSPECTIVES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fixture_byte_at_a_time(case: Case, perspective: str):
    chunks = case.chunks()
    expected, _ = run(case, chunks, perspective)
    small = [(who, data[i:i + 1], ts) for who, data, ts in chunks for i in range(len(data))]
    got, _ = run(case, small, perspective)
    assert got == expected


@pytest.mark.parametrize("perspective", PERSPECTIVES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fixture_random_chunking(case: Case, perspective: str):
    chunks = case.chunks()
    expected, _ = run(case, chunks, perspective)
    rng = random.Random(len(case.name) * 31 + len(perspective))
    for _ in range(20):
        cs = []
        for who, data, ts in chunks:
            i = 0
            while i < len(data):
                n = rng.choice((1, 2, 3, 7, 9, 10, 16, 100, 4096))
                cs.append((who, data[i:i + n], ts))
                i += n
        got, _ = run(case, cs, perspective)
        assert got == expected


# ------------------------------------------------------------ frame helpers


def frames(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(offset, type, flags, stream, length) of the frames in one chunk."""
    out, i = [], 24 if data.startswith(PREFACE) else 0
    while i < len(data):
        hi, lo, t, fl, sid = struct.unpack_from(">HBBBL", data, i)
        n = hi << 8 | lo
        out.append((i, t, fl, sid, n))
        i += 9 + n
    return out


def case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def _find_chunk(chunks, who: str, ftype: int, nth: int = 0):
    """Index of the chunk of `who` holding frame type `ftype`, and that frame (nth match)."""
    for j, (w, data, _ts) in enumerate(chunks):
        if w != who:
            continue
        fs = [f for f in frames(data) if f[1] == ftype]
        if len(fs) > nth:
            return j, fs[nth]
        nth -= len(fs)
    raise AssertionError("no such frame")


# ------------------------------------------------------------ missing bytes


@pytest.mark.parametrize("perspective", PERSPECTIVES)
def test_missing_inside_data_then_recovery(perspective):
    chunks = case("large_body").chunks()
    j, (off, _t, _fl, _sid, n) = _find_chunk(chunks, "server", 0, nth=1)  # 2nd DATA of /big
    who, data, ts = chunks[j]
    cut = off + 9 + 100
    cs = chunks[:j] + [(who, data[:cut], ts, n - 100), (who, data[off + 9 + n:], ts)] \
        + chunks[j + 1:]
    got, p = run(case("large_body"), cs, perspective, max_body=65536)
    big = BIG.encode()
    body = (big[:16384 + 100] + big[32768:]).decode()
    assert_matches(got, [
        Req(1, "GET", "/big", UA),
        Resp(1, 200, {"content-length": "40000"}, body, R("GET", "/big"), body_len=40000,
             truncated=True),
        Req(3, "GET", "/small", UA),
        Resp(3, 200, {}, "small", R("GET", "/small")),
    ])
    assert not p.failed


def test_missing_in_padded_data_covers_data_and_padding():
    chunks = case("padding").chunks()
    j, (off, _t, fl, _sid, n) = _find_chunk(chunks, "client", 0, nth=2)  # "def" + 255 pad
    assert fl & 0x8 and n == 259
    who, data, ts = chunks[j]
    cs = chunks[:j] + [(who, data[:off + 9 + 2], ts, n - 2)] + chunks[j + 1:]
    got, p = run(case("padding"), cs, "client")
    assert got[0].fields["body"] == "abcd"
    assert got[0].fields["body_len"] == 6 and got[0].fields["truncated"] is True
    assert got[1].fields["status"] == 200 and not p.failed


def test_missing_past_the_data_frame_emits_then_fails():
    chunks = case("get_simple").chunks()
    j, (off, _t, _fl, _sid, n) = _find_chunk(chunks, "server", 0)
    who, data, ts = chunks[j]
    cs = chunks[:j] + [(who, data[:off + 9 + 5], ts, n - 5 + 20)]
    got, p = run(case("get_simple"), cs, "server")
    assert [m.type for m in got] == ["http.request", "http.response", "parse_error"]
    assert got[1].fields["body"] == "Hello" and got[1].fields["truncated"] is True
    err = got[2].fields
    assert err["protocol"] == "http2" and "uncaptured" in err["reason"]
    # offset = first byte after the DATA frame, counted in the server's byte stream
    before = sum(len(c[1]) for c in chunks[:j] if c[0] == "server")
    assert err["offset"] == before + off + 9 + n
    assert p.failed


@pytest.mark.parametrize("perspective", PERSPECTIVES)
def test_missing_in_headers_is_parse_error(perspective):
    chunks = case("dynamic_table").chunks()
    j, (off, _t, _fl, _sid, n) = _find_chunk(chunks, "client", 1, nth=1)  # 2nd request
    who, data, ts = chunks[j]
    cs = chunks[:j] + [(who, data[:off + 9 + 3], ts, n - 3)] + chunks[j + 1:]
    got, p = run(case("dynamic_table"), cs, perspective)
    assert [m.type for m in got] == ["http.request", "http.response", "parse_error"]
    before = sum(len(c[1]) for c in chunks[:j] if c[0] == "client")
    assert got[-1].fields == {"protocol": "http2", "reason": got[-1].fields["reason"],
                              "offset": before + off + 9 + 3,
                              "direction": direction("client", perspective)}
    assert p.failed
    assert p.feed("read", b"\x00" * 100, 0) == [] and p.feed("write", b"", 0, 5) == []


@pytest.mark.parametrize("where", ["preface", "frame header", "settings"])
def test_missing_outside_data_is_parse_error(where):
    p = Http2Parser()
    if where == "preface":
        out = p.feed("write", PREFACE[:10], 0, 14)
    elif where == "frame header":
        out = p.feed("write", PREFACE + b"\x00\x00", 0, 7)
    else:
        out = p.feed("write", PREFACE + b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00", 0, 4)
    assert [m.type for m in out] == ["parse_error"] and p.failed


# ------------------------------------------------------------ behaviour


def _settings(*pairs, ack=False) -> bytes:
    body = b"".join(struct.pack(">HL", k, v) for k, v in pairs)
    return struct.pack(">HBBBL", len(body) >> 8, len(body) & 0xFF, 4, 1 if ack else 0, 0) + body


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, ftype, flags, sid) + payload


def _hpack(*headers, encoder=None) -> bytes:
    import hpack

    return (encoder or hpack.Encoder()).encode(list(headers))


GET = ((":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "a"))


def _fail_reason(chunks) -> tuple[str, int]:
    p = Http2Parser()
    out = []
    for d, data in chunks:
        out += p.feed(d, data, 0)
    assert out and out[-1].type == "parse_error", as_tuples(out)
    assert p.failed
    return out[-1].fields["reason"], out[-1].fields["offset"]


CLIENT_START = PREFACE + _settings()


@pytest.mark.parametrize("chunks, reason, offset", [
    ([("write", PREFACE), ("read", PREFACE)], "first frame is not SETTINGS", 0),
    ([("read", _settings()), ("write", _settings())], "missing client connection preface", 0),
    ([("write", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40)],
     "first frame is not SETTINGS", 0),
    ([("write", PREFACE + _frame(6, 0, 0, b"12345678"))], "first frame is not SETTINGS", 24),
    ([("write", CLIENT_START + _frame(1, 5, 0, _hpack(*GET)))], "stream 0", 33),
    ([("write", CLIENT_START + _frame(0, 1, 0, b"x"))], "DATA frame on stream 0", 33),
    ([("write", CLIENT_START + _frame(1, 0xD, 1, b"\x09" + _hpack(*GET)))],
     "padding/priority longer", 33),
    ([("write", CLIENT_START + _frame(0, 0x9, 1, b"\x05abc"))], "DATA padding longer", 33),
    ([("write", CLIENT_START + _frame(9, 4, 1, b"\x82"))], "unexpected CONTINUATION", 33),
    ([("write", CLIENT_START + _frame(1, 1, 1, _hpack(*GET)) + _frame(0, 1, 1, b"x"))],
     "expected CONTINUATION", 33 + 9 + len(_hpack(*GET))),
    ([("write", CLIENT_START + _frame(1, 5, 1, b"\xff\xff\xff\xff"))], "HPACK", 33),
    ([("write", CLIENT_START + _frame(1, 5, 1, b"\x3f\xe1\x7f"))], "HPACK", 33),  # size > max
    ([("write", CLIENT_START + _frame(0, 0, 1, b"x" * 16385))], "exceeds SETTINGS_MAX", 33),
    ([("write", PREFACE + _frame(4, 0, 0, b"\x00" * 5))], "multiple of 6", 24),
    ([("write", CLIENT_START + _frame(4, 1, 0, b"\x00" * 6))], "SETTINGS ACK with", 33),
    ([("write", CLIENT_START + _frame(4, 0, 1, b""))], "SETTINGS frame on stream", 33),
    ([("write", CLIENT_START + _frame(6, 0, 0, b"1234"))], "malformed PING", 33),
    ([("write", CLIENT_START + _frame(3, 0, 0, b"\x00" * 4))], "malformed RST_STREAM", 33),
    ([("write", CLIENT_START + _frame(7, 0, 0, b"\x00" * 4))], "malformed GOAWAY", 33),
    ([("write", CLIENT_START + _frame(8, 0, 0, b"\x00" * 3))], "malformed WINDOW_UPDATE", 33),
    ([("write", CLIENT_START + _frame(2, 0, 1, b"\x00" * 4))], "malformed PRIORITY", 33),
    ([("write", CLIENT_START + _frame(5, 4, 1, b"\x00\x00\x00\x02"))], "PUSH_PROMISE sent by", 33),
    ([("read", _settings()), ("write", b"GET / HTTP/1.1\r\n\r\n")],
     "missing client connection preface", 0),
    ([("sideways", PREFACE)], "unknown direction", 0),
])
def test_protocol_errors(chunks, reason, offset):
    got_reason, got_offset = _fail_reason(chunks)
    assert reason in got_reason
    assert got_offset == offset


def test_max_frame_size_setting_raises_the_limit_for_the_peer():
    # the client allows 32768-byte frames: the server may send a 20000-byte DATA frame
    p = Http2Parser(max_body=5)
    assert p.feed("write", PREFACE + _settings((5, 32768)), 0) == []
    assert [m.type for m in p.feed("write", _frame(1, 5, 1, _hpack(*GET)), 1 * MS)] == [
        "http.request"]
    assert p.feed("read", _settings(), 2 * MS) == []
    out = p.feed("read", _frame(1, 4, 1, _hpack((":status", "200"))) +
                 _frame(0, 1, 1, b"z" * 20000), 3 * MS)
    assert [m.type for m in out] == ["http.response"] and not p.failed
    f = out[0].fields
    assert f["body"] == "zzzzz" and f["body_len"] == 20000 and f["truncated"]
    assert f["latency_ms"] == 2.0
    # but the client still may not send one
    out = p.feed("write", _frame(0, 1, 3, b"y" * 20000), 4 * MS)
    assert out[0].type == "parse_error" and "exceeds" in out[0].fields["reason"]


def test_header_table_size_setting_allows_larger_table():
    import hpack

    enc = hpack.Encoder()
    enc.header_table_size = 8192  # emits a size update to 8192 in the next block
    block = _hpack(*GET, encoder=enc)
    p = Http2Parser()
    p.feed("write", CLIENT_START, 0)
    p.feed("read", _settings((1, 8192)), 0)  # the server's decoder accepts 8192
    out = p.feed("write", _frame(1, 5, 1, block), 0)
    assert [m.type for m in out] == ["http.request"]
    # without the setting the same block is an error
    p = Http2Parser()
    p.feed("write", CLIENT_START, 0)
    p.feed("read", _settings(), 0)
    out = p.feed("write", _frame(1, 5, 1, block), 0)
    assert out[0].type == "parse_error" and "HPACK" in out[0].fields["reason"]


def test_headers_on_reset_stream_still_update_hpack_state():
    import hpack

    cenc, senc = hpack.Encoder(), hpack.Encoder()
    p = Http2Parser()
    p.feed("write", CLIENT_START, 0)
    p.feed("read", _settings(), 0)
    assert len(p.feed("write", _frame(1, 5, 1, _hpack(*GET, encoder=cenc)), 0)) == 1
    out = p.feed("write", _frame(3, 0, 1, b"\x00\x00\x00\x08"), MS)  # client CANCEL
    assert out[0].fields["reset"] and out[0].fields["status"] is None
    # in flight: the server's response headers for stream 1 add "x-v: 1" to ITS table
    p.feed("read", _frame(1, 5, 1, senc.encode([(":status", "200"), ("x-v", "1")])), MS)
    p.feed("write", _frame(1, 5, 3, _hpack(*GET, encoder=cenc)), MS)
    # stream 3's response reuses the dynamic entry
    out = p.feed("read", _frame(1, 5, 3, senc.encode([(":status", "200"), ("x-v", "1")])), MS)
    assert out[0].fields["headers"] == {"x-v": "1"} and out[0].fields["stream_id"] == 3


def test_response_before_request_end_and_latency_unknown():
    p = Http2Parser()
    p.feed("write", CLIENT_START + _frame(1, 4, 1, _hpack(*GET)), 0)  # no END_STREAM
    p.feed("read", _settings(), 0)
    out = p.feed("read", _frame(1, 5, 1, _hpack((":status", "413"))), MS)
    assert out[0].fields["status"] == 413 and out[0].fields["latency_ms"] is None
    out = p.feed("write", _frame(0, 1, 1, b"late"), 2 * MS)
    assert out[0].type == "http.request" and out[0].fields["body"] == "late"


def test_need_more_data_is_empty_list():
    p = Http2Parser()
    assert p.feed("write", PREFACE[:8], 0) == []
    assert p.feed("write", b"", 0) == []
    assert p.feed("write", PREFACE[8:] + _settings()[:5], 0) == []
    assert p.client_direction == "write" and not p.failed


def test_feed_accepts_bytearray_and_memoryview():
    msgs = []
    p = Http2Parser()
    for i, (who, data, ts) in enumerate(case("get_simple").chunks()):
        data = bytearray(data) if i % 2 else memoryview(data)
        msgs += p.feed(direction(who, "client"), data, ts)
    assert_matches(msgs, case("get_simple").messages)


def test_bad_argument_types_do_not_raise():
    for args in [("write", "PRI * HTTP/2.0", 0), ("write", b"PRI", 0, "x"), (None, b"x", 0),
                 (["write"], b"x", 0), ("write", 12345, 0)]:
        p = Http2Parser()
        out = p.feed(*args)
        assert [m.type for m in out] == ["parse_error"], args
        assert not out[0].fields["reason"].startswith("internal"), out
        assert p.failed and p.feed("write", PREFACE, 0) == []


def test_bad_ts_is_a_parse_error_not_an_exception():
    p = Http2Parser()
    msgs = []
    for who, data, _ts in case("get_simple").chunks():
        msgs += p.feed(direction(who, "client"), data, "not-a-number")
    assert msgs[-1].type == "parse_error"


# ------------------------------------------------------------- robustness


def _check_contract(p: Http2Parser, feeds) -> list:
    out: list = []
    failed = False
    for d, data, missing in feeds:
        got = p.feed(d, data, 7, missing)
        assert isinstance(got, list)
        if failed:
            assert got == []
        for m in got:
            assert isinstance(m, Message)
            assert m.type in ("http.request", "http.response", "parse_error")
            json.dumps(m.fields)
        errs = [m for m in got if m.type == "parse_error"]
        assert len(errs) <= 1
        if errs:
            assert got[-1] is errs[0]
            assert not errs[0].fields["reason"].startswith("internal"), errs[0]
            failed = True
        assert p.failed == failed
        out += got
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=hs.sampled_from([b"", PREFACE, CLIENT_START, PREFACE[:10]]),
    feeds=hs.lists(hs.tuples(hs.sampled_from(["read", "write"]), hs.binary(max_size=80),
                             hs.sampled_from([0, 0, 0, 0, 1, 50])), max_size=12),
)
def test_arbitrary_bytes_never_raise(prefix, feeds):
    _check_contract(Http2Parser(), [("write", prefix, 0)] + feeds)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[i:i] = bytes([rng.randrange(256)])
        elif op == 2 and b:
            del b[i:i + rng.randrange(1, 8)]
        elif op == 3:
            del b[i:]
        else:
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[min(i, j):max(i, j)][:64]
    return bytes(b)


SMALL = [c for c in CASES if sum(len(x[1]) for x in c.chunks()) < 5000]


@pytest.mark.parametrize("case", SMALL, ids=[c.name for c in SMALL])
def test_mutated_fixtures_never_raise(case: Case):
    rng = random.Random(len(case.name) * 7919)
    chunks = case.chunks()
    for _ in range(150):
        cs = [(w, d, ts) for w, d, ts in chunks]
        j = rng.randrange(len(cs))
        cs[j] = (cs[j][0], _mutate(rng, cs[j][1]), cs[j][2])
        feeds = []
        for w, d, _ts in cs:
            i = 0
            while i < len(d) or (not d and i == 0):
                n = rng.randrange(1, 60)
                miss = rng.choice((0,) * 12 + (3, 40))
                feeds.append((direction(w, "client"), d[i:i + n], miss))
                i += n
                if not d:
                    break
        _check_contract(Http2Parser(max_body=rng.choice((0, 8, 16384))), feeds)
        whole = _check_contract(Http2Parser(), [(direction(w, "client"), d, 0) for w, d, _ in cs])
        split = _check_contract(Http2Parser(), [(direction(w, "client"), d[i:i + 5], 0)
                                                for w, d, _ in cs for i in range(0, len(d), 5)])
        assert as_tuples(whole) == as_tuples(split)


# ----------------------------------------------------------- detection


@pytest.mark.parametrize("data", [PREFACE, PREFACE[:8], PREFACE[:16], PREFACE + b"\x00\x00",
                                  bytearray(PREFACE), memoryview(PREFACE[:12])])
@pytest.mark.parametrize("d", ["read", "write"])
def test_looks_like_http2_true(data, d):
    assert looks_like_http2(data, d) is True


@pytest.mark.parametrize("data", [b"", PREFACE[:7], b"PRI * HTTP/1.1\r\n", b"GET / HTTP/1.1\r\n",
                                  _settings(), b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",
                                  b"\x16\x03\x01\x00\xa5", b" PRI * HTTP/2.0", None,
                                  "PRI * HTTP/2.0"])
def test_looks_like_http2_false(data):
    assert looks_like_http2(data, "write") is False


def test_looks_like_http2_bad_direction():
    assert looks_like_http2(PREFACE, "sideways") is False
    assert looks_like_http2(PREFACE, None) is False


def test_capture_starting_mid_connection():
    chunks = case("dynamic_table").chunks()
    j, (off, *_rest) = _find_chunk(chunks, "client", 1, nth=1)
    mid = chunks[j][1][off:]  # a HEADERS frame: the HPACK state before it is unknown
    assert looks_like_http2(mid, "write") is False
    p = Http2Parser()
    out = p.feed("write", mid, 0)
    assert [m.type for m in out] == ["parse_error"] and p.failed
    assert "first frame is not SETTINGS" in out[0].fields["reason"]


# ------------------------------------------------------------ repeated header fields

COOKIES = ("a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/",
           "b=2; Expires=Thu, 22 Oct 2026 07:28:00 GMT; Secure")


def test_repeated_set_cookie_stays_a_list_of_values_in_order():
    p = Http2Parser()
    p.feed("write", CLIENT_START + _frame(1, 5, 1, _hpack(*GET, ("accept", "a"), ("accept", "b"))), 0)
    p.feed("read", _settings(), 0)
    out = p.feed("read", _frame(1, 5, 1, _hpack((":status", "200"), ("set-cookie", COOKIES[0]),
                                                ("server", "x"), ("set-cookie", COOKIES[1]))), MS)
    assert out[0].fields["headers"] == {"set-cookie": list(COOKIES), "server": "x"}


def test_split_cookie_crumbs_are_joined_back_with_semicolons():
    p = Http2Parser()
    out = p.feed("write", CLIENT_START + _frame(1, 5, 1, _hpack(*GET, ("cookie", "a=1"), ("accept", "a"),
                                                                ("cookie", "b=2"), ("accept", "b"))), 0)
    assert out[0].fields["headers"] == {"cookie": "a=1; b=2", "accept": ["a", "b"]}
